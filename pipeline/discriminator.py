"""Discriminators for adversarial codec training: multi-period (HiFi-GAN) and multi-scale STFT (EnCodec).

    disc = Discriminator(cfg.model)             # cfg.model: ModelConfig (disc_* fields)
    out = disc(audio)                           # audio [B, 1, T] -> DiscriminatorOutput
    out.logits[i], out.features[i]              # one entry per sub-discriminator

The period discriminators fold the waveform into [B, 1, T/p, p] and look along time with (k, 1)
kernels; the STFT discriminators look at the complex spectrogram (real and imaginary parts as two
channels) at several FFT sizes. Losses on these outputs live in pipeline/losses.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from pipeline.config import ModelConfig

LEAKY_SLOPE = 0.2


def wn_conv2d(*args, **kwargs) -> nn.Module:
    return weight_norm(nn.Conv2d(*args, **kwargs))


@dataclass
class DiscriminatorOutput:
    logits: list[torch.Tensor]
    """One logit map per sub-discriminator (shapes differ)."""
    features: list[list[torch.Tensor]]
    """Per sub-discriminator, the activations of each hidden layer (for feature matching)."""
    names: list[str]
    """Which sub-discriminator each entry came from, e.g. "period_2", "stft_1024"."""


class ConvStack(nn.Module):
    """Conv2d layers with leaky ReLU, then a 1-channel output conv: returns (logits, features)."""

    def __init__(self, layers: list[nn.Module], output: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.output = output

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = []
        for layer in self.layers:
            x = F.leaky_relu(layer(x), LEAKY_SLOPE)
            features.append(x)
        return self.output(x), features


class PeriodDiscriminator(nn.Module):
    """Looks at every p-th sample: [B, 1, T] -> (logits [B, 1, T', p], features)."""

    def __init__(self, period: int, channels: int = 32):
        super().__init__()
        self.period = period
        widths = [1, channels, 4 * channels, 16 * channels, 32 * channels, 32 * channels]
        layers = [wn_conv2d(cin, cout, (5, 1), stride=(3 if i < 4 else 1, 1), padding=(2, 0))
                  for i, (cin, cout) in enumerate(zip(widths, widths[1:]))]
        self.stack = ConvStack(layers, wn_conv2d(widths[-1], 1, (3, 1), padding=(1, 0)))

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        pad = -audio.shape[-1] % self.period
        x = F.pad(audio, (0, pad), mode="reflect" if pad < audio.shape[-1] else "constant")
        return self.stack(x.view(x.shape[0], 1, -1, self.period))


class STFTDiscriminator(nn.Module):
    """Looks at one complex STFT: [B, 1, T] -> (logits [B, 1, frames, bins'], features)."""

    def __init__(self, n_fft: int, channels: int = 32, dilations=(1, 2, 4)):
        super().__init__()
        self.n_fft = n_fft
        layers = [wn_conv2d(2, channels, (3, 9), padding=(1, 4))]
        layers += [wn_conv2d(channels, channels, (3, 9), stride=(1, 2), dilation=(d, 1),
                             padding=(d, 4)) for d in dilations]
        layers += [wn_conv2d(channels, channels, (3, 3), padding=(1, 1))]
        self.stack = ConvStack(layers, wn_conv2d(channels, 1, (3, 3), padding=(1, 1)))
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        with torch.autocast(audio.device.type, enabled=False):  # FFTs in fp32
            spec = torch.stft(audio.squeeze(1).float(), self.n_fft, self.n_fft // 4,
                              window=self.window, normalized=True, return_complex=True,
                              pad_mode="constant")
        x = torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3)  # [B, 2, frames, bins]
        return self.stack(x)


class Discriminator(nn.Module):
    """All period and STFT discriminators: [B, 1, T] -> DiscriminatorOutput."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        subs = {f"period_{p}": PeriodDiscriminator(p, cfg.disc_channels) for p in cfg.disc_periods}
        subs |= {f"stft_{n}": STFTDiscriminator(n, cfg.disc_channels) for n in cfg.disc_stft_windows}
        self.subs = nn.ModuleDict(subs)

    def forward(self, audio: torch.Tensor) -> DiscriminatorOutput:
        logits, features = [], []
        for sub in self.subs.values():
            lg, ft = sub(audio)
            logits.append(lg)
            features.append(ft)
        return DiscriminatorOutput(logits, features, list(self.subs))
