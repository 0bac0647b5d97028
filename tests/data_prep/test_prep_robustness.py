"""prep against hostile input: workers that die, file names that are not UTF-8, compressed files cut
short, hour-long recordings, sources edited in place. Every case uses real files and real processes."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audio_fixtures import tone, write_long_audio
from data_prep.dataset_job import ordered_map
from data_prep.prep import PrepError, run_prep
from data_prep.prep_file import FileJob, SampleSpool, process_job
from data_prep.sources import SourceItem
from fault_fixtures import KillWhoeverOpens, cut_in_half, double_or_die, parquet_with_a_poison_row
from jobs.cli import main
from pipeline.storage.audio import AudioError, cut_segments, load_audio, resample, trim_silence
from pipeline.config import PrepConfig
from pipeline.storage.shards import encode_sample, load_index, read_samples
from pipeline.storage.store import open_store

REPO = Path(__file__).resolve().parents[2]
QUICK = PrepConfig(workers=2, val_fraction=0, test_fraction=0, shard_max_samples=50)


def rejects_of(url) -> dict[str, str]:
    """rejects.jsonl as file name -> reason."""
    lines = open_store(url).get_text("rejects.jsonl").splitlines()
    return {Path(r["path"]).name: r["reason"] for r in map(json.loads, lines)}


# ---------------------------------------------------------------- workers that die
def test_ordered_map_survives_workers_that_die_and_keeps_job_order():
    jobs = [("ok", n) for n in range(12)]
    jobs[3], jobs[8], jobs[9] = ("die", 3), ("exit", 8), ("die", 9)
    deaths = []
    results = list(ordered_map(double_or_die, jobs, 2, on_death=lambda job, how: deaths.append(how) or ("dead", job)))
    expected = [("dead", job) if job[0] != "ok" else 2 * job[1] for job in jobs]
    assert results == expected
    assert deaths == ["killed by signal 9 (SIGKILL), likely out of memory", "exited with status 3",
                      "killed by signal 9 (SIGKILL), likely out of memory"]


def test_a_file_that_kills_its_worker_is_a_reject_and_the_run_goes_on(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        sf.write(src / f"good{i}.wav", tone(2.0, 16000, seed=i), 16000)
    poison = write_long_audio(src / "poison.wav", 180, sr=44100, channels=1, subtype="PCM_16")
    out = str(tmp_path / "ds")
    with KillWhoeverOpens(poison) as killer:  # as the OOM killer would: from outside, every time
        summary = run_prep([str(src)], out, QUICK, progress=False)
    assert killer.kills >= 2  # once in the pool, once again alone
    assert summary.files_ok == 6 and summary.samples == 6
    assert rejects_of(out) == {"poison.wav": "worker died: killed by signal 9 (SIGKILL), likely out of memory"}
    with KillWhoeverOpens(poison) as killer:  # a reject like any other: the re-run does not open it again
        assert run_prep([str(src)], out, QUICK, progress=False).already_complete
    assert killer.kills == 0


def reruns_of_dying_jobs(monkeypatch) -> list[list[int]]:
    """Filled as prep runs the parts of a job whose worker died again (worker_died's ordered_map
    calls): the item counts of the parts, a list a call."""
    import data_prep.dataset_job as dataset_job

    reruns: list[list[int]] = []
    ordered_map_ = dataset_job.ordered_map
    monkeypatch.setattr(dataset_job, "ordered_map", lambda fn, jobs, workers, on_death: (
        reruns.append([len(job.items) for job in jobs]) or ordered_map_(fn, jobs, workers, on_death)))
    return reruns


def test_a_worker_dying_on_one_row_of_a_row_group_rejects_that_row_alone_found_by_halves(tmp_path, monkeypatch):
    """A row group's job whose worker dies is run again in halves, the half that dies again halved in
    turn: the one row rejected, the rest prepped, and the row group read ~2 log2(n) times, not once a
    row (a job of 256 rows on S3 would otherwise fetch its row group 256 times)."""
    path, poison = parquet_with_a_poison_row(tmp_path / "te", rows=64, poison=37)
    reruns = reruns_of_dying_jobs(monkeypatch)
    out = str(tmp_path / "ds")
    with KillWhoeverOpens(poison) as killer:
        summary = run_prep([str(path)], out, PrepConfig(workers=1, min_seconds=0.5, val_fraction=0,
                                                               test_fraction=0), progress=False)
    assert killer.kills >= 2
    assert summary.files_ok == 63
    lines = [json.loads(line) for line in open_store(out).get_text("rejects.jsonl").splitlines()]
    assert len(lines) == 1 and lines[0]["path"] == f"{path} (row 37)", lines
    assert lines[0]["reason"] == "worker died: killed by signal 9 (SIGKILL), likely out of memory"
    assert reruns == [[8, 8], [4, 4], [2, 2], [1, 1]]  # prep's jobs of 16 rows here (64 rows, 1 worker)


def test_a_worker_dying_on_one_of_a_jobs_files_runs_its_files_again_one_a_job(tmp_path, monkeypatch):
    """Plain files share jobs: a job whose worker dies runs again a file a job (halving, as for a
    row group, would gain nothing: no file is read twice), and only the file that kills its worker
    is rejected."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(15):
        sf.write(src / f"good{i:02d}.wav", tone(1.0, 16000, seed=i), 16000)
    poison = write_long_audio(src / "poison.wav", 180, sr=44100, channels=1, subtype="PCM_16")
    reruns = reruns_of_dying_jobs(monkeypatch)
    out = str(tmp_path / "ds")
    with KillWhoeverOpens(poison) as killer:
        summary = run_prep([str(src)], out, PrepConfig(workers=1, val_fraction=0, test_fraction=0), progress=False)
    assert killer.kills >= 2
    assert summary.files_ok == 15
    assert rejects_of(out) == {"poison.wav": "worker died: killed by signal 9 (SIGKILL), likely out of memory"}
    assert reruns == [[1, 1, 1, 1]]  # prep's jobs of 4 files here (16 files, 1 worker): the last, alone, a file a job


# ---------------------------------------------------------------- file names that are not UTF-8
def test_file_names_that_are_not_utf8_are_prepped_under_an_escaped_name(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    sf.write(os.fsencode(src) + b"/caf\xe9.wav", tone(2.0, 16000), 16000)  # Latin-1 bytes, as old archives have
    sf.write(src / "plain.wav", tone(2.0, 16000, seed=1), 16000)
    with open(os.fsencode(src) + b"/bad\xff.wav", "wb") as f:
        f.write(b"RIFF junk")
    out = str(tmp_path / "ds")
    assert main(["prep", str(src), "--out", out, "prep.workers=2", "prep.val_fraction=0", "prep.test_fraction=0"]) == 0
    printed = capsys.readouterr().out
    assert "bad\\xff.wav" in printed  # the reject, printed
    assert sorted(s.meta["source"] for s in read_samples(out, "train")) == ["src/caf\\xe9.wav", "src/plain.wav"]
    assert list(rejects_of(out)) == ["bad\\xff.wav"]
    assert "cannot decode" in rejects_of(out)["bad\\xff.wav"]


# ---------------------------------------------------------------- compressed files cut short
FORMATS = {"flac": dict(format="FLAC", subtype="PCM_16"), "ogg": dict(format="OGG", subtype="VORBIS"),
           "opus": dict(format="OGG", subtype="OPUS"), "mp3": dict(format="MP3", subtype="MPEG_LAYER_III"),
           "aiff": dict(format="AIFF", subtype="PCM_16")}


def write_full_and_half(folder: Path, formats=tuple(FORMATS)) -> None:
    """full.EXT (20 s; 320,000 frames at 16 kHz) and half-full.EXT, its first half, per format."""
    folder.mkdir(exist_ok=True)
    for ext in formats:
        sr = 48000 if ext == "opus" else 16000  # Opus runs at 48 kHz only
        full = folder / f"full.{ext}"
        sf.write(full, tone(20.0, sr), sr, **FORMATS[ext])
        cut_in_half(full)


@pytest.mark.parametrize("ext", FORMATS)
def test_a_compressed_file_cut_in_half_is_truncated_not_shorter(tmp_path, ext):
    write_full_and_half(tmp_path, [ext])
    assert len(load_audio(tmp_path / f"full.{ext}").audio) > 0
    with pytest.raises(AudioError, match="^truncated"):
        load_audio(tmp_path / f"half-full.{ext}")


def test_an_ogg_cut_at_a_page_boundary_is_truncated_too(tmp_path):
    full = tmp_path / "full.ogg"
    sf.write(full, tone(20.0, 16000), 16000, format="OGG", subtype="VORBIS")
    data = full.read_bytes()
    page = data.rfind(b"OggS", 0, len(data) // 2)  # a page start: every page before it is whole
    (tmp_path / "cut.ogg").write_bytes(data[:page])
    with pytest.raises(AudioError, match="truncated: the Ogg stream stops without its end-of-stream page"):
        load_audio(tmp_path / "cut.ogg")


def test_prep_rejects_every_truncated_format_and_keeps_the_whole_ones(tmp_path):
    write_full_and_half(tmp_path / "src")
    out = str(tmp_path / "ds")
    summary = run_prep([str(tmp_path / "src")], out, QUICK, progress=False)
    assert summary.files_ok == len(FORMATS)
    reasons = rejects_of(out)
    assert set(reasons) == {f"half-full.{ext}" for ext in FORMATS}
    assert reasons["half-full.flac"].startswith("truncated: header says 320000 frames, decoded ")
    assert reasons["half-full.mp3"].startswith("truncated: header says 320000 frames, decoded ")
    assert all(r.startswith("truncated") for r in reasons.values())


# ---------------------------------------------------------------- an hour-long recording
PEAK_RSS = """
import json, re, resource, sys
from pathlib import Path
from data_prep.prep import run_prep
from pipeline.config import PrepConfig

if __name__ == "__main__":
    summary = run_prep([sys.argv[1]], sys.argv[2], PrepConfig(workers=1), progress=False)
    status = Path("/proc/self/status").read_text()
    print(json.dumps({"samples": summary.samples, "rejects": summary.rejects,
                      "parent_kb": int(re.search(r"VmHWM:\\s+(\\d+)", status).group(1)),
                      "worker_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""
"""Preps a folder in a process of its own and reports peak RSS: the parent's from /proc (its
ru_maxrss would count the test process it was started from), the workers' from RUSAGE_CHILDREN
(an upper bound: it may count the parent's size when a worker started)."""


@pytest.mark.slow
def test_an_hour_of_44k_stereo_preps_in_bounded_memory(tmp_path):
    """1 h of 44.1 kHz stereo is 1.3 GB as float32; prep streams it with under 300 MB per process."""
    src = tmp_path / "src"
    src.mkdir()
    write_long_audio(src / "hour.wav", 3600, sr=44100, channels=2, subtype="PCM_16")
    out = tmp_path / "ds"
    run = subprocess.run([sys.executable, "-c", PEAK_RSS, str(src), str(out)], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.splitlines()[-1])
    print(f"peak RSS: parent {report['parent_kb'] / 1024:.0f} MB, worker {report['worker_kb'] / 1024:.0f} MB")
    assert report["samples"] == 360 and report["rejects"] == []  # ten-second segments, none lost
    assert report["worker_kb"] < 300 * 1024 and report["parent_kb"] < 300 * 1024
    assert load_index(str(out)).splits["train"]["seconds"] == pytest.approx(3600, abs=1)


def test_a_long_file_gives_the_segments_the_whole_array_would(tmp_path):
    """Streaming changes nothing: a 5-minute file (19 MB resampled, so parked on disk) gives the
    segments that resampling, trimming and cutting the whole array give."""
    path = write_long_audio(tmp_path / "five.wav", 300, sr=22050, channels=2, block_seconds=7.3, subtype="PCM_16")
    result = process_job(FileJob((SourceItem(str(path), "x/five.wav"),), PrepConfig(), str(tmp_path)))[0]
    assert result.reject is None
    whole = load_audio(path)
    expected = cut_segments(trim_silence(resample(whole.audio, 22050, 16000), 16000, -40.0), 16000, 10, 1)
    got = [sf.read(io.BytesIO(sample.flac), dtype="float32")[0] for sample in result.samples]
    assert [len(g) for g in got] == [len(e) for e in expected] and len(got) == 30
    assert max(np.abs(g - np.clip(e, -1, 1)).max() for g, e in zip(got, expected)) <= 1 / 32767


def test_segments_spill_to_a_file_past_the_limit_and_come_back_in_order(tmp_path):
    spool = SampleSpool(str(tmp_path), limit=3000)
    samples = [encode_sample(f"k{i}", tone(0.2, 16000, seed=i), 16000, {"i": i}) for i in range(5)]
    for sample in samples:
        spool.add(sample)
    assert spool.path is not None and len(spool) == 5 and not spool.held
    assert list(spool) == samples
    spool.discard()
    assert list(tmp_path.iterdir()) == []


def test_a_job_keeps_its_first_items_in_memory_and_spills_only_past_its_budget(tmp_path, monkeypatch):
    """A job's results share SPILL_BYTES: a row group of 100 rows sends most of them back in memory
    rather than each row to its own spill file."""
    import data_prep.prep_file as prep_file

    for i in range(6):
        sf.write(tmp_path / f"a{i}.wav", tone(2.0, 16000, seed=i), 16000, subtype="PCM_16")
    items = tuple(SourceItem(str(tmp_path / f"a{i}.wav"), f"x/a{i}.wav") for i in range(6))
    spill = tmp_path / "spill"
    spill.mkdir()
    in_memory = process_job(FileJob(items, PrepConfig(), None))
    sizes = [r.samples.held_bytes for r in in_memory]
    monkeypatch.setattr(prep_file, "SPILL_BYTES", sizes[0] + sizes[1] + 1)
    results = process_job(FileJob(items, PrepConfig(), str(spill)))
    assert [r.samples.path is None for r in results] == [True, True, False, False, False, False]
    assert sum(r.samples.held_bytes for r in results) <= prep_file.SPILL_BYTES
    assert [list(r.samples) for r in results] == [list(r.samples) for r in in_memory]
    for r in results:
        r.samples.discard()
    assert list(spill.iterdir()) == []


# ---------------------------------------------------------------- sources edited in place
def test_a_source_edited_in_place_to_the_same_size_is_another_dataset(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        sf.write(src / f"a{i}.wav", tone(2.0, 16000, seed=i), 16000, subtype="PCM_16")
    out = str(tmp_path / "ds")
    run_prep([str(src)], out, QUICK, progress=False)
    edited = src / "a1.wav"
    stat = edited.stat()
    data = bytearray(edited.read_bytes())
    middle = len(data) // 2
    data[middle: middle + 64] = bytes(64)  # a few samples zeroed: same size
    edited.write_bytes(bytes(data))
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the same mtime: only the bytes tell
    assert edited.stat().st_size == stat.st_size
    with pytest.raises(PrepError, match="already holds a different dataset"):
        run_prep([str(src)], out, QUICK, progress=False)
    assert not run_prep([str(src)], out, QUICK, overwrite=True, progress=False).already_complete
