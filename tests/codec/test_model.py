"""The codec model: shapes, encode/decode consistency, Snake or ELU, a wider decoder, no tanh by
default, bitrate, config checks.

    .venv/bin/pytest tests/codec/test_model.py -q
"""

import dataclasses

import pytest
import torch
import yaml
from torch import nn

from pipeline.config import ConfigError, ModelConfig, load_config
from pipeline.codec.model import Codec, CodecOutput, Snake

TINY = ModelConfig(channels=4, latent_dim=16, codebook_size=16, n_codebooks=4)


@pytest.fixture
def codec() -> Codec:
    torch.manual_seed(0)
    return Codec(TINY)


def test_decode_of_encode_has_input_shape_and_equals_eval_forward(codec):
    x = torch.randn(2, 1, 3 * 320) * 0.3
    codec.train()
    codec(x)  # one training call initialises the codebooks from data
    codec.eval()
    with torch.no_grad():
        out = codec(x)
        codes = codec.encode(x)
        decoded = codec.decode(codes)
    assert isinstance(out, CodecOutput)
    assert codes.dtype == torch.long and codes.shape == (2, 4, 3)
    assert decoded.shape == x.shape
    assert torch.equal(codes, out.codes)
    assert torch.equal(decoded, out.audio)


@pytest.mark.parametrize("length", [1, 321, 1001])
def test_output_length_equals_input_length(codec, length):
    x = torch.randn(1, 1, length) * 0.1
    codec.eval()
    with torch.no_grad():
        out = codec(x)
        decoded = codec.decode(codec.encode(x), length=length)
    assert out.audio.shape == x.shape
    assert out.codes.shape[-1] == -(-length // 320)
    assert torch.equal(decoded, out.audio)


def test_training_forward_reports_losses_and_passes_gradients_through_quantizer(codec):
    x = torch.randn(2, 1, 640) * 0.3
    out = codec(x, n_quantizers=4)
    assert set(out.losses) == {"vq/commit"} and out.losses["vq/commit"].dim() == 0
    (out.audio.square().mean() + out.losses["vq/commit"]).backward()
    first_conv = codec.encoder.net[0]
    assert first_conv.parametrizations.weight.original1.grad.abs().sum() > 0  # straight-through
    assert out.perplexity.shape == (4,)


def test_snake_at_alpha_one_is_x_plus_sin_squared_and_alpha_learns():
    snake = Snake(3)
    assert snake.alpha.shape == (1, 3, 1) and torch.equal(snake.alpha, torch.ones(1, 3, 1))
    x = torch.randn(2, 3, 10)
    y = snake(x)
    assert torch.allclose(y, x + torch.sin(x) ** 2)
    y.sum().backward()
    assert snake.alpha.grad.shape == (1, 3, 1) and (snake.alpha.grad != 0).all()


@pytest.mark.parametrize("name, kind, absent", [("snake", Snake, nn.ELU), ("elu", nn.ELU, Snake)])
def test_model_activation_picks_the_nonlinearity_everywhere(name, kind, absent):
    codec = Codec(dataclasses.replace(TINY, activation=name))
    assert any(isinstance(m, kind) for m in codec.modules())
    assert not any(isinstance(m, absent) for m in codec.modules())


def test_snake_adds_one_alpha_per_channel_to_the_elu_model():
    snake, elu = Codec(TINY), Codec(dataclasses.replace(TINY, activation="elu"))
    alphas = sum(m.alpha.numel() for m in snake.modules() if isinstance(m, Snake))
    n_weights = [sum(p.numel() for p in codec.parameters()) for codec in (snake, elu)]
    assert alphas > 0 and n_weights[0] == n_weights[1] + alphas


def _conv_widths(module: nn.Module) -> list[int]:
    convs = (nn.Conv1d, nn.ConvTranspose1d)
    return [m.out_channels for m in module.modules() if isinstance(m, convs)]


def test_decoder_channels_widen_only_the_decoder():
    torch.manual_seed(0)
    wide = Codec(dataclasses.replace(TINY, decoder_channels=6))
    n = len(TINY.strides)
    assert max(_conv_widths(wide.decoder)) == wide.decoder.net[0].out_channels == 6 * 2 ** n
    assert _conv_widths(wide.encoder) == _conv_widths(Codec(TINY).encoder)
    mirrored = Codec(dataclasses.replace(TINY, decoder_channels=TINY.channels))
    assert _conv_widths(mirrored.decoder) == _conv_widths(Codec(TINY).decoder)
    x = torch.randn(2, 1, 1001) * 0.3
    wide.train()
    wide(x)  # initialises the codebooks
    wide.eval()
    with torch.no_grad():
        assert wide.decode(wide.encode(x), length=1001).shape == x.shape
        assert wide(x).audio.shape == x.shape


def _set_output_bias(codec: Codec, value: float) -> None:
    final_conv = [m for m in codec.decoder.modules() if isinstance(m, nn.Conv1d)][-1]
    with torch.no_grad():
        final_conv.bias.fill_(value)


def test_no_tanh_by_default_so_output_can_exceed_one(codec):
    assert not any(isinstance(m, nn.Tanh) for m in codec.modules())
    _set_output_bias(codec, 2.0)
    codec.eval()
    with torch.no_grad():
        assert codec(torch.zeros(1, 1, 640)).audio.min() > 1.0


def test_final_tanh_when_switched_on():
    codec = Codec(dataclasses.replace(TINY, final_tanh=True))
    assert isinstance(list(codec.decoder.modules())[-1], nn.Tanh)
    _set_output_bias(codec, 2.0)
    codec.eval()
    with torch.no_grad():
        assert codec(torch.zeros(1, 1, 640)).audio.abs().max() < 1.0


def test_fresh_encoder_output_is_driven_by_speech_level_input():
    """Zero conv biases at init: at RMS ~0.1 the latent must come from the input, not from biases.

    With PyTorch's default biases the input-driven part of the latent was a fraction of the
    bias-driven part, and the tiny config sat 150-300+ steps at "output silence" (see
    zero_conv_biases)."""
    torch.manual_seed(0)
    codec = Codec(ModelConfig(channels=8, latent_dim=32))
    speech_level = 0.1 * torch.randn(1, 1, 3200)
    with torch.no_grad():
        from_input = codec.encoder(speech_level) - codec.encoder(torch.zeros_like(speech_level))
        at_rest = codec.encoder(torch.zeros_like(speech_level))
    assert from_input.norm() > 10 * at_rest.norm()


def test_bitrate():
    assert ModelConfig().hop_length == 320 and ModelConfig().frame_rate == 50
    assert ModelConfig().bitrate() == 4000.0
    assert ModelConfig().bitrate(4) == 2000.0
    codec = Codec(TINY)  # 50 frames/s x 4 levels x 4 bits
    assert codec.bitrate() == 800.0
    codec.eval()
    with torch.no_grad():
        out = codec(torch.zeros(1, 1, 640), n_quantizers=2)
    assert out.n_quantizers == 2 and out.codes.shape[1] == 2 and out.bitrate == 400.0


@pytest.mark.parametrize("override, key", [
    ({"codebook_size": 1000}, "model.codebook_size"),
    ({"strides": (3, 7)}, "model.strides"),
    ({"kernel_size": 4}, "model.kernel_size"),
    ({"quantizer_dropout": 1.5}, "model.quantizer_dropout"),
    ({"disc_stft_bands": (0.2, 1.0)}, "model.disc_stft_bands"),
    ({"disc_stft_bands": (0.0, 0.5, 0.4, 1.0)}, "model.disc_stft_bands"),
])
def test_model_config_checks(override, key):
    with pytest.raises(ConfigError, match=key):
        ModelConfig(**override)


def test_base_yaml_lists_every_model_default():
    cfg = load_config(["configs/base.yaml"])
    assert cfg.model == ModelConfig()
    with open("configs/base.yaml") as f:
        section = yaml.safe_load(f)["model"]
    assert set(section) == {f.name for f in dataclasses.fields(ModelConfig)}
