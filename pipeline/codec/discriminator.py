"""Discriminators for adversarial codec training: multi-period (HiFi-GAN) and multi-scale STFT (EnCodec).

    disc = Discriminator(cfg.model)             # cfg.model: ModelConfig (disc_* fields)
    out = disc(audio)                           # audio [B, 1, T] -> DiscriminatorOutput
    out.logits[i], out.features[i]              # one entry per sub-discriminator

The period discriminators fold the waveform into [B, 1, T/p, p] and look along time with (k, 1)
kernels; the STFT discriminators look at the complex spectrogram (real and imaginary parts as two
channels) at several FFT sizes, each split into frequency bands (model.disc_stft_bands) with one
conv stack per band, as in descript-audio-codec's multi-band discriminator, so the quiet high
bands are judged on their own. Losses on these outputs live in pipeline/codec/losses.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from pipeline.config import ConfigError, ModelConfig

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
    """Conv2d layers with leaky ReLU, then an output conv (1 channel, or nn.Identity for a stack
    whose output is combined with others'): returns (logits, features)."""

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
    """Looks at one complex STFT, one conv stack per frequency band, their outputs joined along
    frequency under one output conv: [B, 1, T] -> (logits [B, 1, frames, bins'], features).

    `bands` are edges as fractions of the n_fft // 2 + 1 bins, from 0 to 1; (0, 1) is one stack."""

    def __init__(self, n_fft: int, channels: int = 32, dilations=(1, 2, 4), bands=(0.0, 1.0)):
        super().__init__()
        self.n_fft = n_fft
        n_bins = n_fft // 2 + 1
        edges = [round(b * n_bins) for b in bands]
        if any(lo >= hi for lo, hi in zip(edges, edges[1:])):
            raise ConfigError(f"model.disc_stft_bands: {list(bands)} leaves a band of the "
                              f"{n_fft}-point STFT ({n_bins} bins) without a bin; use fewer or "
                              "wider bands")
        self.band_bins = list(zip(edges, edges[1:]))
        self.bands = nn.ModuleList(ConvStack(self._band_layers(channels, dilations), nn.Identity())
                                   for _ in self.band_bins)
        self.output = wn_conv2d(channels, 1, (3, 3), padding=(1, 1))
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    @staticmethod
    def _band_layers(channels: int, dilations) -> list[nn.Module]:
        # padding 4 under the 9-wide stride-2 kernels: bins -> ceil(bins / 2), never below 1
        layers = [wn_conv2d(2, channels, (3, 9), padding=(1, 4))]
        layers += [wn_conv2d(channels, channels, (3, 9), stride=(1, 2), dilation=(d, 1),
                             padding=(d, 4)) for d in dilations]
        layers += [wn_conv2d(channels, channels, (3, 3), padding=(1, 1))]
        return layers

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        with torch.autocast(audio.device.type, enabled=False):  # FFTs in fp32
            spec = torch.stft(audio.squeeze(1).float(), self.n_fft, self.n_fft // 4,
                              window=self.window, normalized=True, return_complex=True,
                              pad_mode="constant")
        x = torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3)  # [B, 2, frames, bins]
        outputs, features = [], []
        for (lo, hi), stack in zip(self.band_bins, self.bands):
            out, band_features = stack(x[..., lo:hi])
            outputs.append(out)
            features += band_features
        return self.output(torch.cat(outputs, dim=-1)), features


class Discriminator(nn.Module):
    """All period and STFT discriminators: [B, 1, T] -> DiscriminatorOutput."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        subs = {f"period_{p}": PeriodDiscriminator(p, cfg.disc_channels) for p in cfg.disc_periods}
        subs |= {f"stft_{n}": STFTDiscriminator(n, cfg.disc_channels, bands=cfg.disc_stft_bands)
                 for n in cfg.disc_stft_windows}
        self.subs = nn.ModuleDict(subs)

    def forward(self, audio: torch.Tensor) -> DiscriminatorOutput:
        logits, features = [], []
        for sub in self.subs.values():
            lg, ft = sub(audio)
            logits.append(lg)
            features.append(ft)
        return DiscriminatorOutput(logits, features, list(self.subs))
