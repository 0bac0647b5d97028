"""reshard end to end: small real datasets on a real local S3 server and in folders -> new shards -> check."""

import gc
import hashlib
import io
import json
import shutil
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from audio_fixtures import tone
from data_prep.reshard import (ReshardError, ReshardOptions, check_split, keys_digest, plan_split, reshard)
from jobs.cli import main
from pipeline.storage.shards import (DatasetIndex, HashingWriter, ShardWriter, new_hasher, decode_flac, encode_sample, iter_tar, load_index,
                             read_samples, upgrade_index, verify_dataset, write_index)
from pipeline.storage.store import WRITE_PIECE, open_store

RATE = 16000
LAYOUT = {"train": (7, 3, 12, 1, 9), "val": (5, 2)}  # samples per source shard, deliberately uneven
QUIET = {"progress": False}


def build_source(url: str) -> None:
    """39 short tone-and-noise clips of 0.3-1.5 s in uneven shards, plus index.json."""
    store, rng, n, infos = open_store(url), np.random.default_rng(0), 0, []
    for split, sizes in LAYOUT.items():
        for j, size in enumerate(sizes):
            with ShardWriter(store, split, j) as w:
                for _ in range(size):
                    audio = tone(rng.uniform(0.3, 1.5), RATE, freq=rng.uniform(120, 300), seed=n)
                    w.add(encode_sample(f"utt{n:04d}", audio, RATE, {"speaker": f"spk{n % 4}", "text": "వాక్యం"}))
                    n += 1
            infos.append(w.info)
    write_index(store, DatasetIndex(shards=infos, sample_rate=RATE, config={"prep": {"synthetic": True}}))


@pytest.fixture(scope="module")
def local_source(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("src") / "te")
    build_source(url)
    return url


@pytest.fixture
def s3_source(local_source, s3_bucket) -> str:
    """The same dataset copied object by object to the local S3 server."""
    return copy_dataset(local_source, s3_bucket + "/te")


def shard_keys(url: str) -> dict[str, list[list[str]]]:
    """Keys of every shard of a dataset, per split, in order (read from the tars themselves)."""
    store, out = open_store(url), {}
    for info in load_index(url).shards:
        out.setdefault(info.split, []).append([k for k, _ in iter_tar(io.BytesIO(store.get(info.name)))])
    return out


def members(url: str) -> dict[str, dict[str, bytes]]:
    store, out = open_store(url), {}
    for info in load_index(url).shards:
        out.update(iter_tar(io.BytesIO(store.get(info.name))))
    return out


def flat(keys: dict[str, list[list[str]]]) -> dict[str, list[str]]:
    return {split: [k for shard in shards for k in shard] for split, shards in keys.items()}


def copy_dataset(url: str, to: str, sample_ranges: bool = True) -> str:
    """A copy of the dataset at `url`, its index without sample ranges (as an older prep wrote it) unless
    `sample_ranges`."""
    src, dst = open_store(url), open_store(to)
    for obj in src.list():
        dst.put(obj.key, src.get(obj.key))
    if not sample_ranges:
        index = load_index(dst)
        for info in index.shards:
            info.sample_ranges = None
        write_index(dst, index)
    return dst.url


def assert_ranges_read_back(url: str) -> None:
    """Every sample range in the index starts at its .flac member and holds FLAC of `frames` frames."""
    store = open_store(url)
    for info in load_index(url).shards:
        keys = [k for k, _ in iter_tar(io.BytesIO(store.get(info.name)))]
        assert info.sample_ranges is not None and len(info.sample_ranges) == len(keys) == info.samples
        for key, r in zip(keys, info.sample_ranges):
            assert store.get_range(info.name, r.start, 100).rstrip(b"\0") == f"{key}.flac".encode()
            flac = store.get_range(info.name, r.flac_offset, r.flac_size)
            audio, rate = decode_flac(flac)
            assert flac[:4] == b"fLaC" and len(audio) == r.frames and rate == RATE


def test_s3_to_s3_balanced_for_ranks_copies_bytes_as_they_are(s3_source, s3_bucket):
    dst = s3_bucket + "/te-r3"
    summary = reshard(s3_source, dst, ReshardOptions(samples_per_shard=5, ranks=3), **QUIET)
    index, keys = load_index(dst), shard_keys(dst)
    for split, shards in keys.items():
        sizes = [len(s) for s in shards]
        assert len(sizes) % 3 == 0 and max(sizes) - min(sizes) <= 1 and max(sizes) <= 5, (split, sizes)
    assert [len(s) for s in keys["train"]] == [4, 4, 4, 4, 4, 3, 3, 3, 3]  # 32 samples: 7 -> 9 shards
    assert flat(keys) == flat(shard_keys(s3_source))  # source order kept without --shuffle
    assert members(dst) == members(s3_source)  # FLAC and JSON bytes copied, never re-encoded
    assert index.splits["val"]["seconds"] == pytest.approx(load_index(s3_source).splits["val"]["seconds"])
    assert index.lineage["source"] == s3_source and len(index.lineage["source_index_sha256"]) == 64
    assert index.config["reshard"]["ranks"] == 3 and summary.written_shards == len(index.shards)
    assert not open_store(dst).list("_reshard/")
    assert verify_dataset(dst) == []
    again = reshard(s3_source, dst, ReshardOptions(samples_per_shard=5, ranks=3), **QUIET)
    assert again.noop and again.splits == index.splits


def test_local_to_s3_and_back_reads_through_the_project_reader(local_source, s3_bucket, tmp_path):
    up = s3_bucket + "/up"
    reshard(local_source, up, ReshardOptions(shard_mb=0.05), **QUIET)
    down = str(tmp_path / "down")
    reshard(up, down, ReshardOptions(splits=("val",), shards=2), **QUIET)
    assert len(load_index(up).split_shards("train")) > len(LAYOUT["train"])  # ~50 kB shards
    assert set(load_index(down).splits) == {"val"} and len(load_index(down).shards) == 2
    assert flat(shard_keys(down))["val"] == flat(shard_keys(local_source))["val"]
    assert verify_dataset(up) == [] and verify_dataset(down) == []
    source = {s.key: s for s in read_samples(local_source, "val")}
    for sample in read_samples(down, "val"):
        assert sample.sample_rate == RATE and np.array_equal(sample.audio, source[sample.key].audio)
        assert sample.meta == source[sample.key].meta
    assert load_index(down).lineage["source_lineage"]["source"] == local_source


def test_shuffle_is_deterministic_and_spill_waves_do_not_change_it(local_source, tmp_path):
    def run(name, **kw):
        url = str(tmp_path / name)
        reshard(local_source, url, ReshardOptions(shuffle=True, ranks=2, samples_per_shard=6, **kw), **QUIET)
        assert verify_dataset(url) == []
        return url, shard_keys(url)

    a, keys_a = run("a", seed=1)
    _, keys_b = run("b", seed=1, spill_gb=1e-5, io_threads=1)  # one destination shard per source pass
    _, keys_c = run("c", seed=2)
    assert keys_a == keys_b
    assert flat(keys_a) != flat(keys_c)
    source = flat(shard_keys(local_source))
    for keys in (keys_a, keys_c):
        for split, order in flat(keys).items():
            assert sorted(order) == sorted(source[split]) and order != source[split]
        sizes = [len(s) for s in keys["train"]]
        assert len(sizes) % 2 == 0 and max(sizes) - min(sizes) <= 1
    assert [s.digest for s in load_index(a).shards] == [s.digest for s in load_index(str(tmp_path / "b")).shards]


def test_plain_repack_copies_byte_ranges_to_the_same_shards_as_parsing(local_source, tmp_path):
    unranged = copy_dataset(local_source, str(tmp_path / "unranged"), sample_ranges=False)
    for name, opts in [("order", ReshardOptions(samples_per_shard=5, ranks=2)),
                       ("shuffle", ReshardOptions(shuffle=True, seed=3, shards=2, spill_gb=1e-5))]:
        ranged_url, parsed_url = str(tmp_path / f"{name}-ranged"), str(tmp_path / f"{name}-parsed")
        assert reshard(local_source, ranged_url, opts, **QUIET).copied_ranges == 39  # every sample, no parse
        assert reshard(unranged, parsed_url, opts, **QUIET).copied_ranges == 0  # the old path
        ranged, parsed = load_index(ranged_url), load_index(parsed_url)
        assert [(s.name, s.digest, s.sample_ranges) for s in ranged.shards] == \
               [(s.name, s.digest, s.sample_ranges) for s in parsed.shards]
        for split, totals in ranged.splits.items():  # seconds from frames, or from each sample's json
            assert totals["seconds"] == pytest.approx(parsed.splits[split]["seconds"], abs=1e-5)
        assert verify_dataset(ranged_url) == [] and verify_dataset(parsed_url) == []
        assert_ranges_read_back(ranged_url)


@pytest.mark.parametrize("shuffle", [False, True])
def test_a_repack_leaves_no_file_descriptor_or_mapping_open(local_source, tmp_path, shuffle):
    """Copied ranges hold their source shard's mapping (a shuffle holds them until its shards are
    written); it goes with the run, and so does its file."""
    def held() -> tuple[int, int]:
        gc.collect()
        maps = Path("/proc/self/maps").read_text()
        return len(os.listdir("/proc/self/fd")), sum(str(Path(local_source).resolve()) in line
                                                     for line in maps.splitlines())
    before = held()
    for n in range(3):
        reshard(local_source, str(tmp_path / f"out{n}"), ReshardOptions(samples_per_shard=7, shuffle=shuffle),
                **QUIET)
    assert held() == before and before[1] == 0


def test_a_shuffle_spills_only_what_it_cannot_hold_in_place(local_source, s3_source, tmp_path, monkeypatch):
    """A shuffled re-pack of a local source holds views of its shards' own files (nothing copied to
    the spill); a remote source's ranges live in temporary copies, so they are spilled, and so are
    a local split's with more source shards than a process may keep mapped."""
    from data_prep.reshard.transfer import Spill

    spilled, append = [], Spill.append
    monkeypatch.setattr(Spill, "append", lambda spill, data: spilled.append(len(data)) or append(spill, data))
    opts = ReshardOptions(shuffle=True, seed=5, samples_per_shard=6)
    local, remote = str(tmp_path / "from-local"), str(tmp_path / "from-s3")
    assert reshard(local_source, local, opts, **QUIET).copied_ranges == 39 and spilled == []
    assert reshard(s3_source, remote, opts, **QUIET).copied_ranges == 39 and len(spilled) == 39
    monkeypatch.setattr("data_prep.reshard.run.HELD_MAPPINGS_MAX", 4)  # the train split has 5 source shards
    many = str(tmp_path / "many-sources")
    assert reshard(local_source, many, opts, **QUIET).copied_ranges == 39 and len(spilled) == 39 + 32
    assert [(s.name, s.digest) for s in load_index(local).shards] == \
           [(s.name, s.digest) for s in load_index(remote).shards] == \
           [(s.name, s.digest) for s in load_index(many).shards]
    keys = flat(shard_keys(local))
    assert sorted(keys["train"]) == sorted(flat(shard_keys(local_source))["train"]) != keys["train"]
    assert verify_dataset(local) == []


def test_shard_bytes_are_written_in_pieces_and_hashed_as_written(tmp_path):
    """A long run of copied ranges reaches the kernel as writes of at most WRITE_PIECE bytes (one
    large write into new pages ran 10-30x slower here), each piece hashed in order."""
    class Recording(io.BytesIO):
        sizes: list[int] = []

        def write(self, data):
            self.sizes.append(len(data))
            return super().write(data)

    data = os.urandom(3 * WRITE_PIECE + 1234)
    out = Recording()
    writer = HashingWriter(out)
    writer.write(b"head")
    writer.write(memoryview(data))
    writer.write(b"tail")
    assert out.getvalue() == b"head" + data + b"tail" and writer.tell() == len(data) + 8
    assert out.sizes == [4, WRITE_PIECE, WRITE_PIECE, WRITE_PIECE, 1234, 4]
    expected = new_hasher()
    expected.update(b"head" + data + b"tail")
    assert writer.digest.hexdigest() == expected.hexdigest()


def test_recut_and_resample_keep_the_seconds(s3_source, tmp_path):
    dst = str(tmp_path / "cut")
    opts = ReshardOptions(segment_seconds=0.25, sample_rate=8000, workers=2, ranks=2)
    summary = reshard(s3_source, dst, opts, **QUIET)
    assert summary.copied_ranges == 0  # re-cut and resampled from the parsed members, ranges or not
    src_index, index = load_index(s3_source), load_index(dst)
    assert index.sample_rate == 8000 and index.config["reshard"]["sample_rate"] == 8000
    source_keys = flat(shard_keys(s3_source))
    for split, keys in flat(shard_keys(dst)).items():
        parents = {k.rsplit("_s", 1)[0] for k in keys}
        assert parents == set(source_keys[split]) and len(set(keys)) == len(keys)
        n = index.splits[split]["samples"]
        assert abs(index.splits[split]["seconds"] - src_index.splits[split]["seconds"]) <= (n + len(parents)) / 8000
    for sample in read_samples(dst, "train"):
        assert sample.sample_rate == 8000 and sample.meta["sample_rate"] == 8000
        assert sample.seconds <= 0.25 + 1e-9 and sample.meta["seconds"] == pytest.approx(sample.seconds, abs=1e-6)
        assert sample.key == f"{sample.meta['source_key']}_s{sample.meta['segment']:03d}"
        assert sample.meta["speaker"].startswith("spk")  # carried along
    assert verify_dataset(dst) == []
    # a re-cut alone moves no frame: seconds match to the metadata rounding
    only_cut = str(tmp_path / "only-cut")
    reshard(s3_source, only_cut, ReshardOptions(segment_seconds=0.4, workers=1), **QUIET)
    for split, totals in load_index(only_cut).splits.items():
        assert totals["seconds"] == pytest.approx(src_index.splits[split]["seconds"], abs=1e-4)


def test_killed_reshard_reruns_to_the_same_result(s3_source, s3_bucket):
    opts = ["--samples-per-shard", "1", "--sample-rate", "8000", "--workers", "1", "--io-threads", "1"]
    reference = s3_bucket + "/ref"
    assert main(["reshard", s3_source, reference, *opts]) == 0
    killed = s3_bucket + "/killed"
    store = open_store(killed)
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", "reshard", s3_source, killed, *opts],
                            cwd=Path(__file__).resolve().parents[2], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not store.list("_reshard/done/"):
            assert proc.poll() is None, "reshard finished before it could be killed"
            assert time.time() < deadline
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)  # the main process only: its workers must notice and leave
        proc.wait()
    finally:
        time.sleep(1)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of its session
        except ProcessLookupError:
            pass
    assert not store.exists("index.json") and store.list("_reshard/")
    summary = reshard(s3_source, killed, ReshardOptions(samples_per_shard=1, sample_rate=8000, workers=1), **QUIET)
    assert 1 <= summary.kept_shards < len(load_index(killed).shards)
    assert summary.kept_shards + summary.written_shards == len(load_index(killed).shards)
    assert [(s.name, s.digest) for s in load_index(killed).shards] == \
           [(s.name, s.digest) for s in load_index(reference).shards]
    keys = flat(shard_keys(killed))
    assert all(len(set(k)) == len(k) for k in keys.values()) and keys == flat(shard_keys(s3_source))
    assert verify_dataset(killed) == [] and not store.list("_reshard/")


def test_a_stopped_plain_repack_resumes_without_reading_the_finished_sources_again(local_source, tmp_path,
                                                                                    monkeypatch):
    """A plain re-pack records each source shard's scan in the next done record (no file per source
    shard), and a rerun reads only the source shards feeding unfinished shards."""
    from data_prep.reshard import transfer

    finish = transfer.DestShard.finish

    def fail_at_shard_4(shard):
        if (shard.split, shard.j) == ("train", 4):
            raise OSError("disk full")
        return finish(shard)

    dst, opts = str(tmp_path / "dst"), ReshardOptions(samples_per_shard=4, io_threads=1)
    monkeypatch.setattr(transfer.DestShard, "finish", fail_at_shard_4)
    with pytest.raises(OSError, match="disk full"):
        reshard(local_source, dst, opts, **QUIET)
    monkeypatch.setattr(transfer.DestShard, "finish", finish)
    store = open_store(dst)
    done = {o.key.rsplit("/", 1)[-1]: json.loads(store.get(o.key)) for o in store.list("_reshard/done/")}
    assert sorted(done) == [f"train-00000{j}.tar.json" for j in range(4)] and not store.list("_reshard/scan/")
    scanned = [scan["name"] for record in done.values() for scan in record.get("scans", [])]
    assert sorted(scanned) == ["train-000000.tar", "train-000001.tar"]  # fully read before shard 3 was done

    summary = reshard(local_source, dst, opts, **QUIET)
    source = {s.name: s.bytes for s in load_index(local_source).shards}
    assert summary.kept_shards == 4 and summary.copied_ranges == 39 - 16
    assert summary.bytes_read == sum(source.values()) - source["train-000000.tar"] - source["train-000001.tar"]
    reference = str(tmp_path / "ref")
    reshard(local_source, reference, ReshardOptions(samples_per_shard=4), **QUIET)
    assert [(s.name, s.digest) for s in load_index(dst).shards] == \
           [(s.name, s.digest) for s in load_index(reference).shards]
    assert verify_dataset(dst) == [] and not store.list("_reshard/")


def test_different_dataset_is_refused_unless_overwrite(local_source, tmp_path):
    dst = str(tmp_path / "dst")
    reshard(local_source, dst, ReshardOptions(samples_per_shard=2), **QUIET)
    with pytest.raises(ReshardError, match="already holds a different dataset.*--overwrite"):
        reshard(local_source, dst, ReshardOptions(samples_per_shard=10), **QUIET)
    summary = reshard(local_source, dst, ReshardOptions(samples_per_shard=10, overwrite=True), **QUIET)
    names = {o.key for o in open_store(dst).list()}
    assert names == {s.name for s in load_index(dst).shards} | {"index.json"}  # old shards are gone
    assert summary.splits["train"]["shards"] == 4
    # an unfinished reshard with other options is refused too
    other = open_store(str(tmp_path / "other"))
    other.put_text("_reshard/run.json", json.dumps({"fingerprint": "0" * 64}))
    with pytest.raises(ReshardError, match="unfinished reshard"):
        reshard(local_source, other.url, ReshardOptions(), **QUIET)
    with pytest.raises(ReshardError, match="destination is the source"):
        reshard(local_source, "file://" + local_source, ReshardOptions(), **QUIET)


def test_changed_source_is_an_error_not_a_warning(local_source, tmp_path):
    copy = open_store(copy_dataset(local_source, str(tmp_path / "src")))
    data = bytearray(copy.get("train-000002.tar"))
    data[len(data) // 2] ^= 0xFF
    copy.put("train-000002.tar", bytes(data))
    dst = str(tmp_path / "dst")
    with pytest.raises(ReshardError, match="train-000002.tar: size or xxh3_128 differs from the source index"):
        reshard(copy.url, dst, ReshardOptions(), **QUIET)
    assert not open_store(dst).exists("index.json")
    # a sample range that does not start at a sample's header is caught, not copied
    shifted = open_store(copy_dataset(local_source, str(tmp_path / "shifted")))
    index = load_index(shifted)
    r = index.shards[1].sample_ranges[2]  # one block later: still in order, so the index check passes
    index.shards[1].sample_ranges[2] = r._replace(start=r.start + 512, flac_offset=r.flac_offset + 512,
                                                  flac_size=r.flac_size - 512)
    write_index(shifted, index)
    with pytest.raises(ReshardError, match=f"train-000001.tar: no .flac member header at byte {r.start + 512}"):
        reshard(shifted.url, str(tmp_path / "dst2"), ReshardOptions(), **QUIET)


def test_an_index_with_sha256_digests_is_still_read_and_checked(local_source, tmp_path):
    """Indexes written before shard digests were xxh3_128 name sha256 (and, older still, no sample
    ranges): verify, upgrade and reshard check the shards with it; the reshard's own index is xxh3_128."""
    old = tmp_path / "old"
    shutil.copytree(local_source, old)
    index = json.loads((old / "index.json").read_text())
    for shard in index["shards"]:
        del shard["xxh3_128"], shard["sample_ranges"]
        shard["sha256"] = hashlib.sha256((old / shard["name"]).read_bytes()).hexdigest()
    (old / "index.json").write_text(json.dumps(index))
    assert verify_dataset(str(old)) == []
    assert upgrade_index(str(old)) == 7
    assert all(set(s) >= {"sha256", "sample_ranges"} and "xxh3_128" not in s
               for s in json.loads((old / "index.json").read_text())["shards"])
    summary = reshard(str(old), str(tmp_path / "new"), ReshardOptions(shards=2), **QUIET)
    assert summary.copied_ranges == 39
    assert {s.algorithm for s in load_index(str(tmp_path / "new")).shards} == {"xxh3_128"}
    assert verify_dataset(str(tmp_path / "new")) == []
    victim = old / "train-000002.tar"
    data = bytearray(victim.read_bytes())
    data[-1] ^= 1  # inside the end-of-archive blocks: every sample still decodes, only the digest tells
    victim.write_bytes(bytes(data))
    assert verify_dataset(str(old)) == ["train-000002.tar: sha256 differs from the index"]
    with pytest.raises(ReshardError, match="train-000002.tar: size or sha256 differs from the source index"):
        reshard(str(old), str(tmp_path / "new2"), ReshardOptions(shards=2), **QUIET)


def test_plan_balances_and_the_check_catches_a_lost_sample(local_source):
    index = load_index(local_source)
    sources = index.split_shards("train")
    for opts in (ReshardOptions(ranks=4), ReshardOptions(shards=5, ranks=3), ReshardOptions(samples_per_shard=1)):
        plan = plan_split("train", sources, opts, 1.0)
        sizes = np.diff(plan.bounds)
        assert len(sizes) % opts.ranks == 0 and sizes.max() - sizes.min() <= 1 and sizes.sum() == 32
    with pytest.raises(ReshardError, match="too few for 8 ranks"):
        plan_split("val", index.split_shards("val"), ReshardOptions(ranks=8), 1.0)
    plan = plan_split("val", index.split_shards("val"), ReshardOptions(shards=1), 1.0)
    keys = flat(shard_keys(local_source))["val"]
    scans = {s.name: {"keys_digest": f"{keys_digest(keys[:5] if s.samples == 5 else keys[5:]):032x}"}
             for s in plan.sources}
    seconds = sum(s.seconds for s in plan.sources)
    info = {"name": "val-000000.tar", "split": "val", "samples": 7, "seconds": seconds, "bytes": 1, "digest": "xxh3_128:" + "0" * 32}
    done = {"val-000000.tar": {"info": info, "keys_digest": f"{keys_digest(keys):032x}"}}
    check_split(plan, done, scans, RATE, False)
    done["val-000000.tar"]["keys_digest"] = f"{keys_digest(keys[:-1] + keys[:1]):032x}"  # one lost, one twice
    with pytest.raises(ReshardError, match="keys differ"):
        check_split(plan, done, scans, RATE, False)


def test_cli(local_source, s3_server, tmp_path, capsys):
    dst = str(tmp_path / "cli")
    assert main(["reshard", local_source, dst, "--ranks", "2", "--splits", "train"]) == 0
    assert "train" in capsys.readouterr().out and set(load_index(dst).splits) == {"train"}
    assert main(["reshard", local_source, dst, "--ranks", "2", "--splits", "train"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    for argv, needle in [(["reshard", "gs://x/y", dst], "unsupported storage scheme"),
                         (["reshard", local_source, "s3://no-such-bucket/x"], "no such bucket"),
                         (["reshard", str(tmp_path / "nope"), dst], "not a dataset"),
                         (["reshard", local_source, str(tmp_path / "x"), "--splits", "dev"], "no split 'dev'"),
                         (["reshard", local_source, str(tmp_path / "x"), "--segment-seconds", "0"], "> 0")]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, err
