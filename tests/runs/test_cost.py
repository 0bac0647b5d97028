"""Cost tracking: prices (table, override, cloud metadata on loopback), restart accounting, a killed
single-process driver bounded by its last heartbeat, the budget guard on Ray, `telucodec cost`.

The killed-worker run that checks ledger and W&B totals against measured wall time is in
test_tracking.py (one Ray run serves the W&B and secret checks too).
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from audio_fixtures import make_dataset
from jobs.cli import main
from jobs.launch.trainer import train_on_ray
from pipeline.cloud.fake import MetadataServer
from pipeline.runs.checkpoints import Checkpoints
from pipeline.config import ConfigError, load_config
from pipeline.runs.cost import CostTracker, summarize_run, worker_price
from pipeline.codec.inference import load_codec
from pipeline.runs.rundir import RunDir
from pipeline.training.loop import train
from run_fixtures import OFF_CLOUD, TINY, wait_for

REPO = Path(__file__).resolve().parents[2]


def cfg_of(*overrides):
    return load_config([REPO / "configs" / "base.yaml"], [*OFF_CLOUD, *overrides])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("ds"))
    make_dataset(url, [6, 6, 6, 6], sr=16000, seconds=0.3)  # every epoch equal per rank
    return url


def ledger(run_dir) -> list[dict]:
    return RunDir(str(run_dir)).log("ledger.jsonl").read()


# ------------------------------------------------------------------------------------- prices
class FakeMetadata(MetadataServer):
    """AWS IMDSv2 and GCP metadata answers for one instance, served on 127.0.0.1."""

    ANSWERS = {"/latest/meta-data/instance-type": "g5.xlarge", "/latest/meta-data/placement/region": "eu-west-1",
               "/latest/meta-data/instance-life-cycle": "spot",
               "/computeMetadata/v1/instance/machine-type": "projects/1/machineTypes/a2-highgpu-1g",
               "/computeMetadata/v1/instance/zone": "projects/1/zones/us-central1-a",
               "/computeMetadata/v1/instance/scheduling/provisioning-model": "STANDARD",
               "/computeMetadata/v1/instance/scheduling/preemptible": "FALSE"}

    def __init__(self):
        super().__init__(self.ANSWERS)


def test_price_per_worker_hour_from_override_table_metadata_or_local():
    assert worker_price(cfg_of("cost.usd_per_hour=3.6")).usd_per_worker_hour == 3.6
    assert worker_price(cfg_of()).usd_per_worker_hour == 0.0  # off any cloud: a local machine is free
    g5 = worker_price(cfg_of("cost.instance_type=g5.12xlarge", "train.use_gpu=true"))
    assert g5.usd_per_worker_hour == pytest.approx(5.672 / 4)  # on-demand, the table's first region
    p4 = worker_price(cfg_of("cost.instance_type=p4d.24xlarge", "cost.region=us-west-2", "cost.spot=true",
                             "train.use_gpu=true"))
    assert p4.usd_per_worker_hour == pytest.approx(9.5 / 8)
    with pytest.raises(ConfigError, match="cost.instance_type: x9.huge"):
        worker_price(cfg_of("cost.instance_type=x9.huge"))
    meta = FakeMetadata()
    aws = worker_price(cfg_of(f"preempt.endpoints.aws={meta.url}", "train.use_gpu=true"))
    assert (aws.instance_type, aws.region, aws.spot) == ("g5.xlarge", "eu-west-1", True)
    assert aws.usd_per_worker_hour == pytest.approx(0.50)
    gcp = worker_price(cfg_of(f"preempt.endpoints.gcp={meta.url}", "train.use_gpu=true"))
    assert (gcp.instance_type, gcp.region, gcp.spot) == ("a2-highgpu-1g", "us-central1", False)
    assert gcp.usd_per_worker_hour == pytest.approx(3.67)


# ------------------------------------------------------------------------------------- accounting
def test_restart_bills_gap_and_replayed_work_as_wasted(tmp_path):
    """Ledger lines written by hand: a group that checkpointed at T-70, beat last at T-40 and died;
    its replacement starts at T-10. Workers 2, $3.6 per worker-hour = $0.002 per second."""
    cfg = cfg_of("cost.usd_per_hour=3.6", f"run.dir={tmp_path}")
    run, t = RunDir(str(tmp_path)), time.time()
    per_s = 2 / 3600
    log = run.log("ledger.jsonl")
    log.append({"time": t - 100, "event": "start", "step": 0, "worker_hours": 0.0, "usd": 0.0})
    log.append({"time": t - 40, "event": "heartbeat", "step": 9, "worker_hours": 60 * per_s, "usd": 60 * per_s * 3.6})
    saved = {"time": t - 70, "worker_hours": 30 * per_s, "usd": 30 * per_s * 3.6}
    tracker = CostTracker(cfg, run, workers=2, started=t - 10)
    line = tracker.begin(saved, step=4)
    tracker.close("finished", 5)
    assert line["event"] == "restarted" and line["after"] == "heartbeat" and line["restarts"] == 1
    assert line["gap_s"] == pytest.approx(30, abs=0.01)
    # 60 s before the death, the 30 s gap, and the 10 s this group has run so far
    assert line["worker_hours"] == pytest.approx(100 * per_s, abs=per_s)
    assert line["wasted_worker_hours"] == pytest.approx(60 * per_s, rel=1e-6)  # 30 s replayed + the gap
    assert line["wasted_usd"] == pytest.approx(60 * per_s * 3.6, rel=1e-6)
    again = CostTracker(cfg, run, workers=2, started=time.time() + 3600).begin(None, step=5)
    assert again["event"] == "resumed" and again["gap_s"] == 0 and again["restarts"] == 1  # after a finish: no gap


def test_gpu_hour_budget_and_usd_budget_reasons(tmp_path):
    run = RunDir(str(tmp_path))
    gpu = CostTracker(cfg_of("train.use_gpu=true", "budget.max_gpu_hours=0.5"), run, workers=4,
                      started=time.time() - 600)  # 4 GPUs x 10 min = 0.67 GPU-h
    assert "budget.max_gpu_hours" in gpu.over_budget(step=1)
    usd = CostTracker(cfg_of("cost.usd_per_hour=1", "budget.max_usd=10"), run, workers=1, started=time.time() - 60)
    assert usd.over_budget(step=1) is None


# ------------------------------------------------------------------------------------- killed driver
@pytest.mark.slow
def test_killed_driver_is_billed_to_its_last_heartbeat_then_resumed(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    overrides = [f"data.url={dataset}", f"run.dir={run}", *TINY, "train.workers=0", "train.steps=1000",
                 "train.checkpoint_every=2", "cost.usd_per_hour=3.6", "cost.heartbeat_seconds=1",
                 "tracking.enabled=false"]
    code = ("import sys; from pipeline.config import load_config; from pipeline.training.loop import train; "
            "train(load_config(['configs/base.yaml'], sys.argv[1:]))")
    spawned = time.time()
    proc = subprocess.Popen([sys.executable, "-c", code, *overrides], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: sum(r["event"] == "heartbeat" for r in ledger(run)) >= 3
                 and Checkpoints(str(run)).latest_step() is not None)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed = time.time()
    lines = ledger(run)
    start, last = lines[0], lines[-1]
    assert start["event"] == "start" and last["event"] in ("heartbeat", "eval", "health")
    assert killed - last["time"] < 1.0 + 2.0  # a heartbeat a second, give or take a busy machine
    usd_per_s = 3.6 / 3600
    assert last["usd"] >= (last["time"] - start["time"]) * usd_per_s * 0.999  # the clock ran from start to there
    assert last["usd"] <= (killed - spawned) * usd_per_s  # and no further than the process lived
    assert summarize_run(str(run), now=last["time"] + 10).status == "lost"

    resumed_at = Checkpoints(str(run)).latest_step()
    cfg = load_config([REPO / "configs" / "base.yaml"], overrides + [f"train.steps={resumed_at + 1}",
                                                                     "tracking.enabled=true"])
    assert train(cfg).status == "finished"
    restarted = next(r for r in ledger(run) if r["event"] == "restarted")
    # from the newer of the ledger's last line and the checkpoint (saved just before the kill, maybe)
    assert restarted["after"] in (last["event"], "checkpoint") and restarted["restarts"] == 1
    assert restarted["gap_s"] > 0
    assert restarted["usd"] >= last["usd"] + (restarted["gap_s"] - 0.0005) * usd_per_s * 0.999  # never backwards; gap billed
    # gap_s is rounded to the millisecond in the ledger; the dollars come from the unrounded gap
    assert restarted["wasted_usd"] >= (restarted["gap_s"] - 0.0005) * usd_per_s * 0.999
    assert list((run / "wandb").glob("offline-run-*/run-*.wandb"))  # the single-process path tracks W&B too

    capsys.readouterr()
    assert main(["cost", str(run), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "finished" and out["restarts"] == 1 and out["wasted_usd"] > 0
    assert out["usd"] == pytest.approx(ledger(run)[-1]["usd"])
    assert {"gpu_hours", "worker_hours", "usd", "restarts", "wasted_gpu_hours", "status"} <= set(out)
    assert main(["runs", str(tmp_path)]) == 0
    assert "run" in capsys.readouterr().out


# ------------------------------------------------------------------------------------- budget
@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_budget_stops_all_ranks_with_a_usable_checkpoint_and_no_restart(ray_local, dataset, tmp_path):
    run = tmp_path / "budget"
    cfg = load_config([REPO / "configs" / "base.yaml"],
                      [f"data.url={dataset}", f"run.dir={run}", *TINY, "train.steps=1000",
                       "train.checkpoint_every=1000", "cost.usd_per_hour=3600",  # $1 per worker-second
                       "budget.max_usd=12", "tracking.enabled=false"])
    result = train_on_ray(cfg)
    assert result.status == "budget" and 0 < result.step < 1000
    events = [e["event"] for e in RunDir(str(run)).events.read()]
    assert events.count("budget") == 1 and "restarted" not in events and "finished" not in events
    lines = ledger(run)
    assert lines[-1]["event"] == "budget" and "budget.max_usd" in lines[-1]["reason"]
    assert [r["event"] for r in lines].count("start") == 1 and "restarted" not in [r["event"] for r in lines]
    assert lines[-1]["usd"] >= 12
    codec, _, step = load_codec(str(run))  # the final checkpoint is whole and loads
    assert step == result.step
    ckpts = Checkpoints(str(run))
    assert ckpts.has_part(step, "rank1")  # both ranks stopped at the same step and saved
    assert ckpts.load(step, "train")["extra"]["cost"]["usd"] >= 12  # the totals live in the checkpoint


def test_the_cost_table_shows_wasted_worker_hours_and_never_wraps_a_run_name(tmp_path, capsys):
    name = "te-4k-g5-spot-2026-12-06-seed1"  # 30 characters: an 80-column table makes room for it
    log = RunDir(str(tmp_path / name)).log("ledger.jsonl")
    log.append({"time": time.time() - 60, "event": "start", "step": 0, "worker_hours": 0.0, "usd": 0.0})
    log.append({"time": time.time(), "event": "finished", "step": 9, "worker_hours": 1.5, "gpu_hours": 0.0,
                "usd": 0.0, "restarts": 1, "wasted_worker_hours": 0.25})
    assert main(["runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "wasted" in out and "worker-h" in out and "0.2500" in out
    assert any(name in line for line in out.splitlines()), out  # on one line, whole
