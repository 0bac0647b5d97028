"""The compressed file format (.tcq): a fixed header, then codes bit-packed at exactly log2(codebook_size) bits.

    data = write_bitstream(codes, sample_rate=16000, n_samples=T, codebook_bits=10,  # codes [n_q, F]
                           fingerprint=trained.fingerprint, source_rate=48000, channels=2,
                           source_frames=T48)
    bs = read_bitstream(data)          # Bitstream(codes [n_q, F] int64, sample_rate, n_samples, ...)
    audio = codec.decode(torch.from_numpy(bs.codes)[None], length=bs.n_samples)

Layout (little-endian). Every version starts with the same 20 bytes, which were all of version 1:

    magic         4s   b"TCQ1" (the format's name, the same in every version)
    version       u8   2 (this writer); 1 is still read
    sample_rate   u32  Hz of the codes' audio (the model's rate)
    n_codebooks   u16  residual levels stored
    codebook_bits u8   bits per code (1..16)
    frames        u32  code frames
    n_samples     u32  samples of the audio at sample_rate (decoder output is cut to it)

version 2 adds 22 bytes (HEADER_SIZE = 42):

    source_rate   u32  Hz of the file that was encoded (decode restores it by default)
    channels      u16  its channel count (coded as one mono mix; decode writes that many copies)
    source_frames u64  its length in frames at source_rate (decode cuts or pads to it)
    fingerprint   8s   first 8 bytes of the model's sha256 fingerprint (decode refuses another model)

then ceil(frames x n_codebooks x codebook_bits / 8) payload bytes: frame by frame, level by level,
each code most-significant bit first, the last byte zero-padded. 10 s at 4 kbps is 5042 bytes.
A version-1 file reads as mono at the model's rate with no fingerprint (fingerprint None).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from pipeline.errors import TelucodecError

MAGIC = b"TCQ1"
VERSION = 2
_COMMON = struct.Struct("<4sBIHBII")
FINGERPRINT_BYTES = 8
"""Bytes of the model fingerprint a .tcq file carries: the short fingerprint, 16 hex digits."""
_V2 = struct.Struct(f"<IHQ{FINGERPRINT_BYTES}s")
HEADER_SIZE = _COMMON.size + _V2.size
V1_HEADER_SIZE = _COMMON.size
_PACK_BLOCK = 1 << 18
"""Codes packed or unpacked per step (a multiple of 8, so blocks end on a byte): bounds the
temporary bit arrays to a few MB however long the file."""


class BitstreamError(TelucodecError, ValueError):
    """Bytes that are not a readable telucodec bitstream; the message says what is wrong."""


@dataclass
class Bitstream:
    codes: np.ndarray
    """[n_codebooks, frames] int64 codes."""
    sample_rate: int
    """Sample rate of the decoded audio in Hz (the model's)."""
    n_samples: int
    """Length of the coded audio in samples at sample_rate."""
    codebook_bits: int
    """Bits per code (log2 of the codebook size)."""
    source_rate: int = 0
    """Sample rate of the file that was encoded (version 1: sample_rate)."""
    channels: int = 1
    """Channel count of the file that was encoded (version 1: 1)."""
    source_frames: int = 0
    """Length of the file that was encoded, in frames at source_rate (version 1: n_samples)."""
    fingerprint: str | None = None
    """Short model fingerprint, 16 hex digits (version 1: None, the file does not say)."""
    version: int = VERSION

    @property
    def n_codebooks(self) -> int:
        return self.codes.shape[0]

    @property
    def frames(self) -> int:
        return self.codes.shape[1]


def payload_size(n_codebooks: int, frames: int, codebook_bits: int) -> int:
    """Bytes of packed codes: ceil(n_codebooks x frames x bits / 8)."""
    return (n_codebooks * frames * codebook_bits + 7) // 8


def bitstream_size(n_codebooks: int, frames: int, codebook_bits: int) -> int:
    """Total file size in bytes: header + packed codes."""
    return HEADER_SIZE + payload_size(n_codebooks, frames, codebook_bits)


def write_bitstream(codes, sample_rate: int, n_samples: int, codebook_bits: int, *, fingerprint: str,
                    source_rate: int | None = None, channels: int = 1, source_frames: int | None = None) -> bytes:
    """Pack codes [n_codebooks, frames] (numpy or tensor) into a version-2 file; `fingerprint` is the
    model's (hex, at least 16 digits); the source defaults to mono at sample_rate, n_samples long."""
    codes = np.asarray(codes.cpu() if hasattr(codes, "cpu") else codes)
    check_codes(codes, codebook_bits)
    source_rate = sample_rate if source_rate is None else source_rate
    source_frames = n_samples if source_frames is None else source_frames
    n_codebooks, frames = codes.shape
    if (n_codebooks >= 2 ** 16 or frames >= 2 ** 32 or not 0 <= n_samples < 2 ** 32
            or not 0 < sample_rate < 2 ** 32 or not 0 < source_rate < 2 ** 32
            or not 0 < channels < 2 ** 16 or not 0 <= source_frames < 2 ** 64):
        raise BitstreamError("n_codebooks, frames, n_samples, a sample rate or the channel count is out "
                             "of the header's range")
    header = _COMMON.pack(MAGIC, VERSION, sample_rate, n_codebooks, codebook_bits, frames, n_samples)
    header += _V2.pack(source_rate, channels, source_frames, fingerprint_bytes(fingerprint))
    return header + pack_codes(codes.T.reshape(-1), codebook_bits)


def check_codes(codes: np.ndarray, codebook_bits: int) -> None:
    """BitstreamError unless codes are [n_codebooks >= 1, frames] and fit in codebook_bits bits."""
    if codes.ndim != 2 or codes.shape[0] < 1:
        raise BitstreamError(f"codes must be [n_codebooks, frames], got shape {codes.shape}")
    if not 1 <= codebook_bits <= 16:
        raise BitstreamError(f"codebook_bits must be 1..16, got {codebook_bits}")
    if codes.size and (codes.min() < 0 or codes.max() >= 2 ** codebook_bits):
        raise BitstreamError(f"codes must lie in [0, {2 ** codebook_bits}) for {codebook_bits} bits")


def fingerprint_bytes(fingerprint: str) -> bytes:
    """The first FINGERPRINT_BYTES bytes of a hex fingerprint (what the header stores)."""
    try:
        raw = bytes.fromhex(fingerprint[:2 * FINGERPRINT_BYTES])
    except ValueError:
        raw = b""
    if len(raw) != FINGERPRINT_BYTES:
        raise BitstreamError(f"fingerprint must be at least {2 * FINGERPRINT_BYTES} hex digits, got "
                             f"{fingerprint!r}")
    return raw


def read_bitstream(data: bytes) -> Bitstream:
    """Parse bytes written by write_bitstream (or version 1's); BitstreamError if they are not valid."""
    if len(data) < _COMMON.size:
        raise BitstreamError(f"truncated: {len(data)} bytes, the header alone is {_COMMON.size}")
    magic, version, sample_rate, n_codebooks, bits, frames, n_samples = _COMMON.unpack_from(data)
    if magic != MAGIC:
        raise BitstreamError(f"not a telucodec bitstream: magic {magic!r}, expected {MAGIC!r}")
    if version not in (1, 2):
        raise BitstreamError(f"unsupported bitstream version {version} (this reader knows 1 and 2)")
    if not 1 <= bits <= 16 or n_codebooks < 1:
        raise BitstreamError(f"corrupt header: codebook_bits={bits}, n_codebooks={n_codebooks}")
    source = (sample_rate, 1, n_samples, None)
    if version == 2:
        if len(data) < HEADER_SIZE:
            raise BitstreamError(f"truncated: {len(data)} bytes, the header alone is {HEADER_SIZE}")
        source_rate, channels, source_frames, fingerprint = _V2.unpack_from(data, _COMMON.size)
        if source_rate < 1 or channels < 1:
            raise BitstreamError(f"corrupt header: source_rate={source_rate}, channels={channels}")
        source = (source_rate, channels, source_frames, fingerprint.hex())
    payload = data[HEADER_SIZE if version == 2 else _COMMON.size:]
    expected = payload_size(n_codebooks, frames, bits)
    if len(payload) != expected:
        kind = "truncated" if len(payload) < expected else "trailing bytes"
        raise BitstreamError(f"{kind}: payload is {len(payload)} bytes, header says {expected}")
    flat = unpack_codes(payload, n_codebooks * frames, bits)
    return Bitstream(flat.reshape(frames, n_codebooks).T.copy(), sample_rate, n_samples, bits, *source,
                     version=version)


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Flat non-negative codes -> bytes, `bits` bits each, most significant bit first."""
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    parts = []
    for start in range(0, len(codes), _PACK_BLOCK):
        bit_array = (codes[start:start + _PACK_BLOCK].astype(np.int64)[:, None] >> shifts) & 1
        parts.append(np.packbits(bit_array.astype(np.uint8).reshape(-1)).tobytes())
    return b"".join(parts)


def unpack_codes(payload: bytes, count: int, bits: int) -> np.ndarray:
    """Inverse of pack_codes: bytes -> `count` int64 codes."""
    weights = (1 << np.arange(bits - 1, -1, -1, dtype=np.int64))
    data = np.frombuffer(payload, dtype=np.uint8)
    out = np.empty(count, dtype=np.int64)
    for start in range(0, count, _PACK_BLOCK):  # a block starts on a byte: _PACK_BLOCK x bits / 8
        n = min(_PACK_BLOCK, count - start)
        bit_array = np.unpackbits(data[start * bits // 8:], count=n * bits)
        out[start:start + n] = bit_array.reshape(n, bits).astype(np.int64) @ weights
    return out
