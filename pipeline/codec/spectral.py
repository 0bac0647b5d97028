"""Spectral building blocks in fp32: STFT magnitudes, mel filterbanks and log-mel spectrograms, for
the losses and the metrics alike (bf16 magnitudes and logs are too coarse for either)."""

from __future__ import annotations

import functools

import torch

POWER_FLOOR = 1e-10
"""Floor under |STFT|^2 before the square root: d sqrt(p)/dp is infinite at 0."""


def fp32_mono(x: torch.Tensor) -> torch.Tensor:
    """[B, 1, T] or [B, T] -> float32 [B, T]."""
    return (x.squeeze(1) if x.dim() == 3 else x).float()


def stft_magnitude(x: torch.Tensor, n_fft: int) -> torch.Tensor:
    """Magnitude spectrogram in fp32, hop n_fft/4: [B, 1, T] -> [B, n_fft/2 + 1, frames]."""
    with torch.autocast(x.device.type, enabled=False):
        x = fp32_mono(x)
        window = torch.hann_window(n_fft, device=x.device)
        # constant padding: reflect padding fails on clips shorter than n_fft / 2
        spec = torch.stft(x, n_fft, n_fft // 4, window=window, return_complex=True,
                          pad_mode="constant")
        return (spec.real.square() + spec.imag.square()).clamp(min=POWER_FLOOR).sqrt()


@functools.lru_cache(maxsize=32)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None) -> torch.Tensor:
    """Triangular HTK-mel filters [n_mels, n_fft/2 + 1] (fp32, CPU; cached)."""
    fmax = sample_rate / 2 if fmax is None else fmax

    def hz_to_mel(f):
        return 2595.0 * torch.log10(1.0 + f / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    bins_hz = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = mel_to_hz(torch.linspace(hz_to_mel(torch.tensor(fmin, dtype=torch.float64)),
                                     hz_to_mel(torch.tensor(fmax, dtype=torch.float64)), n_mels + 2))
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins_hz[None, :] - lower) / (center - lower)
    falling = (upper - bins_hz[None, :]) / (upper - center)
    return torch.minimum(rising, falling).clamp(min=0).float()


@functools.lru_cache(maxsize=64)
def mel_filterbank_on(device: torch.device, sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """mel_filterbank on `device`, copied there once (not at every loss call)."""
    return mel_filterbank(sample_rate, n_fft, n_mels).to(device)


def log_mel(x: torch.Tensor, sample_rate: int, n_fft: int, n_mels: int,
            floor: float = 1e-5) -> torch.Tensor:
    """log10 mel magnitudes in fp32: [B, 1, T] -> [B, n_mels, frames]."""
    with torch.autocast(x.device.type, enabled=False):
        fb = mel_filterbank_on(x.device, sample_rate, n_fft, n_mels)
        mel = fb @ stft_magnitude(x, n_fft)
        return mel.clamp(min=floor).log10()  # floor on the log's input: silence -> log10(floor)
