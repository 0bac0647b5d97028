"""The training loader against a far object store: the same loader on the same S3 data with and
without added first-byte latency and a per-connection bandwidth cap, side by side in one run.

    .venv/bin/python benchmarks/loader_latency_bench.py [--latency-ms 30] [--mb-per-s 25] [--seconds 20] [--json]

moto's S3 server runs on 127.0.0.1 behind a proxy (tests/run_fixtures.CountingProxy) that holds each
GET's answer back `--latency-ms` and paces its body at `--mb-per-s` per connection (real S3 answers
after ~20-50 ms). The data: 2,048 two-second 16 kHz FLAC samples in 64 shards, dealt in blocks as
training deals them (global batch 8: blocks of 16). CropLoader with 1 worker process is timed over
`--seconds` after its first batch (best of three windows) in both settings; `latency_ratio` is
crops/s with the latency over crops/s without (the loader's CPU is the same: what latency can take
away is time it waits). Short samples make more requests a second than training's 10-second ones:
a harder case. A third setting times a later epoch with the far store through the node's shard
cache (data.cache_dir: every shard fetched whole beforehand, as the first epoch would):
`cached_ratio` is its crops/s over the near store's, and it should send no GETs at all.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from audio_fixtures import tone  # noqa: E402
from run_fixtures import CountingProxy, MotoS3  # noqa: E402
from pipeline.storage.cache import ShardCache  # noqa: E402
from pipeline.storage.shards import DatasetIndex, ShardWriter, encode_sample, load_index, write_index  # noqa: E402
from pipeline.storage.store import open_store  # noqa: E402
from pipeline.training.loader import CacheSpec, CropLoader, CropRecipe, block_size  # noqa: E402

RATE, SAMPLES, SECONDS, PER_SHARD, BATCH = 16000, 2048, 2.0, 32, 8


def build_dataset(url: str) -> None:
    store, rng, infos = open_store(url), np.random.default_rng(0), []
    for first in range(0, SAMPLES, PER_SHARD):
        with ShardWriter(store, "train", len(infos)) as w:
            for n in range(first, first + PER_SHARD):
                audio = np.clip(tone(SECONDS, RATE, freq=rng.uniform(90, 260), seed=n)
                                + 0.05 * rng.standard_normal(int(SECONDS * RATE)), -1, 1)
                w.add(encode_sample(f"utt{n:06d}", audio.astype(np.float32), RATE, {}))
        infos.append(w.info)
    write_index(store, DatasetIndex(shards=infos, sample_rate=RATE))


def crops_per_s(url: str, seconds: float, windows: int = 3, cache: CacheSpec | None = None) -> float:
    """Crops a second of CropLoader with one worker after its first batch (best of `windows`)."""
    loader = CropLoader(url, "train", CropRecipe(BATCH, RATE // 2, seed=0), workers=1, cache=cache)
    it = loader.batches(0)
    next(it)
    best = 0.0
    for _ in range(windows):
        steps, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / windows:
            next(it)
            steps += 1
        best = max(best, steps * BATCH / (time.perf_counter() - started))
    it.close()
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--latency-ms", type=float, default=30.0, help="first-byte latency added to every GET")
    p.add_argument("--mb-per-s", type=float, default=25.0, help="bandwidth of each connection (MB/s)")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds each setting is timed")
    p.add_argument("--json", action="store_true", help="print the figures as JSON only")
    args = p.parse_args()
    with MotoS3(bucket="bench") as s3, CountingProxy(s3.endpoint) as proxy:
        url = "s3://bench/data"
        build_dataset(url)
        os.environ["AWS_ENDPOINT_URL"] = proxy.url  # one proxy for every setting, its delays changed between them
        rates = {}
        for name, latency, rate in (("near", 0.0, None), ("far", args.latency_ms / 1000, args.mb_per_s * 1e6)):
            proxy.latency_s, proxy.bytes_per_s = latency, rate
            gets = proxy.requests["GET"]
            rates[name] = crops_per_s(url, args.seconds)
            rates[f"{name}_gets"] = proxy.requests["GET"] - gets
        # a later epoch through the node's shard cache, with the far store: its first epoch fetched
        # every shard whole once (here, before the timing), so the loader reads the local disk
        with tempfile.TemporaryDirectory() as folder:
            cache, store = ShardCache(folder, 10.0), open_store(url)
            for info in load_index(url).split_shards("train"):
                cache.get_range(store, info, 0, 1)
            gets = proxy.requests["GET"]
            rates["cached"] = crops_per_s(url, args.seconds, cache=CacheSpec(folder, 10.0))
            rates["cached_gets"] = proxy.requests["GET"] - gets
    result = {"crops_per_s_near": round(rates["near"], 1), "crops_per_s_far": round(rates["far"], 1),
              "latency_ratio": round(rates["far"] / rates["near"], 3), "latency_ms": args.latency_ms,
              "mb_per_s_per_connection": args.mb_per_s, "block_samples": block_size(SAMPLES, CropRecipe(BATCH, 1, 0)),
              "gets_near": rates["near_gets"], "gets_far": rates["far_gets"],
              "crops_per_s_far_cached": round(rates["cached"], 1), "cached_ratio": round(rates["cached"] / rates["near"], 3),
              "gets_far_cached": rates["cached_gets"]}
    if args.json:
        print(json.dumps(result))
        return
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; {SAMPLES} x {SECONDS:g} s "
          f"samples, batch {BATCH}, blocks of {result['block_samples']}, 1 loader worker, half-second crops")
    print(f"no added latency:                         {rates['near']:8.0f} crops/s ({rates['near_gets']} GETs)")
    print(f"{args.latency_ms:g} ms first byte, {args.mb_per_s:g} MB/s a connection: {rates['far']:8.0f} crops/s "
          f"({rates['far_gets']} GETs)")
    print(f"the same, a later epoch through the node's shard cache: {rates['cached']:8.0f} crops/s "
          f"({rates['cached_gets']} GETs)")
    print(f"latency_ratio {result['latency_ratio']:.2f} (target >= 0.8: "
          f"{'met' if result['latency_ratio'] >= 0.8 else 'NOT met'})")


if __name__ == "__main__":
    main()
