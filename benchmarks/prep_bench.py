"""Prep throughput against its ceiling, measured side by side in one run.

    .venv/bin/python benchmarks/prep_bench.py [--minutes 240] [--workers N] [--source-rate 16000]
                                              [--rows-per-shard 400] [--seconds 8]

Measures audio seconds per wall second per core for
  1. bare FLAC encoding of the final 16 kHz segments (the stage's ceiling: no decode, resample,
     trim, tar or upload), in a pool of the same size, again just before each stage below (the
     machine's speed drifts over a run) and each stage's ratio taken against its own;
  2. `run_prep` to a local folder;
  3. `run_prep` to a local S3 server (moto on 127.0.0.1, started here);
  4. `run_prep` of the same files as hub parquet shards (an Audio struct column, row groups of 100),
     to a local folder;
  5. `run_prep` of those parquet shards uploaded to that S3 server (the hub corpora's case: a few
     large ranged GETs a row group), to a local folder;
  6. `run_prep` of the same folder of files read from that S3 server (one GET a file), to a local
     folder;
and prints the ratios prep / ceiling, by wall time over the workers and by CPU time (this process's
and its pools': moto's server runs in a process of its own, whose CPU a real S3 would not take from
the machine, and is left out). By default prep and the ceiling run one process fewer than the
machine has cores, leaving moto a core: sharing the cores, moto's work costs theirs CPU time too.
Each stage runs on a small share of the files (an eighth, and at least 4 row groups a worker, so
that prep reads every row group in one job as it does in the full run) and on all of them: the whole
run's rates, and the steady ones (all less the small share: what a run pays once, pools, clients,
listing, drops out, as it does over thousands of hours). Then the peak memory of one prep worker on
a parquet whose single row group holds ~200 MB of audio. Sources are 22.05 kHz WAV files (as
espeak-ng writes; `--source-rate 16000`: already at the output rate, nothing to resample).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import resource
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
from corpus_layouts import upload, write_parquet  # noqa: E402
from run_fixtures import MotoS3  # noqa: E402

PEAK_PROBE = r"""
import re, sys
def peak():  # VmHWM: this process's own high-water mark (ru_maxrss would carry the forking parent's)
    return int(re.search(r"VmHWM:\s*(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
from data_prep.prep import BATCH_ITEMS
from data_prep.prep_file import FileJob, process_job
from data_prep.sources import scan_sources
from pipeline.config import PrepConfig
import tempfile
items = scan_sources([sys.argv[1]]).items
before = peak()
with tempfile.TemporaryDirectory() as spill:  # as prep runs it: results past a job's share spill to disk
    for start in range(0, len(items), BATCH_ITEMS):  # and prep's largest batch of a row group's items
        for result in process_job(FileJob(tuple(items[start:start + BATCH_ITEMS]), PrepConfig(), spill)):
            assert result.reject is None, result.reject
            result.samples.discard()
print(before, peak())
"""


ROWS_PER_GROUP = 100
"""Rows in each row group of the parquet sources: what the hub's `datasets` writes for audio."""


def as_parquet(items, folder: Path, rows_per_group: int = ROWS_PER_GROUP, rows_per_file: int = 400) -> Path:
    """The files as hub parquet shards (Audio struct of bytes + path, text, speaker_id)."""
    import pyarrow as pa

    schema = pa.schema([("audio", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("text", pa.string()), ("speaker_id", pa.string())])
    rows = [{"audio": {"bytes": Path(i.path).read_bytes(), "path": Path(i.path).name}, "text": i.text,
             "speaker_id": i.speaker} for i in items]
    for k, start in enumerate(range(0, len(rows), rows_per_file)):
        write_parquet(folder / f"train-{k:05d}-of-99999.parquet", rows[start:start + rows_per_file], schema,
                      rows_per_group)
    return folder


def worker_peak(tmp: Path) -> tuple[float, float, float]:
    """(MB of audio in the row group, a worker's peak memory in MB before and after prepping it)."""
    import subprocess

    import numpy as np
    import pyarrow as pa
    import soundfile as sf

    rng = np.random.default_rng(0)
    clip = tmp / "minute.flac"
    sf.write(clip, (0.3 * rng.standard_normal(16000 * 60)).astype(np.float32), 16000)
    data = clip.read_bytes()
    rows = [{"audio": {"bytes": data, "path": f"{i}.flac"}, "text": "", "speaker_id": "s"} for i in range(110)]
    schema = pa.schema([("audio", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("text", pa.string()), ("speaker_id", pa.string())])
    path = write_parquet(tmp / "big" / "train-00000-of-00001.parquet", rows, schema, row_group_size=len(rows))
    done = subprocess.run([sys.executable, "-c", PEAK_PROBE, str(path)], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    before, after = map(int, done.stdout.split())
    return len(data) * len(rows) / 1e6, before / 1e6, after / 1e6


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (user + system)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


CEILING = "FLAC encode only (ceiling)"
STEADY_FILES = 200
"""Files the full run must have beyond the small one for the difference to stand above the noise."""


def encode_only(job):
    segments, sr = job
    return sum(len(encode_sample("k", s, sr, {}).flac) for s in segments)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=240.0)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                    help="prep's and the ceiling's processes (default: a core less than the machine has, for "
                         "moto's server, as a real S3 takes none of the machine that preps)")
    ap.add_argument("--rows-per-shard", type=int, default=400,
                    help="rows in each parquet file (row groups of 100); moto copies a whole object to answer a "
                         "ranged GET, so larger files load the machine with moto's work")
    ap.add_argument("--seconds", type=float, default=8.0,
                    help="each source file's length (a file on S3 costs a GET, whatever its length)")
    ap.add_argument("--source-rate", type=int, default=22050,
                    help="the sources' sample rate (22050: as espeak-ng writes; 16000: nothing to resample)")
    args = ap.parse_args()
    cfg = PrepConfig(workers=args.workers, shard_max_mb=64)
    n_files = int(args.minutes * 60 / args.seconds)
    # the small run large enough that prep reads each row group in one job, as it does in the full run (with
    # less work than 4 jobs a worker it splits them, and a split row group is read more than once)
    sizes = {"small": max(n_files // 8, 4 * args.workers * ROWS_PER_GROUP), "full": n_files}
    with tempfile.TemporaryDirectory() as tmp, MotoS3("bench", own_process=True):
        tmp = Path(tmp)
        spent = {}  # (stage, size) -> (audio s, wall s, CPU s)

        def timed(stage: str, size: str, audio_s: float, fn):
            """fn(), its audio seconds, wall seconds and the CPU seconds of this process and its
            finished children (the pools; moto's server is a child still running, not counted)."""
            t, c = time.perf_counter(), cpu_seconds()
            out = fn()
            spent[stage, size] = (audio_s, time.perf_counter() - t, cpu_seconds() - c)
            return out

        for size, n in sizes.items():
            root = tmp / size
            manifest = write_manifest_corpus(root / "src", n_files=n, n_speakers=20, sr=args.source_rate,
                                              seconds=args.seconds)
            items = scan_sources([str(manifest)]).items
            # the ceiling's input: the exact segments prep would encode, prepared outside the timing
            jobs = []
            for item in items:
                d = load_audio(item.path)
                jobs.append((cut_segments(resample(d.audio, d.sample_rate, 16000).clip(-1, 1), 16000, 10, 1), 16000))
            audio_s = sum(len(s) for segs, _ in jobs for s in segs) / 16000
            shards = as_parquet(items, root / "parquet", rows_per_file=args.rows_per_shard)
            remote_shards = upload(shards, f"s3://bench/{size}/parquet")
            remote = upload(root / "src", f"s3://bench/{size}/src")

            def prep(src: str, out: str):
                return lambda: run_prep([src], out, cfg, progress=False)

            def encode_all():
                with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
                    list(pool.map(encode_only, jobs, chunksize=4))

            samples = set()
            for stage, src, out in (("prep -> local folder", str(manifest), str(root / "out")),
                                    ("prep -> S3 (moto, 127.0.0.1)", str(manifest), f"s3://bench/{size}/te"),
                                    ("prep parquet -> local folder", str(shards), str(root / "out-pq")),
                                    ("prep S3 parquet -> local folder", remote_shards, str(root / "out-s3pq")),
                                    ("prep S3 files -> local folder", f"{remote}/manifest.tsv", str(root / "out-s3"))):
                # the ceiling again just before each stage: this machine's speed drifts over a run by
                # as much as the stages differ (the ceiling alone 2225-2605 audio s a CPU s in three runs)
                timed((CEILING, stage), size, audio_s, encode_all)
                samples.add(timed(stage, size, audio_s, prep(src, out)).samples)
            assert len(samples) == 1, samples
        group_mb, start_mb, peak_mb = worker_peak(tmp)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}; workers: {args.workers}")
    audio_min = next(audio_s for (_, size), (audio_s, _, _) in spent.items() if size == "full") / 60
    print(f"audio: {audio_min:.1f} min in {n_files} files ({sizes['small']} in the small run); "
          f"sources: {args.source_rate} Hz")
    rates = {}  # stage -> (whole run: audio s / wall s / core, audio s / CPU s; the same for the difference)
    for stage in dict.fromkeys(stage for stage, _ in spent):
        (a1, w1, c1), (a2, w2, c2) = spent[stage, "small"], spent[stage, "full"]
        rates[stage] = (a2 / w2 / args.workers, a2 / c2, (a2 - a1) / (w2 - w1) / args.workers, (a2 - a1) / (c2 - c1))
    ceilings = [r for stage, r in rates.items() if isinstance(stage, tuple)]
    print("whole run: audio s over the full run's wall s a core, and over its CPU s; steady: the same for the\n"
          "full run less the small one (what start-up costs, pools, clients and listing, drops out); each\n"
          f"ratio against the ceiling measured just before that stage (the ceiling row: the mean of {len(ceilings)})")
    print(f"{'stage':32} {'wall/core':>9} {'ratio':>6} {'CPU':>7} {'ratio':>6} | {'steady wall':>11} {'ratio':>6} "
          f"{'CPU':>7} {'ratio':>6}")
    rows = {CEILING: (tuple(sum(column) / len(ceilings) for column in zip(*ceilings)), None)}
    rows.update((stage, (r, rates[CEILING, stage])) for stage, r in rates.items() if not isinstance(stage, tuple))
    steady = sizes["full"] - sizes["small"] >= STEADY_FILES
    for name, (r, top) in rows.items():
        top = top or r
        print(f"{name:32} {r[0]:9.1f} {r[0] / top[0]:6.2f} {r[1]:7.1f} {r[1] / top[1]:6.2f} | "
              + (f"{r[2]:11.1f} {r[2] / top[2]:6.2f} {r[3]:7.1f} {r[3] / top[3]:6.2f}" if steady else
                 f"{'-':>11} {'-':>6} {'-':>7} {'-':>6}"))
    if not steady:
        need = (sizes["small"] + STEADY_FILES) * 8 / 60
        print(f"steady: too few files beyond the small run's {sizes['small']} to tell from noise (--minutes "
              f"{math.ceil(need)} or more; the more, the steadier)")
    by_cpu = [r[1] for r in ceilings]
    print(f"the {len(ceilings)} ceilings, whole run: {min(by_cpu):.0f}-{max(by_cpu):.0f} audio s a CPU s")
    print(f"one worker on a {group_mb:.0f} MB parquet row group: peak memory {peak_mb:.0f} MB "
          f"({start_mb:.0f} MB before the first row)")


if __name__ == "__main__":
    main()
