"""A FLEURS-like corpus (three tar.gz archives) prepped with its archives cut into as many jobs as
the workers want, as prep did until the ninth session, against at most `prep.CONTAINER_SPLITS`
(BATCH_ITEMS a job, or up to 4 when the work is small), side by side in one run.

    .venv/bin/python benchmarks/container_jobs_bench.py [--files 1600] [--workers 2 16] [--repeats 2]

Each job streams and decompresses its archive from the start up to its last member, so an archive
cut into k jobs is read (k+1)/2 times over. Prints the wall and CPU seconds (this process and its
pools) of each run.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import numpy as np  # noqa: E402

import data_prep.prep as prep  # noqa: E402
from corpus_layouts import write_fleurs  # noqa: E402
from data_prep.sources import scan_sources  # noqa: E402
from pipeline.config import PrepConfig  # noqa: E402


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def noise(n: int) -> np.ndarray:
    """6 s at 16 kHz: noise does not compress, so the archives are as large as the audio."""
    return (0.1 * np.random.default_rng(n).standard_normal(16000 * 6)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=1600, help="members in all (3/4 train, the rest dev and test)")
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 16])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    train, dev = args.files * 3 // 4, args.files // 10
    with tempfile.TemporaryDirectory() as tmp:
        src = write_fleurs(Path(tmp), splits=(("train", train), ("dev", dev), ("test", args.files - train - dev)),
                           audio=noise)
        mb = sum(f.stat().st_size for f in (src / "audio").iterdir()) / 1e6
        print(f"{args.files} members of 6 s in 3 archives, {mb:.0f} MB")
        print(f"{'workers':>7} {'jobs an archive at most':>24} {'jobs':>5} {'wall s':>7} {'CPU s':>6}")
        for workers in args.workers:
            for _ in range(args.repeats):
                for splits, label in ((10**9, "as the workers want"), (4, "4 (CONTAINER_SPLITS)")):
                    prep.CONTAINER_SPLITS = splits
                    cfg = PrepConfig(workers=workers, min_seconds=1.0)
                    jobs = len(prep.batched([("train", i, item) for i, item in
                                             enumerate(scan_sources([str(src)]).items)], workers, {}))
                    t, c = time.perf_counter(), cpu_seconds()
                    prep.run_prep([str(src)], f"{tmp}/out-{time.monotonic_ns()}", cfg, progress=False)
                    print(f"{workers:7} {label:>24} {jobs:5} {time.perf_counter() - t:7.1f} {cpu_seconds() - c:6.1f}",
                          flush=True)


if __name__ == "__main__":
    main()
