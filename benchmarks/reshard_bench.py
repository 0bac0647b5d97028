"""Reshard throughput against its ceiling (a raw copy of the same bytes), measured side by side in one run.

    .venv/bin/python benchmarks/reshard_bench.py [--mb 80] [--repeats 2] [--sync]

Builds a source dataset of about `--mb` megabytes of FLAC (speech-like tones in noise, 16 kHz, 8 s
samples, 48 per shard), then measures MB/s and audio seconds per wall second for
  1. a raw copy of every object of the source (`open` -> `put_fileobj`, as many threads as the
     reshard's I/O threads): the ceiling, since a re-pack moves the same bytes;
  2. a plain re-pack (`--shard-mb 20 --ranks 2`: no decode), each sample copied as the byte range
     the source index records ("ranges");
  3. the same re-pack of a copy of the source whose index has no sample ranges, as an older prep
     wrote it: every tar member parsed and written again ("parsed", the path before ranges);
  4. both again with `--shuffle` (spilled to local disk, written in shuffled order);
each local folder -> local folder and S3 -> S3 (moto on 127.0.0.1, started here), best of
`--repeats` (the runs take turns, so a busy spell on a shared machine hits them alike), and prints
the ratios to the ceiling of the same stores, the CPU seconds each run took (all threads), and what
one pass of the index's digest (xxh3_128) and of sha256 over the source cost here: a re-pack hashes
every byte twice (the source against its index, the destination for its own), which a raw copy does
not; with sha256 (indexes before xxh3_128) the two passes alone outweighed a raw copy's whole CPU time.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from audio_fixtures import tone  # noqa: E402
from data_prep.reshard import ReshardOptions, reshard  # noqa: E402
from pipeline.storage.shards import (DIGEST, DatasetIndex, ShardWriter, encode_sample, load_index, new_hasher,  # noqa: E402
                             write_index)
from pipeline.storage.store import Store, mapped, open_store  # noqa: E402
from run_fixtures import MotoS3  # noqa: E402

RATE, SECONDS, PER_SHARD = 16000, 8.0, 48


def build_source(store: Store, megabytes: float) -> DatasetIndex:
    """Speech-like tones in enough noise that FLAC keeps most of the bytes."""
    rng, infos, total, n = np.random.default_rng(0), [], 0, 0
    while total < megabytes * 1e6:
        with ShardWriter(store, "train", len(infos)) as w:
            for _ in range(PER_SHARD):
                audio = tone(SECONDS, RATE, freq=rng.uniform(90, 260), peak=0.5, seed=n)
                audio = np.clip(audio + 0.08 * rng.standard_normal(len(audio)), -1, 1)
                w.add(encode_sample(f"utt{n:06d}", audio, RATE, {"speaker": f"spk{n % 50}"}))
                n += 1
        infos.append(w.info)
        total += w.info.bytes
    index = DatasetIndex(shards=infos, sample_rate=RATE)
    write_index(store, index)
    return index


def raw_copy(src: Store, dst: Store, threads: int) -> None:
    def copy(key: str) -> None:
        with src.open(key) as f:
            dst.put_fileobj(key, f)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(copy, [o.key for o in src.list()]))


def without_ranges(src: Store, dst: Store, threads: int) -> None:
    """A copy of the source whose index has no sample ranges: a re-pack of it parses every tar member."""
    raw_copy(src, dst, threads)
    index = load_index(dst)
    for info in index.shards:
        info.sample_ranges = None
    write_index(dst, index)


def repack(src: str, dst: str, **opts) -> Callable[[int], object]:
    """A reshard of `src` into a fresh `dst{i}` on repeat i."""
    return lambda i: reshard(src, f"{dst}{i}", ReshardOptions(**opts), progress=False)


def best_of(repeats: int, runs: dict[str, Callable[[int], object]], durable: bool = False
            ) -> dict[str, tuple[float, float]]:
    """(wall seconds, CPU seconds of this process) of each run's fastest repeat; the runs take turns,
    repeat by repeat. Every run starts with no dirty pages (an untimed os.sync), so the kernel's
    write-back of one run does not slow the next; `durable`: its time also includes writing its
    output to disk (os.sync)."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for i in range(repeats):
        for name, fn in runs.items():
            os.sync()
            t, cpu = time.perf_counter(), cpu_seconds()
            fn(i)
            if durable:
                os.sync()
            times[name].append((time.perf_counter() - t, cpu_seconds() - cpu))
    return {name: min(t) for name, t in times.items()}


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far, all threads (moto's server included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def hash_seconds(store: Store, index: DatasetIndex, algorithm: str) -> float:
    """Seconds to hash every source shard once with `algorithm` (mapped, as the reshard's source check does)."""
    t = time.perf_counter()
    for info in index.shards:
        with store.open(info.name) as f:
            new_hasher(algorithm).update(mapped(f))
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=80.0, help="source size in megabytes of FLAC")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--io-threads", type=int, default=8)
    ap.add_argument("--sync", action="store_true",
                    help="time each run until its output is on disk (os.sync); without it, until it is in the "
                         "page cache (each run starts with no dirty pages either way)")
    args = ap.parse_args()
    shape = dict(shard_mb=20, ranks=2, io_threads=args.io_threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        index = build_source(open_store(f"{tmp}/src"), args.mb)
        build_s = time.perf_counter() - t
        totals = index.splits["train"]
        mb, audio_s = sum(s.bytes for s in index.shards) / 1e6, totals["seconds"]
        hash_s = {a: min(hash_seconds(open_store(f"{tmp}/src"), index, a) for _ in range(args.repeats))
                  for a in (DIGEST, "sha256")}
        MotoS3("bench").__enter__()  # lives until the script ends
        raw_copy(open_store(f"{tmp}/src"), open_store("s3://bench/src"), args.io_threads)  # untimed
        for url in (f"{tmp}/src", "s3://bench/src"):
            without_ranges(open_store(url), open_store(f"{url}-parsed"), args.io_threads)  # untimed
        for label, src, dst in [("local -> local", f"{tmp}/src", f"{tmp}/dst"),
                                ("S3 -> S3", "s3://bench/src", "s3://bench/dst")]:
            best = best_of(args.repeats, {
                "raw copy (ceiling)": lambda i: raw_copy(open_store(src), open_store(f"{dst}-raw{i}"),
                                                         args.io_threads),
                "re-pack, ranges": repack(src, f"{dst}-ranges", **shape),
                "re-pack, parsed": repack(f"{src}-parsed", f"{dst}-parsed", **shape),
                "shuffle, ranges": repack(src, f"{dst}-shuffle-ranges", shuffle=True, seed=1, **shape),
                "shuffle, parsed": repack(f"{src}-parsed", f"{dst}-shuffle-parsed", shuffle=True, seed=1,
                                          **shape)}, durable=args.sync)
            rows += [(label, run, timing, best["raw copy (ceiling)"]) for run, timing in best.items()]
        out = load_index(f"{tmp}/dst-ranges0")

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}; io threads: {args.io_threads}; best of {args.repeats}"
          + ("; timed until on disk (--sync)" if args.sync else ""))
    print(f"source: {mb:.1f} MB FLAC, {audio_s / 3600:.2f} h, {totals['samples']} samples in "
          f"{totals['shards']} shards (built in {build_s:.0f} s) -> re-pack: {len(out.shards)} shards; "
          f"one pass over it of {DIGEST}: {hash_s[DIGEST]:.3f} s, of sha256: {hash_s['sha256']:.3f} s")
    print(f"{'stores':16} {'run':20} {'wall s':>8} {'CPU s':>6} {'MB/s':>8} {'audio s/s':>10} {'ratio':>6}")
    for label, run, (wall, cpu), (ceiling, _) in rows:
        print(f"{label:16} {run:20} {wall:8.2f} {cpu:6.2f} {mb / wall:8.1f} {audio_s / wall:10.0f} "
              f"{ceiling / wall:6.2f}")


if __name__ == "__main__":
    main()
