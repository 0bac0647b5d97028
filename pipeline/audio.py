"""Audio I/O and the small signal steps every stage shares: decode, mono, resample, clip, trim, cut.

soundfile decodes (wav, flac, ogg/opus, mp3 through libsndfile), soxr resamples. Everything here
works on mono float32 numpy arrays of shape [T].
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from pipeline.errors import TelucodecError


class AudioError(TelucodecError, ValueError):
    """A file that cannot be used as audio; the message is the reason, in a few words."""


@dataclass
class DecodedAudio:
    audio: np.ndarray
    """Mono float32 [T], as decoded (may exceed [-1, 1] for float files)."""
    sample_rate: int
    channels: int


def load_audio(path: str | Path) -> DecodedAudio:
    """Decode any soundfile-readable file to mono float32; AudioError for unusable files."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise AudioError("file not found") from None
    if size == 0:
        raise AudioError("zero-length file")
    check_wav_complete(path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(f"cannot decode ({_first_line(e)})") from None
    if data.shape[0] == 0:
        raise AudioError("empty (no audio frames)")
    if not np.isfinite(data).all():
        raise AudioError("contains NaN or Inf samples")
    return DecodedAudio(data.mean(axis=1, dtype=np.float32), sr, data.shape[1])


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def check_wav_complete(path: Path) -> None:
    """Raise AudioError if a RIFF/WAVE file's data chunk claims more bytes than the file holds.

    libsndfile quietly reads what is there, so a cut-off download would otherwise pass as audio.
    """
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return
        size = path.stat().st_size
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
            if chunk_id == b"data":
                if chunk_size != 0xFFFFFFFF and pos + 8 + chunk_size > size:
                    raise AudioError(f"truncated (header promises {chunk_size} bytes of audio, "
                                     f"file holds {size - pos - 8})")
                return
            pos += 8 + chunk_size + (chunk_size & 1)


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """[T] at sr_in -> [T'] at sr_out (soxr, high quality)."""
    if sr_in == sr_out:
        return audio
    return soxr.resample(audio, sr_in, sr_out, quality="HQ").astype(np.float32, copy=False)


def clip_to_unit_range(audio: np.ndarray) -> tuple[np.ndarray, int]:
    """Clip to [-1, 1]; returns (clipped audio, number of samples that were outside)."""
    outside = int(np.count_nonzero(np.abs(audio) > 1.0))
    return (np.clip(audio, -1.0, 1.0) if outside else audio), outside


def normalize_rms(audio: np.ndarray, target_db: float) -> np.ndarray:
    """Scale to an RMS level of `target_db` dBFS (silence stays silence)."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    if rms < 1e-8:
        return audio
    return (audio * (10 ** (target_db / 20) / rms)).astype(np.float32)


def trim_silence(audio: np.ndarray, sr: int, threshold_db: float = -40.0, frame_ms: float = 20.0) -> np.ndarray:
    """Drop leading and trailing frames quieter than `threshold_db` relative to the peak frame."""
    frame = max(1, int(sr * frame_ms / 1000))
    n = len(audio) // frame
    if n == 0:
        return audio
    frames = audio[: n * frame].reshape(n, frame)
    rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))
    peak = rms.max()
    if peak <= 0:
        return audio[:0]
    loud = np.flatnonzero(20 * np.log10(np.maximum(rms / peak, 1e-10)) > threshold_db)
    return audio[loud[0] * frame: min(len(audio), (loud[-1] + 1) * frame)]


def cut_segments(audio: np.ndarray, sr: int, max_seconds: float, min_seconds: float) -> list[np.ndarray]:
    """Cut [T] into equal parts of at most `max_seconds`; parts under `min_seconds` are dropped."""
    max_len = int(round(max_seconds * sr))
    n = max(1, math.ceil(len(audio) / max_len))
    bounds = np.linspace(0, len(audio), n + 1).round().astype(int)
    parts = [audio[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    return [p for p in parts if len(p) >= int(round(min_seconds * sr))]


def log_spectrogram(audio: np.ndarray, n_fft: int = 512, hop: int = 128) -> np.ndarray:
    """[T] -> power in dB [n_fft // 2 + 1, frames] (Hann window); what eval's PNGs and W&B's
    spectrogram images show."""
    x = np.asarray(audio, np.float32)
    x = np.pad(x, (0, max(0, n_fft - len(x))))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * np.hanning(n_fft)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    return 10 * np.log10(power.T + 1e-10)
