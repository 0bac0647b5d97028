"""Jobs from a laptop: `telucodec submit`, `jobs`, `cluster` against a real local Ray head.

The head is started by the test with `telucodec cluster up --local` (a `ray start --head` with its
dashboard on a free port) and stopped with `cluster down --local`. Slow: each job starts a driver
and a Ray Train worker group.
"""

import functools
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from audio_fixtures import make_dataset
from jobs.cli import main
from jobs.launch.submit import SubmitError, project_files, state_word, submit
from pipeline.runs.checkpoints import Checkpoints
from pipeline.config import load_config
from pipeline.runs.rundir import RunDir
from run_fixtures import TINY, wait_for

FAKE_KEY = f"wandb-fake-{secrets.token_hex(20)}"
FAKE_SECRET = f"aws-fake-SECRET-{secrets.token_hex(12)}"
"""Made at run time: a value written in this file would be found in every job's working dir."""


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
                 "pipeline/__pycache__/m.pyc", "telucodec.egg-info/PKG-INFO", "pipeline/codec/model.py", "configs/base.yaml",
                 "pipeline/runs/cost.py", "tests/data_prep/test_prep.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    kept = sorted(str(p.relative_to(tmp_path)) for p in project_files(tmp_path))
    # a package's own runs/ is code: only the top level's data/ and runs/ are a dataset and run outputs
    assert kept == ["configs/base.yaml", "pipeline/codec/model.py", "pipeline/runs/cost.py", "tests/data_prep/test_prep.py"]


def test_a_job_gets_every_module_of_this_project():
    """What a job is staged with holds every module of the packages (their own `runs/` folders were
    once left out with the top level's run outputs: a cluster without an editable install of this
    checkout could not import pipeline.runs)."""
    repo = Path(__file__).resolve().parents[2]
    staged = {p.relative_to(repo) for p in project_files(repo)}
    modules = {p.relative_to(repo) for package in ("pipeline", "jobs", "data_prep") for p in (repo / package).rglob("*.py")}
    assert modules - staged == set()


def test_project_files_in_a_git_work_tree_follow_gitignore(tmp_path):
    import subprocess

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("*.pt\nscratch/\n")
    for name in ("pipeline/codec/model.py", "best.pt", "scratch/notes.txt", "new_untracked.py", "runs/r1/ledger.jsonl",
                 "pipeline/runs/cost.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    subprocess.run(["git", "-C", str(tmp_path), "add", "pipeline/codec/model.py"], check=True)
    kept = sorted(str(p.relative_to(tmp_path)) for p in project_files(tmp_path))
    assert kept == ["new_untracked.py", "pipeline/codec/model.py", "pipeline/runs/cost.py"]  # ignored, .git* and runs/ left out


def test_local_paths_for_a_remote_cluster_are_warned_about(tmp_path, capsys):
    # .invalid never resolves: the submit fails after the warning, without any network
    assert main(["submit", "--address", "http://head.invalid:8265", "--runs", str(tmp_path),
                 "data.url=/data/te"]) == 2
    err = capsys.readouterr().err
    assert "warning: data.url and run dir on this machine's disk" in err and "no Ray dashboard at" in err


def test_no_cluster_named_and_none_on_the_local_port_is_one_line_error(capsys, monkeypatch):
    from jobs.launch.submit import free_port

    port = free_port()  # nothing listens there
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("TELUCODEC_LOCAL_RAY_PORT", str(port))
    assert main(["jobs", "ls"]) == 2
    err = capsys.readouterr().err
    assert f"no Ray cluster answers at http://127.0.0.1:{port}" in err and "--address http://HEAD:8265" in err
    assert len(err.strip().splitlines()) == 1


def test_an_address_that_never_answers_fails_in_seconds_in_one_line(capsys):
    """A port that accepts connections but never replies (a firewall, a hung head): Ray's own client
    would wait forever."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever reads or answers
        started = time.monotonic()
        assert main(["jobs", "ls", "--address", f"http://127.0.0.1:{silent.getsockname()[1]}"]) == 2
        took = time.monotonic() - started
    err = capsys.readouterr().err
    assert "no answer within 5 s" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert took < 15


# ------------------------------------------------------------------------------------- local head
NO_CREDENTIALS = {"AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_CONFIG_FILE": os.devnull,
                  "AWS_EC2_METADATA_DISABLED": "true"}
"""The head's environment: no AWS keys, profile or instance role, and no W&B key."""


@pytest.fixture(scope="module")
def head():
    """A local Ray head started without any credentials: whatever a job gets, it got from submit."""
    from jobs.launch.submit import free_port

    port = str(free_port())  # not 8265: a developer's own head may be there
    saved = dict(os.environ)
    os.environ["TELUCODEC_LOCAL_RAY_PORT"] = port
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "WANDB_API_KEY"):
        os.environ.pop(name, None)
    os.environ.update(NO_CREDENTIALS)
    try:
        assert main(["cluster", "up", "--local", "--cpus", "3"]) == 0
        os.environ.clear()
        os.environ.update(saved | {"TELUCODEC_LOCAL_RAY_PORT": port})
        yield f"http://127.0.0.1:{port}"
    finally:
        main(["cluster", "down", "--local"])
        os.environ.clear()
        os.environ.update(saved)


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


@pytest.fixture
def s3_dataset(s3_bucket):
    """The dataset on the local S3 server: a job can read it only with forwarded credentials."""
    url = f"{s3_bucket}/ds"
    make_dataset(url, [6, 6], sr=16000, seconds=0.3)
    return url


@pytest.mark.slow
def test_submitted_job_reads_s3_with_forwarded_credentials_and_leaves_no_trace(head, s3_dataset, tmp_path, capsys,
                                                                                planted_secrets, monkeypatch):
    assert main(["submit", "--address", head, "--runs", str(tmp_path / "runs"), *TINY, f"data.url={s3_dataset}",
                 "train.steps=4", "train.checkpoint_every=2", "train.eval_every=2", "cost.usd_per_hour=1.0",
                 f"data.cache_dir={tmp_path / 'cache'}"]) == 0
    out = capsys.readouterr().out
    job = job_id_of(out)
    assert "forwarded: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, WANDB_API_KEY (values not shown)" in out
    wait_for(lambda: status_word(head, job, capsys) in ("SUCCEEDED", "FAILED", "STOPPED"))
    assert main(["jobs", "status", job, "--address", head]) == 0
    status = capsys.readouterr().out
    assert status.splitlines()[0] == "SUCCEEDED", status
    assert "run status:   finished" in status and "step:         4" in status and "cost so far:  $0." in status
    assert "workers:      2 now, 2 asked for" in status

    assert main(["jobs", "logs", job, "--address", head]) == 0
    logs = capsys.readouterr().out
    assert "forwarded from the submitting machine: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, WANDB_API_KEY" in logs
    for rank in (0, 1):  # every training worker got them (rank 1 reads its own rows from S3)
        assert f"rank {rank}: forwarded credentials AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, WANDB_API_KEY" in logs
    assert "finished at step 4" in logs
    assert main(["jobs", "logs", job, "--address", head, "--follow"]) == 0  # a finished job: all, then return
    assert "finished at step 4" in capsys.readouterr().out

    run_dir = next((tmp_path / "runs").iterdir())
    ledger = RunDir(str(run_dir)).log("ledger.jsonl").read()
    assert ledger[0]["event"] == "start" and ledger[-1]["event"] == "finished" and ledger[-1]["usd"] > 0
    # both ranks read S3 through the node's cache: every shard fetched whole once, counted in the ledger
    shards = len(list((tmp_path / "cache").glob("*.tar")))
    assert shards >= 2 and ledger[-1]["storage"]["loader"]["GET"] >= shards and ledger[-1]["storage_usd"] > 0
    assert Checkpoints(str(run_dir)).latest_step() == 4

    assert main(["jobs", "ls", "--address", head]) == 0
    assert job in capsys.readouterr().out
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # no address at all: the local head, as `ray job` finds it
    assert main(["jobs", "ls"]) == 0 and job in capsys.readouterr().out
    assert main(["jobs", "status", job]) == 0 and capsys.readouterr().out.startswith("SUCCEEDED")

    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(head)
    details = client.get_job_info(job)
    shown = json.dumps({"runtime_env": details.runtime_env, "metadata": details.metadata,
                        "entrypoint": details.entrypoint}, default=str)
    written = [p for p in run_dir.rglob("*") if p.is_file()]  # checkpoints and the offline W&B run too
    assert any(p.suffix == ".wandb" for p in written)
    for text in (out, logs, shown, *(p.read_text(encoding="latin-1") for p in written)):
        assert FAKE_KEY not in text and FAKE_SECRET not in text

    # Another job given this job's working_dir package, and the credentials package's name, finds nothing.
    package = details.entrypoint.split("--credentials ")[1].split()[0]
    copy = tmp_path / "snooped"
    snoop = client.submit_job(entrypoint=f"python -c {shlex.quote(SNOOP)} {package} {copy}",
                              runtime_env={"working_dir": details.runtime_env["working_dir"]})
    wait_for(lambda: state_word(client.get_job_status(snoop)) in ("SUCCEEDED", "FAILED", "STOPPED"))
    snooped = client.get_job_logs(snoop)
    assert "files copied" in snooped and "package: None" in snooped, snooped
    assert (copy / "pipeline" / "training" / "loop.py").is_file()  # the first job's project, as a second job sees it
    assert values_found_under(str(copy), (FAKE_KEY, FAKE_SECRET)) == []

    # Nothing on disk under Ray's dirs, nothing in the cluster's package store, holds a value.
    assert values_found_under("/tmp/ray", (FAKE_KEY, FAKE_SECRET)) == []
    assert values_in_package_store(head, (FAKE_KEY, FAKE_SECRET)) == []


@pytest.mark.slow
def test_submitted_prep_and_reshard_jobs_fan_out_and_read_and_write_s3_with_forwarded_credentials(
        head, s3_bucket, tmp_path, capsys, planted_secrets):
    """`submit prep`, then `submit reshard`, on a head with no credentials of its own: the jobs' Ray tasks
    read from S3 and write the shards there with what the laptop forwarded, and make the shards prep
    and reshard make here."""
    from corpus_layouts import upload, write_kathbath
    from pipeline.storage.shards import load_index
    from pipeline.storage.store import open_store

    folder = write_kathbath(tmp_path / "kb")
    source = upload(folder, f"{s3_bucket}/corpus/{folder.name}")  # same folder name: same sample keys
    assert main(["prep", str(folder), "--out", str(tmp_path / "here"), "prep.min_seconds=0.5"]) == 0
    capsys.readouterr()
    assert main(["submit", "--address", head, "--runs", str(tmp_path / "runs"), "prep", source, "--out",
                 f"{s3_bucket}/te", "prep.min_seconds=0.5", "cost.usd_per_hour=0.9"]) == 0
    out = capsys.readouterr().out
    job = job_id_of(out)
    assert "forwarded: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, WANDB_API_KEY (values not shown)" in out
    wait_for(lambda: status_word(head, job, capsys) in ("SUCCEEDED", "FAILED", "STOPPED"))
    assert main(["jobs", "logs", job, "--address", head]) == 0
    logs = capsys.readouterr().out
    assert status_word(head, job, capsys) == "SUCCEEDED", logs[-3000:]
    assert "prep on Ray: 1 node(s), 3 CPUs" in logs and f"prep -> {s3_bucket}/te: 8 files, 0 rejected" in logs
    assert main(["jobs", "ls", "--address", head]) == 0 and job in capsys.readouterr().out
    here, there = open_store(str(tmp_path / "here")), open_store(f"{s3_bucket}/te")
    assert [s.name for s in load_index(there).shards] == [s.name for s in load_index(here).shards]
    for shard in load_index(here).shards:
        assert there.get(shard.name) == here.get(shard.name)
    assert FAKE_SECRET not in logs and FAKE_SECRET not in out

    (run_dir,) = (tmp_path / "runs").iterdir()  # the job's node-hours, priced, in a ledger as a run's are
    ledger = RunDir(str(run_dir)).log("ledger.jsonl").read()
    assert ledger[0]["event"] == "start" and ledger[0]["stage"] == "prep" and ledger[0]["nodes"] == 1
    assert ledger[-1]["event"] == "finished" and ledger[-1]["usd"] > 0
    assert abs(ledger[-1]["usd"] - 0.9 * ledger[-1]["worker_hours"]) < 1e-6  # one node at $0.9 an hour
    assert f"cost: {ledger[-1]['worker_hours']:.4f} node-hours" in logs
    assert main(["cost", str(run_dir)]) == 0
    assert "finished" in capsys.readouterr().out

    assert main(["reshard", str(tmp_path / "here"), str(tmp_path / "here-r2"), "--shards", "2", "--shuffle"]) == 0
    capsys.readouterr()
    assert main(["submit", "--address", head, "--runs", str(tmp_path / "runs"), "reshard", f"{s3_bucket}/te",
                 f"{s3_bucket}/te-r2", "--shards", "2", "--shuffle"]) == 0
    job = job_id_of(capsys.readouterr().out)
    wait_for(lambda: status_word(head, job, capsys) in ("SUCCEEDED", "FAILED", "STOPPED"))
    assert main(["jobs", "logs", job, "--address", head]) == 0
    logs = capsys.readouterr().out
    assert status_word(head, job, capsys) == "SUCCEEDED", logs[-3000:]
    here, there = open_store(str(tmp_path / "here-r2")), open_store(f"{s3_bucket}/te-r2")
    written = len(load_index(here).shards)
    assert "reshard on Ray: 1 node(s), 3 CPUs" in logs and f"reshard -> {there.url}: {written} shards written" in logs
    assert [s.name for s in load_index(there).shards] == [s.name for s in load_index(here).shards]
    for shard in load_index(here).shards:
        assert there.get(shard.name) == here.get(shard.name)
    assert FAKE_SECRET not in logs


SNOOP = """
import shutil, sys, ray
from ray.experimental.internal_kv import _internal_kv_get
shutil.copytree('.', sys.argv[2])
print('files copied')
ray.init()
print('package:', _internal_kv_get(sys.argv[1]))
"""
"""A job that copies its working dir to argv[2], then reads the credentials package argv[1]."""


def values_found_under(root: str, values: tuple[str, ...]) -> list[str]:
    """Files under root (and members of zip files there) that contain any of values."""
    import zipfile

    needles = [v.encode() for v in values]
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            if not os.path.isfile(path) or os.path.islink(path) or os.path.getsize(path) > 256e6:
                continue
            with open(path, "rb") as f:
                data = f.read()
            if any(n in data for n in needles):
                found.append(path)
            elif zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as z:
                    found += [f"{path}:{m}" for m in z.namelist() if any(n in z.read(m) for n in needles)]
    return found


def values_in_package_store(head: str, values: tuple[str, ...]) -> list[str]:
    """Packages in the head's GCS store (gcs://... keys; zips opened) that contain any of values."""
    import io
    import zipfile

    from ray._raylet import GcsClient

    with open("/tmp/ray/ray_current_cluster") as f:  # the GCS address of the newest head on this machine
        gcs = GcsClient(address=f.read().split()[0])
    needles = [v.encode() for v in values]
    keys = gcs.internal_kv_keys(b"gcs://", None)
    assert any(k.startswith(b"gcs://_ray_pkg_") for k in keys)  # the working-dir packages are there to look at
    found = []
    for key in keys:
        data = gcs.internal_kv_get(key, None) or b""
        members = [data]
        if zipfile.is_zipfile(io.BytesIO(data)):
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                members += [z.read(m) for m in z.namelist()]
        if any(n in m for m in members for n in needles):
            found.append(key.decode())
    return found


@pytest.mark.slow
def test_an_elastic_run_submitted_to_a_head_too_small_for_it_starts_smaller_and_finishes(head, dataset, tmp_path,
                                                                                          capsys):
    """train.workers=4 on a 3-CPU head: an elastic run (train.min_workers=2) starts with what fits
    instead of waiting for a fourth CPU, and says so in `jobs status`."""
    assert main(["submit", "--address", head, "--runs", str(tmp_path / "runs"), "--run", "elastic", "--no-forward",
                 *TINY, f"data.url={dataset}", "train.workers=4", "train.min_workers=2", "train.batch_size=4", "train.steps=6",
                 "train.resize_check_s=2", "tracking.enabled=false"]) == 0
    job = job_id_of(capsys.readouterr().out)
    wait_for(lambda: status_word(head, job, capsys) in ("SUCCEEDED", "FAILED", "STOPPED"))
    assert main(["jobs", "status", job, "--address", head]) == 0
    status = capsys.readouterr().out
    assert status.splitlines()[0] == "SUCCEEDED", status
    assert "run status:   finished" in status and "step:         6" in status
    assert re.search(r"workers:\s+[23] now, 2-4 asked for", status), status
    kinds = [e["event"] for e in RunDir(str(tmp_path / "runs" / "elastic")).events.read() if e["event"] != "health"]
    assert kinds == ["start", "finished"], kinds  # no room to grow: no restart


@pytest.mark.slow
def test_stopped_job_is_stopped_with_a_final_checkpoint(head, dataset, tmp_path, capsys, monkeypatch):
    assert main(["submit", "--address", head, "--runs", str(tmp_path / "runs"), "--run", "long-one", "--no-forward",
                 *TINY, f"data.url={dataset}", "train.steps=100000", "train.checkpoint_every=100000",
                 "preempt.poll_seconds=0.5", "tracking.enabled=false"]) == 0
    out = capsys.readouterr().out
    job = job_id_of(out)
    assert "forwarded: no credentials (the cluster uses its own)" in out
    # The job agent's refusal (a second job under the same id) is one line, not Ray's server traceback.
    with monkeypatch.context() as m:
        m.setattr("jobs.launch.submit.secrets.token_hex", lambda n: job.rsplit("-", 1)[1])
        assert main(["submit", "--address", head, "--runs", str(tmp_path / "runs"), "--run", "long-one",
                     "--no-forward", *TINY, f"data.url={dataset}", "tracking.enabled=false"]) == 2
    err = capsys.readouterr().err
    assert f"the Ray head at {head} failed the request" in err and "already exists" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
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
    assert main(["jobs", "logs", job2, "--address", head]) == 0
    logs = capsys.readouterr().out
    assert status_word(head, job2, capsys) == "SUCCEEDED", logs[-4000:]
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


def test_cluster_down_stops_only_the_head_up_started(tmp_path, monkeypatch, capsys):
    """Other Ray work of the same user (here a local instance in this process) lives on."""
    import ray

    from jobs.launch.submit import dashboard_up, free_port, group_alive, head_record

    port = str(free_port())
    monkeypatch.setenv("TELUCODEC_LOCAL_RAY_PORT", port)
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        assert main(["cluster", "up", "--local", "--cpus", "1"]) == 0
        pgid = json.loads(head_record(port).read_text())["pgid"]
        assert main(["cluster", "down", "--local"]) == 0
        assert "the head it started" in capsys.readouterr().out
        assert not dashboard_up(f"http://127.0.0.1:{port}") and not head_record(port).exists()
        assert not group_alive(pgid)  # every process of the head is gone

        @ray.remote
        def alive() -> int:
            return 7

        assert ray.get(alive.remote(), timeout=60) == 7
    finally:
        ray.shutdown()
