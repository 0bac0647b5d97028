"""The telucodec codec: a SEANet-style convolutional encoder, residual VQ and decoder.

    codec = Codec(cfg.model)                    # cfg.model: ModelConfig
    out = codec(audio)                          # audio [B, 1, T] -> CodecOutput
    out.audio, out.codes, out.losses            # [B, 1, T], [B, n_q, T / hop], {"vq/commit": ...}
    codes = codec.encode(audio)                 # [B, n_q, frames] long
    audio = codec.decode(codes, length=T)       # [B, 1, T]; equals out.audio in eval mode

Blocks compose as ResidualUnit -> EncoderBlock -> Encoder and DecoderBlock -> Decoder (after
descript-audio-codec). Strides (2, 4, 5, 8) give a hop of 320 samples: 50 frames/s at 16 kHz, and
with 8 codebooks of 1024 entries, 4 kbps. The nonlinearity is Snake (model.activation; elu is v1.yaml's).
The decoder mirrors the encoder unless model.decoder_channels widens it, and ends in a plain conv:
no tanh unless model.final_tanh, so level errors show in the losses instead of being squashed away.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from pipeline.codec.quantizer import ResidualVQ, codebook_perplexity
from pipeline.config import ModelConfig

def wn_conv1d(*args, **kwargs) -> nn.Module:
    return weight_norm(nn.Conv1d(*args, **kwargs))


def wn_conv_transpose1d(*args, **kwargs) -> nn.Module:
    return weight_norm(nn.ConvTranspose1d(*args, **kwargs))


class Snake(nn.Module):
    """x + sin^2(alpha x) / alpha with a learned alpha per channel: [B, C, L] -> [B, C, L].

    A periodic inductive bias for pitched audio, which ELU lacks (BigVGAN, DAC)."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.sin(self.alpha * x).square() / (self.alpha + 1e-9)


def activation(name: str, channels: int) -> nn.Module:
    """The model's nonlinearity by name (model.activation): snake (per-channel) or elu."""
    if name == "snake":
        return Snake(channels)
    if name == "elu":
        return nn.ELU()
    raise ValueError(f"unknown activation {name!r} (snake or elu)")


class ResidualUnit(nn.Module):
    """act -> dilated conv -> act -> 1x1 conv, added to the input: [B, C, L] -> [B, C, L]."""

    def __init__(self, channels: int, dilation: int, kernel_size: int = 7, act: str = "elu"):
        super().__init__()
        self.block = nn.Sequential(
            activation(act, channels),
            wn_conv1d(channels, channels, kernel_size, dilation=dilation,
                      padding=dilation * (kernel_size - 1) // 2),
            activation(act, channels),
            wn_conv1d(channels, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class EncoderBlock(nn.Module):
    """Residual units, then a strided conv: [B, C_in, L] -> [B, C_out, L / stride]."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dilations=(1, 3, 9),
                 kernel_size: int = 7, act: str = "elu"):
        super().__init__()
        self.block = nn.Sequential(
            *(ResidualUnit(in_channels, d, kernel_size, act) for d in dilations),
            activation(act, in_channels),
            # kernel 2*stride, padding ceil(stride/2): L -> L/stride exactly, odd strides too
            wn_conv1d(in_channels, out_channels, 2 * stride, stride=stride,
                      padding=(stride + 1) // 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DecoderBlock(nn.Module):
    """A transposed conv, then residual units: [B, C_in, L] -> [B, C_out, L * stride]."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dilations=(1, 3, 9),
                 kernel_size: int = 7, act: str = "elu"):
        super().__init__()
        self.block = nn.Sequential(
            activation(act, in_channels),
            wn_conv_transpose1d(in_channels, out_channels, 2 * stride, stride=stride,
                                padding=(stride + 1) // 2, output_padding=stride % 2),
            *(ResidualUnit(out_channels, d, kernel_size, act) for d in dilations),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Encoder(nn.Module):
    """Audio to latent frames: [B, 1, T] -> [B, latent_dim, T / hop] (T a multiple of the hop)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        k, c = cfg.kernel_size, cfg.channels
        blocks = [EncoderBlock(c * 2 ** i, c * 2 ** (i + 1), s, cfg.dilations, k, cfg.activation)
                  for i, s in enumerate(cfg.strides)]
        top = c * 2 ** len(cfg.strides)
        self.net = nn.Sequential(
            wn_conv1d(1, c, k, padding=k // 2),
            *blocks,
            activation(cfg.activation, top),
            wn_conv1d(top, cfg.latent_dim, 3, padding=1),
        )

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.net(audio)


class Decoder(nn.Module):
    """Latent frames to audio: [B, latent_dim, F] -> [B, 1, F * hop]; its widths halve from
    decoder_channels x 2^len(strides) after the latent to decoder_channels (default: channels)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        k, n = cfg.kernel_size, len(cfg.strides)
        c = cfg.channels if cfg.decoder_channels is None else cfg.decoder_channels
        blocks = [DecoderBlock(c * 2 ** (n - i), c * 2 ** (n - i - 1), s, cfg.dilations, k,
                               cfg.activation)
                  for i, s in enumerate(reversed(cfg.strides))]
        self.net = nn.Sequential(
            wn_conv1d(cfg.latent_dim, c * 2 ** n, k, padding=k // 2),
            *blocks,
            activation(cfg.activation, c),
            wn_conv1d(c, 1, k, padding=k // 2),
            *([nn.Tanh()] if cfg.final_tanh else []),
        )

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.net(latent)


def zero_conv_biases(module: nn.Module) -> None:
    """Start every conv bias at 0 instead of PyTorch's uniform(+-1/sqrt(fan_in)).

    Speech arrives at an RMS of about 0.05-0.2; the input conv's default biases (up to +-0.38 for
    its 7 taps) are larger than its input-driven outputs, and so on down the network: at
    initialisation the decoder's output barely depends on the input. Training then sat at the
    "output silence" minimum of the SNR loss for 150 to over 300 steps before it found any
    correlation (measured on configs/tiny.yaml, with ELU); with zero biases the network starts as a
    near-linear function of its input (ELU and Snake are both close to x around 0) and leaves that
    plateau in ~50.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)) and m.bias is not None:
            nn.init.zeros_(m.bias)


@dataclass(frozen=True)
class ContextFrames:
    encoder: int
    """Frames of audio either side of a frame that can change its code."""
    decoder: int
    """Code frames either side of a frame's audio that can change that audio."""


def conv_reach(net: nn.Module, input_unit: int) -> tuple[int, int]:
    """(left, right) audio samples an output position of a conv stack [B, C, L] can see.

    Walks the stack's convs in order (a residual branch adds at most its own convs' reach, so the
    sum is an upper bound); positions are in audio samples, `input_unit` samples per input element
    (1 for audio, hop for code frames). Pointwise layers (Snake, ELU, 1x1 convs) reach nothing.
    """
    left = right = 0
    unit = float(input_unit)
    for m in net.modules():
        if isinstance(m, nn.ConvTranspose1d):  # output o reads inputs i with i*s in [o+p-(k-1)d, o+p]
            unit /= m.stride[0]
            left += (m.dilation[0] * (m.kernel_size[0] - 1) - m.padding[0]) * unit
            right += m.padding[0] * unit
        elif isinstance(m, nn.Conv1d):  # output o reads inputs [o*s - p, o*s - p + (k-1)d]
            left += m.padding[0] * unit
            right += (m.dilation[0] * (m.kernel_size[0] - 1) - m.padding[0]) * unit
            unit *= m.stride[0]
    return int(np.ceil(left)), int(np.ceil(right))


@dataclass
class CodecOutput:
    audio: torch.Tensor
    """[B, 1, T] reconstruction, the length of the input."""
    codes: torch.Tensor
    """[B, n_q, frames] long codes of the levels used."""
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    """Model-side loss terms by name, e.g. {"vq/commit": scalar}."""
    bitrate: float = 0.0
    """Bits per second of the codes actually used (n_q levels)."""
    n_quantizers: int = 0
    """Levels used (fewer than model.n_codebooks under quantizer dropout or when asked)."""
    codebook_size: int = 0
    """Entries per codebook (for perplexity)."""

    @property
    def perplexity(self) -> torch.Tensor:
        """[n_q] code-use perplexity of each level in this batch (computed when asked: a histogram
        per level, not something every training step should pay for)."""
        return codebook_perplexity(self.codes, self.codebook_size)


class Codec(nn.Module):
    """Encoder -> residual VQ -> decoder: [B, 1, T] -> CodecOutput."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quantizer = ResidualVQ(cfg)
        self.decoder = Decoder(cfg)
        zero_conv_biases(self)

    @property
    def hop_length(self) -> int:
        return self.cfg.hop_length

    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    def bitrate(self, n_quantizers: int | None = None) -> float:
        """Bits per second with `n_quantizers` levels (all by default)."""
        return self.cfg.bitrate(n_quantizers)

    def forward(self, audio: torch.Tensor, n_quantizers: int | None = None) -> CodecOutput:
        """[B, 1, T] -> CodecOutput; training mode may use fewer levels (quantizer dropout)."""
        q = self.quantizer(self.latents(audio), n_quantizers)
        decoded = self.decoder(q.quantized)[..., :audio.shape[-1]]
        return CodecOutput(audio=decoded, codes=q.codes, losses={"vq/commit": q.commit_loss},
                           bitrate=self.bitrate(q.n_quantizers), n_quantizers=q.n_quantizers,
                           codebook_size=self.cfg.codebook_size)

    def latents(self, audio: torch.Tensor) -> torch.Tensor:
        """[B, 1, T] -> the encoder's output [B, D, ceil(T / hop)], before quantisation."""
        return self.encoder(self._pad_to_hop(audio))

    def encode(self, audio: torch.Tensor, n_quantizers: int | None = None) -> torch.Tensor:
        """[B, 1, T] -> codes [B, n_q, ceil(T / hop)] (long)."""
        return self.quantizer.encode(self.latents(audio), n_quantizers)

    def decode(self, codes: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """codes [B, n_q, F] -> audio [B, 1, F * hop], cropped to `length` samples if given."""
        audio = self.decoder(self.quantizer.decode(codes))
        return audio if length is None else audio[..., :length]

    @torch.no_grad()
    def reconstruct(self, audio: np.ndarray) -> CodecOutput:
        """One clip [T] (float32) through the codec in eval mode, on the model's device: no EMA
        codebook update, no quantizer dropout; the training mode is restored after."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        try:
            return self(torch.from_numpy(audio).to(device)[None, None])
        finally:
            self.train(was_training)

    def context_frames(self) -> "ContextFrames":
        """Frames of context either side that make a chunk's codes (encoder) or audio (decoder)
        equal the whole file's: what chunked coding of long files overlaps by."""
        hop = self.hop_length
        enc_left, enc_right = conv_reach(self.encoder, input_unit=1)
        dec_left, dec_right = conv_reach(self.decoder, input_unit=hop)
        return ContextFrames(encoder=-(-max(enc_left, enc_right) // hop),
                             decoder=-(-max(dec_left, dec_right) // hop))

    def _pad_to_hop(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.dim() != 3 or audio.shape[1] != 1:
            raise ValueError(f"expected audio [B, 1, T], got {tuple(audio.shape)}")
        return F.pad(audio, (0, -audio.shape[-1] % self.hop_length))
