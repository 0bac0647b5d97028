"""The bitstream file format: round trips, exact sizes, version 1 still read, and clear errors on
bad input.

    .venv/bin/pytest tests/codec/test_bitstream.py -q
"""

import struct

import numpy as np
import pytest
import torch

from pipeline.codec.bitstream import (HEADER_SIZE, MAGIC, V1_HEADER_SIZE, BitstreamError, bitstream_size, pack_codes,
                                read_bitstream, write_bitstream)
from pipeline.config import ModelConfig
from pipeline.codec.model import Codec

FP = "0123456789abcdef" + "0" * 48


@pytest.mark.parametrize("n_q, frames, bits", [(8, 37, 10), (3, 5, 3), (1, 1, 1), (2, 0, 16)])
def test_round_trip_and_exact_size(n_q, frames, bits):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 2 ** bits, size=(n_q, frames))
    data = write_bitstream(codes, sample_rate=16000, n_samples=frames * 320, codebook_bits=bits, fingerprint=FP,
                           source_rate=44100, channels=2, source_frames=frames * 882)
    assert len(data) == HEADER_SIZE + -(-n_q * frames * bits // 8) == bitstream_size(n_q, frames, bits)
    bs = read_bitstream(data)
    np.testing.assert_array_equal(bs.codes, codes)
    assert bs.codes.dtype == np.int64
    assert (bs.sample_rate, bs.n_samples, bs.codebook_bits) == (16000, frames * 320, bits)
    assert (bs.n_codebooks, bs.frames) == (n_q, frames)
    assert (bs.source_rate, bs.channels, bs.source_frames, bs.fingerprint, bs.version) == (
        44100, 2, frames * 882, FP[:16], 2)


def test_ten_seconds_at_4kbps_is_5042_bytes():
    codes = np.zeros((8, 500), dtype=np.int64)
    assert HEADER_SIZE == 42 and len(write_bitstream(codes, 16000, 160000, 10, fingerprint=FP)) == 42 + 5000


def test_packing_a_long_stream_crosses_block_boundaries():
    codes = np.random.default_rng(1).integers(0, 1024, size=(8, 40_000))  # 320k codes: two pack blocks
    bs = read_bitstream(write_bitstream(codes, 16000, 40_000 * 320, 10, fingerprint=FP))
    np.testing.assert_array_equal(bs.codes, codes)


def v1_bytes(codes: np.ndarray, sample_rate: int, n_samples: int, bits: int) -> bytes:
    """A version-1 file exactly as telucodec 0.1's writer laid it out (20-byte header)."""
    header = struct.pack("<4sBIHBII", b"TCQ1", 1, sample_rate, codes.shape[0], bits, codes.shape[1], n_samples)
    return header + pack_codes(codes.T.reshape(-1), bits)


def test_a_version_1_file_still_reads_as_mono_at_the_model_rate_without_fingerprint():
    codes = np.arange(12).reshape(3, 4) % 16
    data = v1_bytes(codes, 16000, 1200, 4)
    assert len(data) == V1_HEADER_SIZE + 6
    bs = read_bitstream(data)
    np.testing.assert_array_equal(bs.codes, codes)
    assert (bs.version, bs.sample_rate, bs.n_samples, bs.source_rate, bs.channels, bs.source_frames,
            bs.fingerprint) == (1, 16000, 1200, 16000, 1, 1200, None)
    with pytest.raises(BitstreamError, match="trailing"):
        read_bitstream(data + b"\0")


def test_codec_codes_round_trip_through_the_file():
    torch.manual_seed(0)
    cfg = ModelConfig(channels=4, latent_dim=16, codebook_size=16, n_codebooks=4)
    codec = Codec(cfg).eval()
    x = torch.randn(1, 1, 1000) * 0.2
    with torch.no_grad():
        codes = codec.encode(x)
        bs = read_bitstream(write_bitstream(codes[0], cfg.sample_rate, x.shape[-1], cfg.codebook_bits, fingerprint=FP))
        decoded = codec.decode(torch.from_numpy(bs.codes)[None], length=bs.n_samples)
        assert torch.equal(decoded, codec(x).audio)
    assert bs.n_samples == 1000


def _valid() -> bytes:
    return write_bitstream(np.arange(12).reshape(3, 4) % 16, 16000, 1280, 4, fingerprint=FP)


@pytest.mark.parametrize("corrupt, message", [
    (lambda d: d[:-1], "truncated"),
    (lambda d: d[:HEADER_SIZE - 3], "truncated"),
    (lambda d: d[:V1_HEADER_SIZE - 3], "truncated"),
    (lambda d: b"", "truncated"),
    (lambda d: d + b"\0", "trailing"),
    (lambda d: b"RIFF" + d[4:], "magic"),
    (lambda d: MAGIC + bytes([9]) + d[5:], "version"),
    (lambda d: d[:V1_HEADER_SIZE] + bytes(6) + d[V1_HEADER_SIZE + 6:], "corrupt header"),  # rate 0, channels 0
])
def test_bad_input_raises_bitstream_error(corrupt, message):
    with pytest.raises(BitstreamError, match=message):
        read_bitstream(corrupt(_valid()))


def test_write_rejects_codes_and_headers_that_do_not_fit():
    with pytest.raises(BitstreamError, match="lie in"):
        write_bitstream(np.array([[16]]), 16000, 320, 4, fingerprint=FP)
    with pytest.raises(BitstreamError, match="n_codebooks, frames"):
        write_bitstream(np.zeros(5, dtype=np.int64), 16000, 320, 4, fingerprint=FP)
    with pytest.raises(BitstreamError, match="channel count"):
        write_bitstream(np.zeros((1, 1), dtype=np.int64), 16000, 320, 4, fingerprint=FP, channels=0)
    with pytest.raises(BitstreamError, match="fingerprint"):
        write_bitstream(np.zeros((1, 1), dtype=np.int64), 16000, 320, 4, fingerprint="abc")
