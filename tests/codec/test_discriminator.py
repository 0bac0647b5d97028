"""The discriminators: multi-band STFT stacks joined along frequency, gradients into every band,
v1's single-band layout by config, narrow bands, config wiring.

    .venv/bin/pytest tests/codec/test_discriminator.py -q
"""

import pytest
import torch

from pipeline.config import ConfigError, ModelConfig
from pipeline.codec.discriminator import Discriminator, STFTDiscriminator

LAYERS_PER_BAND = 5  # first conv, three dilated strided convs, a (3, 3) conv


def _audio() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(2, 1, 4000) * 0.3


def test_each_band_has_its_own_stack_and_their_outputs_join_along_frequency():
    disc = STFTDiscriminator(256, channels=2, bands=(0, 0.25, 0.5, 1))
    logits, features = disc(_audio())
    assert len(disc.bands) == 3
    assert disc.band_bins == [(0, 32), (32, 64), (64, 129)]  # of 129 bins
    assert len(features) == 3 * LAYERS_PER_BAND
    last_of_each_band = features[LAYERS_PER_BAND - 1::LAYERS_PER_BAND]
    assert logits.shape[-1] == sum(f.shape[-1] for f in last_of_each_band) == 4 + 4 + 9
    assert logits.shape[:3] == (2, 1, features[0].shape[2])


def test_gradient_from_the_logits_reaches_every_band():
    disc = STFTDiscriminator(256, channels=2, bands=(0, 0.25, 0.5, 1))
    logits, _ = disc(_audio())
    logits.square().mean().backward()
    for stack in disc.bands:
        assert stack.layers[0].parametrizations.weight.original1.grad.abs().sum() > 0


def test_one_band_is_v1s_stft_discriminator():
    """Same layers as v1 (git 5a874a1): 90c^2 + 73c + 2 weights, logits [B, 1, frames, bins/8]."""
    for c in (2, 32):
        disc = STFTDiscriminator(512, channels=c, bands=(0, 1))
        assert sum(p.numel() for p in disc.parameters()) == 90 * c * c + 73 * c + 2
    logits, features = STFTDiscriminator(512, channels=2, bands=(0, 1))(_audio())
    assert logits.shape == (2, 1, 32, 33) and len(features) == LAYERS_PER_BAND


@pytest.mark.parametrize("n_fft", [512, 16])
def test_narrow_bands_keep_at_least_one_bin_through_the_strided_convs(n_fft):
    disc = STFTDiscriminator(n_fft, channels=2, bands=ModelConfig().disc_stft_bands)
    logits, features = disc(_audio())
    assert all(f.shape[-1] >= 1 for f in features)
    assert torch.isfinite(logits).all()


def test_a_band_without_a_bin_is_a_config_error():
    with pytest.raises(ConfigError, match="model.disc_stft_bands"):
        STFTDiscriminator(16, channels=2, bands=(0, 0.1, 0.12, 1))  # 9 bins: edges 0, 1, 1, 9


def test_discriminator_builds_its_stft_bands_from_the_config():
    cfg = ModelConfig(disc_channels=2, disc_periods=(2,), disc_stft_windows=(128,),
                      disc_stft_bands=(0, 0.5, 1))
    disc = Discriminator(cfg)
    assert len(disc.subs["stft_128"].bands) == 2
    out = disc(_audio())
    assert out.names == ["period_2", "stft_128"]
    assert len(out.features[1]) == 2 * LAYERS_PER_BAND
