"""`telucodec eval` and its baselines: Opus 6 kbps and Codec2 3.2 kbps keep the input's length, are
aligned to it and score like themselves on a speech-like signal; eval writes eval.json and PNGs
labelled with each clip's scores, and with --save-audio every codec's decoded clips.

    .venv/bin/pytest tests/evaluation/test_evaluation.py -q
"""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from jobs.cli import main
from pipeline.storage.audio import log_spectrogram
from pipeline.evaluation.baselines import align, CODEC2_DELAY, run_baseline_codec2, run_baseline_opus
from pipeline.evaluation.report import baseline_result, CodecResult, CodecScore, evaluate_checkpoint, score_outputs, spectrogram_panels, telucodec_outputs
from pipeline.evaluation.scorer import ClipMetrics
from pipeline.codec.inference import load_codec
from pipeline.codec.metrics import Score
from pipeline.storage.shards import DatasetIndex, ShardWriter, encode_sample, write_index
from pipeline.storage.store import open_store
from run_fixtures import make_checkpoint


def speech_like(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    """Voiced harmonics with a wandering pitch, cut into syllables of random length: not periodic,
    so a cross-correlation has one clear peak."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 140 + 40 * np.sin(2 * np.pi * 1.3 * t) + 20 * np.sin(2 * np.pi * 0.37 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope, pos = np.zeros_like(t), 0.05
    while pos < seconds - 0.1:
        length = rng.uniform(0.08, 0.25)
        syllable = (t >= pos) & (t < pos + length)
        envelope[syllable] = np.hanning(syllable.sum())
        pos += length + rng.uniform(0.05, 0.2)
    x = voiced * envelope + 0.01 * rng.standard_normal(len(t))
    return (x / np.abs(x).max() * 0.5).astype(np.float32)


def waveform_lag(ref: np.ndarray, est: np.ndarray, max_lag: int) -> int:
    """The lag of est behind ref that maximises their cross-correlation."""
    n = len(ref)
    corr = {lag: float(np.dot(ref[max(0, -lag):n - max(0, lag)], est[max(0, lag):n - max(0, -lag)]))
            for lag in range(-max_lag, max_lag + 1)}
    return max(corr, key=corr.get)


def spectral_lag(ref: np.ndarray, est: np.ndarray, lags) -> int:
    """The lag of est behind ref with the smallest log-spectral distance (for phase-free vocoders)."""
    target = log_spectrogram(ref, 256, 32)
    dist = {lag: float(np.abs(log_spectrogram(np.roll(est, -lag), 256, 32) - target)[:, 12:-12].mean())
            for lag in lags}
    return min(dist, key=dist.get)


def test_align_drops_the_delay_and_fits_the_length():
    assert align(np.arange(10, dtype=np.float32), 2, 5).tolist() == [2, 3, 4, 5, 6]
    assert align(np.arange(4, dtype=np.float32), 1, 5).tolist() == [1, 2, 3, 0, 0]


def test_opus_6k_is_aligned_and_scores_like_a_waveform_codec():
    x = speech_like(1.5, 16000)
    out = run_baseline_opus(x, 16000)
    assert out.audio.shape == x.shape and out.audio.dtype == np.float32
    assert waveform_lag(x, out.audio, 20) == 0  # without OPUS_DELAY it is +1
    s = score_outputs("opus", [x], [out.audio], [out.payload_bytes], 16000).score
    # measured on seeds 0-2: 4.7-5.2 kbps (VBR), SNR 10-11 dB, PESQ 2.8-3.1, STOI 0.80-0.84
    assert 4.0 < s.bitrate_kbps < 7.0
    assert s.snr > 6 and s.pesq >= 2.0 and s.stoi > 0.7, s


def test_opus_keeps_the_length_at_other_rates():
    x = speech_like(0.9, 22050, seed=1)
    out = run_baseline_opus(x, 22050)
    assert out.audio.shape == x.shape
    assert score_outputs("opus", [x], [out.audio], [out.payload_bytes], 22050).score.snr > 5


def test_codec2_3200_is_aligned_and_scores_like_a_vocoder():
    x = speech_like(1.5, 16000)
    out = run_baseline_codec2(x, 16000)
    assert out.audio.shape == x.shape
    # no phase kept: align by spectra; unaligned it would sit at 2 * CODEC2_DELAY = 320 samples
    assert abs(spectral_lag(x, out.audio, range(-320, 321, 16))) <= 80
    s = score_outputs("codec2", [x], [out.audio], [out.payload_bytes], 16000).score
    # measured on seeds 0-2: 3.24 kbps (whole 20 ms frames), mel 1.0, PESQ 1.3-1.7, STOI 0.77-0.83;
    # SNR is negative (about -4 dB) for a vocoder, so it is not asserted
    assert 3.2 <= s.bitrate_kbps < 3.4
    assert s.mel_distance < 1.3 and s.pesq >= 1.0 and s.stoi > 0.6, s
    assert CODEC2_DELAY == 160


def test_missing_tool_is_a_row_with_a_note(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: the tools are not there
    calls = []
    result = baseline_result("opus-6k", run_baseline_opus, [speech_like(0.5, 16000)] * 2, 16000,
                             on_scored=lambda: calls.append(1))
    assert result.outputs is None and result.score.note == "opusenc not installed"
    assert len(calls) == 2  # a progress bar still reaches its total
    assert result.score.pesq is None and result.score.bitrate_kbps is None


def make_test_split(url: str, n: int = 3, sr: int = 16000) -> list[str]:
    store = open_store(url)
    keys = [f"clip{i}" for i in range(n)]
    with ShardWriter(store, "test", 0) as w:
        for i, key in enumerate(keys):
            w.add(encode_sample(key, speech_like(1.2, sr, seed=i), sr, {}))
    write_index(store, DatasetIndex(shards=[w.info], sample_rate=sr))
    return keys


@pytest.fixture(scope="module")
def eval_inputs(tmp_path_factory) -> tuple[str, str, list[str]]:
    root = tmp_path_factory.mktemp("eval")
    keys = make_test_split(str(root / "data"))
    return make_checkpoint(root / "run"), str(root / "data"), keys


def test_prefix_decoding_equals_eval_forward_at_every_level(eval_inputs):
    codec, _, _ = load_codec(eval_inputs[0])
    x = speech_like(0.5, 16000)
    per_level = telucodec_outputs(codec, [x])
    assert len(per_level) == codec.cfg.n_codebooks >= 2 and all(len(outputs) == 1 for outputs in per_level)
    with torch.no_grad():
        for n, outputs in enumerate(per_level, start=1):
            expected = codec(torch.from_numpy(x)[None, None], n_quantizers=n).audio[0, 0].numpy()
            np.testing.assert_allclose(outputs[0], expected, atol=1e-5)


def test_eval_json_has_every_codec_and_writes_pngs(eval_inputs, tmp_path, capsys):
    checkpoint, data, keys = eval_inputs
    out = tmp_path / "out"
    assert main(["eval", "--checkpoint", checkpoint, "--data", data, "--clips", "2", "--seconds", "1",
                 "--out", str(out), "--spectrograms", "2", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "eval.json").read_text())
    assert [s["name"] for s in printed["scores"]] == [f"telucodec-{n}" for n in (1, 2, 3, 4)] + [
        "opus-6k", "codec2-3200"]
    assert printed["clips"] == keys[:2] and printed["step"] == 7 and printed["seconds"] == 2.0
    rates = [s["bitrate_kbps"] for s in printed["scores"]]
    assert rates[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])  # 50 frames/s x 4 bits per level
    assert all(s[k] is not None for s in printed["scores"] for k in ("snr", "mel_distance", "stoi"))
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == [f"spectrogram_00_{keys[0]}.png", f"spectrogram_01_{keys[1]}.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_eval_prints_a_table(eval_inputs, tmp_path, capsys):
    checkpoint, data, _ = eval_inputs
    assert main(["eval", "--checkpoint", checkpoint, "--data", data, "--clips", "1", "--seconds", "0.5",
                 "--out", str(tmp_path), "--spectrograms", "0"]) == 0
    out = capsys.readouterr().out
    assert "telucodec-4" in out and "opus-6k" in out and "codec2-3200" in out and "PESQ-WB" in out
    assert (tmp_path / "eval.json").is_file() and not list(tmp_path.glob("*.png"))


def test_eval_reports_progress_once_per_clip_and_codec(eval_inputs, tmp_path):
    checkpoint, data, _ = eval_inputs
    calls = []
    report = evaluate_checkpoint(checkpoint, data, "test", n_clips=2, seconds=0.5, out_dir=tmp_path,
                                 n_spectrograms=0, on_clip=lambda done, total: calls.append((done, total)))
    total = len(report.scores) * 2  # telucodec-1..4, opus-6k, codec2-3200, two clips each
    assert calls == [(done, total) for done in range(1, total + 1)] and total == 12


def test_save_audio_writes_every_codec_row_beside_the_input(eval_inputs, tmp_path, capsys):
    checkpoint, data, keys = eval_inputs
    out = tmp_path / "out"
    assert main(["eval", "--checkpoint", checkpoint, "--data", data, "--clips", "2", "--seconds", "0.5",
                 "--out", str(out), "--spectrograms", "1", "--save-audio"]) == 0
    assert f"audio for 2 clip(s) under {out / 'audio'}" in capsys.readouterr().out
    report = json.loads((out / "eval.json").read_text())
    assert report["audio"] == [str(out / "audio" / k) for k in keys[:2]]
    have_opus, have_codec2 = (all(shutil.which(t) for t in tools) for tools in (("opusenc", "opusdec"),
                                                                                 ("c2enc", "c2dec")))
    expected = {"input.wav", *(f"telucodec-{n}.wav" for n in (1, 2, 3, 4))}
    expected |= {"opus-6k.wav"} if have_opus else set()  # a missing tool has a row with a note, no file
    expected |= {"codec2-3200.wav"} if have_codec2 else set()
    for key in keys[:2]:
        folder = out / "audio" / key
        assert {p.name for p in folder.iterdir()} == expected
        for wav in folder.iterdir():
            info = sf.info(str(wav))
            assert (info.samplerate, info.frames, info.channels) == (16000, 8000, 1), wav
    codec, _, _ = load_codec(checkpoint)  # the files hold what was scored: telucodec-2 is the input through 2 levels
    x, _ = sf.read(out / "audio" / keys[0] / "input.wav", dtype="float32")
    y, _ = sf.read(out / "audio" / keys[0] / "telucodec-2.wav", dtype="float32")
    np.testing.assert_allclose(y, telucodec_outputs(codec, [x])[1][0], atol=1e-5)
    assert [p.name for p in out.glob("*.png")] == [f"spectrogram_00_{keys[0]}.png"]


def test_spectrogram_panels_are_labelled_with_the_clips_kbps_pesq_and_stoi():
    def result(name, pesq, stoi_value, payload):
        clips = [ClipMetrics(0.0, 0.0, 1.0, 0.0, Score(None, "x"), Score(None, "x"), 1, 1.0),
                 ClipMetrics(0.0, 0.0, 1.0, 0.0, Score(pesq, "" if pesq else "too short"), Score(stoi_value), payload, 0.5)]
        score = CodecScore(name, None, None, None, None, None, None)
        return CodecResult(score, [np.zeros(4, np.float32), np.full(4, len(name), np.float32)], clips)

    results = [result("telucodec-1", 1.5, 0.5, 10), result("telucodec-2", 2.25, 0.625, 20),
               result("opus-6k", 3.125, 0.875, 300), result("codec2-3200", None, 0.75, 200)]
    panels = spectrogram_panels(1, [np.zeros(4), np.ones(4)], results, "telucodec-2")
    assert list(panels) == ["input", "telucodec-2: 0.32 kbps, PESQ-WB 2.25, STOI 0.625",
                            "opus-6k: 4.80 kbps, PESQ-WB 3.12, STOI 0.875", "codec2-3200: 3.20 kbps, STOI 0.750"]
    assert panels["opus-6k: 4.80 kbps, PESQ-WB 3.12, STOI 0.875"][0] == len("opus-6k")  # clip 1's audio
