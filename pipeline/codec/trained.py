"""A trained codec ready to use, with what identifies it: weights plus model config, fingerprinted.

    trained = from_checkpoint(resolve_checkpoint("runs/r1"), "runs/r1")
    codes = trained.encode(audio, n_q=4)      # mono float32 [T] at trained.sample_rate -> [4, F] long
    audio = trained.decode(codes, length=T)   # -> [T] float32, an inference-mode tensor (no grad)
    trained.fingerprint                       # sha256 of weights + model config

The fingerprint is the same for a checkpoint and its export; .tcq files carry its first 16 hex digits.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.codec.bitstream import FINGERPRINT_BYTES, BitstreamError
from pipeline.codec.chunked import ChunkPlan, decode_stream, encode_stream
from pipeline.codec.model import Codec
from pipeline.config import Config, ConfigError, ModelConfig, from_dict
from pipeline.runs.checkpoints import CheckpointError, CheckpointRef


def model_fingerprint(state: dict[str, torch.Tensor], model_config: dict) -> str:
    """sha256 hex over the model config as stored (canonical JSON) and every tensor by name."""
    h = hashlib.sha256(json.dumps(model_config, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        h.update(f"\n{name}:{tensor.dtype}:{list(tensor.shape)}\n".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


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


def from_checkpoint(ref: CheckpointRef, where: str) -> "TrainedCodec":
    """The codec of a resolved checkpoint, fingerprinted as its export will be."""
    cfg, raw_model = checkpoint_config(ref, where)
    state = ref.checkpoints.load(ref.step, "model")
    return TrainedCodec(codec_from_state(cfg.model, state, where), model_fingerprint(state, raw_model), str(where),
                        ref.step)


@dataclass
class TrainedCodec:
    """A codec ready to use, with what identifies it. encode/decode run in inference mode and in
    chunks (pipeline/codec/chunked.py), so any length fits in memory."""

    codec: Codec
    fingerprint: str
    """sha256 hex over the weights and the model config (model_fingerprint)."""
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
