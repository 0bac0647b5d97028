"""The core: object storage and the shard format (storage), the codec (codec), the training runtime
(training), run records and cost (runs), evaluation (evaluation), clouds (cloud) and the config."""
