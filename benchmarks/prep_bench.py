"""Prep throughput against its ceiling, measured side by side in one run.

    .venv/bin/python benchmarks/prep_bench.py [--minutes 20] [--workers N]

Measures audio seconds per wall second per core for
  1. bare FLAC encoding of the final 16 kHz segments (the stage's ceiling: no decode, resample,
     trim, tar or upload), in a pool of the same size;
  2. `run_prep` to a local folder;
  3. `run_prep` to a local S3 server (moto on 127.0.0.1, started here);
and prints the ratios prep / ceiling. Sources are 22.05 kHz WAV files (as espeak-ng writes).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from audio_fixtures import write_manifest_corpus  # noqa: E402
from data_prep.prep import run_prep  # noqa: E402
from data_prep.sources import scan_sources  # noqa: E402
from pipeline.storage.audio import cut_segments, load_audio, resample  # noqa: E402
from pipeline.config import PrepConfig  # noqa: E402
from pipeline.storage.shards import encode_sample  # noqa: E402
from run_fixtures import MotoS3  # noqa: E402


def encode_only(job):
    segments, sr = job
    return sum(len(encode_sample("k", s, sr, {}).flac) for s in segments)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    args = ap.parse_args()
    cfg = PrepConfig(workers=args.workers, shard_max_mb=64)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n_files = int(args.minutes * 60 / 8)
        manifest = write_manifest_corpus(tmp / "src", n_files=n_files, n_speakers=20, seconds=8.0)
        items = scan_sources([str(manifest)]).items
        # the ceiling's input: the exact segments prep would encode, prepared outside the timing
        jobs = []
        for item in items:
            d = load_audio(item.path)
            jobs.append((cut_segments(resample(d.audio, d.sample_rate, 16000).clip(-1, 1), 16000, 10, 1), 16000))
        audio_s = sum(len(s) for segs, _ in jobs for s in segs) / 16000

        t = time.perf_counter()
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
            list(pool.map(encode_only, jobs, chunksize=4))
        ceiling = audio_s / (time.perf_counter() - t) / args.workers

        t = time.perf_counter()
        summary = run_prep([str(manifest)], str(tmp / "out"), cfg, progress=False)
        local = audio_s / (time.perf_counter() - t) / args.workers

        s3 = MotoS3("bench").__enter__()
        t = time.perf_counter()
        run_prep([str(manifest)], "s3://bench/te", cfg, progress=False)
        s3_rate = audio_s / (time.perf_counter() - t) / args.workers
        s3.__exit__()

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}; workers: {args.workers}")
    print(f"audio: {audio_s / 60:.1f} min in {len(items)} files -> {summary.samples} samples")
    print(f"{'stage':32} {'audio s / wall s / core':>24} {'ratio to ceiling':>18}")
    for name, value in [("FLAC encode only (ceiling)", ceiling), ("prep -> local folder", local),
                        ("prep -> S3 (moto, 127.0.0.1)", s3_rate)]:
        print(f"{name:32} {value:24.1f} {value / ceiling:18.2f}")


if __name__ == "__main__":
    main()
