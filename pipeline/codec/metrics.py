"""Evaluation metrics for codec output: SNR, SI-SDR, level, mel distance, PESQ and STOI.

    snr_db(ref, est)              # ref, est: [B, 1, T], [B, T] or [T]; tensor or numpy -> [B] (or scalar)
    pesq_wb(ref, est, 16000)      # -> [Score(value, reason)] per clip; value None when PESQ fails

Signal metrics take tensors or numpy arrays and answer in the same kind, one value per clip (a 1-D
input gives a scalar). They are computed in float64 with a tiny epsilon on energies, so identical
signals give a large finite SNR (about 10 log10(energy / 1e-10) dB) instead of inf, and silent
clips give finite numbers. PESQ and STOI wrap the `pesq` and `pystoi` packages and report why a
clip could not be scored (silence, too short, wrong sample rate) instead of raising.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from pipeline.codec.spectral import log_mel

ENERGY_EPS = 1e-10
"""Added to energies in SNR / SI-SDR so zero noise or a silent reference stays finite."""


def _as_batch(x) -> torch.Tensor:
    """Tensor or numpy [T], [B, T] or [B, 1, T] -> float64 tensor [B, T] on CPU."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x.detach())
    t = t.to("cpu", torch.float64)
    if t.dim() == 3:
        if t.shape[1] != 1:
            raise ValueError(f"expected [B, 1, T], got {tuple(t.shape)}")
        t = t[:, 0]
    return t if t.dim() == 2 else t.reshape(1, -1)


def _per_clip(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    """Wrap fn([B, T], [B, T]) -> [B] to accept any supported input and answer in its kind."""

    def wrapped(ref, est):
        values = fn(_as_batch(ref), _as_batch(est))
        is_tensor = isinstance(ref, torch.Tensor)
        if (ref.dim() if is_tensor else np.ndim(ref)) == 1:
            values = values[0]
        return values if is_tensor else values.numpy()

    wrapped.__name__, wrapped.__doc__ = fn.__name__, fn.__doc__
    return wrapped


@_per_clip
def snr_db(ref: torch.Tensor, est: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio in dB of est against ref, per clip: [B, T] -> [B]."""
    noise = (ref - est).square().sum(-1)
    return 10 * torch.log10((ref.square().sum(-1) + ENERGY_EPS) / (noise + ENERGY_EPS))


@_per_clip
def si_sdr_db(ref: torch.Tensor, est: torch.Tensor) -> torch.Tensor:
    """Scale-invariant SDR in dB (zero-mean, optimal scaling of ref), per clip: [B, T] -> [B]."""
    ref = ref - ref.mean(-1, keepdim=True)
    est = est - est.mean(-1, keepdim=True)
    scale = ((est * ref).sum(-1, keepdim=True) + ENERGY_EPS) / (ref.square().sum(-1, keepdim=True)
                                                               + ENERGY_EPS)
    target = scale * ref
    return 10 * torch.log10((target.square().sum(-1) + ENERGY_EPS)
                            / ((est - target).square().sum(-1) + ENERGY_EPS))


@_per_clip
def range_ratio(ref: torch.Tensor, est: torch.Tensor) -> torch.Tensor:
    """Output peak over input peak per clip (1 = level kept, < 1 = quieter): [B, T] -> [B]."""
    return est.abs().amax(-1) / ref.abs().amax(-1).clamp(min=ENERGY_EPS)


def mel_distance(ref, est, sample_rate: int = 16000, windows: Sequence[int] = (256, 512, 1024, 2048),
                 n_mels: Sequence[int] = (20, 40, 80, 160)):
    """Mean absolute log10-mel difference per clip, averaged over scales: [B, 1, T] -> [B]."""

    def distance(r: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        r, e = r.float()[:, None], e.float()[:, None]
        per_scale = [(log_mel(e, sample_rate, w, m) - log_mel(r, sample_rate, w, m)).abs().mean((1, 2))
                     for w, m in zip(windows, n_mels)]
        return torch.stack(per_scale).mean(0).double()

    distance.__name__ = "mel_distance"
    return _per_clip(distance)(ref, est)


# ---------------------------------------------------------------------------------------------
# Perceptual scores from external packages.

@dataclass
class Score:
    value: float | None
    """The score, or None when the clip could not be scored."""
    reason: str = ""
    """Why value is None (empty when it is set)."""


SCORERS = {"pesq": "pesq", "stoi": "pystoi"}
"""The package each perceptual score comes from (the `eval` extra: optional)."""


def scorer(name: str):
    """(the package module for score `name`, None) or (None, why it is missing)."""
    try:
        return importlib.import_module(SCORERS[name]), None
    except ImportError:
        return None, f"{SCORERS[name]} is not installed (pip install 'telucodec[eval]')"


def pesq_wb(ref, est, sample_rate: int = 16000) -> list[Score]:
    """Wide-band PESQ (MOS-LQO, about 1.0-4.6) per clip: [B, 1, T] -> [Score] * B."""
    if sample_rate != 16000:
        return [Score(None, f"PESQ-WB needs 16 kHz audio, got {sample_rate} Hz")] * len(_as_batch(ref))
    package, missing = scorer("pesq")
    if package is None:
        return [Score(None, missing)] * len(_as_batch(ref))
    return [_score(lambda r=r, e=e: package.pesq(sample_rate, r, e, "wb"))
            for r, e in zip(_as_batch(ref).numpy(), _as_batch(est).numpy())]


def stoi(ref, est, sample_rate: int = 16000, extended: bool = False) -> list[Score]:
    """Short-time objective intelligibility (0-1) per clip: [B, 1, T] -> [Score] * B."""
    package, missing = scorer("stoi")
    if package is None:
        return [Score(None, missing)] * len(_as_batch(ref))
    # pystoi scores an all-zero reference as 0.0 without complaint; that is no measurement.
    return [_score(lambda r=r, e=e: package.stoi(r, e, sample_rate, extended=extended))
            if r.any() else Score(None, "silent reference")
            for r, e in zip(_as_batch(ref).numpy(), _as_batch(est).numpy())]


def _score(compute: Callable[[], float]) -> Score:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = float(compute())
        except Exception as e:  # the packages raise their own types (NoUtterancesError, ...)
            return Score(None, f"{type(e).__name__}: {e}")
    # pystoi does not raise on silent or too-short clips: it warns and returns 1e-5, a fake score.
    not_scored = [w for w in caught if "Returning 1e-5" in str(w.message)]
    if not_scored:
        return Score(None, " ".join(str(not_scored[0].message).split()))
    return Score(value)


def mean_score(scores: Sequence[Score]) -> float | None:
    """Mean of the scores that have a value, or None if none has."""
    values = [s.value for s in scores if s.value is not None]
    return float(np.mean(values)) if values else None
