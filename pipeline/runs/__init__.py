"""What a run leaves on its store: the run directory (events, metrics, requests), checkpoints, the
cost ledger, and the rules for resuming a run under a changed config."""
