"""The compressed file format: a fixed header, then codes bit-packed at exactly log2(codebook_size) bits.

    data = write_bitstream(codes, sample_rate=16000, n_samples=T, codebook_bits=10)  # codes [n_q, F]
    bs = read_bitstream(data)          # Bitstream(codes [n_q, F] int64, sample_rate, n_samples, ...)
    audio = codec.decode(torch.from_numpy(bs.codes)[None], length=bs.n_samples)

Layout (little-endian), HEADER_SIZE = 20 bytes:

    magic      4s   b"TCQ1"
    version    u8   1
    sample_rate u32 Hz of the decoded audio
    n_codebooks u16 residual levels stored
    codebook_bits u8 bits per code (1..16)
    frames     u32  code frames
    n_samples  u32  samples of the original audio (decoder output is cropped to it)

then ceil(frames x n_codebooks x codebook_bits / 8) payload bytes: frame by frame, level by level,
each code most-significant bit first, the last byte zero-padded. 10 s at 4 kbps is 5020 bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from pipeline.errors import TelucodecError

MAGIC = b"TCQ1"
VERSION = 1
_HEADER = struct.Struct("<4sBIHBII")
HEADER_SIZE = _HEADER.size


class BitstreamError(TelucodecError, ValueError):
    """Bytes that are not a readable telucodec bitstream; the message says what is wrong."""


@dataclass
class Bitstream:
    codes: np.ndarray
    """[n_codebooks, frames] int64 codes."""
    sample_rate: int
    """Sample rate of the decoded audio in Hz."""
    n_samples: int
    """Length of the original audio in samples."""
    codebook_bits: int
    """Bits per code (log2 of the codebook size)."""

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


def write_bitstream(codes, sample_rate: int, n_samples: int, codebook_bits: int) -> bytes:
    """Pack codes [n_codebooks, frames] (numpy or tensor) into the file format."""
    codes = np.asarray(codes.cpu() if hasattr(codes, "cpu") else codes)
    if codes.ndim != 2 or codes.shape[0] < 1:
        raise BitstreamError(f"codes must be [n_codebooks, frames], got shape {codes.shape}")
    if not 1 <= codebook_bits <= 16:
        raise BitstreamError(f"codebook_bits must be 1..16, got {codebook_bits}")
    if codes.size and (codes.min() < 0 or codes.max() >= 2 ** codebook_bits):
        raise BitstreamError(f"codes must lie in [0, {2 ** codebook_bits}) for {codebook_bits} bits")
    n_codebooks, frames = codes.shape
    if (n_codebooks >= 2 ** 16 or frames >= 2 ** 32 or not 0 <= n_samples < 2 ** 32
            or not 0 < sample_rate < 2 ** 32):
        raise BitstreamError("n_codebooks, frames, n_samples or sample_rate out of the header's range")
    header = _HEADER.pack(MAGIC, VERSION, sample_rate, n_codebooks, codebook_bits, frames, n_samples)
    return header + pack_codes(codes.T.reshape(-1), codebook_bits)


def read_bitstream(data: bytes) -> Bitstream:
    """Parse bytes written by write_bitstream; raises BitstreamError if they are not valid."""
    if len(data) < HEADER_SIZE:
        raise BitstreamError(f"truncated: {len(data)} bytes, the header alone is {HEADER_SIZE}")
    magic, version, sample_rate, n_codebooks, bits, frames, n_samples = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise BitstreamError(f"not a telucodec bitstream: magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise BitstreamError(f"unsupported bitstream version {version} (this reader knows {VERSION})")
    if not 1 <= bits <= 16 or n_codebooks < 1:
        raise BitstreamError(f"corrupt header: codebook_bits={bits}, n_codebooks={n_codebooks}")
    expected = payload_size(n_codebooks, frames, bits)
    payload = data[HEADER_SIZE:]
    if len(payload) != expected:
        kind = "truncated" if len(payload) < expected else "trailing bytes"
        raise BitstreamError(f"{kind}: payload is {len(payload)} bytes, header says {expected}")
    flat = unpack_codes(payload, n_codebooks * frames, bits)
    return Bitstream(flat.reshape(frames, n_codebooks).T.copy(), sample_rate, n_samples, bits)


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Flat non-negative codes -> bytes, `bits` bits each, most significant bit first."""
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    bit_array = (codes.astype(np.int64)[:, None] >> shifts) & 1
    return np.packbits(bit_array.astype(np.uint8).reshape(-1)).tobytes()


def unpack_codes(payload: bytes, count: int, bits: int) -> np.ndarray:
    """Inverse of pack_codes: bytes -> `count` int64 codes."""
    bit_array = np.unpackbits(np.frombuffer(payload, dtype=np.uint8), count=count * bits)
    weights = (1 << np.arange(bits - 1, -1, -1, dtype=np.int64))
    return bit_array.reshape(count, bits).astype(np.int64) @ weights
