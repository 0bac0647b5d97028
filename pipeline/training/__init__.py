"""The training runtime: the loop and its steps, rank-0 duties, training state and its checkpoints,
the crop loader, and experiment tracking (W&B)."""
