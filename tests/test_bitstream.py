"""The bitstream file format: round trips, exact sizes and clear errors on bad input.

    .venv/bin/pytest tests/test_bitstream.py -q
"""

import numpy as np
import pytest
import torch

from pipeline.bitstream import (HEADER_SIZE, MAGIC, BitstreamError, bitstream_size, read_bitstream,
                                write_bitstream)
from pipeline.config import ModelConfig
from pipeline.model import Codec


@pytest.mark.parametrize("n_q, frames, bits", [(8, 37, 10), (3, 5, 3), (1, 1, 1), (2, 0, 16)])
def test_round_trip_and_exact_size(n_q, frames, bits):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 2 ** bits, size=(n_q, frames))
    data = write_bitstream(codes, sample_rate=16000, n_samples=frames * 320, codebook_bits=bits)
    assert len(data) == HEADER_SIZE + -(-n_q * frames * bits // 8) == bitstream_size(n_q, frames, bits)
    bs = read_bitstream(data)
    np.testing.assert_array_equal(bs.codes, codes)
    assert bs.codes.dtype == np.int64
    assert (bs.sample_rate, bs.n_samples, bs.codebook_bits) == (16000, frames * 320, bits)
    assert (bs.n_codebooks, bs.frames) == (n_q, frames)


def test_ten_seconds_at_4kbps_is_5020_bytes():
    codes = np.zeros((8, 500), dtype=np.int64)
    assert len(write_bitstream(codes, 16000, 160000, 10)) == 20 + 5000


def test_codec_codes_round_trip_through_the_file():
    torch.manual_seed(0)
    cfg = ModelConfig(channels=4, latent_dim=16, codebook_size=16, n_codebooks=4)
    codec = Codec(cfg).eval()
    x = torch.randn(1, 1, 1000) * 0.2
    with torch.no_grad():
        codes = codec.encode(x)
        bs = read_bitstream(write_bitstream(codes[0], cfg.sample_rate, x.shape[-1], cfg.codebook_bits))
        decoded = codec.decode(torch.from_numpy(bs.codes)[None], length=bs.n_samples)
        assert torch.equal(decoded, codec(x).audio)
    assert bs.n_samples == 1000


def _valid() -> bytes:
    return write_bitstream(np.arange(12).reshape(3, 4) % 16, 16000, 1280, 4)


@pytest.mark.parametrize("corrupt, message", [
    (lambda d: d[:-1], "truncated"),
    (lambda d: d[:HEADER_SIZE - 3], "truncated"),
    (lambda d: b"", "truncated"),
    (lambda d: d + b"\0", "trailing"),
    (lambda d: b"RIFF" + d[4:], "magic"),
    (lambda d: MAGIC + bytes([9]) + d[5:], "version"),
])
def test_bad_input_raises_bitstream_error(corrupt, message):
    with pytest.raises(BitstreamError, match=message):
        read_bitstream(corrupt(_valid()))


def test_write_rejects_codes_that_do_not_fit():
    with pytest.raises(BitstreamError, match="lie in"):
        write_bitstream(np.array([[16]]), 16000, 320, 4)
    with pytest.raises(BitstreamError, match="n_codebooks, frames"):
        write_bitstream(np.zeros(5, dtype=np.int64), 16000, 320, 4)
