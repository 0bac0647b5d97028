"""Load a trained codec (pipeline.codec.trained) from a training checkpoint or an exported model folder, to code
audio of any length in bounded memory.

    trained = load_trained(model="models/te-4k")                   # an export (telucodec export)
    trained = load_trained(checkpoint="runs/r1")                   # its best checkpoint, else its latest
    codes = trained.encode(audio, n_q=4)      # mono float32 [T] at trained.sample_rate -> [4, F] long
    audio = trained.decode(codes, length=T)   # -> [T] float32, an inference-mode tensor (no grad)
    trained.fingerprint                       # sha256 of weights + model config (trained.model_fingerprint)

    codec, cfg, step = load_codec("s3://b/runs/r1/checkpoints/step_00002000")   # the bare Codec
"""

from __future__ import annotations

from pipeline.codec.export import load_export
from pipeline.codec.model import Codec
from pipeline.codec.trained import TrainedCodec, checkpoint_config, codec_from_state, from_checkpoint
from pipeline.config import Config
from pipeline.runs.checkpoints import CheckpointError, resolve_checkpoint


def load_codec(url: str, device: str = "cpu") -> tuple[Codec, Config, int]:
    """The codec of a checkpoint (a step dir, or a run dir: its best, else its latest) in eval mode,
    its training config and its step."""
    ref = resolve_checkpoint(url)
    cfg, _ = checkpoint_config(ref, url)
    codec = codec_from_state(cfg.model, ref.checkpoints.load(ref.step, "model"), url)
    return codec.to(device), cfg, ref.step


def load_trained(checkpoint: str | None = None, model: str | None = None) -> TrainedCodec:
    """Exactly one of: a checkpoint (a step dir, or a run dir: its best, else its latest) or an
    exported model folder."""
    if (checkpoint is None) == (model is None):
        raise CheckpointError("give a checkpoint or an exported model folder, not both or neither")
    if model is not None:
        return load_export(model)
    return from_checkpoint(resolve_checkpoint(checkpoint), checkpoint)
