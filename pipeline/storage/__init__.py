"""Object storage and the dataset format: the store (file:// and s3://), the shard format (writer,
index, reader) and audio I/O (decode, resample, clip). Used by data_prep and training alike."""
