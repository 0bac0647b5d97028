"""What a failure costs: checkpoint time, work lost per preemption, and Ray worker scaling.

    .venv/bin/python benchmarks/resilience_bench.py [--repeats 3] [--skip-ray]

(a) save and restore seconds of a full base-config checkpoint (model, optimizer after one step,
    train state, rank part) with `save_checkpoint` / `load_checkpoint`, to a local folder and to a
    moto S3 server started here on 127.0.0.1;
(b) steps replayed after one preemption of a tiny 2-worker run on a real local Ray
    (checkpoint_every=10): once with the notice watcher (a fake IMDSv2 on 127.0.0.1 flips
    spot/instance-action to terminate at about step 15, so the run checkpoints at the next step),
    once with no notice (a worker is SIGKILLed at about step 15 and Ray restarts the group from the
    last periodic checkpoint). Replayed steps are steps logged more than once in metrics.jsonl;
    "recovery" is the wall time from the last step logged before the interruption until training
    is past that step again;
(c) per-rank steps/s and total samples/s with 1 vs 2 Ray workers at the same global batch.
Ray runs use the TINY overrides of tests/run_fixtures.py, so the whole script takes minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from audio_fixtures import make_dataset  # noqa: E402
from jobs.spot_drill import SpotDrill  # noqa: E402
from pipeline.checkpoint import Checkpoints  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.rundir import RunDir  # noqa: E402
from pipeline.train import (RankDuties, build_state, load_checkpoint, make_accelerator,  # noqa: E402
                            save_checkpoint, train_step)
from run_fixtures import TINY, MotoS3, wait_for  # noqa: E402

INTERRUPT_AT = 15
"""Step after which the notice is raised or the worker killed."""


# ------------------------------------------------------------------------------ (a) checkpoints
def checkpoint_times(run_url: str, repeats: int) -> dict:
    """Median save and restore seconds of a base checkpoint at `run_url`, and its size."""
    # Batch and segment only shape the one step; the saved state is the same size for any batch.
    cfg = load_config(["configs/base.yaml"], ["train.workers=0", "train.batch_size=2", "train.segment_seconds=0.32"])
    accel = make_accelerator(cfg)
    state = build_state(cfg, accel)
    train_step(state, 0.1 * torch.randn(2, 1, 5120), accel, cfg)  # optimizer moments exist now
    ckpts, duties = Checkpoints(run_url), RankDuties()  # no ledger or W&B state in these checkpoints
    saves, loads = [], []
    for step in range(1, repeats + 1):
        state.step = step
        t = time.perf_counter()
        save_checkpoint(state, accel, cfg, ckpts, duties, {})
        saves.append(time.perf_counter() - t)
        fresh = build_state(cfg, accel)
        t = time.perf_counter()
        load_checkpoint(fresh, accel, ckpts, ckpts.latest_step())  # what a resume does
        loads.append(time.perf_counter() - t)
        assert fresh.step == step
    parts = ckpts.manifest(repeats)["parts"]
    return {"save": statistics.median(saves), "load": statistics.median(loads),
            "mb": sum(p["bytes"] for p in parts.values()) / 1e6, "parts": sorted(parts)}


# ------------------------------------------------------------------------------ (b), (c) Ray runs
def logged(run_dir: Path) -> list[dict]:
    """rank 0's per-step metric lines, in the order written (a restart writes replayed steps again)."""
    return [r for r in RunDir(str(run_dir)).metrics.read() if "loss/total" in r]


def interruption(run_dir: Path) -> dict:
    """Steps replayed, where the run resumed, and the wall time until it was past the break again."""
    records = logged(run_dir)
    replayed = sum(n - 1 for n in Counter(r["step"] for r in records).values())
    resumed = next((e for e in RunDir(str(run_dir)).events.read() if e["event"] == "resumed"), None)
    if resumed is None:
        return {"replayed": replayed, "last_before": None, "resumed_from": None, "recovery_s": None}
    before = [r for r in records if r["time"] <= resumed["time"]]
    last = before[-1]
    past = next((r for r in records if r["time"] > resumed["time"] and r["step"] > last["step"]), None)
    return {"replayed": replayed, "last_before": last["step"], "resumed_from": resumed["step"],
            "recovery_s": past["time"] - last["time"] if past else None}


def ray_config(dataset: str, run_dir: Path, *more: str):
    return load_config(["configs/base.yaml"], [f"data.url={dataset}", f"run.dir={run_dir}", *TINY, *more])


def run_with_notice(dataset: str, run_dir: Path, steps: int) -> dict:
    """A spot drill (fake IMDSv2) flips to terminate once step INTERRUPT_AT is logged; the
    replacement gets none."""
    from jobs.ray_train import train_on_ray

    with SpotDrill(str(run_dir), at_step=INTERRUPT_AT, poll_seconds=0.05) as drill:
        t = time.monotonic()
        result = train_on_ray(ray_config(dataset, run_dir, f"train.steps={steps}", "train.checkpoint_every=10",
                                         f"preempt.aws_endpoint={drill.url}", "preempt.poll_seconds=0.1"))
        wall = time.monotonic() - t
    error = None
    if drill.fired_at is None:
        error = f"the run never logged step {INTERRUPT_AT}: no notice was raised"
    elif drill.stopped_at is None:
        error = "the notice was raised but no worker group stopped on it"
    return {"wall_s": wall, "status": result.status, "final_step": result.step,
            "interrupted_at": drill.fired_at, "error": error, **interruption(run_dir)}


def run_with_kill(dataset: str, run_dir: Path, steps: int) -> dict:
    """SIGKILL rank 1 once step INTERRUPT_AT is logged, with no notice; Ray restarts the group."""
    from jobs.ray_train import train_on_ray

    seen = {}

    def killer():
        try:
            wait_for(lambda: max((r["step"] for r in logged(run_dir)), default=0) >= INTERRUPT_AT, timeout=300)
            seen["killed_at"] = max(r["step"] for r in logged(run_dir))
            pid = json.loads((run_dir / "workers" / "rank1.json").read_text())["pid"]
            os.kill(pid, signal.SIGKILL)
        except (TimeoutError, OSError) as e:
            seen["error"] = str(e)

    threading.Thread(target=killer, daemon=True).start()
    t = time.monotonic()
    result = train_on_ray(ray_config(dataset, run_dir, f"train.steps={steps}", "train.checkpoint_every=10",
                                     "train.debug_worker_records=true"))  # rank 1's pid, to kill it
    return {"wall_s": time.monotonic() - t, "status": result.status, "final_step": result.step,
            "interrupted_at": seen.get("killed_at"), "error": seen.get("error"),
            **interruption(run_dir)}


def scaling_run(dataset: str, run_dir: Path, workers: int, global_batch: int, segment: float,
                steps: int, skip: int) -> dict:
    """Per-rank steps/s from rank 0's metric timestamps after `skip` warm-up steps."""
    from jobs.ray_train import train_on_ray

    batch = global_batch // workers
    t = time.monotonic()
    train_on_ray(ray_config(dataset, run_dir, f"train.workers={workers}", f"train.batch_size={batch}",
                            f"train.segment_seconds={segment}", f"train.steps={steps}",
                            f"train.checkpoint_every={steps}"))
    wall = time.monotonic() - t
    records = [r for r in logged(run_dir) if r["step"] > skip]
    steps_per_s = (len(records) - 1) / (records[-1]["time"] - records[0]["time"])
    return {"workers": workers, "batch": batch, "steps_per_s": steps_per_s,
            "samples_per_s": steps_per_s * batch * workers,
            "audio_s_per_s": steps_per_s * batch * workers * segment, "wall_s": wall}


# ------------------------------------------------------------------------------ report
def machine_report() -> None:
    load = os.getloadavg()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, python {platform.python_version()}")
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if load[0] > 1.5:
        print(f"NOTE: figures are from a loaded {os.cpu_count()}-core machine (load > 1.5 at start): "
              "timings are low and noisy; step counts (replayed steps) are not affected")
    if not torch.cuda.is_available():
        print("no GPU: everything below runs on CPU (it is all CPU work here anyway)")


def print_checkpoints(rows: dict[str, dict], repeats: int) -> None:
    some = next(iter(rows.values()))
    print(f"\n(a) base-config checkpoint, {some['mb']:.1f} MB in parts {', '.join(some['parts'])}; "
          f"median of {repeats}")
    print(f"{'store':34} {'save s':>8} {'restore s':>10} {'save MB/s':>10}")
    for name, r in rows.items():
        print(f"{name:34} {r['save']:8.2f} {r['load']:10.2f} {r['mb'] / r['save']:10.1f}")


def print_preemptions(rows: dict[str, dict]) -> None:
    print(f"\n(b) one interruption of a 2-worker TINY run, checkpoint_every=10, interrupted at about step "
          f"{INTERRUPT_AT}")
    print(f"{'case':26} {'hit at':>7} {'last step':>10} {'resumed':>8} {'replayed':>9} "
          f"{'recovery s':>11} {'run wall s':>11} {'result':>14}")
    def cell(v, fmt="d"):
        return "-" if v is None else format(v, fmt)

    for name, r in rows.items():
        print(f"{name:26} {cell(r['interrupted_at']):>7} {cell(r['last_before']):>10} "
              f"{cell(r['resumed_from']):>8} "
              f"{r['replayed']:9d} {cell(r['recovery_s'], '.1f'):>11} {r['wall_s']:11.1f} "
              f"{r['status'] + ' @' + str(r['final_step']):>14}")
        if r["error"]:
            print(f"    problem: {r['error']}")
    print("hit at: last step logged when the notice was raised / the worker killed; last step: last step "
          "logged before the restart;\nresumed: step of the checkpoint resumed from (notice: the one written "
          "on the notice; kill: the last periodic one);\nreplayed: steps logged twice; recovery: wall s from "
          "the last step before the restart to the first step beyond it")


def print_scaling(rows: list[dict], global_batch: int, segment: float, steps: int, skip: int) -> None:
    print(f"\n(c) Ray workers on CPU, TINY model, global batch {global_batch} x {segment} s, {steps} steps "
          f"(first {skip} not timed), 1 CPU per worker")
    print(f"{'workers':>7} {'batch/rank':>10} {'steps/s/rank':>13} {'samples/s':>10} {'audio s/s':>10} "
          f"{'fit wall s':>11}")
    for r in rows:
        print(f"{r['workers']:7d} {r['batch']:10d} {r['steps_per_s']:13.2f} {r['samples_per_s']:10.1f} "
              f"{r['audio_s_per_s']:10.2f} {r['wall_s']:11.1f}")
    if len(rows) == 2:
        print(f"2 vs 1 workers: total samples/s x{rows[1]['samples_per_s'] / rows[0]['samples_per_s']:.2f} "
              f"(ideal x2.00)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="checkpoint saves/restores per store")
    ap.add_argument("--steps", type=int, default=25, help="steps of each preemption run")
    ap.add_argument("--scaling-steps", type=int, default=40)
    ap.add_argument("--global-batch", type=int, default=8)
    ap.add_argument("--segment", type=float, default=0.5, help="segment seconds of the scaling runs")
    ap.add_argument("--skip-ray", action="store_true", help="checkpoint timings only")
    args = ap.parse_args()
    os.chdir(ROOT)  # config paths are relative to the repo
    machine_report()
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt_rows = {"local folder": checkpoint_times(str(tmp / "ckpt-local"), args.repeats)}
        with MotoS3("bench"):
            ckpt_rows["S3 (moto on 127.0.0.1)"] = checkpoint_times("s3://bench/ckpt", args.repeats)
        print_checkpoints(ckpt_rows, args.repeats)
        if args.skip_ray:
            return
        import ray

        dataset = str(tmp / "ds")
        make_dataset(dataset, [12, 12, 12, 12], sr=16000, seconds=0.6)
        ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)  # as the tests, less the dashboard
        try:
            preempt_rows = {"spot notice (watcher on)": run_with_notice(dataset, tmp / "notice", args.steps),
                            "SIGKILL, no notice": run_with_kill(dataset, tmp / "kill", args.steps)}
            print_preemptions(preempt_rows)
            skip = 5
            scaling = [scaling_run(dataset, tmp / f"scale{w}", w, args.global_batch, args.segment,
                                   args.scaling_steps, skip) for w in (1, 2)]
            print_scaling(scaling, args.global_batch, args.segment, args.scaling_steps, skip)
        finally:
            ray.shutdown()
    print(f"\ntotal wall time {time.monotonic() - t_start:.0f} s")


if __name__ == "__main__":
    main()
