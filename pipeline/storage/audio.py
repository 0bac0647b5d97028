"""Audio I/O and the small signal steps every stage shares: decode, mono, resample, clip, trim, cut.

soundfile (libsndfile) decodes wav, flac, ogg/opus, mp3 and aiff; PyAV (FFmpeg, bundled in its
wheels) decodes what libsndfile cannot: m4a/aac/mp4, webm, and anything soundfile refuses. soxr
resamples. Everything here works on mono float32 numpy arrays of shape [T]. A long file need not fit
in memory: `open_audio` decodes it block by block, `resample_blocks` resamples the blocks as they
come (the very samples `resample` gives on the whole), and `LevelMeter`, `loud_span` and
`segment_bounds` decide trimming and cutting from running measurements, exactly as `trim_silence`
and `cut_segments` do on a whole array.

    with open_audio(path) as stream:                               # AudioError: the reason
        for block in resample_blocks(stream.blocks(), stream.sample_rate, 16000):
            ...                                                    # mono float32 [n]
    open_audio(fileobj, name="x.m4a")                              # any seekable binary file
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

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
INTEGER_SUBTYPES = frozenset({"PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32", "ALAW", "ULAW"})
"""libsndfile subtypes that hold integers: decoded, never NaN or Inf."""
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
    FLAC, MP3 or m4a) are AudioErrors."""

    def __init__(self, file: sf.SoundFile | None, sample_rate: int = 0, channels: int = 0,
                 declared_frames: int | None = None):
        self.file = file
        if file is not None:
            sample_rate, channels = file.samplerate, file.channels
            declared_frames = file.frames if 0 <= file.frames < UNKNOWN_FRAMES else None
        self.sample_rate, self.channels, self.declared_frames = sample_rate, channels, declared_frames
        self.frames = 0
        """Frames decoded so far."""
        self.peak = 0.0
        """Largest absolute mono sample decoded so far."""

    def blocks(self, block_frames: int = BLOCK_FRAMES) -> Iterator[np.ndarray]:
        """The file's mono float32 blocks [n], in order; the checks run as they are read."""
        integers = self.file is not None and self.file.subtype in INTEGER_SUBTYPES  # no NaN to look for
        while len(block := self._read(block_frames)):
            if not integers and not np.isfinite(block).all():
                raise AudioError("contains NaN or Inf samples")
            self.frames += len(block)
            mono = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32)
            self.peak = max(self.peak, float(mono.max()), -float(mono.min()))
            yield mono
        if self.frames == 0:
            raise AudioError("empty (no audio frames)")
        if shortfall := self._shortfall():
            raise AudioError(shortfall)

    def _read(self, frames: int) -> np.ndarray:
        """Up to `frames` frames [n, channels]; none at the end."""
        try:
            return self.file.read(frames, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, TypeError) as e:
            raise self._decode_error(e) from None

    def _decode_error(self, e: Exception) -> AudioError:
        shortfall = self._shortfall() if self.frames else None
        return AudioError(f"{shortfall} ({_first_line(e)})" if shortfall else f"cannot decode ({_first_line(e)})")

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


class FFmpegStream(AudioStream):
    """The same stream decoded by FFmpeg through PyAV: m4a/aac/mp4, webm and whatever libsndfile
    cannot read. The declared length is the container's duration for the audio stream."""

    def __init__(self, source: bytes | BinaryIO):
        import av

        source = os.fsdecode(source) if isinstance(source, bytes) else source
        try:
            self.container = av.open(source, mode="r", metadata_errors="ignore")
        except (av.FFmpegError, ValueError, OSError) as e:
            raise AudioError(f"cannot decode ({_av_reason(e)})") from None
        if not self.container.streams.audio:
            self.container.close()
            raise AudioError("no audio stream in the file")
        self.stream = self.container.streams.audio[0]
        rate = self.stream.codec_context.sample_rate or self.stream.sample_rate
        if not rate:
            self.container.close()
            raise AudioError("cannot decode (the audio stream has no sample rate)")
        declared = None
        if self.stream.duration and self.stream.time_base:
            declared = int(round(float(self.stream.duration * self.stream.time_base) * rate))
        super().__init__(None, rate, self.stream.codec_context.channels, declared)
        self._frames = self._decoded()
        self._held = np.zeros((0, max(1, self.channels)), np.float32)

    def _decoded(self) -> Iterator[np.ndarray]:
        import av

        resampler = av.AudioResampler(format="fltp")  # planar float32, the stream's own layout and rate
        decoded = 0
        try:
            for frame in self.container.decode(self.stream):
                for out in resampler.resample(frame):
                    decoded += out.samples
                    yield out.to_ndarray().T
        except av.FFmpegError as e:  # a cut file often ends in a decoder error: say how far it got
            declared = self.declared_frames
            if declared is not None and decoded + TRUNCATION_TOLERANCE < declared:
                raise AudioError(f"truncated: header says {declared} frames, decoded {decoded} "
                                 f"({_av_reason(e)})") from None
            raise AudioError(f"cannot decode ({_av_reason(e)})") from None

    def _read(self, frames: int) -> np.ndarray:
        parts, have = [self._held], len(self._held)
        while have < frames and (more := next(self._frames, None)) is not None:
            parts.append(more.astype(np.float32, copy=False))
            have += len(more)
        block = np.concatenate(parts) if len(parts) > 1 else parts[0]
        self._held = block[frames:]
        return block[:frames]

    def close(self) -> None:
        self.container.close()


def open_audio(source: str | Path | BinaryIO, name: str = "") -> AudioStream:
    """Open a file (a path, or a seekable binary file object named `name`) for block decoding, after
    the cheap checks: it holds bytes, and its container is not visibly cut off
    (`pipeline.storage.containers`). soundfile decodes what it can; FFMPEG_EXTENSIONS, and anything
    libsndfile does not recognise, go to FFmpeg."""
    if not isinstance(source, (str, Path)):
        return _open_stream(source, source, name)
    path = Path(source)
    try:
        with open(path, "rb") as f:  # bytes, not str, for libsndfile: it encodes a str path strictly
            return _open_stream(f, os.fsencode(path), path.name)
    except FileNotFoundError:
        raise AudioError("file not found") from None
    except IsADirectoryError:
        raise AudioError("a folder, not a file") from None


def _open_stream(f: BinaryIO, source: bytes | BinaryIO, name: str) -> AudioStream:
    """The checks on `f`, then a decoder on `source` (the same file: its path, or `f` itself)."""
    if f.seek(0, 2) == 0:
        raise AudioError("zero-length file")
    f.seek(0)
    if reason := truncation(f):
        raise AudioError(reason)
    if Path(name).suffix.lower() in FFMPEG_EXTENSIONS:
        return FFmpegStream(source)
    try:
        return AudioStream(sf.SoundFile(source))
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        if "recogni" not in str(e).lower():  # "Format not recognised": FFmpeg may know it
            raise AudioError(f"cannot decode ({_first_line(e)})") from None
    if not isinstance(source, bytes):
        source.seek(0)
    return FFmpegStream(source)


def load_audio(source: str | Path | BinaryIO, name: str = "") -> DecodedAudio:
    """Decode any file `open_audio` takes whole to mono float32; AudioError for unusable files."""
    with open_audio(source, name) as stream:
        audio = np.concatenate(list(stream.blocks()))
        return DecodedAudio(audio, stream.sample_rate, stream.channels)


FFMPEG_EXTENSIONS = (".m4a", ".aac", ".mp4", ".webm", ".weba", ".mka", ".wma", ".amr", ".3gp")
"""Decoded by FFmpeg (PyAV) rather than libsndfile."""
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif") + FFMPEG_EXTENSIONS
"""File extensions read as audio when a folder is walked (prep's sources, `encode` of a folder)."""


def _av_reason(e: Exception) -> str:
    """FFmpeg's words for an error, without the file name it appends."""
    return getattr(e, "strerror", None) or _first_line(e)


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
    if len(audio) == 0 or (audio.max() <= 1.0 and audio.min() >= -1.0):  # the usual case: two passes, no copies
        return audio, 0
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
        x = np.concatenate([self._rest, block]) if len(self._rest) else block
        squares = np.square(x, dtype=np.float64)  # once, for the energy and the frames alike
        self.energy += float(squares[len(self._rest):].sum())
        n = len(x) // self.frame
        self._rms.append(np.sqrt(squares[: n * self.frame].reshape(n, self.frame).sum(axis=1) / self.frame))
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
