"""Codec losses and discriminators: finite values and gradients on edge signals, weights as data,
fp32 spectral terms under autocast, loss config defaults.

    .venv/bin/pytest tests/codec/test_losses.py -q
"""

import dataclasses
import math

import pytest
import torch
import yaml

from pipeline.config import Config, ConfigError, LossConfig, ModelConfig, load_config
from pipeline.codec.discriminator import Discriminator
from pipeline.codec.losses import (adversarial_generator_loss, discriminator_loss, generator_loss, level_loss,
                                   mel_loss, negative_snr_loss, reconstruction_terms, stft_loss)
from pipeline.codec.spectral import log_mel, mel_filterbank
from pipeline.codec.model import Codec

T = 4000
TINY_MODEL = ModelConfig(channels=4, latent_dim=16, codebook_size=16, n_codebooks=2,
                         disc_channels=2, disc_periods=(2, 3), disc_stft_windows=(256, 128))
ADV = Config(model=TINY_MODEL, loss=LossConfig(adversarial=True, adv_start_step=10))


def _signals() -> dict[str, torch.Tensor]:
    t = torch.arange(T) / 16000
    sine = torch.sin(2 * math.pi * 220 * t)
    return {
        "silence": torch.zeros(T),
        "square_full_scale": torch.sign(sine) + (sine == 0).float(),
        "over_range_1.3": 1.3 * sine,
    }


@pytest.mark.parametrize("name", list(_signals()))
def test_all_terms_and_gradients_finite_on_edge_signals(name):
    torch.manual_seed(0)
    target = _signals()[name].view(1, 1, T).repeat(2, 1, 1)
    codec, disc = Codec(TINY_MODEL), Discriminator(TINY_MODEL)
    result = generator_loss(codec(target), target, ADV, disc=disc, step=10)
    assert set(result.terms) == {"l1", "mse", "snr", "level", "stft", "mel", "vq/commit", "adv", "feat"}
    assert all(torch.isfinite(v) for v in result.terms.values()), result.terms
    result.total.backward()
    d = discriminator_loss(disc, target, codec(target).audio, ADV.loss)
    d.total.backward()
    for p in [*codec.parameters(), *disc.parameters()]:
        assert p.grad is None or torch.isfinite(p.grad).all()
    assert torch.isfinite(d.total)


@pytest.mark.parametrize("ref_name", list(_signals()))
@pytest.mark.parametrize("est_kind", ["same", "silent", "loud_noise"])
def test_reconstruction_terms_finite_for_perfect_silent_and_noisy_estimates(ref_name, est_kind):
    ref = _signals()[ref_name].view(1, 1, T)
    est = {"same": ref.clone(), "silent": torch.zeros_like(ref),
           "loud_noise": 1.5 * torch.randn_like(ref)}[est_kind].requires_grad_()
    terms = reconstruction_terms(ref, est, LossConfig(), 16000)
    total = sum(terms.values())
    assert torch.isfinite(total)
    total.backward()
    assert torch.isfinite(est.grad).all()


def test_level_term_reads_the_gain_in_db_and_lifts_a_quiet_output_the_snr_loss_keeps_quiet():
    torch.manual_seed(0)
    ref = 0.1 * torch.randn(2, 1, T)
    assert level_loss(ref, ref) == pytest.approx(0.0, abs=1e-4)
    assert level_loss(ref, 0.5 * ref) == pytest.approx(20 * math.log10(2), abs=1e-3)
    assert level_loss(ref, 2.0 * ref) == pytest.approx(20 * math.log10(2), abs=1e-3)
    assert torch.isfinite(level_loss(torch.zeros(1, 1, T), torch.zeros(1, 1, T)))
    # An output at the input's level but only ~0.5 correlated with it, times a gain g: the SNR
    # loss is lowest near g = 0.5, the old "too quiet" optimum; the level term pulls g up.
    noise = 0.1 * torch.randn(2, 1, T)
    shape = 0.5 * ref + math.sqrt(0.75) * noise
    gain = torch.tensor(0.7, requires_grad=True)
    negative_snr_loss(ref, gain * shape).backward()
    assert gain.grad > 0  # SNR alone: lower the gain
    gain.grad = None
    level_loss(ref, gain * shape).backward()
    assert gain.grad < 0  # level: raise it


def test_zero_weight_term_is_logged_but_not_in_total():
    torch.manual_seed(0)
    target = torch.randn(1, 1, T) * 0.1
    codec = Codec(TINY_MODEL).eval()
    with torch.no_grad():
        out = codec(target)
    base = Config(model=TINY_MODEL)
    assert base.loss.weights["mse"] == 0.0
    result = generator_loss(out, target, base)
    assert "mse" in result.terms and result.terms["mse"] > 0
    expected = sum(base.loss.weights[k] * v for k, v in result.terms.items())
    assert torch.allclose(result.total, expected)
    with_mse = generator_loss(out, target, dataclasses.replace(
        base, loss=LossConfig(weights={"mse": 2.0})))
    assert torch.allclose(with_mse.total - result.total, 2.0 * result.terms["mse"], atol=1e-4)
    assert "adv" not in result.terms  # no discriminator given


def test_adversarial_terms_start_at_adv_start_step():
    torch.manual_seed(0)
    target = torch.randn(1, 1, 1000) * 0.1
    codec, disc = Codec(TINY_MODEL), Discriminator(TINY_MODEL)
    out = codec(target)
    assert "adv" not in generator_loss(out, target, ADV, disc=disc, step=9).terms
    assert {"adv", "feat"} <= set(generator_loss(out, target, ADV, disc=disc, step=10).terms)


def _gradient_norms(cfg: Config) -> dict[str, float]:
    """Norm of each generator term's gradient w.r.t. the decoded audio, on one fixed batch."""
    torch.manual_seed(0)
    target = torch.randn(2, 1, 2000) * 0.1
    codec, disc = Codec(cfg.model), Discriminator(cfg.model)
    out = codec(target)
    decoded = out.audio.detach().requires_grad_()
    out.audio = decoded
    terms = generator_loss(out, target, cfg, disc=disc, step=10).terms
    norms = {}
    for name in ("adv", "feat", "mel"):
        torch.manual_seed(0)
        out.audio = decoded
        result = generator_loss(out, target, dataclasses.replace(
            cfg, loss=dataclasses.replace(cfg.loss, weights={k: float(k == name) for k in terms})),
            disc=disc, step=10)
        (grad,) = torch.autograd.grad(result.total, decoded)
        norms[name] = float(grad.norm())
    return norms


def test_adv_and_feat_are_sums_like_mel_so_their_weights_mean_what_dacs_mean():
    """DAC sums mel over scales, adv over sub-discriminators and feat over feature maps, and weighs
    them 15 / 1 / 2. v1 averaged adv and feat, which made them n_subs and n_maps times weaker
    against mel than those weights say."""
    summed = _gradient_norms(ADV)
    averaged = _gradient_norms(dataclasses.replace(ADV, loss=dataclasses.replace(ADV.loss, adv_reduction="mean")))
    disc_out = Discriminator(TINY_MODEL)(torch.randn(1, 1, 2000))
    n_subs, n_maps = len(disc_out.logits), sum(len(f) for f in disc_out.features)
    assert summed["adv"] / averaged["adv"] == pytest.approx(n_subs, rel=1e-4)
    assert summed["feat"] / averaged["feat"] == pytest.approx(n_maps, rel=1e-4)
    assert summed["mel"] == pytest.approx(averaged["mel"])
    # the share of the adversarial terms in the decoder's gradient grows by those factors
    share = lambda n: (n["adv"] + 2 * n["feat"]) / (15 * n["mel"])  # noqa: E731
    assert share(summed) > 4 * share(averaged)


def test_generator_hinge_keeps_pulling_past_one():
    """relu(1 - D) (v1) has no gradient once D > 1; the generator's hinge is -D (EnCodec)."""
    logits = torch.full((2, 1, 8), 2.0, requires_grad=True)
    adversarial_generator_loss([logits], kind="hinge").backward()
    assert (logits.grad < 0).all()


def test_spectral_losses_run_in_fp32_under_bf16_autocast():
    x = torch.randn(2, 1, T) * 0.3
    y = x + 0.05 * torch.randn_like(x)
    plain_mel, plain_stft = mel_loss(x, y, 16000), stft_loss(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert log_mel(x.bfloat16(), 16000, 512, 40).dtype == torch.float32
        auto_mel, auto_stft = mel_loss(x, y, 16000), stft_loss(x, y)
    assert auto_mel.dtype == torch.float32 and auto_stft.dtype == torch.float32
    assert torch.allclose(auto_mel, plain_mel) and torch.allclose(auto_stft, plain_stft)


@pytest.mark.parametrize("n_fft, n_mels", list(zip(LossConfig().mel_windows, LossConfig().mel_bins)))
def test_mel_filterbank_has_no_empty_filters(n_fft, n_mels):
    fb = mel_filterbank(16000, n_fft, n_mels)
    assert fb.shape == (n_mels, n_fft // 2 + 1)
    assert (fb >= 0).all() and (fb.sum(1) > 0).all()


def test_discriminator_outputs_one_entry_per_sub_discriminator():
    out = Discriminator(TINY_MODEL)(torch.randn(2, 1, 1000))
    assert out.names == ["period_2", "period_3", "stft_256", "stft_128"]
    assert len(out.logits) == len(out.features) == 4
    assert all(lg.shape[0] == 2 and len(f) > 0 for lg, f in zip(out.logits, out.features))


def test_loss_config_weights_merge_over_defaults_and_reject_unknown_names():
    assert LossConfig(weights={"mel": 5.0}).weights == {**LossConfig().weights, "mel": 5.0}
    with pytest.raises(ConfigError, match="loss.weights"):
        LossConfig(weights={"mle": 1.0})
    with pytest.raises(ConfigError, match="loss.weights.mel"):
        LossConfig(weights={"mel": -1.0})
    cfg = load_config(["configs/base.yaml"], ["loss.weights.vq/commit=0.25"])
    assert cfg.loss.weights["vq/commit"] == 0.25 and cfg.loss.weights["mel"] == 15.0


def test_base_yaml_lists_every_loss_default():
    assert load_config(["configs/base.yaml"]).loss == LossConfig()
    with open("configs/base.yaml") as f:
        section = yaml.safe_load(f)["loss"]
    assert set(section) == {f.name for f in dataclasses.fields(LossConfig)}
    assert set(section["weights"]) == set(LossConfig().weights)
