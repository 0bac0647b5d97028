"""Codec losses: waveform, multi-resolution STFT, multi-scale mel, VQ commitment and adversarial terms.

    result = generator_loss(out, audio, cfg, disc=disc, step=step)   # out: CodecOutput
    result.total.backward()                                         # sum of weight x term
    log(result.terms)                                               # every term by name, detached
    d = discriminator_loss(disc, audio, out.audio, cfg.loss)        # for the discriminator's step

Weights are data (cfg.loss.weights, keyed by term name); a term with weight 0 is still computed and
logged but does not reach `total`. Spectral and mel terms always run in fp32, whatever autocast
says, because bf16 magnitudes and logs are too coarse for a loss. No loss value is ever clamped:
floors sit only under the inputs of sqrt/log, so every term stays finite (with finite gradients)
on silence, full-scale square waves and over-range input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from pipeline.codec.spectral import fp32_mono, log_mel, stft_magnitude
from pipeline.config import Config, LossConfig

if TYPE_CHECKING:
    from pipeline.codec.discriminator import Discriminator
    from pipeline.codec.model import CodecOutput

SC_NOISE_FLOOR = 1e-4
"""Spectral convergence is ||ref - est|| / ||ref||, and ||ref|| is ~0 for a silent batch: 0/0 (NaN)
or x/0 (inf), and a tiny epsilon still gives ratios of 10^4 and more. So the denominator gets the
expected norm of a white-noise spectrogram at this amplitude (-80 dBFS) added: on silence the term
reads as the estimate's level relative to -80 dBFS (finite, moderate), while for speech, hundreds
of times louder, it is the usual spectral convergence."""


@dataclass
class LossResult:
    total: torch.Tensor
    """Scalar to back-propagate: sum of weight x term over terms with nonzero weight."""
    terms: dict[str, torch.Tensor]
    """Every computed term by name (detached scalars), including weight-0 ones."""


# ---------------------------------------------------------------------------------------------
# Reconstruction terms: each (ref [B, 1, T], est [B, 1, T]) -> fp32 scalar.

def stft_loss(ref: torch.Tensor, est: torch.Tensor, windows=(512, 1024, 2048)) -> torch.Tensor:
    """Multi-resolution STFT loss: mean over FFT sizes of spectral convergence + L1 log magnitude."""
    total = 0.0
    for n_fft in windows:
        ref_mag, est_mag = stft_magnitude(ref, n_fft), stft_magnitude(est, n_fft)
        # One ratio over the whole batch (as in Parallel WaveGAN), so a single silent clip does
        # not dominate; the floor covers an all-silent batch. E||STFT(noise)||^2 = sigma^2 x
        # sum(window^2) per bin, and sum(hann^2) = 3/8 n_fft.
        floor = SC_NOISE_FLOOR * math.sqrt(0.375 * n_fft * ref_mag.numel())
        convergence = torch.linalg.vector_norm(ref_mag - est_mag) / (
            torch.linalg.vector_norm(ref_mag) + floor)
        log_magnitude = F.l1_loss(est_mag.log(), ref_mag.log())  # magnitudes >= sqrt(spectral.POWER_FLOOR)
        total = total + convergence + log_magnitude
    return total / len(windows)


def mel_loss(ref: torch.Tensor, est: torch.Tensor, sample_rate: int,
             windows=(32, 64, 128, 256, 512, 1024, 2048), n_mels=(5, 10, 20, 40, 80, 160, 320),
             floor: float = 1e-5) -> torch.Tensor:
    """Multi-scale mel loss: sum over scales of L1 between log10 mel spectrograms."""
    total = 0.0
    for n_fft, bins in zip(windows, n_mels):
        total = total + F.l1_loss(log_mel(est, sample_rate, n_fft, bins, floor),
                                  log_mel(ref, sample_rate, n_fft, bins, floor))
    return total


# ---------------------------------------------------------------------------------------------
# Adversarial terms on DiscriminatorOutput-like objects (lists of logits / feature maps).

def _reduce(losses: list[torch.Tensor], reduction: str) -> torch.Tensor:
    """Sum (DAC: each part weighs as much as the weight says) or mean (v1.yaml) of scalar parts."""
    stacked = torch.stack(losses)
    return stacked.sum() if reduction == "sum" else stacked.mean()


def adversarial_generator_loss(fake_logits: list[torch.Tensor], kind: str = "lsgan",
                               reduction: str = "sum") -> torch.Tensor:
    """Generator side: push fake logits towards "real", over sub-discriminators.

    lsgan: (1 - D)^2. hinge: -D (EnCodec/audiocraft), which keeps pulling when D is already past 1;
    relu(1 - D), the discriminator's hinge, would stop there.
    """
    if kind == "hinge":
        losses = [-lg.mean() for lg in fake_logits]
    else:  # lsgan
        losses = [(1 - lg).square().mean() for lg in fake_logits]
    return _reduce(losses, reduction)


def adversarial_discriminator_loss(real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor],
                                   kind: str = "lsgan", reduction: str = "sum") -> torch.Tensor:
    """Discriminator side: real towards +1, fake towards -1 (hinge) or 0 (lsgan)."""
    losses = []
    for real, fake in zip(real_logits, fake_logits):
        if kind == "hinge":
            losses.append(F.relu(1 - real).mean() + F.relu(1 + fake).mean())
        else:
            losses.append((1 - real).square().mean() + fake.square().mean())
    return _reduce(losses, reduction)


def feature_matching_loss(real_features: list[list[torch.Tensor]],
                          fake_features: list[list[torch.Tensor]], reduction: str = "sum") -> torch.Tensor:
    """L1 between real (detached) and fake hidden activations, over every layer of every
    sub-discriminator (summed, or v1.yaml's mean)."""
    losses = [F.l1_loss(fake, real.detach())
              for real_maps, fake_maps in zip(real_features, fake_features)
              for real, fake in zip(real_maps, fake_maps)]
    return _reduce(losses, reduction)


# ---------------------------------------------------------------------------------------------
# What training calls.

def adversarial_active(cfg: LossConfig, step: int) -> bool:
    """Whether the adversarial terms (and the discriminator's updates) are on at `step`."""
    return cfg.adversarial and step >= cfg.adv_start_step


SNR_FLOOR = 1e-8
"""Per-sample energy added to both sides of the SNR loss's ratio: a silent clip reads as 0 dB
instead of log(0); far below any real signal (-80 dBFS), so speech is unaffected."""


def negative_snr_loss(target: torch.Tensor, est: torch.Tensor) -> torch.Tensor:
    """-SNR in dB, averaged over clips: [B, 1, T] -> scalar.

    Unlike MSE it is scale-invariant in its gradients (a clip at -30 dBFS pulls as hard as one at
    0 dBFS) and it cannot explode on loud or over-range input: it grows with the log of the error.
    """
    target32, est32 = fp32_mono(target), fp32_mono(est)
    floor = SNR_FLOOR * target32.shape[-1]
    err = (target32 - est32).pow(2).sum(-1) + floor
    sig = target32.pow(2).sum(-1) + floor
    return (10 * (torch.log10(err) - torch.log10(sig))).mean()


def level_loss(target: torch.Tensor, est: torch.Tensor) -> torch.Tensor:
    """|output level - input level| in dB (RMS over each clip), averaged over clips: -> scalar.

    A pure gain term. The SNR loss's optimum scales the output by its correlation with the input,
    so while a codec is still poor (correlation ~0.5) the SNR loss alone makes it ~6 dB too quiet:
    the old failure's symptom. This pulls the level back with a constant force (L1 in dB), which
    a codec whose output already matches the input's level does not feel.
    """
    target32, est32 = fp32_mono(target), fp32_mono(est)
    floor = SNR_FLOOR * target32.shape[-1]
    est_energy = est32.pow(2).sum(-1) + floor
    target_energy = target32.pow(2).sum(-1) + floor
    return (10 * (torch.log10(est_energy) - torch.log10(target_energy))).abs().mean()


def reconstruction_terms(target: torch.Tensor, est: torch.Tensor, cfg: LossConfig,
                         sample_rate: int) -> dict[str, torch.Tensor]:
    """l1, mse, snr, level, stft and mel terms between target and est ([B, 1, T] each)."""
    est32, target32 = est.float(), target.float()
    return {
        "l1": F.l1_loss(est32, target32),
        "mse": F.mse_loss(est32, target32),
        "snr": negative_snr_loss(target32, est32),
        "level": level_loss(target32, est32),
        "stft": stft_loss(target, est, cfg.stft_windows),
        "mel": mel_loss(target, est, sample_rate, cfg.mel_windows, cfg.mel_bins, cfg.mel_floor),
    }


def weighted_total(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Sum of weight x term over terms whose weight is nonzero (missing weight = 0)."""
    first = next(iter(terms.values()))
    parts = [weights[name] * value for name, value in terms.items() if weights.get(name, 0.0) != 0]
    return torch.stack(parts).sum() if parts else first.new_zeros(())


def generator_loss(out: CodecOutput, target: torch.Tensor, cfg: Config,
                   disc: Discriminator | None = None, step: int = 0) -> LossResult:
    """All codec loss terms for one batch: `out` a CodecOutput, `target` [B, 1, T].

    The adv and feat terms are present only when `disc` is given and
    adversarial_active(cfg.loss, step); evaluation can pass no discriminator.
    """
    terms = reconstruction_terms(target, out.audio, cfg.loss, cfg.model.sample_rate)
    terms.update({name: value.float() for name, value in out.losses.items()})
    if disc is not None and adversarial_active(cfg.loss, step):
        with torch.no_grad():
            real = disc(target)
        fake = disc(out.audio)
        terms["adv"] = adversarial_generator_loss(fake.logits, cfg.loss.adv_kind, cfg.loss.adv_reduction)
        terms["feat"] = feature_matching_loss(real.features, fake.features, cfg.loss.adv_reduction)
    total = weighted_total(terms, cfg.loss.weights)
    return LossResult(total, {name: value.detach() for name, value in terms.items()})


def discriminator_loss(disc: Discriminator, target: torch.Tensor, est: torch.Tensor,
                       cfg: LossConfig) -> LossResult:
    """The discriminator's objective on real `target` vs detached codec output `est` ([B, 1, T])."""
    real, fake = disc(target), disc(est.detach())
    total = adversarial_discriminator_loss(real.logits, fake.logits, cfg.adv_kind, cfg.adv_reduction)
    return LossResult(total, {"disc": total.detach()})
