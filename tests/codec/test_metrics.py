"""Evaluation metrics: known values (6.02 dB for half amplitude), scale invariance, batch and numpy
handling, and PESQ / STOI reporting why a clip could not be scored.

    .venv/bin/pytest tests/codec/test_metrics.py -q
"""

import math
import sys

import numpy as np
import pytest
import torch

from pipeline.codec.metrics import Score, mean_score, mel_distance, pesq_wb, range_ratio, si_sdr_db, snr_db, stoi
from pipeline.codec.quantizer import codebook_perplexity

SR = 16000


def _speech_like(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """Harmonic 'voiced' bursts with syllable-rate gaps: enough for PESQ's and STOI's voice checks."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 140 + 20 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voiced = sum(np.sin(k * phase) / k for k in range(1, 20))
    envelope = np.clip(np.sin(2 * np.pi * 3 * t), 0, None) ** 2
    return (0.2 * voiced * envelope + 0.002 * rng.standard_normal(t.size)).astype(np.float32)


def test_snr_known_values_and_identical_signals():
    x = torch.randn(3, 1, 1000)
    assert torch.allclose(snr_db(x, 0.5 * x), torch.full((3,), 20 * math.log10(2), dtype=torch.float64))
    same = snr_db(x, x)
    assert torch.isfinite(same).all() and (same > 100).all()
    assert torch.isfinite(snr_db(torch.zeros(1, 1000), torch.zeros(1, 1000))).all()


def test_shapes_and_kinds():
    x = torch.randn(2, 1, 500)
    assert snr_db(x, x * 0.9).shape == (2,)
    assert snr_db(x[:, 0], x[:, 0] * 0.9).shape == (2,)
    assert snr_db(x[0, 0], x[0, 0] * 0.9).dim() == 0
    as_numpy = snr_db(x.numpy(), 0.5 * x.numpy())
    assert isinstance(as_numpy, np.ndarray) and np.allclose(as_numpy, 6.0206, atol=1e-3)


def test_si_sdr_is_scale_invariant():
    ref = torch.randn(2, 1, 2000)
    est = ref + 0.1 * torch.randn_like(ref)
    assert torch.allclose(si_sdr_db(ref, est), si_sdr_db(ref, 3.0 * est), atol=1e-6)
    assert (si_sdr_db(ref, 0.5 * ref) > 100).all()  # a pure gain change is no distortion


def test_range_ratio():
    x = torch.randn(2, 1, 1000)
    assert torch.allclose(range_ratio(x, 0.5 * x), torch.full((2,), 0.5, dtype=torch.float64))
    assert torch.allclose(range_ratio(x, 1.3 * x), torch.full((2,), 1.3, dtype=torch.float64))


def test_mel_distance():
    x = torch.randn(2, 1, 4000) * 0.1
    assert torch.equal(mel_distance(x, x), torch.zeros(2, dtype=torch.float64))
    d = mel_distance(x, x + 0.05 * torch.randn_like(x))
    assert d.shape == (2,) and (d > 0).all()


def test_codebook_perplexity():
    uniform = torch.arange(16).repeat(2, 3, 1)  # [B=2, n_q=3, F=16], every code once per row
    assert torch.allclose(codebook_perplexity(uniform, 16), torch.full((3,), 16.0))
    constant = torch.zeros(2, 4, 10, dtype=torch.long)
    assert torch.allclose(codebook_perplexity(constant, 16), torch.ones(4))
    assert codebook_perplexity(np.zeros((5, 10), dtype=np.int64), 16).shape == (5,)


def test_pesq_scores_speech_and_explains_failures():
    ref = _speech_like()
    noisy = ref + 0.02 * np.random.default_rng(1).standard_normal(ref.size).astype(np.float32)
    clean, degraded = pesq_wb(np.stack([ref, ref]), np.stack([ref, noisy]), SR)
    assert 4.0 < clean.value <= 4.7 and 1.0 <= degraded.value < clean.value
    (silent,) = pesq_wb(np.zeros(SR), np.zeros(SR), SR)
    assert silent.value is None and silent.reason
    (wrong_rate,) = pesq_wb(ref, ref, 24000)
    assert wrong_rate.value is None and "16 kHz" in wrong_rate.reason
    assert mean_score([clean, silent]) == clean.value and mean_score([silent]) is None


def test_stoi_scores_speech_and_explains_failures():
    ref = torch.from_numpy(_speech_like()).view(1, 1, -1)
    (same,) = stoi(ref, ref, SR)
    assert same.value == pytest.approx(1.0, abs=1e-3)
    (silent,) = stoi(torch.zeros(1, 1, SR), torch.zeros(1, 1, SR), SR)
    assert silent == Score(None, "silent reference")
    (too_short,) = stoi(ref[..., :SR // 5], ref[..., :SR // 5], SR)  # under 30 STOI frames
    assert too_short.value is None and "Not enough STFT frames" in too_short.reason


def test_a_missing_scorer_package_is_a_reason_not_a_crash(monkeypatch):
    """pesq and pystoi are the optional `eval` extra: without them evaluation still runs (the
    perceptual scores are absent, with why) and a run whose best checkpoint is chosen by one is warned."""
    from pipeline.config import load_config
    from pipeline.training.duties import best_metric_problem

    cfg = load_config(["base", "tiny"], [])
    assert cfg.train.best_metric == "pesq" and best_metric_problem(cfg.train) is None  # installed here
    monkeypatch.setitem(sys.modules, "pesq", None)  # `import pesq` now raises ImportError
    monkeypatch.setitem(sys.modules, "pystoi", None)
    ref = _speech_like()
    (p,), (s,) = pesq_wb(ref, ref, SR), stoi(ref, ref, SR)
    assert p.value is None and "pesq is not installed" in p.reason
    assert s.value is None and "pystoi is not installed" in s.reason
    assert "no best checkpoint is kept" in best_metric_problem(cfg.train)
    assert best_metric_problem(load_config(["base", "tiny"], ["train.best_metric=mel_distance"]).train) is None
