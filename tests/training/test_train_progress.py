"""Training talks: rank 0 prints a progress line every train.log_every steps, and at the next step
whenever train.progress_seconds passed without one; metrics.jsonl keeps the log_every cadence.

    .venv/bin/pytest tests/training/test_train_progress.py -q
"""

import re
from pathlib import Path

import pytest

from audio_fixtures import make_dataset
from pipeline.config import load_config
from pipeline.runs.cost import CostTotals
from pipeline.runs.rundir import RunDir
from pipeline.training.duties import progress_line
from pipeline.training.loop import train
from run_fixtures import OFF_CLOUD, QUICK_EVAL

REPO = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^step (\d+)/6  loss -?\d+\.\d{3}  \d+\.\d{2} steps/s  \d+\.\d audio-s/s  ETA \d+m\d\ds  "
                  r"\d+\.\d{2} worker-h  \$\d+\.\d{2}$", re.MULTILINE)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("ds"))
    make_dataset(url, [8], sr=16000, seconds=0.3)
    return url


def train_tiny(dataset: str, run_dir: Path, *overrides: str):
    cfg = load_config([REPO / "configs" / "base.yaml", REPO / "configs" / "tiny.yaml"], [
        f"data.url={dataset}", f"run.dir={run_dir}", "train.workers=0", "train.steps=6", "train.batch_size=2",
        "train.segment_seconds=0.2", "train.warmup_steps=2", "train.eval_every=1000", *QUICK_EVAL,
        "train.checkpoint_every=1000", "tracking.enabled=false", "cost.usd_per_hour=3.6", *OFF_CLOUD, *overrides])
    assert train(cfg).status == "finished"
    return cfg


def logged_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in RunDir(str(run_dir)).metrics.read() if "loss/total" in r]


def test_a_progress_line_every_log_every_steps_with_rates_eta_and_cost(dataset, tmp_path, capsys):
    train_tiny(dataset, tmp_path / "run", "train.log_every=2")
    out = capsys.readouterr().out
    assert [int(s) for s in LINE.findall(out)] == [2, 4, 6]
    assert re.search(r"^step 6/6 .* ETA 0m00s ", out, re.MULTILINE)
    assert logged_steps(tmp_path / "run") == [2, 4, 6]


def test_a_quiet_stretch_prints_the_line_at_the_next_step_but_logs_on_cadence(dataset, tmp_path, capsys):
    train_tiny(dataset, tmp_path / "run", "train.log_every=1000", "train.progress_seconds=0")
    assert [int(s) for s in LINE.findall(capsys.readouterr().out)] == [1, 2, 3, 4, 5, 6]
    assert logged_steps(tmp_path / "run") == [6]  # the last step is always logged


def test_progress_line_format_on_gpu():
    metrics = {"loss/total": 3.4123, "steps_per_s": 2.41, "audio_s_per_s": 77.12}
    spent = CostTotals(worker_hours=0.53, gpu_hours=0.53, usd=1.62)
    assert progress_line(1200, 20000, metrics, spent, gpu=True) == (
        "step 1200/20000  loss 3.412  2.41 steps/s  77.1 audio-s/s  ETA 2h10m  0.53 GPU-h  $1.62")


@pytest.mark.parametrize("alarm_step, alarmed", [(1000, False), (0, True)])
def test_a_health_problem_before_health_alarm_step_is_a_note_not_an_alarm(dataset, tmp_path, capsys, alarm_step,
                                                                         alarmed):
    """A codec two steps old has a collapsed output range: a note (events.jsonl, alarm false; no
    WARNING, no ledger line) until train.health_alarm_step, a WARNING from there on."""
    run = tmp_path / "run"
    train_tiny(dataset, run, "train.steps=2", "train.warmup_steps=1", "train.eval_every=2",
               f"train.health_alarm_step={alarm_step}", "loss.weights={mel: 1.0, snr: 0.0, level: 0.0}")
    out = capsys.readouterr().out
    health = [e for e in RunDir(str(run)).events.read() if e["event"] == "health"]
    ledger = [r for r in RunDir(str(run)).log("ledger.jsonl").read() if r["event"] == "health"]
    assert health, "no health problem at step 2: the test shows nothing"
    assert ("WARNING step 2:" in out) == alarmed and ("note: step 2:" in out) == (not alarmed)
    assert all(e.get("alarm", True) == alarmed for e in health) and bool(ledger) == alarmed
