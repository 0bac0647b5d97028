"""Chunked coding of long audio: chunks with receptive-field context give the whole file's codes and
audio (no seam), the Python API returns inference tensors, and a 4-minute file codes in bounded
memory.

    .venv/bin/pytest tests/codec/test_chunked.py -q            # -m "not slow" skips the 4-minute file
"""

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audio_fixtures import tone
from pipeline.codec.chunked import decode_stream, encode_stream
from pipeline.codec.inference import load_trained
from pipeline.codec.model import conv_reach
from run_fixtures import make_checkpoint

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return load_trained(checkpoint=make_checkpoint(tmp_path_factory.mktemp("run")))


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    noise = np.sum((reference.astype(np.float64) - other) ** 2)
    return float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / max(noise, 1e-30)))


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    """Changing pitch, so neighbouring chunks differ."""
    return np.concatenate([tone(1.0, 16000, 150 + 37 * i, seed=seed + i) for i in range(int(seconds) + 1)])


def test_the_encoders_reach_bounds_what_a_frame_sees(trained):
    codec, hop = trained.codec, trained.codec.hop_length
    left, right = conv_reach(codec.encoder, 1)
    x = torch.from_numpy(speech(2.0)[:40 * hop])[None, None]
    frame = 20
    with torch.inference_mode():
        base = codec.encoder(x)[0, :, frame]
        for at, changes in ((frame * hop - left - 1, False), (frame * hop + right + 1, False),
                            (frame * hop - left + 40, True), (frame * hop + right - 40, True)):
            poked = x.clone()
            poked[0, 0, at] += 0.5
            assert (not torch.equal(codec.encoder(poked)[0, :, frame], base)) == changes, at


def test_chunks_give_the_whole_files_codes_and_audio_without_a_seam(trained):
    """Measured with 7-frame chunks (21 seams in 2.9 s): the chunked decode is ~128 dB from the
    whole-file decode (float rounding). Codes differ only where two entries of a barely trained
    codebook tie (1% here)."""
    codec, x = trained.codec, speech(2.0)[:47_123]
    plan = replace(trained.plan, chunk_frames=7)
    with torch.inference_mode():
        whole_codes = codec.encode(torch.from_numpy(x)[None, None])[0].numpy()
        whole = codec.decode(torch.from_numpy(whole_codes)[None], length=len(x))[0, 0].numpy()
    blocks = [x[i:i + 1234] for i in range(0, len(x), 1234)]  # blocks that do not line up with frames
    codes = np.concatenate(list(encode_stream(codec, blocks, None, plan)), axis=1)
    assert codes.shape == whole_codes.shape and np.mean(codes != whole_codes) < 0.05
    for level, frame in np.argwhere(codes != whole_codes):  # only ties: the two entries are one vector
        book = codec.quantizer.levels[level].vq.codebook
        torch.testing.assert_close(book[codes[level, frame]], book[whole_codes[level, frame]], atol=1e-6, rtol=0)
    audio = np.concatenate(list(decode_stream(codec, codes, len(x), plan)))
    assert audio.shape == x.shape and snr_db(whole, audio) > 100, snr_db(whole, audio)
    same_codes = np.concatenate(list(decode_stream(codec, whole_codes, len(x), plan)))
    assert snr_db(whole, same_codes) > 100, snr_db(whole, same_codes)
    short = replace(plan, decoder_context=plan.decoder_context - 3)  # the context is what removes the seams
    assert snr_db(whole, np.concatenate(list(decode_stream(codec, whole_codes, len(x), short)))) < 80


def test_the_python_api_returns_inference_tensors_equal_to_the_eval_forward(trained):
    x = tone(0.9, 16000, seed=4)
    codes = trained.encode(x, n_q=3)
    audio = trained.decode(codes, length=len(x))
    assert codes.shape == (3, 45) and codes.dtype == torch.long and audio.shape == (len(x),)
    assert audio.is_inference() and not audio.requires_grad and codes.is_inference()
    with torch.no_grad():
        expected = trained.codec(torch.from_numpy(x)[None, None], n_quantizers=3).audio[0, 0]
    torch.testing.assert_close(audio, expected, atol=1e-5, rtol=0)


def peak_rss_mb(argv: list[str], cwd: Path) -> float:
    """Run `telucodec ARGV` in a child and return its peak RSS (wait4's rusage is that child's own,
    unlike RUSAGE_CHILDREN's maximum over every child this test process ever had)."""
    child = subprocess.Popen([sys.executable, "-m", "jobs.cli", *argv], cwd=cwd, stdout=subprocess.DEVNULL,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    _, status, usage = os.wait4(child.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, argv
    return usage.ru_maxrss / 1024  # KiB on Linux


@pytest.mark.slow
def test_a_four_minute_file_codes_in_bounded_memory(trained, tmp_path):
    """Measured on a 10-minute file: 44 MB (encode) and 19 MB (decode) above a 5 s file, at about
    300 MB in all; one whole-file encode of it peaks at 1.36 GB with this tiny model, so a 4-minute
    one would still grow ~0.45 GB, far past the bound (4 minutes keeps the suite quicker)."""
    sr = 16000
    t = np.arange(240 * sr) / sr
    x = (0.3 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)
    sf.write(tmp_path / "long.wav", x, sr, subtype="PCM_16")
    sf.write(tmp_path / "short.wav", x[:5 * sr], sr, subtype="PCM_16")
    model = ["--checkpoint", trained.source]
    peaks = {name: (peak_rss_mb(["encode", f"{name}.wav", f"{name}.tcq", *model], tmp_path),
                    peak_rss_mb(["decode", f"{name}.tcq", f"{name}_out.wav", *model], tmp_path))
             for name in ("short", "long")}
    assert sf.info(str(tmp_path / "long_out.wav")).frames == len(x)
    for step in (0, 1):
        assert peaks["long"][step] - peaks["short"][step] < 120, peaks
