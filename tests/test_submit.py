"""Jobs from a laptop: `telucodec submit`, `jobs`, `cluster` against a real local Ray head.

The head is started by the test with `telucodec cluster up --local` (a `ray start --head` with its
dashboard on a free port) and stopped with `cluster down --local`. Slow: each job starts a driver
and a Ray Train worker group.
"""

import functools
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from audio_fixtures import make_dataset
from jobs.cli import main
from jobs.submit import SubmitError, project_files, submit
from pipeline.checkpoint import Checkpoints
from pipeline.config import load_config
from pipeline.rundir import RunDir
from run_fixtures import TINY, wait_for

FAKE_KEY = "wandb-fake-0123456789abcdef0123456789abcdef01234567"
FAKE_SECRET = "aws-fake-SECRET-9f8e7d6c5b4a"


def job_id_of(out: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith("job: ")]
    assert len(lines) == 1, out
    return lines[0].split(" ", 1)[1].strip()


def status_word(address, job_id, capsys) -> str:
    """`jobs status`'s first line; its exit status is 0 only for a healthy state."""
    capsys.readouterr()
    rc = main(["jobs", "status", job_id, "--address", address])
    word = capsys.readouterr().out.splitlines()[0]
    assert rc == (0 if word in ("PENDING", "RUNNING", "SUCCEEDED") else 1), (word, rc)
    return word


wait_for = functools.partial(wait_for, every=0.5)  # a look every half second: most are calls to the Ray head


# ------------------------------------------------------------------------------------- no cluster
def test_oversized_working_dir_is_refused_before_upload(tmp_path):
    project = tmp_path / "project"
    (project / "pipeline").mkdir(parents=True)
    (project / "pipeline" / "model.py").write_text("x = 1\n")
    (project / "big.bin").write_bytes(os.urandom(2_000_000))
    cfg = load_config(["configs/base.yaml"], ["data.url=s3://b/te"])
    with pytest.raises(SubmitError) as err:  # port 9: nothing listens, so any contact would fail otherwise
        submit("http://127.0.0.1:9", cfg, project=project, max_upload_mb=1)
    message = str(err.value)
    assert "over the 1 MB upload limit" in message and "big.bin (2.0 MB)" in message


def test_project_files_leave_out_git_venv_data_runs_and_caches(tmp_path):
    for name in (".git/objects/x", ".venv/bin/python", "data/train-000000.tar", "runs/r1/ledger.jsonl",
                 "pipeline/__pycache__/m.pyc", "telucodec.egg-info/PKG-INFO", "pipeline/model.py", "configs/base.yaml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    kept = sorted(str(p.relative_to(tmp_path)) for p in project_files(tmp_path))
    assert kept == ["configs/base.yaml", "pipeline/model.py"]


def test_project_files_in_a_git_work_tree_follow_gitignore(tmp_path):
    import subprocess

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("*.pt\nscratch/\n")
    for name in ("pipeline/model.py", "best.pt", "scratch/notes.txt", "new_untracked.py", "runs/r1/ledger.jsonl"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    subprocess.run(["git", "-C", str(tmp_path), "add", "pipeline/model.py"], check=True)
    kept = sorted(str(p.relative_to(tmp_path)) for p in project_files(tmp_path))
    assert kept == ["new_untracked.py", "pipeline/model.py"]  # ignored, .git* and runs/ left out


def test_local_paths_for_a_remote_cluster_are_warned_about(tmp_path, capsys):
    # .invalid never resolves: the submit fails after the warning, without any network
    assert main(["submit", "--address", "http://head.invalid:8265", "--runs", str(tmp_path),
                 "data.url=/data/te"]) == 2
    err = capsys.readouterr().err
    assert "warning: data.url and run dir on this machine's disk" in err and "no Ray dashboard at" in err


def test_no_cluster_named_and_none_on_the_local_port_is_one_line_error(capsys, monkeypatch):
    from jobs.submit import free_port

    port = free_port()  # nothing listens there
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("TELUCODEC_LOCAL_RAY_PORT", str(port))
    assert main(["jobs", "ls"]) == 2
    err = capsys.readouterr().err
    assert f"no Ray cluster answers at http://127.0.0.1:{port}" in err and "--address http://HEAD:8265" in err
    assert len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------- local head
@pytest.fixture(scope="module")
def head():
    from jobs.submit import free_port

    port = str(free_port())  # not 8265: a developer's own head may be there
    os.environ["TELUCODEC_LOCAL_RAY_PORT"] = port
    try:
        assert main(["cluster", "up", "--local", "--cpus", "3"]) == 0
        yield f"http://127.0.0.1:{port}"
    finally:
        main(["cluster", "down", "--local"])
        del os.environ["TELUCODEC_LOCAL_RAY_PORT"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("ds"))
    make_dataset(url, [6, 6], sr=16000, seconds=0.3)
    return url


@pytest.fixture
def planted_secrets(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEFAKEFAKE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("WANDB_MODE", "offline")  # a key, but no network: the job must stay offline


@pytest.mark.slow
def test_submitted_job_succeeds_with_logs_ledger_and_no_secret_shown(head, dataset, tmp_path, capsys,
                                                                      planted_secrets, monkeypatch):
    assert main(["submit", "--address", head, "--runs", str(tmp_path / "runs"), *TINY, f"data.url={dataset}",
                 "train.steps=4", "train.checkpoint_every=2", "train.eval_every=2", "cost.usd_per_hour=1.0"]) == 0
    out = capsys.readouterr().out
    job = job_id_of(out)
    assert FAKE_KEY not in out and FAKE_SECRET not in out
    wait_for(lambda: status_word(head, job, capsys) in ("SUCCEEDED", "FAILED", "STOPPED"))
    assert main(["jobs", "status", job, "--address", head]) == 0
    status = capsys.readouterr().out
    assert status.splitlines()[0] == "SUCCEEDED", status
    assert "run status:   finished" in status and "step:         4" in status and "cost so far:  $0." in status

    assert main(["jobs", "logs", job, "--address", head]) == 0
    logs = capsys.readouterr().out
    assert "forwarded from the submitting machine: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, WANDB_API_KEY" in logs
    assert "finished at step 4" in logs
    assert main(["jobs", "logs", job, "--address", head, "--follow"]) == 0  # a finished job: all, then return
    assert "finished at step 4" in capsys.readouterr().out

    run_dir = next((tmp_path / "runs").iterdir())
    ledger = RunDir(str(run_dir)).log("ledger.jsonl").read()
    assert ledger[0]["event"] == "start" and ledger[-1]["event"] == "finished" and ledger[-1]["usd"] > 0
    assert Checkpoints(str(run_dir)).latest_step() == 4

    assert main(["jobs", "ls", "--address", head]) == 0
    assert job in capsys.readouterr().out
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # no address at all: the local head, as `ray job` finds it
    assert main(["jobs", "ls"]) == 0 and job in capsys.readouterr().out
    assert main(["jobs", "status", job]) == 0 and capsys.readouterr().out.startswith("SUCCEEDED")

    from ray.job_submission import JobSubmissionClient

    details = JobSubmissionClient(head).get_job_info(job)
    shown = json.dumps({"runtime_env": details.runtime_env, "metadata": details.metadata,
                        "entrypoint": details.entrypoint}, default=str)
    assert "WANDB_API_KEY" not in json.dumps(details.runtime_env)  # forwarded, but not in the visible env
    written = [p for p in run_dir.rglob("*") if p.is_file()]  # checkpoints and the offline W&B run too
    assert any(p.suffix == ".wandb" for p in written)
    for text in (logs, shown, *(p.read_text(encoding="latin-1") for p in written)):
        assert FAKE_KEY not in text and FAKE_SECRET not in text


@pytest.mark.slow
def test_stopped_job_is_stopped_with_a_final_checkpoint(head, dataset, tmp_path, capsys):
    assert main(["submit", "--address", head, "--runs", str(tmp_path / "runs"), "--run", "long-one", *TINY,
                 f"data.url={dataset}", "train.steps=100000", "train.checkpoint_every=100000",
                 "preempt.poll_seconds=0.5", "tracking.enabled=false"]) == 0
    job = job_id_of(capsys.readouterr().out)
    run = RunDir(str(tmp_path / "runs" / "long-one"))
    wait_for(lambda: max([r["step"] for r in run.metrics.read()], default=0) >= 3)
    assert status_word(head, job, capsys) == "RUNNING"

    assert main(["jobs", "stop", job, "--address", head]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "STOPPED", out
    cancelled = [e for e in run.events.read() if e["event"] == "cancelled"]
    assert len(cancelled) == 1 and cancelled[0]["step"] >= 3
    assert Checkpoints(run.url).latest_step() == cancelled[0]["step"]  # saved on the way out, not step 100000
    assert f"last checkpoint: step {cancelled[0]['step']}" in out

    # the same run name resumes from there
    assert main(["submit", "--address", head, "--runs", str(tmp_path / "runs"), "--run", "long-one", *TINY,
                 f"data.url={dataset}", f"train.steps={cancelled[0]['step'] + 2}", "tracking.enabled=false"]) == 0
    again = capsys.readouterr().out
    assert "resuming" in again
    job2 = job_id_of(again)
    wait_for(lambda: status_word(head, job2, capsys) in ("SUCCEEDED", "FAILED", "STOPPED"))
    assert status_word(head, job2, capsys) == "SUCCEEDED"
    kinds = [e["event"] for e in run.events.read() if e["event"] != "health"]  # val SNR warnings of a toy run
    assert kinds[-3:] == ["cancelled", "resumed", "finished"]


@pytest.mark.slow
def test_sigterm_to_an_in_process_run_cancels_it_with_a_checkpoint_and_no_bill_for_the_pause(dataset, tmp_path):
    """train.workers=0 (a job whose driver is the worker): SIGTERM, as `jobs stop` sends it."""
    run = tmp_path / "solo"
    args = [*TINY, f"data.url={dataset}", f"run.dir={run}", "train.workers=0", "train.steps=100000",
            "train.checkpoint_every=100000", "preempt.poll_seconds=0.2", "tracking.enabled=false"]
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", "train", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: max([r["step"] for r in RunDir(str(run)).metrics.read()], default=0) >= 3, timeout=120)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0  # a clean exit after saving, not a kill
    finally:
        proc.kill()
    events = RunDir(str(run)).events.read()
    assert events[-1]["event"] == "cancelled"
    assert Checkpoints(str(run)).latest_step() == events[-1]["step"] >= 3
    assert RunDir(str(run)).log("ledger.jsonl").read()[-1]["event"] == "cancelled"

    time.sleep(1.0)  # the pause before the run is resumed
    assert main(["train", *args, f"train.steps={events[-1]['step'] + 1}"]) == 0
    resumed = next(r for r in RunDir(str(run)).log("ledger.jsonl").read() if r["event"] in ("resumed", "restarted"))
    assert resumed["event"] == "resumed" and resumed["gap_s"] == 0 and resumed["restarts"] == 0
