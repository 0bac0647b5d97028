"""Load a trained codec for encoding, decoding and evaluation.

    codec, cfg, step = load_codec("runs/r1")                      # the run's latest checkpoint
    codec, cfg, step = load_codec("s3://b/runs/r1/checkpoints/step_00002000")
"""

from __future__ import annotations

import re

from pipeline.checkpoint import CheckpointError, Checkpoints
from pipeline.config import Config, ConfigError, from_dict
from pipeline.model import Codec

_STEP_DIR = re.compile(r"^(?P<run>.*?)/?checkpoints/step_(?P<step>\d{8})/?$")


def resolve_checkpoint(url: str) -> tuple[Checkpoints, int]:
    """A run dir (its latest whole checkpoint) or a step_NNNNNNNN dir -> (Checkpoints, step)."""
    url = str(url).rstrip("/")
    m = _STEP_DIR.match(url)
    ckpts = Checkpoints(m["run"] if m else url)
    step = int(m["step"]) if m else ckpts.latest_step()
    if step is None or not ckpts.is_whole(step):
        raise CheckpointError(f"{url}: no whole checkpoint there (give a run dir or a "
                              "checkpoints/step_NNNNNNNN dir)")
    return ckpts, step


def load_codec(url: str, device: str = "cpu") -> tuple[Codec, Config, int]:
    """The codec of a checkpoint in eval mode, its training config and its step."""
    ckpts, step = resolve_checkpoint(url)
    train_state = ckpts.load(step, "train")
    try:
        cfg = from_dict(Config, train_state["config"])
    except ConfigError as e:
        raise CheckpointError(f"{url}: its config does not fit this telucodec version ({e})") from None
    codec = Codec(cfg.model)
    try:
        codec.load_state_dict(ckpts.load(step, "model"))
    except RuntimeError as e:
        raise CheckpointError(f"{url}: weights do not match the model in its config "
                              f"({str(e).splitlines()[0]})") from None
    return codec.to(device).eval(), cfg, step

