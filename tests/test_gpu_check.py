"""benchmarks/gpu_check.py's CPU dry run, as a session with a GPU machine would first run it: the
dataset made with --prepare-only (as benchmarks/device_kit.sh makes it), then the check on it with
--data (as benchmarks/device_check.sh runs it). Its figures are a GPU's business; here it must run
every stage inside its budget (it once stopped at the loader, unnoticed until a dry run)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


def gpu_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), *args],
                          capture_output=True, text=True, timeout=600)


def test_gpu_check_dry_run_runs_every_stage_on_a_prepared_dataset(tmp_path):
    made = gpu_check("--prepare-only", "--out", str(tmp_path / "kit"))
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    data = tmp_path / "kit" / "data"
    assert (data / "index.json").is_file()

    # the adversarial phase compiles anew and leaves its first 4 steps untimed: it gets the larger share,
    # so a loaded machine (the suite's other process) still times steps of both
    run = gpu_check("--data", str(data), "--minutes", "2.5", "--adv-at", "0.35", "--out", str(tmp_path / "check"))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((tmp_path / "check" / "report.json").read_text())
    assert report["stage"] == "done" and "stopped" not in report
    assert report["data"]["steps_per_epoch"] > 1 and report["data"]["source"].startswith("prepped elsewhere")
    phases = {p["phase"]: p for p in report["phases"]}
    assert set(phases) == {"reconstruction", "adversarial"}  # the adversarial stage switched on midway
    for p in phases.values():
        assert p["steps_timed"] > 0 and p["gflop_per_step"] > 0 and p["first_step_s"] > 0
        assert 0 <= p["loader_share"] < 1
    assert report["checkpoint"]["restore_s"] > 0 and report["val_end"]["step"] > report["phases"][-1]["first_step"]
    assert "val/pesq" in report["val_start"] and "val/stoi" in report["val_end"]
