"""`telucodec encode` / `decode`: the .tcq round trip equals the model's eval output, sizes are exact,
any input rate and channel count works, and bad input is one line and exit 2.

    .venv/bin/pytest tests/test_codec_cli.py -q
"""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audio_fixtures import tone
from jobs.cli import main
from pipeline.audio import resample
from pipeline.bitstream import HEADER_SIZE, read_bitstream
from pipeline.config import ModelConfig
from pipeline.inference import load_codec
from run_fixtures import make_checkpoint


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


def test_stereo_22k_input_is_mixed_and_resampled(checkpoint, tmp_path):
    left, right = tone(0.7, 22050, freq=180, seed=1), tone(0.7, 22050, freq=260, seed=2)
    sf.write(tmp_path / "st.wav", np.stack([left, right], 1), 22050, subtype="FLOAT")
    assert main(["encode", str(tmp_path / "st.wav"), str(tmp_path / "st.tcq"), "--checkpoint", checkpoint]) == 0
    expected_in = resample((left + right) / 2, 22050, 16000)
    bs = read_bitstream((tmp_path / "st.tcq").read_bytes())
    assert (bs.sample_rate, bs.n_samples, bs.n_codebooks) == (16000, len(expected_in), 4)
    assert main(["decode", str(tmp_path / "st.tcq"), str(tmp_path / "st_out.wav"), "--checkpoint", checkpoint]) == 0
    decoded, sr = sf.read(tmp_path / "st_out.wav", dtype="float32")
    assert sr == 16000
    np.testing.assert_allclose(decoded, eval_output(checkpoint, expected_in, 4), atol=1e-5)


@pytest.fixture(scope="module")
def good_tcq(checkpoint, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tcq")
    sf.write(folder / "in.wav", tone(0.5, 16000), 16000)
    assert main(["encode", str(folder / "in.wav"), str(folder / "in.tcq"), "--checkpoint", checkpoint]) == 0
    return folder / "in.tcq"


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


def test_bitstream_from_another_model_is_refused(good_tcq, tmp_path, capsys):
    other = make_checkpoint(tmp_path / "other", ModelConfig(channels=4, latent_dim=16, codebook_size=32,
                                                            n_codebooks=2, kmeans_iters=2))
    err = run_error(["decode", str(good_tcq), str(tmp_path / "o.wav"), "--checkpoint", other], capsys)
    assert "does not fit this checkpoint" in err
    assert "4-bit codes, the model's are 5-bit" in err and "4 codebooks, the model has 2" in err


def test_decode_requires_a_checkpoint(good_tcq, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["decode", str(good_tcq), str(tmp_path / "o.wav")])
    assert e.value.code == 2 and "--checkpoint" in capsys.readouterr().err


def test_train_resume_never_refuses_a_run_dir_with_a_checkpoint(checkpoint, capsys):
    assert main(["train", "data.url=unused", f"run.dir={checkpoint}", "--resume", "never"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run at step 7" in err and "--resume auto" in err
