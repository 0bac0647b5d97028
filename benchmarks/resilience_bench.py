"""What a failure costs: checkpoint time, work lost per preemption, Ray worker scaling, and what
elastic training saves when a node is lost.

    .venv/bin/python benchmarks/resilience_bench.py [--repeats 3] [--skip-ray]
    .venv/bin/python benchmarks/resilience_bench.py --only elastic [--return-after 30]

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
(c) per-rank steps/s and total samples/s with 1 vs 2 Ray workers at the same global batch;
(d) one node loss, elastic vs fixed size, side by side: on a fresh two-node Ray cluster per case
    (ray.cluster_utils.Cluster, a head and a second node of 1 CPU each, as tests/launch/test_elastic.py)
    the same 2-worker run, once with train.min_workers=2 (fixed size: Ray waits for a replacement
    of the same size) and once with train.min_workers=1 (elastic: it shrinks to 1 worker and grows
    back, train.resize_check_s=2). At about step --lose-at the second node's raylet is killed with
    no notice; a new 1-CPU node joins --return-after seconds later in both cases (spot capacity
    coming back). Measured: wall time, worker-hours as the run's own cost ledger bills them
    (RUN/ledger.jsonl), useful steps per ledger worker-hour, the 1-CPU node-hours that were up (what
    a cloud bills, used or idle), steps replayed, metric lines logged while shrunk, and the resizes.
Ray runs use the TINY overrides of tests/run_fixtures.py, so the whole script takes minutes;
--only runs some sections (e.g. --only elastic).
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
from jobs.launch.spot_drill import SpotDrill  # noqa: E402
from pipeline.runs.checkpoints import Checkpoints  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.runs.rundir import RunDir  # noqa: E402
from pipeline.training.duties import RankDuties
from pipeline.training.state import build_state, load_checkpoint, make_accelerator, save_checkpoint
from pipeline.training.step import train_step
from run_fixtures import TINY, MotoS3, wait_for  # noqa: E402

INTERRUPT_AT = 15
"""Step after which the notice is raised or the worker killed (or, in (d), the node lost)."""

ELASTIC_STEPS = 400
"""(d)'s run length: long enough that the elastic run is still going when the node returns."""
RETURN_AFTER = 90.0
"""(d)'s outage: seconds from the node loss until a new node joins. Restarting a worker group takes
20-60 s on a loaded 2-core machine; with a 30 s outage the node was back before Ray had started the
smaller group, so the elastic run never ran shrunk (see BENCHMARKS.md)."""
ELASTIC_BATCH = ["train.batch_size=16", "train.segment_seconds=0.5"]
"""(d)'s global batch: TINY's own (2 x 0.1 s) is so small that gloo, not compute, sets the step
time (measured: ~25 ms a step on 1 worker, ~50 ms on 2); at 16 x 0.5 s a step is ~0.17 s of compute
on one core, so a lost worker should cost throughput as in real training (on a loaded 2-core
machine 2 workers were still measured no faster than 1: see BENCHMARKS.md)."""


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
        save_checkpoint(state, accel, cfg, ckpts, {}, extra=duties.checkpoint_extra())
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
    from jobs.launch.trainer import train_on_ray

    with SpotDrill(str(run_dir), at_step=INTERRUPT_AT, poll_seconds=0.05) as drill:
        t = time.monotonic()
        result = train_on_ray(ray_config(dataset, run_dir, f"train.steps={steps}", "train.checkpoint_every=10",
                                         f"preempt.endpoints.aws={drill.url}", "preempt.poll_seconds=0.1"))
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
    from jobs.launch.trainer import train_on_ray

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
    from jobs.launch.trainer import train_on_ray

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


# ------------------------------------------------------------------------------ (d) elastic vs fixed
FAST_FAILURE_DETECTION = {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                          "health_check_initial_delay_ms": 0}
"""As tests/launch/test_elastic.py: a dead node is noticed in ~1.5 s instead of ~15 s."""

NODE_LOSS_CASES = {"fixed size (min_workers=2)": ["train.min_workers=2"],
                   "elastic (min_workers=1)": ["train.min_workers=1", "train.resize_check_s=2"]}
"""(d)'s two cases: the same run but for these overrides."""


def node_loss_run(cfg, lose_at: int, return_after: float, timeout: float) -> dict:
    """A fresh two-node cluster (head + one node, 1 CPU each, as tests/launch/test_elastic.py), a 2-worker
    run on it; once step `lose_at` is logged the second node's raylet is killed, and a new 1-CPU node
    joins `return_after` seconds later (spot capacity coming back) unless the run has ended by then."""
    import ray
    from ray.cluster_utils import Cluster

    from jobs.launch.trainer import train_on_ray

    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "_system_config": FAST_FAILURE_DETECTION})
    second = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    seen: dict = {"error": None}
    result: dict = {}
    run_dir = Path(cfg.run.dir)
    try:
        def fit():
            try:
                result["r"] = train_on_ray(cfg)
            except Exception as e:  # a failed fit is a result here, not the end of the benchmark
                result["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"

        thread = threading.Thread(target=fit, daemon=True)
        start = time.time()
        thread.start()
        try:
            wait_for(lambda: max((r["step"] for r in logged(run_dir)), default=0) >= lose_at or not thread.is_alive(),
                     timeout=timeout)
        except TimeoutError:
            seen["error"] = f"step {lose_at} not reached in {timeout:g} s"
        if thread.is_alive() and seen["error"] is None:
            seen["lost_at"] = max(r["step"] for r in logged(run_dir))
            seen["lost_time"] = time.time()
            cluster.remove_node(second, allow_graceful=False)  # the spot node vanishes without notice
            thread.join(timeout=return_after)
            if thread.is_alive():
                cluster.add_node(num_cpus=1)  # capacity returns
                seen["returned_time"] = time.time()
        thread.join(timeout=max(1.0, timeout - (time.time() - start)))
        end = time.time()
        if thread.is_alive():
            seen["error"] = f"the run had not ended {timeout:g} s after its start"
    finally:
        ray.shutdown()
        cluster.shutdown()
    r = result.get("r")
    error = seen["error"] or result.get("error")
    return {"wall_s": end - start, "status": r.status if r else "error", "final_step": r.step if r else None,
            "error": error, **seen, **node_hours(seen, start, end), **elastic_accounting(run_dir),
            **interruption(run_dir)}


def node_hours(seen: dict, start: float, end: float) -> dict:
    """1-CPU node-hours that were up during the run (what a cloud bills, used or idle): the head all
    along, the second node until it was lost, the returned one from its return."""
    lost, back = seen.get("lost_time", end), seen.get("returned_time", end)
    return {"node_hours": ((end - start) + (lost - start) + (end - back)) / 3600}


def elastic_accounting(run_dir: Path) -> dict:
    """From the run's own logs: its ledger totals, its resizes, and the metric lines a shrunk group logged."""
    run = RunDir(str(run_dir))
    ledger = run.log("ledger.jsonl").read()
    last = next((r for r in reversed(ledger) if "worker_hours" in r), {})
    events = run.events.read()
    resized = [e for e in events if e["event"] == "resized"]
    # Every metric line logged while the group was smaller than train.workers (2), replayed ones included.
    shrunk, small = 0, None
    edges = [(e["time"], e["to"]) for e in resized]
    for rec in logged(run_dir):
        while edges and edges[0][0] <= rec["time"]:
            small = edges.pop(0)[1] < 2
        shrunk += bool(small)
    restarts = [r for r in ledger if r["event"] == "restarted"]
    return {"worker_hours": last.get("worker_hours"), "wasted_worker_hours": last.get("wasted_worker_hours"),
            "restarts": last.get("restarts"), "gap_s": sum(r.get("gap_s", 0.0) for r in restarts),
            "resizes": [(e["from"], e["to"], e["step"]) for e in resized], "shrunk_steps": shrunk,
            "groups": sum(e["event"] in ("start", "resumed") for e in events)}


def node_loss_runs(dataset: str, tmp: Path, steps: int, lose_at: int, return_after: float,
                   timeout: float) -> dict[str, dict]:
    """(d): the fixed-size and the elastic case, one after the other, each on its own fresh cluster."""
    # Both configs first: the second case must not read a config file edited during the first.
    cfgs = {name: ray_config(dataset, tmp / f"nodeloss{i}", *ELASTIC_BATCH, f"train.steps={steps}",
                             "train.checkpoint_every=10", "train.max_failures=4", *more)
            for i, (name, more) in enumerate(NODE_LOSS_CASES.items())}
    rows = {}
    for name, cfg in cfgs.items():
        print(f"(d) {name}: {steps} steps, node lost at about step {lose_at}, back after {return_after:g} s",
              flush=True)
        rows[name] = node_loss_run(cfg, lose_at, return_after, timeout)
    return rows


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


def cell(v, fmt="d") -> str:
    """A table cell: `v` formatted, or - when missing."""
    return "-" if v is None else format(v, fmt)


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


def print_node_loss(rows: dict[str, dict], steps: int, lose_at: int, return_after: float) -> None:
    print(f"\n(d) one node lost at about step {lose_at} of a {steps}-step 2-worker TINY run ("
          f"{', '.join(o.split('.', 1)[1] for o in ELASTIC_BATCH)}, checkpoint_every=10, max_failures=4), a new "
          f"node back {return_after:g} s later; fresh 2-node cluster (1 CPU each) per case")
    print(f"{'case':27} {'lost at':>7} {'resumed':>7} {'replayed':>8} {'shrunk':>6} {'groups':>6} {'wall s':>7} "
          f"{'worker-h':>9} {'wasted':>8} {'steps/wh':>8} {'node-h up':>9} {'result':>14}  resizes")

    for name, r in rows.items():
        wh = r["worker_hours"]
        per_wh = r["final_step"] / wh if wh and r["final_step"] else None
        resizes = ", ".join(f"{a}->{b}@{s}" for a, b, s in r["resizes"]) or "none"
        print(f"{name:27} {cell(r.get('lost_at')):>7} {cell(r['resumed_from']):>7} {r['replayed']:8d} "
              f"{r['shrunk_steps']:6d} {r['groups']:6d} {r['wall_s']:7.1f} {cell(wh, '.5f'):>9} "
              f"{cell(r['wasted_worker_hours'], '.5f'):>8} {cell(per_wh, '.0f'):>8} {r['node_hours']:9.5f} "
              f"{r['status'] + ' @' + str(r['final_step']):>14}  {resizes}")
        print(f"    ledger: {cell(r['restarts'])} restart(s), restart gaps billed {r['gap_s']:.1f} s; "
              f"recovery {cell(r['recovery_s'], '.1f')} s (last step before the loss to the first beyond it)")
        if r["error"]:
            print(f"    problem: {r['error']}")
    fixed, elastic = rows.values()
    if fixed["worker_hours"] and elastic["worker_hours"]:
        print(f"elastic / fixed: wall x{elastic['wall_s'] / fixed['wall_s']:.2f}, ledger worker-hours "
              f"x{elastic['worker_hours'] / fixed['worker_hours']:.2f}, node-hours up "
              f"x{elastic['node_hours'] / fixed['node_hours']:.2f}")
    print("lost at: last step logged when the node was killed; resumed: checkpoint step the first new group "
          "resumed from;\nreplayed: steps logged more than once; shrunk: metric lines logged while the "
          "group had 1 worker (replayed ones included);\ngroups: worker groups that reached the training loop (start + resumed events);\nworker-h / wasted: the ledger's last totals "
          "(workers x group wall time, restart gaps billed at the new group's size, capped at "
          "cost.max_gap_minutes;\nwasted = replayed work + gaps); steps/wh: train.steps per ledger "
          "worker-hour; node-h up: 1-CPU node-hours alive during the run\n(head all along, the lost node "
          "until the loss, the new one from its return)")


SECTIONS = ("checkpoints", "preemption", "scaling", "elastic")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="checkpoint saves/restores per store")
    ap.add_argument("--steps", type=int, default=25, help="steps of each preemption run")
    ap.add_argument("--scaling-steps", type=int, default=40)
    ap.add_argument("--global-batch", type=int, default=8)
    ap.add_argument("--segment", type=float, default=0.5, help="segment seconds of the scaling runs")
    ap.add_argument("--skip-ray", action="store_true", help="checkpoint timings only (as --only checkpoints)")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, metavar="SECTION",
                    help=f"run only these sections: {', '.join(SECTIONS)} (a, b, c, d; default all)")
    ap.add_argument("--elastic-steps", type=int, default=ELASTIC_STEPS, help="(d) steps of each run")
    ap.add_argument("--lose-at", type=int, default=INTERRUPT_AT, help="(d) step after which the node is lost")
    ap.add_argument("--return-after", type=float, default=RETURN_AFTER,
                    help="(d) seconds from the node loss until a new node joins (both cases)")
    ap.add_argument("--elastic-timeout", type=float, default=900.0, help="(d) seconds a run may take at most")
    ap.add_argument("--keep", metavar="DIR", help="write the runs under DIR (kept) instead of a temporary folder")
    args = ap.parse_args()
    sections = {"checkpoints"} if args.skip_ray else set(args.only or SECTIONS)
    keep = Path(args.keep).absolute() if args.keep else None
    if keep is not None and keep.exists() and any(keep.iterdir()):
        ap.error(f"--keep {keep}: not empty (its runs would resume instead of starting afresh)")
    os.chdir(ROOT)  # config paths are relative to the repo
    machine_report()
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = keep or Path(tmp)
        if "checkpoints" in sections:
            ckpt_rows = {"local folder": checkpoint_times(str(tmp / "ckpt-local"), args.repeats)}
            with MotoS3("bench"):
                ckpt_rows["S3 (moto on 127.0.0.1)"] = checkpoint_times("s3://bench/ckpt", args.repeats)
            print_checkpoints(ckpt_rows, args.repeats)
        dataset = str(tmp / "ds")
        if sections - {"checkpoints"}:
            make_dataset(dataset, [12, 12, 12, 12], sr=16000, seconds=0.6)
        if sections & {"preemption", "scaling"}:
            import ray

            ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)  # as the tests, less the dashboard
            try:
                if "preemption" in sections:
                    preempt_rows = {"spot notice (watcher on)": run_with_notice(dataset, tmp / "notice", args.steps),
                                    "SIGKILL, no notice": run_with_kill(dataset, tmp / "kill", args.steps)}
                    print_preemptions(preempt_rows)
                if "scaling" in sections:
                    skip = 5
                    scaling = [scaling_run(dataset, tmp / f"scale{w}", w, args.global_batch, args.segment,
                                           args.scaling_steps, skip) for w in (1, 2)]
                    print_scaling(scaling, args.global_batch, args.segment, args.scaling_steps, skip)
            finally:
                ray.shutdown()
        if "elastic" in sections:  # its own clusters, after the local Ray above is down
            rows = node_loss_runs(dataset, tmp, args.elastic_steps, args.lose_at, args.return_after,
                                  args.elastic_timeout)
            print_node_loss(rows, args.elastic_steps, args.lose_at, args.return_after)
    print(f"\ntotal wall time {time.monotonic() - t_start:.0f} s")


if __name__ == "__main__":
    main()
