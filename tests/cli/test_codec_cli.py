"""`telucodec encode` / `decode`: the .tcq round trip equals the model's eval output, sizes are exact,
any input rate and channel count comes back as it went in, the output extension names the format,
version-1 files still decode, folders are coded as mirrored trees, "-" reads stdin and writes
stdout with the bytes the files get, and bad input is one line and exit 2.

    .venv/bin/pytest tests/cli/test_codec_cli.py -q
"""

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audio_fixtures import tone
from jobs.cli import main
from pipeline.storage.audio import resample
from pipeline.codec.bitstream import HEADER_SIZE, pack_codes, read_bitstream
from pipeline.config import ModelConfig
from pipeline.codec.inference import load_codec, load_trained
from run_fixtures import make_checkpoint

TELUCODEC = [sys.executable, "-m", "jobs.cli"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return make_checkpoint(tmp_path_factory.mktemp("run"))


def eval_output(checkpoint: str, audio: np.ndarray, n_q: int) -> np.ndarray:
    codec, _, _ = load_codec(checkpoint)
    with torch.no_grad():
        return codec(torch.from_numpy(audio)[None, None], n_quantizers=n_q).audio[0, 0].numpy()


def test_decode_of_encode_equals_eval_forward_and_size_is_exact(checkpoint, tmp_path, capsys):
    x = tone(1.0, 16000, seed=3)[:16123]  # not a whole number of 320-sample frames
    sf.write(tmp_path / "in.wav", x, 16000, subtype="FLOAT")
    tcq, wav = tmp_path / "in.tcq", tmp_path / "out.wav"
    assert main(["encode", str(tmp_path / "in.wav"), str(tcq), "--checkpoint", checkpoint,
                 "--codebooks", "3"]) == 0
    frames = -(-len(x) // 320)
    assert tcq.stat().st_size == HEADER_SIZE + -(-frames * 3 * 4 // 8)  # 4 bits per code
    kbps = tcq.stat().st_size * 8 / (len(x) / 16000) / 1000
    out = capsys.readouterr().out
    assert f"{tcq.stat().st_size} bytes" in out and f"{kbps:.2f} kbps" in out
    assert main(["decode", str(tcq), str(wav), "--checkpoint", checkpoint]) == 0
    decoded, sr = sf.read(wav, dtype="float32")
    assert sr == 16000 and decoded.shape == x.shape
    np.testing.assert_allclose(decoded, eval_output(checkpoint, x, 3), atol=1e-5)


def test_stereo_48k_comes_back_as_48k_stereo_of_the_same_length(checkpoint, tmp_path):
    """Coded as one mono mix at the model's rate; decode restores rate, channel count and length."""
    left, right = tone(0.7, 48000, freq=180, seed=1)[:33_333], tone(0.7, 48000, freq=260, seed=2)[:33_333]
    sf.write(tmp_path / "st.wav", np.stack([left, right], 1), 48000, subtype="FLOAT")
    assert main(["encode", str(tmp_path / "st.wav"), str(tmp_path / "st.tcq"), "--checkpoint", checkpoint]) == 0
    coded_in = resample((left + right) / 2, 48000, 16000)
    bs = read_bitstream((tmp_path / "st.tcq").read_bytes())
    assert (bs.sample_rate, bs.n_samples, bs.n_codebooks) == (16000, len(coded_in), 4)
    assert (bs.source_rate, bs.channels, bs.source_frames) == (48000, 2, 33_333)
    assert bs.fingerprint == load_trained(checkpoint=checkpoint).short_fingerprint
    assert main(["decode", str(tmp_path / "st.tcq"), str(tmp_path / "st_out.wav"), "--checkpoint", checkpoint]) == 0
    decoded, sr = sf.read(tmp_path / "st_out.wav", dtype="float32", always_2d=True)
    assert sr == 48000 and decoded.shape == (33_333, 2) and np.array_equal(decoded[:, 0], decoded[:, 1])
    expected = resample(eval_output(checkpoint, coded_in, 4), 16000, 48000)
    n = min(len(expected), len(decoded))
    np.testing.assert_allclose(decoded[:n, 0], expected[:n], atol=1e-5)
    assert main(["decode", str(tmp_path / "st.tcq"), str(tmp_path / "st16.wav"), "--checkpoint", checkpoint,
                 "--rate", "16000"]) == 0
    at16, sr = sf.read(tmp_path / "st16.wav", dtype="float32", always_2d=True)
    assert sr == 16000 and at16.shape == (len(coded_in), 2)
    np.testing.assert_allclose(at16[:, 0], eval_output(checkpoint, coded_in, 4), atol=1e-5)


@pytest.fixture(scope="module")
def good_tcq(checkpoint, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tcq")
    sf.write(folder / "in.wav", tone(0.5, 16000), 16000)
    assert main(["encode", str(folder / "in.wav"), str(folder / "in.tcq"), "--checkpoint", checkpoint]) == 0
    return folder / "in.tcq"


def test_the_output_extension_names_the_format(checkpoint, good_tcq, tmp_path, capsys):
    for name, fmt in (("o.flac", "FLAC"), ("o.ogg", "OGG"), ("o.WAV", "WAV")):
        assert main(["decode", str(good_tcq), str(tmp_path / name), "--checkpoint", checkpoint]) == 0
        info = sf.info(str(tmp_path / name))
        assert (info.format, info.samplerate, info.frames) == (fmt, 16000, 8000)
    err = run_error(["decode", str(good_tcq), str(tmp_path / "o.mp3"), "--checkpoint", checkpoint], capsys)
    assert "o.mp3: cannot tell the output format from '.mp3' (use .wav, .flac, .ogg)" in err
    assert not (tmp_path / "o.mp3").exists()


def test_existing_outputs_are_refused_without_force(checkpoint, good_tcq, tmp_path, capsys):
    wav = tmp_path / "o.wav"
    wav.write_bytes(b"keep me")
    err = run_error(["decode", str(good_tcq), str(wav), "--checkpoint", checkpoint], capsys)
    assert "o.wav exists already (use --force" in err and wav.read_bytes() == b"keep me"
    sf.write(tmp_path / "in.wav", tone(0.3, 16000), 16000)
    err = run_error(["encode", str(tmp_path / "in.wav"), str(good_tcq), "--checkpoint", checkpoint], capsys)
    assert "in.tcq exists already" in err
    assert main(["decode", str(good_tcq), str(wav), "--checkpoint", checkpoint, "--force"]) == 0
    assert sf.info(str(wav)).frames == 8000 and not list(tmp_path.glob(".*tmp*"))


def test_encode_never_writes_over_its_input_or_to_an_audio_name(checkpoint, tmp_path, capsys):
    sf.write(tmp_path / "same.wav", tone(0.3, 16000), 16000)
    before = (tmp_path / "same.wav").read_bytes()
    for target in ("same.wav", "out.wav", "out.FLAC"):
        err = run_error(["encode", str(tmp_path / "same.wav"), str(tmp_path / target), "--checkpoint", checkpoint,
                         "--force"], capsys)
        assert "encode writes a .tcq bitstream, not audio" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "same.tcq").write_bytes(b"x")
    err = run_error(["encode", str(tmp_path / "same.tcq"), str(tmp_path / "same.tcq"), "--checkpoint", checkpoint,
                     "--force"], capsys)
    assert "is the input itself" in err and (tmp_path / "same.tcq").read_bytes() == b"x"
    (tmp_path / "out").mkdir()
    err = run_error(["encode", str(tmp_path / "same.wav"), str(tmp_path / "out"), "--checkpoint", checkpoint], capsys)
    assert "is a folder: name the .tcq file (e.g. " in err and "same.tcq" in err
    assert (tmp_path / "same.wav").read_bytes() == before and not (tmp_path / "out.wav").exists()


def v1_file(path: Path, codes: np.ndarray, n_samples: int) -> None:
    """A version-1 .tcq exactly as telucodec 0.1 wrote it: 20-byte header, then the packed codes."""
    header = struct.pack("<4sBIHBII", b"TCQ1", 1, 16000, codes.shape[0], 4, codes.shape[1], n_samples)
    path.write_bytes(header + pack_codes(codes.T.reshape(-1), 4))


def test_a_version_1_file_still_decodes(checkpoint, tmp_path):
    x = tone(0.6, 16000, seed=5)
    codec, _, _ = load_codec(checkpoint)
    with torch.no_grad():
        codes = codec.encode(torch.from_numpy(x)[None, None], 2)[0].numpy()
    v1_file(tmp_path / "old.tcq", codes, len(x))
    assert main(["decode", str(tmp_path / "old.tcq"), str(tmp_path / "old.wav"), "--checkpoint", checkpoint]) == 0
    decoded, sr = sf.read(tmp_path / "old.wav", dtype="float32")
    assert sr == 16000 and decoded.shape == x.shape
    np.testing.assert_allclose(decoded, eval_output(checkpoint, x, 2), atol=1e-5)


def run_error(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("telucodec: error:") and "\n" not in err
    return err


def test_garbage_audio_and_missing_checkpoint_are_one_line(checkpoint, tmp_path, capsys):
    (tmp_path / "junk.wav").write_bytes(b"RIFF" + bytes(range(200)))
    out = str(tmp_path / "x.tcq")
    assert "junk.wav: cannot decode" in run_error(["encode", str(tmp_path / "junk.wav"), out,
                                                   "--checkpoint", checkpoint], capsys)
    assert "no whole checkpoint" in run_error(["encode", str(tmp_path / "junk.wav"), out,
                                               "--checkpoint", str(tmp_path / "nowhere")], capsys)
    assert "--codebooks must be 1..4" in run_error(["encode", str(tmp_path / "junk.wav"), out,
                                                    "--checkpoint", checkpoint, "--codebooks", "5"], capsys)
    assert "not an exported model" in run_error(["encode", str(tmp_path / "junk.wav"), out,
                                                 "--model", str(tmp_path)], capsys)
    assert not (tmp_path / "x.tcq").exists()


def test_truncated_or_foreign_tcq_is_one_line(checkpoint, good_tcq, tmp_path, capsys):
    data = good_tcq.read_bytes()
    cases = {"cut.tcq": (data[:-3], "truncated"), "head.tcq": (data[:10], "truncated"),
             "foreign.tcq": (b"OggS" + data[4:], "not a telucodec bitstream")}
    for name, (content, reason) in cases.items():
        (tmp_path / name).write_bytes(content)
        err = run_error(["decode", str(tmp_path / name), str(tmp_path / "o.wav"), "--checkpoint", checkpoint],
                        capsys)
        assert name in err and reason in err
    assert not (tmp_path / "o.wav").exists()


def test_bitstream_from_another_model_is_refused_naming_both_fingerprints(checkpoint, good_tcq, tmp_path, capsys):
    other = make_checkpoint(tmp_path / "other", ModelConfig(channels=4, latent_dim=16, codebook_size=32,
                                                            n_codebooks=2, kmeans_iters=2))
    mine, theirs = (load_trained(checkpoint=c).short_fingerprint for c in (checkpoint, other))
    err = run_error(["decode", str(good_tcq), str(tmp_path / "o.wav"), "--checkpoint", other], capsys)
    assert f"in.tcq was made by model {mine}, not by this one ({theirs})" in err
    with torch.no_grad():  # a version-1 file has no fingerprint: its shape is checked instead
        codes = load_codec(checkpoint)[0].encode(torch.from_numpy(tone(0.3, 16000))[None, None])[0].numpy()
    v1_file(tmp_path / "old.tcq", codes, 4800)
    err = run_error(["decode", str(tmp_path / "old.tcq"), str(tmp_path / "o.wav"), "--checkpoint", other], capsys)
    assert "does not fit this model" in err
    assert "4-bit codes, the model's are 5-bit" in err and "4 codebooks, the model has 2" in err


def test_decode_requires_a_checkpoint_or_a_model(good_tcq, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["decode", str(good_tcq), str(tmp_path / "o.wav")])
    assert e.value.code == 2 and "--checkpoint --model" in capsys.readouterr().err


def test_folders_code_to_mirrored_trees_and_a_bad_file_is_skipped(checkpoint, tmp_path, capsys):
    src = tmp_path / "in"
    for rel, seconds in (("a.wav", 0.4), ("talks/b.flac", 0.6), ("talks/deep/c.wav", 0.3)):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(src / rel, tone(seconds, 16000), 16000)
    (src / "talks" / "broken.wav").write_bytes(b"RIFF" + bytes(100))
    (src / "notes.txt").write_text("not audio")
    capsys.readouterr()
    assert main(["encode", str(src), str(tmp_path / "coded"), "--checkpoint", checkpoint]) == 1
    out = capsys.readouterr().out
    assert "3 of 4 files" in out and "broken.wav" in out and "cannot decode" in out and "1 failed" in out
    coded = sorted(p.relative_to(tmp_path / "coded").as_posix() for p in (tmp_path / "coded").rglob("*.tcq"))
    assert coded == ["a.tcq", "talks/b.tcq", "talks/deep/c.tcq"]
    err = run_error(["encode", str(src), str(tmp_path / "coded"), "--checkpoint", checkpoint], capsys)
    assert "3 of 4 outputs exist already" in err and "--force" in err
    assert main(["decode", str(tmp_path / "coded"), str(tmp_path / "decoded"), "--checkpoint", checkpoint,
                 "--format", "flac"]) == 0
    assert "3 of 3 files" in capsys.readouterr().out
    assert sf.info(str(tmp_path / "decoded" / "talks" / "b.flac")).frames == 9600
    assert main(["encode", str(src), str(tmp_path / "coded"), "--checkpoint", checkpoint, "--force"]) == 1


def test_train_resume_never_refuses_a_run_dir_with_a_checkpoint(checkpoint, capsys):
    assert main(["train", "data.url=unused", f"run.dir={checkpoint}", "--resume", "never"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run at step 7" in err and "--resume auto" in err


def telucodec_piped(argv: list[str], stdin: bytes) -> subprocess.CompletedProcess:
    """The real command in a child process with stdin and stdout on pipes, as in a shell pipeline."""
    return subprocess.run([*TELUCODEC, *argv], input=stdin, capture_output=True, timeout=300)


def without_peak_timestamp(wav: bytes) -> bytes:
    """libsndfile stamps a float WAV's PEAK chunk with the second it was written, so two writes of
    the same audio may differ in those four bytes and nowhere else."""
    at = wav.find(b"PEAK")
    return wav if at < 0 else wav[:at + 12] + bytes(4) + wav[at + 16:]


def test_stdin_and_stdout_carry_the_bytes_the_files_get(checkpoint, tmp_path):
    sf.write(tmp_path / "in.wav", tone(0.6, 22050, seed=4), 22050)  # not the model's rate: resampled both ways
    for argv in (["encode", "in.wav", "in.tcq"], ["decode", "in.tcq", "out.wav"], ["decode", "in.tcq", "out.flac"]):
        assert main([argv[0], str(tmp_path / argv[1]), str(tmp_path / argv[2]), "--checkpoint", checkpoint]) == 0
    encoded = telucodec_piped(["encode", "-", "-", "--checkpoint", checkpoint], (tmp_path / "in.wav").read_bytes())
    assert encoded.returncode == 0, encoded.stderr
    assert encoded.stdout == (tmp_path / "in.tcq").read_bytes()
    assert f"stdout: {len(encoded.stdout)} bytes for 0.60 s" in encoded.stderr.decode()
    decoded = telucodec_piped(["decode", "-", "-", "--checkpoint", checkpoint], encoded.stdout)
    assert decoded.returncode == 0, decoded.stderr
    assert without_peak_timestamp(decoded.stdout) == without_peak_timestamp((tmp_path / "out.wav").read_bytes())
    assert b"stdout: 0.60 s at 22050 Hz" in decoded.stderr
    flac = telucodec_piped(["decode", str(tmp_path / "in.tcq"), "-", "--format", "flac", "--checkpoint", checkpoint],
                           b"")
    assert flac.returncode == 0 and flac.stdout == (tmp_path / "out.flac").read_bytes()


def test_bad_stdin_is_one_line_and_leaves_stdout_empty(checkpoint):
    done = telucodec_piped(["encode", "-", "-", "--checkpoint", checkpoint], b"RIFF" + bytes(range(200)))
    err = done.stderr.decode().strip()
    assert done.returncode == 2 and done.stdout == b""
    assert err.startswith("telucodec: error: stdin: cannot decode") and "\n" not in err


def test_a_wav_streamed_with_a_placeholder_length_gets_the_hint_to_pipe_flac(checkpoint):
    """What `sox in.wav -t wav - | telucodec encode - ...` sends: a header promising 0x7ffff000 bytes."""
    pcm = (tone(0.5, 16000) * 32767).astype("<i2").tobytes()
    header = (b"RIFF" + struct.pack("<I", 0x7ffff024) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
              + b"data" + struct.pack("<I", 0x7ffff000))
    done = telucodec_piped(["encode", "-", "-", "--checkpoint", checkpoint], header + pcm)
    err = done.stderr.decode().strip()
    assert done.returncode == 2 and "header promises" in err and "pipe FLAC instead" in err and "\n" not in err


def test_format_is_for_folders_and_stdout_and_a_folder_needs_an_output_folder(checkpoint, good_tcq, tmp_path,
                                                                              capsys):
    err = run_error(["decode", str(good_tcq), str(tmp_path / "o.wav"), "--format", "flac", "--checkpoint",
                     checkpoint], capsys)
    assert "--format is for folders and stdout; the extension of" in err
    err = run_error(["decode", str(good_tcq.parent), "-", "--checkpoint", checkpoint], capsys)
    assert "is a folder: its outputs need an output folder, not stdout" in err
