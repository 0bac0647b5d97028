import numpy as np
import pytest
import soundfile as sf

from audio_fixtures import tone, write_bad_files
from pipeline.storage.audio import (AudioError, clip_to_unit_range, cut_segments, load_audio, normalize_rms, resample,
                            trim_silence)


def test_clip_counts_and_bounds():
    x = np.array([0.5, 1.2, -1.3, 1.0, -0.2], np.float32)
    y, n = clip_to_unit_range(x)
    assert n == 2
    assert y.max() == 1.0 and y.min() == -1.0
    assert np.array_equal(y[[0, 3, 4]], x[[0, 3, 4]])


def test_load_mixes_to_mono_and_keeps_over_range_floats(tmp_path):
    stereo = np.stack([np.full(800, 1.25, np.float32), np.full(800, 0.75, np.float32)], axis=1)
    sf.write(tmp_path / "s.wav", stereo, 8000, subtype="FLOAT")
    d = load_audio(tmp_path / "s.wav")
    assert d.channels == 2 and d.sample_rate == 8000 and d.audio.shape == (800,)
    assert np.allclose(d.audio, 1.0)


@pytest.mark.parametrize("name", ["empty.wav", "corrupt.flac", "truncated.wav", "nan.wav", "zero_frames.wav"])
def test_bad_files_give_reasons(tmp_path, name):
    expected = write_bad_files(tmp_path)
    with pytest.raises(AudioError, match=expected[name]):
        load_audio(tmp_path / name)


def test_resample_length_and_tone():
    x = tone(1.0, 22050, freq=200)
    y = resample(x, 22050, 16000)
    assert y.dtype == np.float32 and abs(len(y) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spectrum) - 200) <= 2  # 1 Hz bins: the fundamental stays at 200 Hz


def test_trim_silence_removes_edges_only():
    sr = 16000
    x = np.concatenate([np.zeros(sr), tone(1.0, sr), np.zeros(sr // 2)])
    y = trim_silence(x, sr, -40)
    assert abs(len(y) - sr) <= 0.02 * sr
    assert len(trim_silence(np.zeros(sr, np.float32), sr)) == 0


def test_cut_segments_equal_parts_and_min():
    sr = 100
    parts = cut_segments(np.ones(2500, np.float32), sr, max_seconds=10, min_seconds=1)
    assert sorted(len(p) for p in parts) == [833, 833, 834] and sum(map(len, parts)) == 2500
    assert cut_segments(np.ones(50, np.float32), sr, 10, 1) == []
    assert sum(len(p) for p in cut_segments(np.ones(999, np.float32), sr, 2, 0.1)) == 999


def test_normalize_rms():
    y = normalize_rms(tone(1.0, 16000, peak=0.1), -20.0)
    assert abs(20 * np.log10(np.sqrt(np.mean(y.astype(np.float64) ** 2))) + 20) < 0.01


def test_m4a_decodes_through_ffmpeg_and_a_cut_one_is_truncated_not_shorter(tmp_path):
    """AAC in MP4 with its index first (`faststart`, as streaming services write it): cut in half,
    the index still promises every frame, and the decoder's error is reported as a truncation."""
    import av

    x = tone(6.0, 16000)
    path = tmp_path / "speech.m4a"
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(x[None, :], format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    whole = load_audio(path)
    assert whole.sample_rate == 16000 and abs(len(whole.audio) - len(x)) <= 2048  # AAC's priming frames
    best = max(np.corrcoef(whole.audio[lag:lag + 32000], x[:32000])[0, 1] for lag in range(0, 2049, 8))
    assert best > 0.9  # the same signal, behind the encoder's delay
    data = path.read_bytes()
    (tmp_path / "cut.m4a").write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match=r"truncated: header says 96000 frames, decoded \d+"):
        load_audio(tmp_path / "cut.m4a")
