"""A node's shard cache (data.cache_dir, data.cache_gb) in front of moto's S3 server, its requests
counted at a proxy: shared by processes, each shard fetched once; whole or absent after SIGKILL;
bounded, least recently used out first; checked against the index."""

import dataclasses
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import xxhash

from audio_fixtures import make_dataset
from fault_fixtures import sigkill_once_exists
from run_fixtures import CountingProxy
from pipeline.storage.cache import CacheMismatch, ShardCache, admitted
from pipeline.storage.shards import ShardInfo, digest_text, load_index
from pipeline.storage.store import open_store
from pipeline.training.loader import CacheSpec, CropLoader, CropRecipe

SHARDS = [40] * 6
RECIPE = CropRecipe(batch_size=4, crop=1000, seed=0, block_samples=4)
INDEX: dict = {}


@pytest.fixture
def proxied(s3_bucket, monkeypatch):
    """A dataset on the S3 server, and a proxy in front of it that every client here goes through."""
    url = f"{s3_bucket}/cached"
    make_dataset(url, SHARDS)
    INDEX[url] = load_index(url)
    with CountingProxy(os.environ["AWS_ENDPOINT_URL"]) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        yield url, proxy


def epoch(url: str, cache: CacheSpec | None, workers: int = 0) -> list:
    """One epoch's batches (the index read before the GETs are counted)."""
    loader = CropLoader(url, "train", RECIPE, workers=workers, cache=cache, index=INDEX[url])
    it = loader.batches(0)
    batches = [next(it)[1] for _ in range(loader.steps_per_epoch)]
    it.close()
    return batches


def test_processes_sharing_a_cache_fetch_each_shard_once_then_read_the_disk(proxied, tmp_path):
    url, proxy = proxied
    reference = epoch(url, None)
    cache = CacheSpec(str(tmp_path / "cache"), 1.0)
    before, got = len(proxy.gets), {}
    # two loaders at once, each with two worker processes: four processes share one cache
    runs = [threading.Thread(target=lambda k=k: got.setdefault(k, epoch(url, cache, workers=2))) for k in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    assert all(len(b) == len(reference) and all((x == y).all() for x, y in zip(b, reference)) for b in got.values())
    # one whole GET a shard for all four processes (the reference's last reads ahead may still land here)
    assert sorted(path for path, where in proxy.gets[before:] if where is None) == \
        sorted(f"/{url[5:]}/{s.name}" for s in INDEX[url].split_shards("train"))
    before = proxy.requests["GET"]
    assert all((x == y).all() for x, y in zip(epoch(url, cache, workers=2), reference))
    assert proxy.requests["GET"] == before  # the next epoch reads the local disk only
    assert len(list((tmp_path / "cache").glob("*.tar"))) == len(SHARDS)


def test_a_split_larger_than_the_cache_keeps_the_shards_that_fit_and_reads_the_rest_by_block(proxied, tmp_path):
    url, proxy = proxied
    reference = epoch(url, None)
    shards = load_index(url).split_shards("train")
    gb = sum(s.bytes for s in shards[:2]) / 1e9 + 1e-6
    cache = CacheSpec(str(tmp_path / "cache"), gb)
    for _ in range(2):
        assert all((x == y).all() for x, y in zip(epoch(url, cache), reference))
    assert admitted(shards, gb) == {s.name for s in shards[:2]}
    kept = {p.name for p in (tmp_path / "cache").glob("*.tar")}
    assert kept == {s.digest.replace(":", "-") + ".tar" for s in shards[:2]}  # no churn through the bound
    whole = [r for r in proxy.get_ranges if r[1] is None and r[0].endswith(".tar")]
    assert len(whole) == 2 and {p.rsplit("/", 1)[1] for p, _ in whole} == {s.name for s in shards[:2]}


def test_eviction_keeps_the_bound_least_recently_used_first(proxied, tmp_path):
    url, _ = proxied
    store, shards = open_store(url), load_index(url).split_shards("train")
    a, b, c = shards[:3]
    cache = ShardCache(tmp_path / "cache", (a.bytes + b.bytes + 100) / 1e9)
    for info in (a, b, a, c):  # a used again after b: b is the one used longest ago when c comes
        assert cache.get_range(store, info, 512, 100) == store.get_range(info.name, 512, 100)
    assert {p.name for p, _, _ in cache.entries()} == {cache.path(a).name, cache.path(c).name}
    assert cache.used() <= cache.bound and cache.fetched == 3


def test_a_fetch_cut_short_by_sigkill_is_never_served(proxied, tmp_path):
    url, proxy = proxied
    data = os.urandom(2_000_000)  # 2 MB at 0.5 MB/s: killed with part of it on disk
    open_store(url).put("big.tar", data)
    info = ShardInfo("big.tar", "train", 1, 1.0, len(data), digest_text("xxh3_128", xxhash.xxh3_128(data)))
    folder = tmp_path / "cache"
    proxy.bytes_per_s = 500_000
    fetch = ("from pipeline.storage.cache import ShardCache; from pipeline.storage.store import open_store; "
             f"from pipeline.storage.shards import ShardInfo; info = ShardInfo(*{dataclasses.astuple(info)!r}); "
             f"ShardCache({str(folder)!r}, 1).get_range(open_store({url!r}), info, 0, 10)")
    proc = subprocess.Popen([sys.executable, "-c", fetch], env={**os.environ, "PYTHONPATH": os.getcwd()})
    part = ShardCache(folder, 1).path(info).with_suffix(".part")
    sigkill_once_exists(proc, part)
    assert part.exists() and not ShardCache(folder, 1).path(info).exists()
    proxy.bytes_per_s = None
    cache, store = ShardCache(folder, 1), open_store(url)
    assert cache.get_range(store, info, 0, info.bytes) == store.get_range(info.name, 0, info.bytes)
    assert cache.fetched == 1 and not part.exists()  # fetched again, whole: the cut copy was never read


def test_a_shard_that_differs_from_the_index_is_refused_in_one_line(proxied, tmp_path):
    url, _ = proxied
    store, info = open_store(url), load_index(url).split_shards("train")[0]
    data = bytearray(store.get(info.name))
    data[-1] ^= 0xFF
    store.put(info.name, bytes(data))
    cache = ShardCache(tmp_path / "cache", 1)
    with pytest.raises(CacheMismatch, match=r"differs from index.json .*telucodec shards verify") as e:
        cache.get_range(store, info, 0, 10)
    assert "\n" not in str(e.value) and not list(Path(tmp_path / "cache").glob("*.tar"))
