"""What launches: the `telucodec` command (cli), Ray submission and the cluster side (launch), and
the shipped cluster templates (clusters)."""
