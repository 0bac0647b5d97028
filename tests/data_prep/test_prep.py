"""prep end to end: real files -> shards on a real local S3 server -> verify -> read back."""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds

from audio_fixtures import write_bad_files, write_manifest_corpus
from data_prep.corpus import synthesize_corpus
from data_prep.prep import PrepError, run_prep
from fault_fixtures import sigkill_once_exists
from jobs.cli import main
from pipeline.config import PrepConfig
from pipeline.storage.shards import DatasetError, load_index, read_samples, verify_dataset
from pipeline.storage.store import open_store

SMALL = PrepConfig(shard_max_samples=4, workers=2, val_fraction=0.2, test_fraction=0.2)


@pytest.fixture
def corpus(tmp_path):
    manifest = write_manifest_corpus(tmp_path / "corpus", n_files=14, n_speakers=7, seconds=2.5)
    bad = write_bad_files(tmp_path / "bad")
    return manifest, tmp_path / "bad", bad


def test_prep_to_s3_then_verify_and_read_back(corpus, s3_bucket, tmp_path):
    manifest, bad_dir, bad = corpus
    url = s3_bucket + "/te-v1"
    summary = run_prep([str(manifest), str(bad_dir)], url, SMALL, progress=False)
    index = load_index(url)
    # every bad file is rejected with its reason; the good ones all made it
    reasons = {Path(r["path"]).name: r["reason"] for r in summary.rejects}
    assert set(reasons) == set(bad)
    for name, word in bad.items():
        assert word in reasons[name]
    rejects = [json.loads(l) for l in open_store(url).get_text("rejects.jsonl").splitlines()]
    assert {Path(r["path"]).name for r in rejects} == set(bad)
    assert summary.files_ok == 14
    assert set(index.splits) == {"train", "val", "test"}
    assert sum(summary.clipped_files.values()) == 4  # utt 0, 4, 8, 12 peak at 1.2
    assert verify_dataset(url) == []
    read_back_with_stock_webdataset(url, index, tmp_path / "copy")
    # and through the project's reader
    assert sum(1 for _ in read_samples(url, "train")) == index.splits["train"]["samples"]


def read_back_with_stock_webdataset(url, index, local: Path) -> None:
    """Copy the shards to plain files and read them with stock webdataset + soundfile (not our
    reader): every sample in [-1, 1] with full metadata, counts equal the index, and no speaker
    in two splits."""
    local.mkdir()
    store = open_store(url)
    counts, speakers = {}, {}
    for info in index.shards:
        (local / info.name).write_bytes(store.get(info.name))
    for split in index.splits:
        urls = [str(local / s.name) for s in index.split_shards(split)]
        for item in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
            audio, sr = sf.read(io.BytesIO(item["flac"]), dtype="float32")
            meta = json.loads(item["json"])
            assert sr == 16000 and audio.ndim == 1 and np.abs(audio).max() <= 1.0
            assert meta["seconds"] == pytest.approx(len(audio) / sr, abs=1e-5)
            assert set(meta) >= {"source", "speaker", "text", "seconds", "sample_rate", "source_peak",
                                 "clipped_samples"}
            if meta["source_peak"] > 1:
                assert meta["clipped_samples"] > 0
            counts[split] = counts.get(split, 0) + 1
            speakers.setdefault(meta["speaker"], set()).add(split)
    assert counts == {s: t["samples"] for s, t in index.splits.items()}
    assert all(len(splits) == 1 for splits in speakers.values())


@pytest.mark.slow
def test_tts_corpus_with_bad_files_to_s3_end_to_end(s3_bucket, tmp_path, capsys):
    """The issue's end-to-end: synthesized Telugu corpus (over-range files included) plus corrupt
    files -> prep to the local S3 server (CLI) -> shards verify (CLI) -> stock read-back."""
    corpus = synthesize_corpus(tmp_path / "corpus", minutes=1.0, seed=3)
    assert corpus.over_range >= 1
    bad = write_bad_files(tmp_path / "bad")
    url = s3_bucket + "/tts"
    assert main(["prep", str(corpus.manifest), str(tmp_path / "bad"), "--out", url,
                 "prep.shard_max_samples=8"]) == 0
    out = capsys.readouterr().out
    for name in bad:
        assert name in out  # every corrupt file is named in the end-of-run summary
    assert main(["shards", "verify", url]) == 0
    index = load_index(url)
    rejected = {Path(json.loads(l)["path"]).name for l in open_store(url).get_text("rejects.jsonl").splitlines()}
    assert set(bad) <= rejected
    assert sum(index.lineage["clipped_files"].values()) >= 1
    read_back_with_stock_webdataset(url, index, tmp_path / "copy")


def test_same_input_same_shards_and_rerun_is_a_no_op(corpus, tmp_path):
    manifest, _, _ = corpus
    a = run_prep([str(manifest)], str(tmp_path / "a"), SMALL, progress=False)
    b = run_prep([str(manifest)], str(tmp_path / "b"), PrepConfig(**{**SMALL.__dict__, "workers": 1}), progress=False)
    assert [(s.name, s.digest) for s in load_index(str(tmp_path / "a")).shards] == \
           [(s.name, s.digest) for s in load_index(str(tmp_path / "b")).shards]
    again = run_prep([str(manifest)], str(tmp_path / "a"), SMALL, progress=False)
    assert again.already_complete and again.splits == a.splits and not b.already_complete


def test_different_dataset_is_refused_unless_overwrite(corpus, tmp_path):
    manifest, _, _ = corpus
    out = str(tmp_path / "ds")
    run_prep([str(manifest)], out, SMALL, progress=False)
    other = PrepConfig(**{**SMALL.__dict__, "max_seconds": 1.5})
    with pytest.raises(PrepError, match="different dataset"):
        run_prep([str(manifest)], out, other, progress=False)
    summary = run_prep([str(manifest)], out, other, overwrite=True, progress=False)
    assert load_index(out).config["prep"]["max_seconds"] == 1.5
    names = {o.key for o in open_store(out).list()}
    assert names == {s.name for s in load_index(out).shards} | {"index.json", "rejects.jsonl"}
    assert summary.samples == load_index(out).splits["train"]["samples"] + sum(
        t["samples"] for s, t in load_index(out).splits.items() if s != "train")


def test_kill_and_rerun_completes_without_loss_or_duplicates(tmp_path):
    """A prep killed mid-run (bad files already rejected before the kill), then run again: the same
    shards, rejects.jsonl and index.json (less its creation time) as an uninterrupted run, verified."""
    manifest = write_manifest_corpus(tmp_path / "corpus", n_files=80, n_speakers=8, seconds=4.0)
    bad = write_bad_files(tmp_path / "bad")
    sources = [str(tmp_path / "bad"), str(manifest)]
    cfg_args = ["prep.shard_max_samples=2", "prep.workers=1"]
    reference = tmp_path / "ref"
    assert main(["prep", *sources, "--out", str(reference), *cfg_args]) == 0
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "jobs.cli", "prep", *sources, "--out", str(out), *cfg_args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sigkill_once_exists(proc, out / "_prep" / "train-000002.json", timeout=120)
    assert not (out / "index.json").exists()  # an interrupted prep is not a dataset
    with pytest.raises(DatasetError, match="not a dataset"):
        load_index(str(out))
    carried = [r for f in (out / "_prep").glob("*.json") for r in json.loads(f.read_text()).get("rejects", [])]
    assert carried, "no reject was recorded before the kill: the test would not exercise carrying them"
    # a record write killed between naming its file and renaming it leaves a hidden temporary (rare;
    # the likely cause of this test's one CI failure, `_prep` left behind); the rerun clears it too
    (out / "_prep" / ".train-000099.json.tmp-0123456789ab").write_text("{")
    summary = run_prep(sources, str(out), PrepConfig(shard_max_samples=2, workers=1), progress=False)
    assert summary.resumed_shards >= 3
    assert [(s.name, s.digest) for s in load_index(str(out)).shards] == \
           [(s.name, s.digest) for s in load_index(str(reference)).shards]
    assert (out / "rejects.jsonl").read_bytes() == (reference / "rejects.jsonl").read_bytes()
    assert {Path(json.loads(line)["path"]).name for line in (out / "rejects.jsonl").open()} == set(bad)

    def index_less_created(folder):
        index = json.loads((folder / "index.json").read_text())
        return {k: v for k, v in index.items() if k != "created"}
    assert index_less_created(out) == index_less_created(reference)
    assert verify_dataset(str(out)) == []
    assert not (out / "_prep").exists(), sorted(p.name for p in (out / "_prep").iterdir())


def test_tampered_shard_fails_verify(corpus, tmp_path, capsys):
    manifest, _, _ = corpus
    out = tmp_path / "ds"
    run_prep([str(manifest)], str(out), SMALL, progress=False)
    assert main(["shards", "verify", str(out)]) == 0
    victim = out / "train-000001.tar"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["shards", "verify", str(out)]) == 1
    err = capsys.readouterr().err
    assert "train-000001.tar" in err and "xxh3_128 differs from the index" in err and "train-000000.tar" not in err


def test_nothing_usable_exits_non_zero(tmp_path, capsys):
    write_bad_files(tmp_path / "bad")
    assert main(["prep", str(tmp_path / "bad"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "nothing usable" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "index.json").exists()


def test_cli_ls_and_bad_usage(corpus, tmp_path, capsys):
    manifest, _, _ = corpus
    out = tmp_path / "ds"
    assert main(["prep", str(manifest), "--out", str(out), "prep.shard_max_samples=4"]) == 0
    capsys.readouterr()
    assert main(["shards", "ls", str(out)]) == 0
    table = capsys.readouterr().out
    assert "train" in table and "hours" in table
    assert main(["shards", "ls", str(out), "--json"]) == 0
    totals = json.loads(capsys.readouterr().out)
    assert totals == load_index(str(out)).splits
    for argv, needle in [(["shards", "ls", str(tmp_path / "nope")], "not a dataset"),
                         (["prep", str(tmp_path / "nope"), "--out", str(out)], "no such file or folder"),
                         (["prep", str(manifest), "--out", str(out), "prep.max_seconds=x"], "prep.max_seconds"),
                         (["shards", "ls", "gs://x/y"], "unsupported storage scheme")]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, err


def test_reader_refuses_unfinished_prefix(tmp_path):
    open_store(str(tmp_path)).put("train-000000.tar", b"")
    with pytest.raises(DatasetError, match="not a dataset"):
        list(read_samples(str(tmp_path), "train"))
