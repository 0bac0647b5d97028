"""W&B tracking and the cost it reports, across a SIGKILLed Ray worker: one real local-Ray run (with a
fake W&B key and AWS secret planted in the environment) serves three checks, each read back with
tools that are not ours (the test's own clock, `wandb leet inspect`, grep):
ledger and W&B cost within the wall time this test measured x price; one W&B run across the restart with cost
and SNR history; no secret in anything the run wrote. Plus the no-op tracker and redaction.

Slow (two worker-group starts): marked `slow`, run in CI.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from audio_fixtures import make_dataset
from jobs.launch.trainer import train_on_ray
from pipeline.runs.checkpoints import Checkpoints
from pipeline.config import load_config
from pipeline.runs.rundir import RunDir
from pipeline.training.tracking import Tracker, make_tracker, redact_secrets
from run_fixtures import TINY, losses_by_step, wait_for

WANDB_KEY = "fake-key-0123456789abcdef"
AWS_SECRET = "fake-aws-secret-9876543210fedcba"
WANDB_CLI = Path(sys.executable).parent / "wandb"  # the venv's wandb command, beside its python


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """2 workers, $3.6 per worker-hour, rank 1 SIGKILLed after step 6; returns what the test measured."""
    import ray

    planted = {"WANDB_API_KEY": WANDB_KEY, "AWS_SECRET_ACCESS_KEY": AWS_SECRET, "WANDB_MODE": "offline"}
    saved = {k: os.environ.get(k) for k in planted}
    os.environ.update(planted)  # before ray.init: the workers inherit it
    # ... and so would a W&B service token of this process (set by any earlier wandb.init here), one
    # of a service that is gone: a worker that used it would get no W&B run at all.
    ours = os.environ.get("WANDB_SERVICE")
    os.environ["WANDB_SERVICE"] = "3-1-unix-/tmp/telucodec-test-no-such-wandb-service/socket"
    try:
        ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False)
    finally:
        os.environ.pop("WANDB_SERVICE")
        if ours:
            os.environ["WANDB_SERVICE"] = ours
    try:
        data = str(tmp_path_factory.mktemp("ds"))
        make_dataset(data, [6, 6, 6, 6], sr=16000, seconds=0.3)  # every epoch equal per rank
        run = tmp_path_factory.mktemp("killed")
        first_starts = {}

        def killer():
            wait_for(lambda: max(losses_by_step(run), default=0) >= 6)
            for rank in (0, 1):
                first_starts[rank] = json.loads((run / "workers" / f"rank{rank}.json").read_text())["start"]
            os.kill(json.loads((run / "workers" / "rank1.json").read_text())["pid"], signal.SIGKILL)

        seen: dict[int, float] = {}  # step -> when this test first saw it logged (its own clock)

        def watch():
            while 14 not in seen:
                for step in losses_by_step(run):
                    seen.setdefault(step, time.time())
                time.sleep(0.02)

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        cfg = load_config(["configs/base.yaml"], [f"data.url={data}", f"run.dir={run}", *TINY, "train.steps=14",
                                                  "train.checkpoint_every=4", "train.eval_every=5",
                                                  "cost.usd_per_hour=3.6", "cost.heartbeat_seconds=1",
                                                  "train.health_alarm_step=0",  # health problems are alerts
                                                  "train.debug_worker_records=true"])
        began = time.time()
        result = train_on_ray(cfg)
        ended = time.time()
        thread.join(timeout=5)
        watcher.join(timeout=5)
        logs = Path(ray._private.worker._global_node.get_logs_dir_path())  # the workers' stdout/stderr
        yield {"run": run, "result": result, "first_starts": first_starts, "ray_logs": logs,
               "clock": (began, ended), "seen": seen}
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def wandb_records(run: Path) -> list[list[dict]]:
    """Each offline W&B run file's records, read by wandb's own `wandb leet inspect --json`."""
    out = []
    for f in sorted((run / "wandb").glob("offline-run-*/run-*.wandb")):  # oldest first (named by start time)
        dump = subprocess.run([str(WANDB_CLI), "leet", "inspect", "--json", str(f)],
                              capture_output=True, text=True, check=True).stdout
        out.append([json.loads(line) for line in dump.splitlines() if line.strip()])
    return out


def history(records: list[list[dict]]) -> list[dict]:
    return [r["history"]["item"] for recs in records for r in recs if r["type"] == "history"]


@pytest.mark.slow
def test_ledger_and_wandb_cost_equal_measured_wall_time_across_a_killed_worker(killed_run):
    """Wall time measured by this test's own clock, not the code under test's: the ledger bills two
    workers for no more than the whole call took, and for no less than the span from step 1 to step
    14 (the kill and the restart gap fall inside it, and are billed)."""
    run, starts = killed_run["run"], killed_run["first_starts"]
    assert killed_run["result"].status == "finished" and killed_run["result"].step == 14
    assert starts, "the worker was never killed"
    (began, ended), seen = killed_run["clock"], killed_run["seen"]
    usd_per_s = 2 * 3.6 / 3600  # two workers at $3.6 a worker-hour
    most, least = (ended - began) * usd_per_s, (seen[14] - seen[1]) * usd_per_s
    lines = RunDir(str(run)).log("ledger.jsonl").read()
    final = lines[-1]
    assert final["event"] == "finished"
    print(f"between ${least:.5f} and ${most:.5f}: ledger ${final['usd']:.5f}, wasted ${final['wasted_usd']:.5f}")
    assert least * 0.99 <= final["usd"] <= most * 1.01
    wandb_usd = [h["cost/usd"] for h in history(wandb_records(run)) if "cost/usd" in h]
    print(f"W&B ${wandb_usd[-1]:.5f}")
    assert wandb_usd[-1] == pytest.approx(final["usd"], rel=1e-3)
    restarted = [r for r in lines if r["event"] == "restarted"]
    assert len(restarted) == 1 and restarted[0]["gap_s"] > 0 and final["restarts"] == 1
    assert 0 < final["wasted_worker_hours"] < final["worker_hours"]  # replayed steps and the gap
    assert final["wasted_usd"] == pytest.approx(final["wasted_worker_hours"] * 3.6)


@pytest.mark.slow
def test_wandb_is_one_run_across_the_restart_with_cost_and_snr_history(killed_run):
    run = killed_run["run"]
    records = wandb_records(run)
    assert len(records) == 2  # offline: one folder per worker group
    ids = {r["run"]["run_id"] for recs in records for r in recs if r["type"] == "run"}
    stored = Checkpoints(str(run)).load(14, "train")["extra"]["wandb_run_id"]
    assert ids == {stored}
    rows = history(records)
    assert [h["step"] for h in rows if "val/snr" in h][-1] == 14
    usd = [[h["cost/usd"] for h in history([recs]) if "cost/usd" in h] for recs in records]
    assert all(u == sorted(u) for u in usd) and usd[1][0] >= usd[0][-1] > 0  # never backwards, across the restart
    assert any("samples/0/decoded" in k for h in rows for k in h)  # input vs decoded audio at evals
    health = [e for e in RunDir(str(run)).events.read() if e["event"] == "health"]
    alerts = [r for recs in records for r in recs if r["type"] == "alert"]
    assert health and alerts
    assert {a["alert"]["title"] for a in alerts} <= {f"health at step {e['step']}" for e in health}


@pytest.mark.slow
def test_no_secret_in_anything_the_run_wrote(killed_run):
    files = [p for p in killed_run["run"].rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files) and any(p.name == "ledger.jsonl" for p in files)
    files += [p for p in killed_run["ray_logs"].rglob("*") if p.is_file()]
    assert any(p.name.startswith("worker-") for p in files)
    for path in files:
        data = path.read_bytes()
        assert WANDB_KEY.encode() not in data and AWS_SECRET.encode() not in data, path


def test_disabled_tracking_is_a_no_op_and_config_secrets_are_redacted(tmp_path, monkeypatch):
    cfg = load_config(["configs/base.yaml"], [f"run.dir={tmp_path}", "tracking.enabled=false"])
    tracker = make_tracker(cfg, "abc")
    assert type(tracker) is Tracker and tracker.run_id is None
    tracker.log({"loss": 1.0}, 1)
    tracker.finish()
    assert not list(tmp_path.iterdir())
    monkeypatch.setenv("MY_TOKEN", "s3cr3t-value-123")
    assert redact_secrets({"a": ["x s3cr3t-value-123 y"], "b": 1}) == {"a": ["x <redacted> y"], "b": 1}

