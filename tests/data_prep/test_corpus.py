"""The offline Telugu corpus: the sentence file, and real synthesis with the TTS installed here."""

import csv
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_prep.corpus import SENTENCES_FILE, CorpusError, synthesize_corpus

# No skips: `make test` installs espeak-ng and festival's Telugu voice, and a machine without them
# should fail here rather than pass quietly.


def read_manifest(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    seconds = []
    summary = synthesize_corpus(out, minutes=0.3, seed=0, on_file=seconds.append)
    return out, summary, seconds


def test_sentences_are_unique_telugu_script_only():
    lines = SENTENCES_FILE.read_text(encoding="utf-8").splitlines()
    assert len(lines) >= 200
    assert len(set(lines)) == len(lines)
    for line in lines:
        assert re.fullmatch(r"[\u0C00-\u0C7F .,?!]+", line), line
        assert not re.search(r"[A-Za-z0-9\u0C66-\u0C6F]", line), line


def test_manifest_rows_point_to_readable_wavs(corpus):
    out, summary, seconds = corpus
    rows = read_manifest(summary.manifest)
    assert summary.manifest == out / "manifest.tsv"
    assert list(rows[0]) == ["path", "text", "speaker", "voice"]
    assert len(rows) == summary.files == len(seconds)
    total, peaks = 0.0, []
    for row in rows:
        assert row["path"] == f"wavs/{row['speaker']}/{Path(row['path']).name}"
        audio, rate = sf.read(out / row["path"], dtype="float32")
        total += len(audio) / rate
        peaks.append((sf.info(out / row["path"]).subtype, float(np.abs(audio).max())))
    assert total >= 0.3 * 60 and total == pytest.approx(summary.seconds) == pytest.approx(sum(seconds))
    assert len({row["speaker"] for row in rows}) >= 2
    assert sorted({row["speaker"] for row in rows}) == summary.speakers
    over = [peak for subtype, peak in peaks if subtype == "FLOAT"]
    assert len(over) == summary.over_range >= 1
    assert all(1.01 <= peak <= 1.3 for peak in over)
    assert all(0.3 - 1e-3 <= peak <= 0.95 + 1e-3 for subtype, peak in peaks if subtype == "PCM_16")


def test_same_seed_same_manifest_other_seed_differs(corpus, tmp_path):
    _, summary, _ = corpus
    again = synthesize_corpus(tmp_path / "again", minutes=0.3, seed=0)
    other = synthesize_corpus(tmp_path / "other", minutes=0.3, seed=1)
    assert again.manifest.read_text(encoding="utf-8") == summary.manifest.read_text(encoding="utf-8")
    assert other.manifest.read_text(encoding="utf-8") != summary.manifest.read_text(encoding="utf-8")


def test_festival_alone_makes_audio(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "text2wave").symlink_to(shutil.which("text2wave"))
    monkeypatch.setenv("PATH", str(bin_dir))
    summary = synthesize_corpus(tmp_path / "out", minutes=0.05, seed=0)
    assert summary.speakers == ["festival-te-nsk"]
    rows = read_manifest(summary.manifest)
    audio, _ = sf.read(tmp_path / "out" / rows[0]["path"])
    assert summary.seconds >= 3 and np.abs(audio).max() > 0.29


def test_no_tts_on_path_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CorpusError, match="no Telugu TTS found: install espeak-ng"):
        synthesize_corpus(tmp_path / "out", minutes=0.1)
    assert not (tmp_path / "out" / "manifest.tsv").exists()


def stub_text2wave(bin_dir: Path) -> None:
    """A festival that fails the way a missing festival-te does: an error on stderr, exit 0, no audio."""
    stub = bin_dir / "text2wave"
    stub.write_text("#!/bin/sh\necho 'SIOD ERROR: could not open file telugu_phones.scm' >&2\nexit 0\n")
    stub.chmod(0o755)


def test_a_broken_voice_is_reported_once_and_left_out(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub_text2wave(bin_dir)
    (bin_dir / "espeak-ng").symlink_to(shutil.which("espeak-ng"))
    monkeypatch.setenv("PATH", str(bin_dir))
    summary = synthesize_corpus(tmp_path / "out", minutes=0.1, seed=0)
    assert summary.speakers and all(s.startswith("espeak-te-") for s in summary.speakers)
    assert len(summary.broken) == 1
    line = summary.broken[0]
    assert "festival-te-nsk" in line and "telugu_phones.scm" in line and "festival-te" in line
    assert "\n" not in line


def test_no_working_voice_is_an_error_naming_the_engine_error(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub_text2wave(bin_dir)
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(CorpusError, match="no Telugu voice works: festival-te-nsk .*telugu_phones.scm"):
        synthesize_corpus(tmp_path / "out", minutes=0.1)
    assert not (tmp_path / "out" / "manifest.tsv").exists()
