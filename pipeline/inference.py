"""Load a trained codec and use it: encoding audio to .tcq bitstreams and checking them on decode.

    codec, cfg, step = load_codec("runs/r1")                      # the run's latest checkpoint
    codec, cfg, step = load_codec("s3://b/runs/r1/checkpoints/step_00002000")
"""

from __future__ import annotations

import re

import numpy as np
import torch

from pipeline.audio import AudioError, clip_to_unit_range, load_audio, resample
from pipeline.bitstream import BitstreamError, write_bitstream
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


def read_codec_input(path: str, sample_rate: int) -> tuple[np.ndarray, int]:
    """Any soundfile-readable file -> (mono float32 [T] at sample_rate clipped to [-1, 1], samples clipped)."""
    try:
        decoded = load_audio(path)
    except AudioError as e:
        raise AudioError(f"{path}: {e}") from None
    return clip_to_unit_range(resample(decoded.audio, decoded.sample_rate, sample_rate))


def encode_to_bitstream(codec, audio, n_q: int) -> bytes:
    """Mono [T] at the codec's rate -> .tcq bytes with n_q codebooks."""
    with torch.inference_mode():
        codes = codec.encode(torch.from_numpy(audio)[None, None], n_q)[0]
    return write_bitstream(codes, codec.sample_rate, len(audio), codec.cfg.codebook_bits)


def check_bitstream_fits(bs, model_cfg, path: str) -> None:
    """BitstreamError unless the bitstream was made by a model of this checkpoint's shape."""
    problems = []
    if bs.sample_rate != model_cfg.sample_rate:
        problems.append(f"sample rate {bs.sample_rate} Hz, the model's is {model_cfg.sample_rate} Hz")
    if bs.codebook_bits != model_cfg.codebook_bits:
        problems.append(f"{bs.codebook_bits}-bit codes, the model's are {model_cfg.codebook_bits}-bit")
    if bs.n_codebooks > model_cfg.n_codebooks:
        problems.append(f"{bs.n_codebooks} codebooks, the model has {model_cfg.n_codebooks}")
    if bs.frames != -(-bs.n_samples // model_cfg.hop_length):
        problems.append(f"{bs.frames} frames for {bs.n_samples} samples, the model's hop is "
                        f"{model_cfg.hop_length}")
    if problems:
        raise BitstreamError(f"{path} does not fit this checkpoint: {'; '.join(problems)}")
