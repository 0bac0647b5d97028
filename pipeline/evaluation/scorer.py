"""One scorer for every evaluation: a clip's metrics against its reference, and a model's val
metrics over clips. Training's eval and `telucodec eval` both score with `score_clip`.

    m = score_clip(ref, est, 16000)                     # ClipMetrics: SNR, SI-SDR, level, mel, PESQ, STOI
    val = evaluate_model(model, [(key, audio), ...], 16000)   # {"val/snr": ..., "val/pesq": ...}
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.codec.metrics import Score, mean_score, mel_distance, pesq_wb, range_ratio, si_sdr_db, snr_db, stoi
from pipeline.codec.model import Codec
from pipeline.codec.quantizer import codebook_perplexity


@dataclass
class ClipMetrics:
    """One clip through one codec; a report's row is their mean, a spectrogram panel shows one."""
    snr: float
    si_sdr: float
    range_ratio: float
    mel_distance: float
    pesq: Score
    stoi: Score
    payload_bytes: int
    """Bytes the codec needed for the clip (0 where not measured)."""
    seconds: float

    @property
    def kbps(self) -> float:
        return self.payload_bytes * 8 / self.seconds / 1000


def score_clip(ref, est, sample_rate: int, payload_bytes: int = 0) -> ClipMetrics:
    """Metrics of `est` against `ref` (one clip each: [T], or a [1, 1, T] tensor)."""
    ref, est = _mono(ref), _mono(est)
    return ClipMetrics(float(snr_db(ref, est)), float(si_sdr_db(ref, est)), float(range_ratio(ref, est)),
                       float(mel_distance(ref, est, sample_rate)), pesq_wb(ref, est, sample_rate)[0],
                       stoi(ref, est, sample_rate)[0], payload_bytes, len(ref) / sample_rate)


def _mono(x) -> np.ndarray:
    x = x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float32)
    return x.reshape(-1)


def evaluate_model(model: Codec, clips: list[tuple[str, np.ndarray]], sample_rate: int) -> dict:
    """Val metrics over clips: SNR, SI-SDR, range ratio, mel distance, PESQ-WB and STOI (over the
    clips they can score; absent when none), codebook perplexity per level. The model runs eager even
    where train.compile compiled its parts: every clip length would be a new shape to compile for."""
    scores, codes = [], []
    for _, audio in clips:
        with torch.compiler.set_stance("force_eager"):
            out = model.reconstruct(audio)
        scores.append(score_clip(audio, out.audio, sample_rate))
        codes.append(out.codes[0].cpu())
    metrics = {f"val/{name}": float(np.mean([getattr(s, name) for s in scores]))
               for name in ("snr", "si_sdr", "range_ratio", "mel_distance")}
    metrics.update({"val/bitrate": model.bitrate(), "val/clips": len(clips)})
    for name in ("pesq", "stoi"):
        if (value := mean_score([getattr(s, name) for s in scores])) is not None:
            metrics[f"val/{name}"] = value
    perplexity = codebook_perplexity(torch.cat(codes, dim=-1), model.cfg.codebook_size)
    metrics.update({f"val/perplexity/{i}": float(p) for i, p in enumerate(perplexity)})
    return {k: float(v) for k, v in metrics.items()}
