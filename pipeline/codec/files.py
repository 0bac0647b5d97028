"""Audio files to .tcq files and back, streamed: read, resampled, coded and written in blocks
(pipeline/codec/chunked.py codes in chunks), so a file of any length codes in bounded memory.

    result = encode_file(trained, "talk.flac", "talk.tcq", n_q=4)   # CodingResult: seconds, bytes, kbps
    result = decode_file(trained, "talk.tcq", "talk.wav")           # back at the source's rate and channels
    pairs = mirror_tree("in/", "out/", AUDIO_EXTENSIONS, ".tcq")    # [(in/a/b.wav, out/a/b.tcq), ...]
    encode_file(trained, "-", "-")                                  # stdin -> stdout
    decode_file(trained, "-", "-", stdout_format="flac")            # stdout has no extension to say it

Stereo and multichannel input is coded as one mono mix (the model is mono); the channel count and
rate are recorded in the .tcq header and decode writes that many identical channels at that rate,
cut to the original length. Outputs are written to a temporary name beside the target and renamed
into place, so a failed run never leaves half a file under the real name.

"-" as the source is stdin, as the target stdout. Audio from stdin is first copied whole into a
temporary file (decoders seek and the container checks need the size; a pipe allows neither), so
it costs disk space in TMPDIR the size of the input, not memory; a .tcq from stdin is read into
memory, as a .tcq file is (it holds only codes). Output for stdout is written to a temporary file
and then copied out (libsndfile seeks back to finish a WAV or FLAC header).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import soundfile as sf

from pipeline.storage.audio import AUDIO_EXTENSIONS, AudioError, clip_to_unit_range, open_audio, resample_blocks
from pipeline.codec.bitstream import BitstreamError, read_bitstream, write_bitstream
from pipeline.codec.chunked import decode_stream, encode_stream
from pipeline.errors import TelucodecError
from pipeline.codec.trained import TrainedCodec, check_bitstream_fits

OUTPUT_FORMATS = {".wav": ("WAV", "FLOAT"), ".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS")}
"""Output extension -> (soundfile format, subtype). WAV keeps the decoder's float output exactly,
peaks above 1 included; FLAC and Ogg Vorbis are clipped to [-1, 1]."""
STDIO = "-"
"""The file name that means stdin as a source and stdout as a target."""
COPY_BLOCK = 1 << 20
"""Bytes copied at a time between stdin/stdout and their temporary files."""


class OutputExistsError(TelucodecError, FileExistsError):
    """An output that is already there; the caller decides whether to overwrite."""


@dataclass
class CodingResult:
    input: str
    output: str
    seconds: float
    """Duration of the audio (the source's)."""
    bytes: int
    """Size of the .tcq file (read or written)."""
    n_codebooks: int
    sample_rate: int
    """Rate of the audio read (encode) or written (decode)."""
    channels: int
    clipped: int = 0
    """Mono samples clipped to [-1, 1]: of the input (encode) or for a FLAC/Vorbis output (decode)."""

    @property
    def kbps(self) -> float:
        return self.bytes * 8 / self.seconds / 1000 if self.seconds > 0 else 0.0


def is_stdio(path: str | Path) -> bool:
    return str(path) == STDIO


def input_name(path: str | Path) -> str:
    """How messages name a source: "stdin" for "-"."""
    return "stdin" if is_stdio(path) else str(path)


def output_name(path: str | Path) -> str:
    """How messages name a target: "stdout" for "-"."""
    return "stdout" if is_stdio(path) else str(path)


def output_format(path: str | Path, stdout_format: str = "wav") -> tuple[str, str]:
    """(format, subtype) the output's extension names, or for stdout (no name to tell it by)
    `stdout_format` ("wav", "flac" or "ogg"); AudioError for any other extension."""
    ext = f".{stdout_format}" if is_stdio(path) else Path(path).suffix.lower()
    if ext not in OUTPUT_FORMATS:
        raise AudioError(f"{path}: cannot tell the output format from {ext or 'no extension'!r} "
                         f"(use {', '.join(OUTPUT_FORMATS)})")
    return OUTPUT_FORMATS[ext]


def check_target(path: str | Path, force: bool) -> None:
    """Before any work: the output's folder exists, and the output does not unless `force`."""
    if is_stdio(path):
        return
    if not force and Path(path).exists():
        raise OutputExistsError(f"{path} exists already (use --force to overwrite it)")
    if not Path(path).parent.is_dir():
        raise AudioError(f"{path}: cannot write (no folder {Path(path).parent})")


@contextmanager
def named(path: str | Path):
    """AudioErrors inside name the file (pipeline.storage.audio's say only the reason)."""
    try:
        yield
    except AudioError as e:
        hint = ""
        if path == "stdin" and "header promises" in str(e):
            hint = ("; a WAV streamed into a pipe (by sox, ffmpeg, ...) carries a placeholder length: "
                    "pipe FLAC instead (sox IN.wav -t flac - | telucodec encode - OUT.tcq ...) or give the file")
        raise AudioError(f"{path}: {e}{hint}") from None


class ClippedBlocks:
    """Blocks clipped to [-1, 1], counting samples and the samples that were outside."""

    def __init__(self, blocks: Iterable[np.ndarray]):
        self.source, self.samples, self.clipped = blocks, 0, 0

    def __iter__(self) -> Iterator[np.ndarray]:
        for block in self.source:
            block, outside = clip_to_unit_range(block)
            self.samples, self.clipped = self.samples + len(block), self.clipped + outside
            yield block


def check_bitstream_target(source: str | Path, target: str | Path) -> None:
    """An encode's output must not be its input, a folder or a name that says audio (AudioError)."""
    if is_stdio(target):
        return
    out = Path(target)
    if out.is_dir():
        raise AudioError(f"{target} is a folder: name the .tcq file (e.g. {out / Path(str(source)).with_suffix('.tcq').name}),"
                         " or give a folder as the input too to encode every file in it")
    if out.suffix.lower() in AUDIO_EXTENSIONS:
        raise AudioError(f"{target}: encode writes a .tcq bitstream, not audio; name it {out.with_suffix('.tcq')}")
    if not is_stdio(source) and out.exists() and out.resolve() == Path(source).resolve():
        raise AudioError(f"{target} is the input itself: name another output")


def encode_file(trained: TrainedCodec, source: str | Path, target: str | Path, n_q: int | None = None,
                force: bool = False) -> CodingResult:
    """Audio file -> .tcq file (version 2) with n_q codebooks (all by default); "-" is stdin or stdout."""
    check_bitstream_target(source, target)
    check_target(target, force)
    n_q = trained.cfg.n_codebooks if n_q is None else n_q
    with named(input_name(source)), local_input(source) as path, open_audio(path) as stream:
        blocks = ClippedBlocks(resample_blocks(stream.blocks(), stream.sample_rate, trained.sample_rate))
        chunks = list(encode_stream(trained.codec, blocks, n_q, trained.plan))
    data = write_bitstream(np.concatenate(chunks, axis=1), trained.sample_rate, blocks.samples,
                           trained.cfg.codebook_bits, fingerprint=trained.fingerprint,
                           source_rate=stream.sample_rate, channels=stream.channels, source_frames=stream.frames)
    write_output(target, lambda tmp: Path(tmp).write_bytes(data))
    return CodingResult(str(source), str(target), stream.frames / stream.sample_rate, len(data), n_q,
                        stream.sample_rate, stream.channels, blocks.clipped)


@contextmanager
def local_input(source: str | Path) -> Iterator[Path]:
    """The path to decode `source` from: itself, or for "-" a temporary file holding all of stdin.
    Decoders seek and the container checks need the size, which a pipe allows neither; a file on
    disk, unlike a BytesIO, keeps memory bounded however long the input."""
    if not is_stdio(source):
        yield Path(source)
        return
    with tempfile.TemporaryDirectory(prefix="telucodec-stdin-") as tmp:
        path = Path(tmp, "stdin")
        try:
            with open(path, "wb") as copy:
                shutil.copyfileobj(sys.stdin.buffer, copy, COPY_BLOCK)
        except OSError as e:
            raise AudioError(f"cannot copy it to a temporary file in {tmp} ({e.strerror or e})") from None
        yield path


def read_tcq(path: str | Path):
    """Read and parse a .tcq file ("-": stdin); BitstreamError naming the file when it is not one of ours."""
    name = input_name(path)
    try:
        data = sys.stdin.buffer.read() if is_stdio(path) else Path(path).read_bytes()
    except OSError as e:
        raise BitstreamError(f"{name}: cannot read ({e.strerror})") from None
    try:
        return read_bitstream(data), len(data)
    except BitstreamError as e:
        raise BitstreamError(f"{name}: {e}") from None


def decode_file(trained: TrainedCodec, source: str | Path, target: str | Path, rate: int | None = None,
                force: bool = False, stdout_format: str = "wav") -> CodingResult:
    """.tcq file -> audio file in the format its extension names (stdout, "-": `stdout_format`), at
    `rate` (default: the rate of the file that was encoded) with the channel count and length of
    that file. A source of "-" is stdin."""
    fmt, subtype = output_format(target, stdout_format)
    check_target(target, force)
    bs, size = read_tcq(source)
    check_bitstream_fits(bs, trained, input_name(source))
    rate = bs.source_rate if rate is None else rate
    frames = round(bs.source_frames * rate / bs.source_rate)
    pieces = resample_blocks(decode_stream(trained.codec, bs.codes, bs.n_samples, trained.plan),
                             trained.sample_rate, rate)
    clip = subtype != "FLOAT"
    clipped = write_output(target, lambda tmp: write_audio(tmp, pieces, rate, bs.channels, frames, fmt, subtype, clip))
    return CodingResult(str(source), str(target), bs.source_frames / bs.source_rate, size, bs.n_codebooks, rate,
                        bs.channels, clipped or 0)


def write_audio(path: str, pieces: Iterable[np.ndarray], rate: int, channels: int, frames: int, fmt: str,
                subtype: str, clip: bool) -> int:
    """Mono pieces -> `channels` identical channels, exactly `frames` long (cut, or padded with
    silence: resampling back may end a sample or two off); returns the samples clipped."""
    written = clipped = 0
    with sf.SoundFile(path, "w", samplerate=rate, channels=channels, format=fmt, subtype=subtype) as out:
        for piece in pieces:
            piece = piece[:frames - written]
            if clip:
                clipped += int(np.count_nonzero(np.abs(piece) > 1.0))
                piece = np.clip(piece, -1.0, 1.0)
            if len(piece):
                out.write(np.repeat(piece[:, None], channels, axis=1))
                written += len(piece)
        if written < frames:
            out.write(np.zeros((frames - written, channels), np.float32))
    return clipped


def write_output(target: str | Path, write):
    """Call write(temporary path), then put it in place: renamed over target (write_whole), or for
    "-" copied to stdout; a temporary file either way, since libsndfile seeks back to finish a WAV
    or FLAC header and a pipe cannot be rewound. Returns what write returned."""
    if not is_stdio(target):
        return write_whole(target, write)
    with tempfile.TemporaryDirectory(prefix="telucodec-stdout-") as tmp, writing("stdout"):
        result = write(str(Path(tmp, "out")))
        with open(Path(tmp, "out"), "rb") as done:
            shutil.copyfileobj(done, sys.stdout.buffer, COPY_BLOCK)
        sys.stdout.buffer.flush()
    return result


@contextmanager
def writing(name: str):
    """OSErrors and libsndfile errors inside become one AudioError naming the output; a reader
    that closed our stdout (BrokenPipeError) is left for the command line to end quietly."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as e:
        raise AudioError(f"{name}: cannot write ({e.strerror or e})") from None
    except sf.LibsndfileError as e:
        raise AudioError(f"{name}: cannot write ({e})") from None


def write_whole(target: str | Path, write):
    """Call write(temporary path) beside target, then rename it into place (removed on failure)."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with writing(str(target)):
            result = write(str(tmp))
            os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return result


def mirror_tree(source: str | Path, target: str | Path, extensions: Iterable[str], new_ext: str) -> list[tuple[Path, Path]]:
    """Files under source (recursively) with one of `extensions` -> the same relative paths under
    target with new_ext, sorted."""
    root, out, exts = Path(source), Path(target), {e.lower() for e in extensions}
    found = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts)
    return [(p, (out / p.relative_to(root)).with_suffix(new_ext)) for p in found]
