"""Real corpora in: IndicVoices and FLEURS hub parquet, FLEURS's tsv + tar.gz and Kathbath's m4a
release, each from a local folder and from S3 (moto), with the bad inputs a user meets."""

import math
import os
import subprocess
import sys
import time

import pytest

from audio_fixtures import write_manifest_corpus
from corpus_layouts import (clip, indicvoices_row, indicvoices_schema, upload, write_fleurs, write_fleurs_parquet,
                            write_indicvoices, write_kathbath, write_parquet)
from fault_fixtures import sigkill_once_exists
from data_prep.prep import PrepError, run_prep
from data_prep.sources import SourceError, detect_format, scan_sources
from jobs.cli import main
from pipeline.config import PrepConfig
from pipeline.storage.shards import load_index, read_samples
from pipeline.storage.store import open_store

CFG = PrepConfig(workers=2, min_seconds=0.5, val_fraction=0.2, test_fraction=0.2)
LAYOUTS = {"indicvoices": (write_indicvoices, "parquet", 12), "fleurs-hub": (write_fleurs_parquet, "parquet", 6),
           "fleurs": (write_fleurs, "fleurs", 8), "kathbath": (write_kathbath, "kathbath", 8)}


def samples_meta(url: str) -> dict[str, dict]:
    """source name -> (its first segment's) metadata and seconds, over every split at `url`."""
    out = {}
    for split in load_index(url).splits:
        for sample in read_samples(url, split):
            out.setdefault(sample.meta["source"], sample.meta | {"seconds": sample.seconds, "split": split})
    return out


def shard_bytes(url: str) -> dict[str, bytes]:
    store = open_store(url)
    return {s.name: store.get(s.name) for s in load_index(url).shards}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_from_a_folder_and_from_s3_gives_the_same_shards(layout, tmp_path, s3_bucket):
    write, kind, n_items = LAYOUTS[layout]
    folder = write(tmp_path / "src")
    assert detect_format(folder) == kind
    local = run_prep([str(folder)], str(tmp_path / "out"), CFG, progress=False)
    assert local.files_ok == n_items and local.rejects == []

    meta = samples_meta(str(tmp_path / "out"))
    scan = scan_sources([str(folder)])
    assert len(meta) == n_items == len(scan.items)
    for item in scan.items:  # text, speaker and the corpus's split arrive in every sample
        m = meta[item.name]
        assert (m["text"], m["speaker"], m.get("source_split", "")) == (item.text, item.speaker, item.source_split)
        assert item.text and item.source_split and 1.2 < m["seconds"] < 1.6
    if layout == "indicvoices":
        assert {m["speaker"] for m in meta.values()} >= {"spk0", "val0"}
    if layout == "kathbath":
        assert {m["speaker"] for m in meta.values()} == {"590", "591", "592"}  # from UID-SPEAKER-GENDER.m4a

    remote = upload(folder, f"{s3_bucket}/corpus/{folder.name}")
    assert detect_format(remote) == kind
    from_s3 = run_prep([remote], f"{s3_bucket}/te", CFG, progress=False)
    assert from_s3.files_ok == n_items
    assert shard_bytes(f"{s3_bucket}/te") == shard_bytes(str(tmp_path / "out"))
    assert samples_meta(f"{s3_bucket}/te") == meta
    assert load_index(f"{s3_bucket}/te").lineage["sources"] == [remote]


@pytest.mark.parametrize("layout", ["fleurs", "indicvoices"])
def test_archives_and_shards_read_from_s3_in_parts_ahead_are_the_local_bytes(layout, tmp_path, s3_bucket, monkeypatch):
    """A tar.gz streamed and parquet row groups read through parts fetched ahead (READ_PART made
    tiny, so these small files take dozens) hand a worker the very members and rows the local
    files do."""
    import itertools

    import data_prep.sources as sources
    import pipeline.storage.store as store_module

    def contents(src: str) -> dict[str, bytes]:
        out = {}
        for _, batch in itertools.groupby(scan_sources([src]).items, sources.batch_key):
            for item, audio, name in sources.read_items(list(batch)):
                assert audio is not None, name
                with (open(audio, "rb") if isinstance(audio, str) else audio) as f:
                    out[item.name] = f.read()
        return out

    folder = LAYOUTS[layout][0](tmp_path / "src")
    remote = upload(folder, f"{s3_bucket}/corpus/{folder.name}")
    monkeypatch.setattr(store_module, "READ_PART", 4096)
    fetched = []
    get_range = store_module.S3Store.get_range
    monkeypatch.setattr(store_module.S3Store, "get_range",
                        lambda self, key, start, length: fetched.append(length) or get_range(self, key, start, length))
    local = contents(str(folder))
    assert len(local) == LAYOUTS[layout][2] and contents(remote) == local
    assert fetched.count(4096) > 20  # parts, not one GET a read


def test_a_row_group_is_read_in_one_job_when_every_worker_has_work(tmp_path):
    """A job reads its container from the start to its last item, so a hub row group (100 rows) is
    one job, not four of 32 reading it 2.9 times over; with little work containers are split so that
    more workers have some, into CONTAINER_SPLITS jobs at most, and a job never mixes containers."""
    from data_prep.prep import CONTAINER_SPLITS, batched, plan_splits
    from data_prep.sources import batch_key

    rows = [indicvoices_row(i, f"s{i % 7}", data=b"x") for i in range(1000)]
    write_parquet(tmp_path / "te" / "train-00000-of-00001.parquet", rows, indicvoices_schema(), 100)
    items = scan_sources([str(tmp_path / "te")]).items
    plan = plan_splits(items, CFG)
    todo = sorted(((split, pos, item) for split, its in plan.items() for pos, item in enumerate(its)),
                  key=lambda t: t[2].name)
    assert len(plan) == 3  # a row group's rows go to every split, and its job takes them all

    jobs = batched(todo, workers=2, identities={})  # rows: their file's identity from the scan
    assert [len(job) for job in jobs] == [100] * 10
    assert all(len({batch_key(item) for _, _, item in job}) == 1 for job in jobs)
    for workers in (8, 64):  # a group cut into CONTAINER_SPLITS at most, however many workers want work
        jobs = batched(todo, workers=workers, identities={})
        assert [len(job) for job in jobs] == [100 // CONTAINER_SPLITS] * (10 * CONTAINER_SPLITS)
        assert all(len({batch_key(item) for _, _, item in job}) == 1 for job in jobs)


def test_a_large_container_is_cut_into_few_jobs_whatever_the_workers():
    """A job reads its container up to its last item, so a container cut into k jobs is read
    (k+1)/2 times over: a FLEURS archive of 2,300 members on 16 workers was 48 jobs, each streaming
    and decompressing the archive from its start (24.5 times over); it is BATCH_ITEMS a job now,
    and a small container CONTAINER_SPLITS jobs at most, on any number of workers."""
    from data_prep.prep import BATCH_ITEMS, CONTAINER_SPLITS, batched
    from data_prep.sources import SourceItem

    def archive(name: str, n: int) -> list:
        return [("train", i, SourceItem(f"/c/{name}.tar.gz", f"c/{name}/{i:05d}.wav",
                                        member=f"tar:{name}/{i:05d}.wav")) for i in range(n)]

    fleurs = archive("train", 2300) + archive("zdev", 300)
    for workers in (2, 16, 128):
        jobs = batched(fleurs, workers, identities={})
        assert [entry for job in jobs for entry in job] == fleurs
        train = [len(job) for job in jobs if job[0][2].path == "/c/train.tar.gz"]
        assert len(train) == math.ceil(2300 / BATCH_ITEMS) and max(train) <= BATCH_ITEMS
        assert max(train) - min(train) <= 1
        dev = [len(job) for job in jobs if job[0][2].path == "/c/zdev.tar.gz"]
        assert len(dev) == (2 if workers == 2 else CONTAINER_SPLITS)  # 2: its BATCH_ITEMS cut is a fair share
    assert [len(job) for job in batched(archive("one", 40), 16, identities={})] == [10] * CONTAINER_SPLITS


def test_plain_files_go_to_workers_a_few_to_a_job_in_order(tmp_path):
    """A job has a cost of its own (~0.8 ms here, ~13% of an 8-second file's prep): plain files
    share jobs, FILES_PER_JOB and JOB_BYTES at most, fewer when every worker must have some; in
    order."""
    from data_prep.prep import FILES_PER_JOB, JOB_BYTES, batched, plan_splits
    from data_prep.sources import file_identity, item_bytes, unlisted_paths

    manifest = write_manifest_corpus(tmp_path / "c", n_files=300, n_speakers=10, seconds=0.1)
    items = scan_sources([str(manifest)]).items
    plan = plan_splits(items, CFG)
    todo = sorted(((split, pos, item) for split, its in plan.items() for pos, item in enumerate(its)),
                  key=lambda t: t[2].name)
    def identities():  # as run_prep reads them on one machine
        return {path: file_identity(path) for path in unlisted_paths(items)}

    jobs = batched(todo, workers=2, identities=identities())
    assert [len(job) for job in jobs] == [FILES_PER_JOB] * 9 + [300 - 9 * FILES_PER_JOB]
    assert [entry for job in jobs for entry in job] == todo
    assert max(len(job) for job in batched(todo, workers=8, identities=identities())) == 300 // (4 * 8)

    # long files fewer to a job (JOB_BYTES), one longer than that alone: a job of 32 hour-long
    # recordings would hold back the progress, and the run's end on one worker
    long = {10: 6 << 20, 11: 6 << 20, 12: 6 << 20, 40: 20 << 20}
    for i, nbytes in long.items():
        with open(todo[i][2].path, "r+b") as f:
            f.truncate(nbytes)  # only their sizes count here
    sizes = identities()
    jobs = batched(todo, workers=2, identities=sizes)
    assert [len(job) for job in jobs[:4]] == [12, 28, 1, FILES_PER_JOB] and jobs[2] == [todo[40]]
    assert all(sum(item_bytes(item, sizes) for _, _, item in job) <= JOB_BYTES for job in jobs[:2])
    # the sizes are the identities' (on a cluster its nodes read them), not the driver's file system
    sizes = {item.path: (1 << 30 if i == 100 else 0, 0, "") for i, (_, _, item) in enumerate(todo)}
    jobs = batched(todo, workers=2, identities=sizes)
    assert jobs[0] == todo[:FILES_PER_JOB] and [todo[100]] in jobs


def test_a_jobs_remote_files_are_fetched_ahead_and_one_it_may_not_read_is_its_reject_alone(tmp_path, s3_bucket,
                                                                                          monkeypatch):
    """prep gives a worker several remote files a job, fetched FETCH_AHEAD at once while it preps
    one (a GET's 20-50 ms on S3 is more than an 8-second file's prep); a file it may not read
    (AccessDenied) is that file's reject, the job's other files are prepped."""
    from data_prep.sources import FETCH_AHEAD
    from run_fixtures import CountingProxy

    n_files = 4 * (FETCH_AHEAD + 2)  # one worker: jobs of a quarter of them, more than FETCH_AHEAD each
    manifest = write_manifest_corpus(tmp_path / "c", n_files=n_files, n_speakers=4, seconds=1.0)
    remote = upload(tmp_path / "c", f"{s3_bucket}/c")
    denied = sorted(scan_sources([str(manifest)]).items, key=lambda i: i.name)[2].path.rsplit("/", 1)[1]
    cfg = PrepConfig(workers=1, min_seconds=0.5, val_fraction=0, test_fraction=0)
    with CountingProxy(os.environ["AWS_ENDPOINT_URL"], latency_s=0.2) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        proxy.denied.add(denied)
        summary = run_prep([f"{remote}/manifest.tsv"], str(tmp_path / "out"), cfg, progress=False)
    assert proxy.most_reads_in_flight == FETCH_AHEAD  # with a job a file: 1
    assert summary.files_ok == n_files - 1
    (reject,) = summary.rejects
    assert reject["path"].endswith(denied) and "AccessDenied" in reject["reason"], reject


def test_a_bucket_of_parquet_shards_is_scanned_several_files_at_once_in_order(tmp_path, s3_bucket, monkeypatch):
    """Scanning reads each shard's footer and small columns (a few GETs a file, 20-50 ms each on
    S3): files are read SCAN_AT_ONCE at a time, and the items and rejects come out as one file at a
    time gives them; the small columns' GETs fetch what they need, not a buffer's 1 MB."""
    import data_prep.sources.parquet as parquet
    from run_fixtures import CountingProxy

    lang = tmp_path / "te"
    for k in range(10):  # row groups of 2 rows, ~100 KB of audio apart
        rows = [indicvoices_row(6 * k + i, f"spk{i % 3}", x=clip(i, seconds=3.0)) for i in range(6)]
        write_parquet(lang / f"train-{k:05d}-of-00010.parquet", rows, indicvoices_schema(), 2)
    good = (lang / "train-00004-of-00010.parquet").read_bytes()
    (lang / "train-00004-of-00010.parquet").write_bytes(good[: len(good) // 2])  # a truncated shard: a reject
    remote = upload(lang, f"{s3_bucket}/te")
    scans = {}
    with CountingProxy(os.environ["AWS_ENDPOINT_URL"], latency_s=0.1) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        for at_once in (1, parquet.SCAN_AT_ONCE):
            monkeypatch.setattr(parquet, "SCAN_AT_ONCE", at_once)
            proxy.most_in_flight, fetched = 0, proxy.get_bytes
            scan = scan_sources([remote])
            scans[at_once] = (scan.items, scan.rejects, proxy.most_in_flight)
    (items, rejects, one_in_flight), (items_, rejects_, most_in_flight) = scans.values()
    footers = 10 * (64 << 10)  # pyarrow's first read of a file: its last 64 KB
    assert proxy.get_bytes - fetched < footers + 10 * 3 * 2000, (proxy.get_bytes - fetched) / 1e6
    assert len(items) == 54 and [r["path"] for r in rejects] == [f"{remote}/train-00004-of-00010.parquet"]
    assert (items_, rejects_) == (items, rejects)
    assert one_in_flight == 1 and most_in_flight >= 8, most_in_flight


def test_cli_preps_a_bucket_of_hub_parquet_shards_to_s3(tmp_path, s3_bucket, capsys):
    """The issue's own command: `telucodec prep s3://BUCKET/indicvoices-te/ --out s3://BUCKET/te`."""
    upload(write_indicvoices(tmp_path), f"{s3_bucket}/indicvoices-te")
    assert main(["prep", f"{s3_bucket}/indicvoices-te/", "--out", f"{s3_bucket}/te", "prep.min_seconds=0.5"]) == 0
    out = capsys.readouterr().out
    assert f"prep -> {s3_bucket}/te" in out and "file(s) rejected" not in out
    assert load_index(f"{s3_bucket}/te").lineage["files_ok"] == 12


def test_keep_source_splits_keeps_the_corpus_split(tmp_path):
    folder = write_kathbath(tmp_path)
    cfg = PrepConfig(workers=1, min_seconds=0.5, keep_source_splits=True)
    summary = run_prep([str(folder)], str(tmp_path / "out"), cfg, progress=False)
    assert {s: t["samples"] for s, t in summary.splits.items()} == {"train": 4, "val": 2, "test": 2}
    split_of = {"train": "train", "valid": "val", "test_known": "test"}
    assert all(split_of[m["source_split"]] == m["split"] for m in samples_meta(str(tmp_path / "out")).values())


def test_named_columns_and_a_parquet_without_the_audio_column(tmp_path, capsys):
    import pyarrow as pa

    rows = [{"clip": r["audio_filepath"], "sentence": r["text"], "client_id": r["speaker_id"]}
            for r in (indicvoices_row(i, f"s{i % 3}") for i in range(4))]
    schema = pa.schema([("clip", indicvoices_schema().field("audio_filepath").type), ("sentence", pa.string()),
                        ("client_id", pa.string())])
    path = write_parquet(tmp_path / "cv" / "train-00000-of-00001.parquet", rows, schema)
    with pytest.raises(SourceError, match=r"no audio column .* it has: clip, sentence, client_id"):
        scan_sources([str(path)])
    assert main(["prep", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "it has: clip, sentence, client_id" in err and "Traceback" not in err
    assert main(["prep", str(path), "--out", str(tmp_path / "out"), "--columns", "audio=clip,text=sentence,speaker=client_id",
                 "prep.min_seconds=0.5"]) == 0
    meta = samples_meta(str(tmp_path / "out"))
    assert sorted((m["text"], m["speaker"]) for m in meta.values()) == [(f"వాక్యం {i}", f"s{i % 3}") for i in range(4)]
    assert main(["prep", str(path), "--out", str(tmp_path / "o2"), "--columns", "audio=nope"]) == 2
    assert "no column 'nope' (for audio)" in capsys.readouterr().err
    assert main(["prep", str(path), "--out", str(tmp_path / "o2"), "--columns", "sound=clip"]) == 2
    assert "expected ROLE=COLUMN pairs" in capsys.readouterr().err


def test_bad_rows_truncated_parquet_and_truncated_tar_are_rejects_and_the_run_goes_on(tmp_path):
    lang = write_indicvoices(tmp_path / "iv", rows_per_shard=(4,), valid_rows=0)
    (lang / "valid-00000-of-00001.parquet").unlink()
    rows = [indicvoices_row(i, "x") for i in range(3)]
    rows[1]["audio_filepath"] = {"bytes": b"RIFF\x00\x00not audio at all", "path": "broken.wav"}
    rows[2]["audio_filepath"] = {"bytes": None, "path": "not-beside-it.flac"}
    write_parquet(lang / "extra-00000-of-00001.parquet", rows, indicvoices_schema(), row_group_size=1)
    whole = (lang / "train-00000-of-00001.parquet").read_bytes()
    (lang / "cut-00000-of-00001.parquet").write_bytes(whole[: len(whole) // 2])
    fleurs = write_fleurs(tmp_path / "fl", splits=(("train", 4),))
    archive = fleurs / "audio" / "train.tar.gz"
    archive.write_bytes(archive.read_bytes()[:-3000])  # the last member(s) cut off

    summary = run_prep([str(lang), str(fleurs)], str(tmp_path / "out"), CFG, progress=False)
    reasons = {r["path"]: r["reason"] for r in summary.rejects}
    extra = str(lang / "extra-00000-of-00001.parquet")
    assert "cannot decode" in reasons[f"{extra} (row 1)"]
    assert "not beside the parquet" in reasons[f"{extra} (row 2)"]
    assert "not a readable parquet file" in reasons[str(lang / "cut-00000-of-00001.parquet")]
    cut_members = [r for p, r in reasons.items() if p.startswith(str(archive))]
    assert cut_members and all("truncated?" in r for r in cut_members)
    assert summary.files_ok == 4 + 1 + 4 - len(cut_members)  # every whole row and member made it


def test_a_killed_prep_of_a_parquet_source_resumes_byte_identical(tmp_path):
    lang = write_indicvoices(tmp_path / "src", rows_per_shard=(12, 12), valid_rows=4, speakers=6, row_group_size=3)
    args = ["prep.shard_max_samples=2", "prep.workers=1", "prep.min_seconds=0.5"]
    reference, out = tmp_path / "ref", tmp_path / "killed"
    assert main(["prep", str(lang), "--out", str(reference), *args]) == 0
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", "prep", str(lang), "--out", str(out), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sigkill_once_exists(proc, out / "_prep" / "train-000002.json", timeout=120)
    assert not (out / "index.json").exists()
    summary = run_prep([str(lang)], str(out), PrepConfig(shard_max_samples=2, workers=1, min_seconds=0.5),
                       progress=False)
    assert summary.resumed_shards >= 3
    assert shard_bytes(str(out)) == shard_bytes(str(reference))
    assert (out / "rejects.jsonl").read_bytes() == (reference / "rejects.jsonl").read_bytes()


def test_a_worker_reads_a_parquet_row_group_in_bounded_memory(tmp_path):
    """One row group of 64 rows x ~1.9 MB of FLAC (120 MB): the worker's peak memory grows by a
    bounded amount, not by the row group (measured: +37 MB for 10 rows, +60 MB for 50 and for 110 rows
    of a 204 MB row group, where reading the row group whole grows ~260 MB)."""
    import numpy as np

    rng = np.random.default_rng(0)
    big = [indicvoices_row(i, "s", x=(0.3 * rng.standard_normal(16000 * 60)).astype(np.float32)) for i in range(2)]
    rows = [big[i % 2] | {"text": f"row {i}"} for i in range(64)]
    path = write_parquet(tmp_path / "big" / "train-00000-of-00001.parquet", rows, indicvoices_schema(),
                         row_group_size=64)
    everything = sum(len(r["audio_filepath"]["bytes"]) for r in rows)
    bound = 90e6
    assert everything > 1.3 * bound
    probe = rf"""
import re, sys
def peak():  # VmHWM: this process's own high-water mark (ru_maxrss would carry the forking parent's)
    return int(re.search(r"VmHWM:\s*(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
from data_prep.sources import scan_sources, read_items
items = scan_sources([{str(path)!r}]).items
before = peak()
n = 0
for item, audio, name in read_items(items):
    n += len(audio.read()); audio.close()
print(n, peak() - before)
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    total, grew = map(int, done.stdout.split())
    assert total == everything
    assert grew < bound, f"peak grew {grew / 1e6:.0f} MB reading a {everything / 1e6:.0f} MB row group"


def test_an_s3_source_with_a_wrong_endpoint_or_no_credentials_fails_fast_in_one_line(tmp_path, s3_bucket,
                                                                                    monkeypatch, capsys):
    upload(write_kathbath(tmp_path, splits=(("train", 1),)), f"{s3_bucket}/kb")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    started = time.monotonic()
    assert main(["prep", f"{s3_bucket}/kb", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the S3 endpoint" in err and len(err.strip().splitlines()) == 1
    assert time.monotonic() - started < 60
    monkeypatch.undo()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert main(["prep", f"{s3_bucket}/kb", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no AWS credentials found" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_manifest_on_s3_resolves_paths_against_its_own_url(tmp_path, s3_bucket):
    from audio_fixtures import write_manifest_corpus

    write_manifest_corpus(tmp_path / "c", n_files=4, n_speakers=2, seconds=1.0)
    remote = upload(tmp_path / "c", f"{s3_bucket}/c")
    (tmp_path / "c" / "escape.tsv").write_text("path\ttext\tspeaker\n../other/x.wav\thi\ts\n")
    upload(tmp_path / "c", f"{s3_bucket}/c")
    scan = scan_sources([f"{remote}/manifest.tsv"])
    assert sorted(i.path for i in scan.items) == sorted(f"{remote}/wavs/spk{i % 2}/utt{i:03d}.wav" for i in range(4))
    assert all(len(i.identity) == 2 for i in scan.items)  # size and ETag from the listing
    escaped = scan_sources([f"{remote}/escape.tsv"])
    assert not escaped.items and "outside the manifest's folder" in escaped.rejects[0]["reason"]
    with pytest.raises(PrepError, match="no such file"):
        run_prep([f"{remote}/missing.tsv"], str(tmp_path / "o"), CFG, progress=False)
