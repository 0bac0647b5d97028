"""How fast a prep worker gets a job's remote files: one at a time against fetched ahead on threads
(data_prep.sources.FETCH_AHEAD), from a near store and a far one, side by side in one run.

    .venv/bin/python benchmarks/remote_read_bench.py [--files 150] [--latency-ms 30]

moto's S3 server runs in a process of its own on 127.0.0.1 behind a proxy
(tests/run_fixtures.CountingProxy) that holds each GET's answer back `--latency-ms` in the far
setting (real S3 answers after ~20-50 ms). The files: 8-second 16 kHz WAVs (~256 KB) listed by a
manifest. Prints milliseconds a file for `read_items` over them (what a worker does before decoding),
wall and this process's CPU.
The near setting reads moto directly; the far one through the proxy, which runs in this process
and, like moto, takes CPU from the same cores: the far figures are upper bounds.
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
from audio_fixtures import write_manifest_corpus  # noqa: E402
from corpus_layouts import upload  # noqa: E402
from run_fixtures import CountingProxy, MotoS3  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=150)
    ap.add_argument("--latency-ms", type=float, default=30.0)
    args = ap.parse_args()
    ahead = sources.FETCH_AHEAD
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
                for n in (1, 2, ahead, 8):
                    sources.FETCH_AHEAD = n
                    sources.base._bucket.cache_clear()  # a client for this proxy
                    t, cpu = time.perf_counter(), time.process_time()
                    for _, f, _ in sources.read_items(items):
                        f.close()
                    row.append(((time.perf_counter() - t) / len(items) * 1000, (time.process_time() - cpu) / len(items) * 1000))
            print(f"{latency * 1000:4.0f} ms a GET: " + ", ".join(f"{n} at once {w:5.1f} ms ({c:.1f} CPU)"
                                                         for n, (w, c) in zip((1, 2, ahead, 8), row)))


if __name__ == "__main__":
    main()
