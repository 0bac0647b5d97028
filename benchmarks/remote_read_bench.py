"""How fast a prep worker gets a job's remote files: one at a time against fetched ahead on threads
(data_prep.sources.FETCH_AHEAD), from a near store and a far one, side by side in one run, and a
prep of them from the far store with a file a job against prep.FILES_PER_JOB; then
large files read front to back (a FLEURS tar.gz, a hub parquet shard) with each read one GET of
what it asks (a decoder's 1 MB buffer refills, a parquet column chunk whole) against parts fetched
ahead (pipeline.storage.store.READ_PART, READ_AHEAD); then a folder of parquet shards scanned one
file at a time against several at once (data_prep.sources.parquet.SCAN_AT_ONCE).

    .venv/bin/python benchmarks/remote_read_bench.py [--files 150] [--latency-ms 30] [--mb-per-s 25]

moto's S3 server runs in a process of its own on 127.0.0.1 behind a proxy
(tests/run_fixtures.CountingProxy) that holds each GET's answer back `--latency-ms` in the far
setting (real S3 answers after ~20-50 ms). The files: 8-second 16 kHz WAVs (~256 KB) listed by a
manifest. Prints milliseconds a file for `read_items` over them (what a worker does before decoding),
wall and this process's CPU.
The near setting reads moto directly; the far one through the proxy, which runs in this process
and, like moto, takes CPU from the same cores: the far figures are upper bounds. For the large
files the far proxy also paces each answer's body at `--mb-per-s` (one connection's bandwidth)
and the figures are seconds for all the archive's members and all the shard's rows.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import data_prep.sources as sources  # noqa: E402
import pipeline.storage.store as store  # noqa: E402
from audio_fixtures import write_manifest_corpus  # noqa: E402
from corpus_layouts import upload  # noqa: E402
from run_fixtures import CountingProxy, MotoS3  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=150)
    ap.add_argument("--latency-ms", type=float, default=30.0)
    ap.add_argument("--mb-per-s", type=float, default=25.0)
    args = ap.parse_args()
    ahead = sources.FETCH_AHEAD
    counts = sorted({1, 2, 4, 8, ahead})
    with tempfile.TemporaryDirectory() as tmp, MotoS3("bench", own_process=True) as s3:
        write_manifest_corpus(Path(tmp) / "src", n_files=args.files, n_speakers=20, sr=16000, seconds=8.0)
        remote = upload(Path(tmp) / "src", "s3://bench/src")
        items = sources.scan_sources([f"{remote}/manifest.tsv"]).items
        print(f"{len(items)} remote files of ~256 KB; ms a file (lower is better)")
        for latency in (0.0, args.latency_ms / 1000):
            with CountingProxy(s3.endpoint, latency_s=latency) as proxy:
                # near: straight to moto (the proxy's own threads would share this process's GIL)
                os.environ["AWS_ENDPOINT_URL"] = proxy.url if latency else s3.endpoint
                row = []
                for n in counts:
                    sources.FETCH_AHEAD = n
                    sources.base._bucket.cache_clear()  # a client for this proxy, made before the clock starts:
                    sources.base._bucket("s3://bench")  # a worker makes it once, on its first job
                    t, cpu = time.perf_counter(), time.process_time()
                    for _, f, _ in sources.read_items(items):
                        f.close()
                    row.append(((time.perf_counter() - t) / len(items) * 1000,
                                (time.process_time() - cpu) / len(items) * 1000))
            print(f"{latency * 1000:4.0f} ms a GET: " + ", ".join(f"{n} at once {w:5.1f} ms ({c:.1f} CPU)"
                                                         for n, (w, c) in zip(counts, row)))
        sources.FETCH_AHEAD = ahead
        prep_far(Path(tmp), f"{remote}/manifest.tsv", s3, args)
        large_files(Path(tmp), s3, args)
        scan_shards(Path(tmp), s3, args)


def prep_far(tmp: Path, manifest: str, s3, args) -> None:
    """`run_prep` of the same files (2 workers), near and far: a file a job (each worker waits out
    every file's GET) against FILES_PER_JOB a job (the rest of a job's files fetched ahead). Seconds
    for the run, start-up (a pool, the listing) included: what latency adds is far less near."""
    from data_prep import prep
    from pipeline.config import PrepConfig

    cfg, per_job = PrepConfig(workers=2, min_seconds=1.0), prep.FILES_PER_JOB
    seconds = {}
    for latency in (0.0, args.latency_ms / 1000):
        with CountingProxy(s3.endpoint, latency_s=latency) as proxy:
            os.environ["AWS_ENDPOINT_URL"] = proxy.url
            sources.base._bucket.cache_clear()
            for n in (1, per_job):  # a file a job: as before FILES_PER_JOB
                prep.FILES_PER_JOB = n
                t = time.perf_counter()
                prep.run_prep([manifest], str(tmp / f"prep-{latency}-{n}"), cfg, progress=False)
                seconds[latency, n] = time.perf_counter() - t
    prep.FILES_PER_JOB = per_job
    far_s = args.latency_ms / 1000
    near1, near, far1, far = seconds[0.0, 1], seconds[0.0, per_job], seconds[far_s, 1], seconds[far_s, per_job]
    print(f"prep of those files, 2 workers, seconds near / {args.latency_ms:.0f} ms a GET (what latency adds): "
          f"a file a job {near1:.2f} / {far1:.2f} (+{far1 - near1:.2f}), "
          f"up to {per_job} a job {near:.2f} / {far:.2f} (+{far - near:.2f})")


def large_files(tmp: Path, s3, args) -> None:
    """FLEURS's tar.gz and a hub parquet shard of the same 100 noise WAVs (incompressible, ~25 MB each)."""
    import itertools

    import numpy as np
    import pyarrow as pa

    from corpus_layouts import encoded, write_fleurs, write_parquet

    noise = [(0.3 * np.random.default_rng(i).standard_normal(16000 * 8)).astype(np.float32) for i in range(100)]
    fleurs = write_fleurs(tmp / "large", splits=(("train", len(noise)),), audio=noise.__getitem__)
    schema = pa.schema([("audio", pa.struct([("bytes", pa.binary()), ("path", pa.string())])), ("text", pa.string())])
    rows = [{"audio": {"bytes": encoded(x, "wav"), "path": f"{i}.wav"}, "text": "t"} for i, x in enumerate(noise)]
    write_parquet(tmp / "large" / "hub" / "data" / "train-00000-of-00001.parquet", rows, schema, 50)
    os.environ["AWS_ENDPOINT_URL"] = s3.endpoint  # not the last proxy, closed now
    remote = upload(tmp / "large", "s3://bench/large")
    mb = (fleurs / "audio" / "train.tar.gz").stat().st_size / 1e6
    print(f"large files: a {mb:.0f} MB tar.gz of {len(noise)} members, a parquet shard of {len(noise)} rows in "
          f"row groups of 50; seconds for all of each (lower is better)")
    one_at_a_time = (store.READ_PART, 0)  # read-ahead off
    defaults = (store.READ_PART, store.READ_AHEAD)
    for latency, rate in ((0.0, None), (args.latency_ms / 1000, args.mb_per_s * 1e6)):
        with CountingProxy(s3.endpoint, latency_s=latency, bytes_per_s=rate) as proxy:
            os.environ["AWS_ENDPOINT_URL"] = proxy.url if latency else s3.endpoint
            sources.base._bucket.cache_clear()
            row = []
            for store.READ_PART, store.READ_AHEAD in (one_at_a_time, defaults):
                for src in (f"{remote}/te_in", f"{remote}/hub"):
                    items = sources.scan_sources([src]).items
                    gets, t = proxy.requests["GET"], time.perf_counter()
                    for _, batch in itertools.groupby(items, sources.batch_key):
                        for _, f, _ in sources.read_items(list(batch)):
                            f.close()
                    row.append((time.perf_counter() - t, proxy.requests["GET"] - gets if latency else None))
        where = f"{latency * 1000:.0f} ms + {args.mb_per_s:.0f} MB/s a GET" if latency else "near (moto directly)"
        print(f"{where}: a GET a read: tar.gz {row[0][0]:.2f} s, parquet {row[1][0]:.2f} s; "
              f"{defaults[1]} parts of {defaults[0] >> 20} MB ahead: tar.gz {row[2][0]:.2f} s, "
              f"parquet {row[3][0]:.2f} s"
              + (f" (GETs: {row[0][1]}, {row[1][1]}; {row[2][1]}, {row[3][1]})" if latency else ""))


def scan_shards(tmp: Path, s3, args, shards: int = 24) -> None:
    """What prep does before its first row: a folder of hub parquet shards scanned (each file's footer
    and small columns, a few GETs a file), one file at a time against SCAN_AT_ONCE files at once."""
    import data_prep.sources.parquet as parquet
    from corpus_layouts import indicvoices_row, indicvoices_schema, write_parquet

    noise = os.urandom(60_300)  # 18 MB a shard: its row groups' small columns lie MBs apart, as in a hub shard
    for k in range(shards):  # 300 rows in row groups of 100, each row's bytes its own
        rows = [indicvoices_row(i, f"s{i % 7}", data=noise[i:i + 60_000]) for i in range(300)]
        write_parquet(tmp / "scan" / f"train-{k:05d}-of-{shards:05d}.parquet", rows, indicvoices_schema(), 100)
    os.environ["AWS_ENDPOINT_URL"] = s3.endpoint
    remote = upload(tmp / "scan", "s3://bench/scan")
    at_once = parquet.SCAN_AT_ONCE
    print(f"scanning {shards} parquet shards of 300 rows (row groups of 100); seconds (lower is better)")
    for latency in (0.0, args.latency_ms / 1000):
        with CountingProxy(s3.endpoint, latency_s=latency) as proxy:
            os.environ["AWS_ENDPOINT_URL"] = proxy.url if latency else s3.endpoint
            row = []
            for parquet.SCAN_AT_ONCE in (1, at_once):
                gets, fetched, t = proxy.requests["GET"], proxy.get_bytes, time.perf_counter()
                assert len(sources.scan_sources([remote]).items) == 300 * shards
                row.append((time.perf_counter() - t, proxy.requests["GET"] - gets, proxy.get_bytes - fetched))
        where = f"{latency * 1000:.0f} ms a GET" if latency else "near (moto directly)"
        print(f"{where}: one file at a time {row[0][0]:.2f} s, {at_once} at once {row[1][0]:.2f} s"
              + (f" ({row[0][1]} GETs, {row[0][2] / 1e6:.1f} MB each)" if latency else ""))


if __name__ == "__main__":
    main()
