"""Audio I/O and the small signal steps every stage shares: decode, mono, resample, clip, trim, cut.

soundfile decodes (wav, flac, ogg/opus, mp3 through libsndfile), soxr resamples. Everything here
works on mono float32 numpy arrays of shape [T]. A long file need not fit in memory: `open_audio`
decodes it block by block, `resample_blocks` resamples the blocks as they come (the very samples
`resample` gives on the whole), and `LevelMeter`, `loud_span` and `segment_bounds` decide trimming
and cutting from running measurements, exactly as `trim_silence` and `cut_segments` do on a whole
array.

    with open_audio(path) as stream:                               # AudioError: the reason
        for block in resample_blocks(stream.blocks(), stream.sample_rate, 16000):
            ...                                                    # mono float32 [n]
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import soundfile as sf
import soxr

from pipeline.storage.containers import truncation
from pipeline.errors import TelucodecError

BLOCK_FRAMES = 1 << 16
"""Frames decoded at a time (64 Ki frames: 0.5 MB of stereo float32)."""
TRUNCATION_TOLERANCE = 4096
"""Frames a decoder may come up short of the header's count before the file counts as cut off
(room for encoder padding and an MP3 decoder's gapless trimming; a cut download misses far more)."""
UNKNOWN_FRAMES = 1 << 62
"""libsndfile reports about 2**63 frames when a header does not state the length."""


class AudioError(TelucodecError, ValueError):
    """A file that cannot be used as audio; the message is the reason, in a few words."""


@dataclass
class DecodedAudio:
    audio: np.ndarray
    """Mono float32 [T], as decoded (may exceed [-1, 1] for float files)."""
    sample_rate: int
    channels: int


class AudioStream:
    """An open audio file decoded block by block to mono float32, checked as it goes: NaN/Inf
    samples, decoder errors, no frames at all, and fewer frames than the header states (a cut-off
    FLAC or MP3) are AudioErrors."""

    def __init__(self, file: sf.SoundFile):
        self.file = file
        self.sample_rate, self.channels = file.samplerate, file.channels
        self.declared_frames = file.frames if 0 <= file.frames < UNKNOWN_FRAMES else None
        self.frames = 0
        """Frames decoded so far."""
        self.peak = 0.0
        """Largest absolute mono sample decoded so far."""

    def blocks(self, block_frames: int = BLOCK_FRAMES) -> Iterator[np.ndarray]:
        """The file's mono float32 blocks [n], in order; the checks run as they are read."""
        while len(block := self._read(block_frames)):
            if not np.isfinite(block).all():
                raise AudioError("contains NaN or Inf samples")
            self.frames += len(block)
            mono = block.mean(axis=1, dtype=np.float32)
            self.peak = max(self.peak, float(np.abs(mono).max()))
            yield mono
        if self.frames == 0:
            raise AudioError("empty (no audio frames)")
        if shortfall := self._shortfall():
            raise AudioError(shortfall)

    def _read(self, frames: int) -> np.ndarray:
        try:
            return self.file.read(frames, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, TypeError) as e:
            shortfall = self._shortfall() if self.frames else None
            raise AudioError(f"{shortfall} ({_first_line(e)})" if shortfall
                             else f"cannot decode ({_first_line(e)})") from None

    def _shortfall(self) -> str | None:
        """"truncated: ..." when fewer frames were decoded than the header states."""
        declared = self.declared_frames
        if declared is not None and self.frames + TRUNCATION_TOLERANCE < declared:
            return f"truncated: header says {declared} frames, decoded {self.frames}"
        return None

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "AudioStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_audio(path: str | Path) -> AudioStream:
    """Open a file for block decoding, after the cheap checks: it exists, holds bytes, and its
    container is not visibly cut off (`pipeline.storage.containers`)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise AudioError("file not found") from None
    if size == 0:
        raise AudioError("zero-length file")
    if reason := truncation(path):
        raise AudioError(reason)
    try:  # bytes, not str: soundfile encodes a str path strictly, failing on non-UTF-8 names
        return AudioStream(sf.SoundFile(os.fsencode(path)))
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(f"cannot decode ({_first_line(e)})") from None


def load_audio(path: str | Path) -> DecodedAudio:
    """Decode any soundfile-readable file whole to mono float32; AudioError for unusable files."""
    with open_audio(path) as stream:
        audio = np.concatenate(list(stream.blocks()))
        return DecodedAudio(audio, stream.sample_rate, stream.channels)


AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif")
"""File extensions read as audio when a folder is walked (prep's sources, `encode` of a folder)."""


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """[T] at sr_in -> [T'] at sr_out (soxr, high quality)."""
    if sr_in == sr_out:
        return audio
    return soxr.resample(audio, sr_in, sr_out, quality="HQ").astype(np.float32, copy=False)


def resample_blocks(blocks: Iterable[np.ndarray], sr_in: int, sr_out: int) -> Iterator[np.ndarray]:
    """Mono float32 blocks at sr_in -> blocks at sr_out; soxr's streaming resampler keeps its filter
    state across blocks, so the samples are those `resample` gives on the whole signal."""
    if sr_in == sr_out:
        yield from blocks
        return
    stream = soxr.ResampleStream(sr_in, sr_out, 1, dtype="float32", quality="HQ")
    for block in blocks:
        if len(out := stream.resample_chunk(block)):
            yield out
    yield stream.resample_chunk(np.zeros(0, np.float32), last=True)


def clip_to_unit_range(audio: np.ndarray) -> tuple[np.ndarray, int]:
    """Clip to [-1, 1]; returns (clipped audio, number of samples that were outside)."""
    outside = int(np.count_nonzero(np.abs(audio) > 1.0))
    return (np.clip(audio, -1.0, 1.0) if outside else audio), outside


class LevelMeter:
    """Running measurements of a mono stream fed block by block: its length, its energy and the RMS
    of each whole frame; what trimming and loudness need, without keeping the audio."""

    def __init__(self, frame: int):
        self.frame, self.length, self.energy = frame, 0, 0.0
        self._rms: list[np.ndarray] = []
        self._rest = np.zeros(0, np.float32)

    def add(self, block: np.ndarray) -> None:
        self.length += len(block)
        self.energy += float(np.sum(np.square(block, dtype=np.float64)))
        x = np.concatenate([self._rest, block]) if len(self._rest) else block
        n = len(x) // self.frame
        frames = x[: n * self.frame].reshape(n, self.frame)
        self._rms.append(np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1)))
        self._rest = x[n * self.frame:].copy()

    @property
    def frame_rms(self) -> np.ndarray:
        """RMS of every whole frame so far [frames] (a shorter last frame is left out)."""
        return np.concatenate(self._rms) if self._rms else np.zeros(0)

    def gain_to(self, target_db: float) -> float:
        """The factor that brings the whole stream to an RMS of `target_db` dBFS; 1 for silence."""
        rms = math.sqrt(self.energy / self.length) if self.length else 0.0
        return 1.0 if rms < 1e-8 else 10 ** (target_db / 20) / rms


def measure(audio: np.ndarray, frame: int) -> LevelMeter:
    """A LevelMeter fed the whole of `audio` [T]."""
    meter = LevelMeter(frame)
    meter.add(audio)
    return meter


def silence_frame(sr: int, frame_ms: float = 20.0) -> int:
    """Samples in one frame of the silence detector."""
    return max(1, int(sr * frame_ms / 1000))


def normalize_rms(audio: np.ndarray, target_db: float) -> np.ndarray:
    """Scale to an RMS level of `target_db` dBFS (silence stays silence)."""
    gain = measure(audio, len(audio) or 1).gain_to(target_db)
    return audio if gain == 1.0 else (audio * gain).astype(np.float32)


def loud_span(meter: LevelMeter, threshold_db: float = -40.0) -> tuple[int, int]:
    """(start, end) sample positions once leading and trailing frames quieter than `threshold_db`
    relative to the loudest frame are dropped; (0, 0) for digital silence."""
    rms = meter.frame_rms
    if len(rms) == 0:
        return 0, meter.length
    peak = rms.max()
    if peak <= 0:
        return 0, 0
    loud = np.flatnonzero(20 * np.log10(np.maximum(rms / peak, 1e-10)) > threshold_db)
    return int(loud[0]) * meter.frame, min(meter.length, (int(loud[-1]) + 1) * meter.frame)


def trim_silence(audio: np.ndarray, sr: int, threshold_db: float = -40.0, frame_ms: float = 20.0) -> np.ndarray:
    """Drop leading and trailing frames quieter than `threshold_db` relative to the peak frame."""
    start, end = loud_span(measure(audio, silence_frame(sr, frame_ms)), threshold_db)
    return audio[start:end]


def segment_bounds(length: int, sr: int, max_seconds: float, min_seconds: float) -> list[tuple[int, int]]:
    """(start, end) of the equal parts of at most `max_seconds` that `length` samples are cut into;
    parts under `min_seconds` are dropped."""
    max_len = int(round(max_seconds * sr))
    n = max(1, math.ceil(length / max_len))
    bounds = np.linspace(0, length, n + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b - a >= int(round(min_seconds * sr))]


def cut_segments(audio: np.ndarray, sr: int, max_seconds: float, min_seconds: float) -> list[np.ndarray]:
    """Cut [T] into equal parts of at most `max_seconds`; parts under `min_seconds` are dropped."""
    return [audio[a:b] for a, b in segment_bounds(len(audio), sr, max_seconds, min_seconds)]


def log_spectrogram(audio: np.ndarray, n_fft: int = 512, hop: int = 128) -> np.ndarray:
    """[T] -> power in dB [n_fft // 2 + 1, frames] (Hann window); what eval's PNGs and W&B's
    spectrogram images show."""
    x = np.asarray(audio, np.float32)
    x = np.pad(x, (0, max(0, n_fft - len(x))))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * np.hanning(n_fft)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    return 10 * np.log10(power.T + 1e-10)
