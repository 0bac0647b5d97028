"""Crafted and damaged input is refused in one line, and nothing is read or written outside the
dataset: keys that climb out of a store, index entries that name paths, wrong types, absurd counts,
a dataset at another sample rate than the model."""

import json
from pathlib import Path

import pytest

from audio_fixtures import make_dataset
from jobs.cli import main
from pipeline.config import load_config
from pipeline.training.loader import DataError, crop_loader
from pipeline.storage.shards import INDEX_NAME, DatasetError, load_index
from pipeline.storage.store import StoreError, open_store

REPO = Path(__file__).resolve().parents[2]
ESCAPES = ["../x.tar", "../../outside/x.tar", "/etc/passwd", "a/../../b", "a/./b", "s3://other/x", "a\\..\\b", ""]


@pytest.mark.parametrize("key", ESCAPES)
def test_a_local_store_refuses_keys_outside_its_root(tmp_path, key):
    store = open_store(str(tmp_path / "root"))
    for call in (lambda: store.get(key), lambda: store.put(key, b"x"), lambda: store.exists(key),
                 lambda: store.get_range(key, 0, 1), lambda: store.delete(key), lambda: store.sub(key)):
        with pytest.raises(StoreError, match="is not a key inside this store"):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing made, not even the root


def test_an_s3_store_refuses_them_too(s3_bucket):
    store = open_store(s3_bucket + "/datasets/te")
    for key in ("../x.tar", "/etc/passwd", "a/../../b"):
        with pytest.raises(StoreError, match="is not a key inside this store"):
            store.put(key, b"x")
        with pytest.raises(StoreError, match="is not a key inside this store"):
            store.get(key)
    assert open_store(s3_bucket).list() == []


def crafted(tmp_path, edit) -> str:
    """A real dataset whose index.json `edit(index_dict)` has changed."""
    url = str(tmp_path / "data")
    make_dataset(url, [4, 4], sr=16000, seconds=0.3)
    store = open_store(url)
    index = json.loads(store.get_text(INDEX_NAME))
    edit(index)
    store.put_text(INDEX_NAME, json.dumps(index))
    return url


def shard0(**fields):
    return lambda index: index["shards"][0].update(fields)


CRAFTED = {
    "name climbs out": (shard0(name="../../outside/x.tar"), "is not train-NNNNNN.tar"),
    "absolute name": (shard0(name="/etc/passwd"), "is not train-NNNNNN.tar"),
    "split climbs out": (shard0(split="../../../../tmp/x", name="x-000000.tar"), "is not a plain name"),
    "split with a newline": (shard0(split="train\n", name="train\n-000000.tar"), "is not a plain name"),
    "samples a string": (shard0(samples="4"), "must be non-negative integers"),
    "absurd samples": (shard0(samples=10 ** 12), "cannot fit in"),
    "negative bytes": (shard0(bytes=-1), "must be non-negative integers"),
    "seconds NaN": (shard0(seconds=float("nan")), "is not a duration"),
    "digest not hex": (shard0(xxh3_128="x" * 32), "xxh3_128 is not 32 lowercase hex digits"),
    "two digests": (shard0(sha256="0" * 64), "needs one digest"),
    "no digest": (lambda i: i["shards"][0].pop("xxh3_128"), "needs one digest"),
    "range outside the shard": (lambda i: i["shards"][0]["sample_ranges"][0].__setitem__(3, 10 ** 9),
                                "out of order or outside the shard"),
    "ranges short": (lambda i: i["shards"][0]["sample_ranges"].pop(), "one entry per sample"),
    "sample rate zero": (lambda i: i.update(sample_rate=0), "is not a rate in Hz"),
    "shards not a list": (lambda i: i.update(shards={"a": 1}), "'shards' is not a list"),
    "shard listed twice": (lambda i: i["shards"].append(i["shards"][0]), "is listed twice"),
    "config not an object": (lambda i: i.update(config=[1]), "config/lineage must be objects"),
}


@pytest.mark.parametrize("case", CRAFTED)
def test_crafted_index_is_refused_by_every_reader(tmp_path, capsys, case):
    edit, message = CRAFTED[case]
    url = crafted(tmp_path, edit)
    with pytest.raises(DatasetError, match=message):
        load_index(url)
    outside = tmp_path / "outside"
    cfg = load_config([REPO / "configs" / "base.yaml"], [f"data.url={url}"])
    with pytest.raises(DatasetError):
        crop_loader(cfg)
    for argv in (["shards", "verify", url], ["shards", "ls", url], ["reshard", url, str(tmp_path / "out")],
                 ["shards", "upgrade", url]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.count("\n") == 1 and message.split()[0] in err, (argv, err)
    assert not outside.exists() and not (tmp_path / "out").exists()


def test_training_refuses_a_dataset_at_another_sample_rate(tmp_path):
    url = str(tmp_path / "data8k")
    make_dataset(url, [8], sr=8000, seconds=0.5)
    cfg = load_config([REPO / "configs" / "base.yaml"], [f"data.url={url}"])
    with pytest.raises(DataError, match=r"8000 Hz and model.sample_rate is 16000 Hz; resample a copy with "
                                        r"`telucodec reshard .*data8k .*data8k-16k --sample-rate 16000`"):
        crop_loader(cfg)


def test_manifests_name_files_only_under_their_folder(tmp_path):
    from audio_fixtures import tone
    import soundfile as sf

    from data_prep.sources import SourceError, scan_sources

    inside, outside = tmp_path / "corpus", tmp_path / "elsewhere"
    inside.mkdir()
    outside.mkdir()
    for folder in (inside, outside):
        sf.write(folder / "a.wav", tone(0.5, 16000), 16000)
    manifest = inside / "m.jsonl"
    rows = [{"path": "a.wav"}, {"path": "../elsewhere/a.wav"}, {"path": str(outside / "a.wav")},
            {"path": 7}, {"path": "a.wav", "speaker": ["x"]}]
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    scan = scan_sources([str(manifest)])
    assert [i.path for i in scan.items] == [str(inside / "a.wav")]
    reasons = [r["reason"] for r in scan.rejects]
    assert sum("outside the manifest's folder" in r for r in reasons) == 2
    assert sum("must be strings" in r for r in reasons) == 2
    allowed = scan_sources([str(manifest)], allow_outside=True)
    assert sorted(i.path for i in allowed.items) == [str(inside / "a.wav")] + [str(outside / "a.wav")] * 2
    (inside / "latin1.tsv").write_bytes("path\ttext\na.wav\tcaf\xe9\n".encode("latin-1"))
    with pytest.raises(SourceError, match="not UTF-8 text"):
        scan_sources([str(inside / "latin1.tsv")])


def test_s3_without_credentials_and_a_file_for_a_folder_are_one_line_errors(tmp_path, monkeypatch, capsys):
    """Errors the environment raises (botocore, the file system) reach the user as one line."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [(["shards", "ls", "s3://some-bucket/te"], "no AWS credentials found"),
             (["corpus", str(a_file / "out"), "--minutes", "0.1"], str(a_file / "out"))]
    for argv, words in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err and words in err and err.count("\n") <= 2, (argv, err)
