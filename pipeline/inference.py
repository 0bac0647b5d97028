"""Load a trained codec and use it: from a training checkpoint or an exported model folder, to code
audio of any length in bounded memory.

    trained = load_trained(model="models/te-4k")                   # an export (telucodec export)
    trained = load_trained(checkpoint="runs/r1")                   # the run's latest checkpoint
    codes = trained.encode(audio, n_q=4)      # mono float32 [T] at trained.sample_rate -> [4, F] long
    audio = trained.decode(codes, length=T)   # -> [T] float32, an inference-mode tensor (no grad)
    trained.fingerprint                       # sha256 of weights + model config (export.model_fingerprint)

    codec, cfg, step = load_codec("s3://b/runs/r1/checkpoints/step_00002000")   # the bare Codec
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.bitstream import BitstreamError
from pipeline.checkpoint import CheckpointError, Checkpoints
from pipeline.chunked import ChunkPlan, decode_stream, encode_stream
from pipeline.config import Config, ConfigError, ModelConfig, from_dict
from pipeline.model import Codec

_STEP_DIR = re.compile(r"^(?P<run>.*?)/?checkpoints/step_(?P<step>\d{8})/?$")


@dataclass
class CheckpointRef:
    run_url: str
    """The run dir the checkpoint belongs to (metrics.jsonl lives there)."""
    step: int
    checkpoints: Checkpoints
    chosen_as: str
    """Why this step: 'named' (a step dir was given), 'best' or 'latest'."""


def resolve_checkpoint(url: str, prefer_best: bool = False) -> CheckpointRef:
    """A run dir (its latest whole checkpoint, or with prefer_best its best one when that is whole)
    or a checkpoints/step_NNNNNNNN dir -> CheckpointRef."""
    url = str(url).rstrip("/")
    m = _STEP_DIR.match(url)
    run_url = m["run"] if m else url
    ckpts = Checkpoints(run_url)
    best = (ckpts.best() or {}).get("step") if prefer_best and not m else None
    if m:
        step, chosen_as = int(m["step"]), "named"
    elif best is not None and ckpts.is_whole(best):
        step, chosen_as = best, "best"
    else:
        step, chosen_as = ckpts.latest_step(), "latest"
    if step is None or not ckpts.is_whole(step):
        raise CheckpointError(f"{url}: no whole checkpoint there (give a run dir or a "
                              "checkpoints/step_NNNNNNNN dir)")
    return CheckpointRef(run_url, step, ckpts, chosen_as)


def codec_from_state(model_cfg: ModelConfig, state: dict, where: str) -> Codec:
    """A Codec of this config with these weights, in eval mode; CheckpointError if they do not fit."""
    codec = Codec(model_cfg)
    try:
        codec.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{where}: weights do not match the model in its config "
                              f"({str(e).splitlines()[0]})") from None
    return codec.eval()


def checkpoint_config(ref: CheckpointRef, url: str) -> tuple[Config, dict]:
    """The training config of a checkpoint, parsed and as stored (its raw `model` section is what
    the fingerprint hashes, so a newer telucodec's defaults cannot change it)."""
    train_state = ref.checkpoints.load(ref.step, "train")
    try:
        return from_dict(Config, train_state["config"]), train_state["config"].get("model", {})
    except ConfigError as e:
        raise CheckpointError(f"{url}: its config does not fit this telucodec version ({e})") from None


def load_codec(url: str, device: str = "cpu") -> tuple[Codec, Config, int]:
    """The codec of a checkpoint in eval mode, its training config and its step."""
    ref = resolve_checkpoint(url)
    cfg, _ = checkpoint_config(ref, url)
    codec = codec_from_state(cfg.model, ref.checkpoints.load(ref.step, "model"), url)
    return codec.to(device), cfg, ref.step


@dataclass
class TrainedCodec:
    """A codec ready to use, with what identifies it. encode/decode run in inference mode and in
    chunks (pipeline/chunked.py), so any length fits in memory."""

    codec: Codec
    fingerprint: str
    """sha256 hex over the weights and the model config (export.model_fingerprint)."""
    source: str
    """The checkpoint or export folder it was loaded from."""
    step: int | None = None
    """Training step of the weights (None when an export does not say)."""
    chunk_seconds: float = 10.0

    @property
    def cfg(self) -> ModelConfig:
        return self.codec.cfg

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    @property
    def short_fingerprint(self) -> str:
        """The 16 hex digits a .tcq file carries."""
        from pipeline.bitstream import FINGERPRINT_BYTES

        return self.fingerprint[:2 * FINGERPRINT_BYTES]

    @property
    def plan(self) -> ChunkPlan:
        return ChunkPlan.for_codec(self.codec, self.chunk_seconds)

    def encode(self, audio, n_q: int | None = None) -> torch.Tensor:
        """Mono [T] (numpy or tensor) at sample_rate -> codes [n_q, ceil(T / hop)] long."""
        audio = np.asarray(audio.detach().cpu() if hasattr(audio, "detach") else audio, np.float32)
        n_q = self.cfg.n_codebooks if n_q is None else n_q
        chunks = list(encode_stream(self.codec, [audio.reshape(-1)], n_q, self.plan))
        with torch.inference_mode():
            return torch.from_numpy(np.concatenate([np.zeros((n_q, 0), np.int64), *chunks], axis=1))

    def decode(self, codes, length: int | None = None) -> torch.Tensor:
        """Codes [n_q, F] (numpy or tensor) -> audio [length or F x hop] float32, no grad."""
        codes = np.asarray(codes.cpu() if hasattr(codes, "cpu") else codes, np.int64)
        length = codes.shape[1] * self.codec.hop_length if length is None else length
        pieces = list(decode_stream(self.codec, codes, length, self.plan))
        with torch.inference_mode():
            return torch.from_numpy(np.concatenate([np.zeros(0, np.float32), *pieces]))


def load_trained(checkpoint: str | None = None, model: str | None = None, prefer_best: bool = False) -> TrainedCodec:
    """Exactly one of: a checkpoint (run dir or step dir) or an exported model folder."""
    if (checkpoint is None) == (model is None):
        raise CheckpointError("give a checkpoint or an exported model folder, not both or neither")
    if model is not None:
        from pipeline.export import load_export

        return load_export(model)
    from pipeline.export import model_fingerprint

    ref = resolve_checkpoint(checkpoint, prefer_best)
    cfg, raw_model = checkpoint_config(ref, checkpoint)
    state = ref.checkpoints.load(ref.step, "model")
    codec = codec_from_state(cfg.model, state, checkpoint)
    return TrainedCodec(codec, model_fingerprint(state, raw_model), str(checkpoint), ref.step)


def check_bitstream_fits(bs, trained: TrainedCodec, path: str) -> None:
    """BitstreamError unless the bitstream was made by this model: the same fingerprint (version 2),
    or for version 1, which has none, a model of this shape."""
    if bs.fingerprint is not None and bs.fingerprint != trained.short_fingerprint:
        raise BitstreamError(f"{path} was made by model {bs.fingerprint}, not by this one "
                             f"({trained.short_fingerprint}): decode it with the model that encoded it")
    model_cfg, problems = trained.cfg, []
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
        raise BitstreamError(f"{path} does not fit this model: {'; '.join(problems)}")
