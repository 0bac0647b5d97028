"""Scoring a codec on held-out clips: one scorer for training's eval and `telucodec eval`, the
eval-clip loader, and the report against the Opus and Codec2 baselines."""
