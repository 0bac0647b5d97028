"""Laptop side: submit a training run to a Ray cluster, check on it, read its logs, stop it.

    telucodec submit configs/gpu.yaml data.url=s3://b/te --address http://HEAD:8265 --runs s3://b/runs
    telucodec submit --local configs/tiny.yaml data.url=demo_out/data-r2 train.steps=50
    telucodec jobs ls | status ID | logs ID [--follow] | stop ID
    telucodec cluster up --local | down --local

A job is Ray's Job Submission API with the project as its working_dir. The config is resolved and
checked here, on the laptop, and travels as one YAML file, so a typo fails before anything is
uploaded. The working dir is staged in a temporary folder: the project's files less .git, .venv,
data, runs and caches, with a size check first. Credentials (WANDB_API_KEY, AWS keys, or the
laptop's AWS profile) are forwarded unless `forward=False`: never in the working dir, the job's
runtime_env or metadata (which `ray job list` and the dashboard show), and never printed; see
jobs/launch/credentials.py for the channel and the trust model. Each job's metadata names its run, so
`jobs status` can read the run's ledger and metrics (on the run's store) beside Ray's state.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from jobs.launch import credentials
from jobs.launch.ray_internals import enable_token_auth
from pipeline.config import Config, TrainConfig, to_yaml
from pipeline.errors import TelucodecError
from pipeline.storage.store import is_remote

PROJECT_ROOT = Path(__file__).resolve().parents[2]
EXCLUDED_DIRS = {".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".cache", "node_modules", ".mypy_cache",
                 ".ruff_cache", ".ipynb_checkpoints"}
"""Never uploaded, wherever they are: version control, environments and caches."""
EXCLUDED_TOP_DIRS = {"data", "runs", "demo_out", "wandb"}
"""Never uploaded from the project's top level: datasets and run outputs (the packages' own
`pipeline/runs/` and `tests/runs/` are code)."""
SECRET_VARS = ("WANDB_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
PLAIN_VARS = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION", "WANDB_ENTITY", "WANDB_PROJECT",
              "WANDB_MODE", "WANDB_BASE_URL")
"""Forwarded in the runtime_env (visible in Ray's job details): nothing secret."""
JOB_CONFIG = ".telucodec_job.yaml"
STAGE_JOB = ".telucodec_stage.json"
"""A submitted prep or reshard: the call's arguments (jobs/launch/entry.py makes the call)."""
STOP_GRACE_S = 120
"""Seconds Ray waits after SIGTERM before it kills a stopped job's driver: time for the final checkpoint."""


class SubmitError(TelucodecError, RuntimeError):
    """A job that cannot be submitted or found; printed as one line."""


@dataclass
class Submission:
    job_id: str
    run: str
    run_dir: str
    dashboard_url: str
    wandb_url: str
    """The W&B run's page, or where its offline files go when the cluster has no WANDB_API_KEY."""
    resumed: bool
    forwarded: list[str]
    """The names of the credentials forwarded to the job."""


# ------------------------------------------------------------------------------------- packaging
def project_files(root: Path) -> list[Path]:
    """The files a job needs: in a git work tree what git would keep (tracked, or untracked and not
    ignored), else everything; never EXCLUDED_DIRS, EXCLUDED_TOP_DIRS at the top, *.egg-info, .git*
    files or symlinks."""
    listed = git_files(root)
    if listed is None:
        listed = []
        for folder, dirs, names in os.walk(root):
            top = Path(folder) == root
            dirs[:] = sorted(d for d in dirs if d not in EXCLUDED_DIRS and not d.endswith(".egg-info")
                             and not (top and d in EXCLUDED_TOP_DIRS))
            listed += [Path(folder) / n for n in sorted(names)]

    def kept(path: Path) -> bool:
        parts = path.relative_to(root).parts
        return (not any(d in EXCLUDED_DIRS or d.endswith(".egg-info") for d in parts[:-1])
                and not (len(parts) > 1 and parts[0] in EXCLUDED_TOP_DIRS)
                and not parts[-1].startswith(".git") and path.is_file() and not path.is_symlink())
    return [f for f in listed if kept(f)]


def git_files(root: Path) -> list[Path] | None:
    """`git ls-files --cached --others --exclude-standard` under root, or None outside a work tree."""
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return sorted(root / name for name in done.stdout.decode().split("\0") if name)


def check_upload_size(root: Path, files: list[Path], max_mb: float) -> int:
    """Total bytes, or a SubmitError naming the biggest entries when over max_mb."""
    sizes = {f: f.stat().st_size for f in files}
    total = sum(sizes.values())
    if total > max_mb * 1e6:
        biggest = sorted(sizes, key=sizes.get, reverse=True)[:3]
        names = ", ".join(f"{f.relative_to(root)} ({sizes[f] / 1e6:.1f} MB)" for f in biggest)
        raise SubmitError(f"working dir {root} is {total / 1e6:.1f} MB, over the {max_mb:g} MB upload limit "
                          f"(biggest: {names}); keep data on a store (telucodec prep --out s3://...), move it "
                          f"out of the project, or raise --max-upload-mb")
    return total


def stage_working_dir(root: Path, files: list[Path], dest: Path, job_file: str, text: str) -> None:
    """Copy the project's files into dest, and the job's resolved spec as `job_file`."""
    for f in files:
        target = dest / f.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)
    (dest / job_file).write_text(text, encoding="utf-8")


def secrets_from_env() -> dict[str, str]:
    """The laptop's W&B key and AWS credentials (from variables, else from its AWS profile)."""
    found = {k: os.environ[k] for k in SECRET_VARS if os.environ.get(k)}
    if "AWS_ACCESS_KEY_ID" not in found and (os.environ.get("AWS_PROFILE") or Path("~/.aws/credentials").expanduser().exists()):
        import boto3

        creds = boto3.Session().get_credentials()
        if creds is not None:
            frozen = creds.get_frozen_credentials()
            found.update({"AWS_ACCESS_KEY_ID": frozen.access_key, "AWS_SECRET_ACCESS_KEY": frozen.secret_key})
            if frozen.token:
                found["AWS_SESSION_TOKEN"] = frozen.token
    return found


# ------------------------------------------------------------------------------------- submit
def new_run_name() -> str:
    return f"te-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def wandb_url(cfg: Config, run_id: str, env_secrets: dict, forward: bool = True) -> str:
    if not cfg.tracking.enabled:
        return "off (tracking.enabled=false)"
    offline = f"offline on the cluster: {cfg.run.dir}/wandb (or tracking.dir); upload with `wandb sync`"
    if os.environ.get("WANDB_MODE") == "offline" or (forward and "WANDB_API_KEY" not in env_secrets):
        return offline
    entity = cfg.tracking.entity or os.environ.get("WANDB_ENTITY") or "<your-entity>"
    url = f"https://wandb.ai/{entity}/{cfg.tracking.project}/runs/{run_id}"
    return url if forward else f"{url} if the cluster has a WANDB_API_KEY, else {offline}"


def submit(address: str, cfg: Config, *, run: str = "", runs_root: str = "runs", run_dir_given: bool = False,
           project: Path = PROJECT_ROOT, max_upload_mb: float = 100.0, pip: bool = False,
           forward: bool = True) -> Submission:
    """Stage, size-check and submit `telucodec train` with cfg as a Ray job; returns its ids and URLs."""
    files = project_files(project)
    check_upload_size(project, files, max_upload_mb)  # before anything talks to the cluster
    if run_dir_given:
        run_dir = cfg.run.dir
        run = run or run_dir.rstrip("/").rsplit("/", 1)[-1]
    else:
        run = run or new_run_name()
        run_dir = f"{runs_root.rstrip('/')}/{run}"
    if not is_remote(run_dir):
        run_dir = str(Path(run_dir).absolute())
    resumed, prior_id = earlier_run(run_dir)
    run_id = prior_id or "".join(c if c.isalnum() or c in "-_" else "-" for c in run)
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, dir=run_dir, name=run),
                              tracking=dataclasses.replace(cfg.tracking, run_id=run_id))
    check_reachable(run_dir, "the run dir", strict=forward)  # before anything is uploaded or submitted
    check_reachable(cfg.data.url, "data.url", strict=forward, dataset=True)
    env_secrets = secrets_from_env() if forward else {}
    job_id = f"{run}-{secrets.token_hex(3)}"
    launch(address, project, files, job_id, JOB_CONFIG, to_yaml(cfg), env_secrets, pip,
           {"telucodec_run": run, "run_dir": run_dir, "workers": target_workers(cfg.train)})
    return Submission(job_id, run, run_dir, f"{address.rstrip('/')}/#/jobs/{job_id}",
                      wandb_url(cfg, run_id, env_secrets, forward), resumed, sorted(env_secrets))


def submit_stage(address: str, stage: str, spec: dict, *, runs_root: str = "runs", project: Path = PROJECT_ROOT,
                 max_upload_mb: float = 100.0, pip: bool = False, forward: bool = True) -> Submission:
    """Stage, size-check and submit `prep` or `reshard` as a Ray job: `spec` holds the call's
    arguments (local paths absolute: the job runs elsewhere) and the resolved config, which the
    job's entry point runs with a plain call, prep fanned out over the cluster (data_prep.cluster).
    The job's node-hours go to a cost ledger in RUNS/NAME, as a training run's do."""
    files = project_files(project)
    check_upload_size(project, files, max_upload_mb)
    for what, url in stage_urls(stage, spec):
        check_reachable(url, what, strict=forward)
    name = f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    run_dir = f"{runs_root.rstrip('/')}/{name}"
    run_dir = run_dir if is_remote(run_dir) else str(Path(run_dir).absolute())
    check_reachable(run_dir, "the runs folder", strict=forward)
    env_secrets = secrets_from_env() if forward else {}
    job_id = f"{name}-{secrets.token_hex(3)}"
    launch(address, project, files, job_id, STAGE_JOB, json.dumps({"stage": stage, "run_dir": run_dir, **spec}),
           env_secrets, pip, {"telucodec_run": name, "run_dir": run_dir, "stage": stage, "out": spec["out"]})
    return Submission(job_id, name, run_dir, f"{address.rstrip('/')}/#/jobs/{job_id}", "", False, sorted(env_secrets))


def stage_urls(stage: str, spec: dict) -> list[tuple[str, str]]:
    """(what, URL) a stage reads and writes, for the reachability check before anything is uploaded."""
    sources = spec["sources"] if stage == "prep" else [spec["src"]]
    return [("the source", src) for src in sources] + [("the destination", spec["out"])]


def launch(address: str, project: Path, files: list[Path], job_id: str, job_file: str, job_text: str,
           env_secrets: dict[str, str], pip: bool, metadata: dict) -> None:
    """Stage the working dir (the project and the job's spec), hand the credentials to the cluster
    and submit `python -m jobs.launch.entry` on the spec."""
    env_vars = {k: os.environ[k] for k in PLAIN_VARS if os.environ.get(k)}
    env_vars.update({"RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S), "PYTHONUNBUFFERED": "1"})
    client = job_client(address)
    with tempfile.TemporaryDirectory(prefix="telucodec-job-") as tmp:
        staged = Path(tmp) / "project"
        stage_working_dir(project, files, staged, job_file, job_text)
        runtime_env: dict = {"working_dir": str(staged), "env_vars": env_vars}
        if pip:
            runtime_env["pip"] = project_dependencies(project)
        package = credentials.stage(client, env_secrets)  # its URI only: the values never reach the job spec
        entry = f"python -m jobs.launch.entry {f'--credentials {package} ' if package else ''}{job_file}"
        submit_when_ready(client, entrypoint=entry, submission_id=job_id, runtime_env=runtime_env,
                          metadata={**metadata, "forwarded": ",".join(sorted(env_secrets))})


def target_workers(train: TrainConfig) -> str:
    """"8", or "4-8" for an elastic run."""
    low, high = train.min_workers, train.workers
    return f"{low}-{high}" if 0 < low < high else str(high)


def submit_when_ready(client, wait_s: float = 60.0, **job) -> None:
    """client.submit_job, retried while the head says its job agent is not up yet (a head that has
    just started, or a restarted agent: Ray answers "No available agent ... try again later")."""
    deadline = time.time() + wait_s
    while True:
        try:
            client.submit_job(**job)
            return
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.time() > deadline:
                raise
        time.sleep(1.0)


def check_reachable(url: str, what: str, strict: bool, dataset: bool = False) -> None:
    """SubmitError when an s3:// URL the job needs is not there: a bucket that does not exist always;
    with `strict` (the job uses this machine's credentials) also a store it cannot read, or a
    dataset without index.json. Without `strict` the cluster's own credentials may reach what this
    machine cannot, so only the missing bucket is certain."""
    from pipeline.storage.shards import load_index
    from pipeline.storage.store import open_store

    if not is_remote(url):
        return
    try:
        open_store(url).list("index.json")  # a missing bucket shows here, whatever the credentials
        if dataset:
            load_index(url)
    except Exception as e:  # noqa: BLE001 - the store's, botocore's or the index's own one-line reasons
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if strict or "no such bucket" in reason.lower() or "NoSuchBucket" in reason:
            raise SubmitError(f"{what} {url} is not reachable from here ({reason}); nothing was submitted") from None


def earlier_run(run_dir: str) -> tuple[bool, str | None]:
    """(whether run_dir holds a checkpoint to resume, the W&B run id its ledger names)."""
    from pipeline.runs.checkpoints import Checkpoints
    from pipeline.runs.cost import LEDGER, newest_ledger_value
    from pipeline.runs.rundir import RunDir
    from pipeline.storage.store import StoreError

    try:
        if Checkpoints(run_dir).latest_step() is None:
            return False, None
        ledger = RunDir(run_dir).log(LEDGER).read()
    except (StoreError, OSError):
        return False, None  # not reachable from the laptop: the job resumes by itself if it can
    return True, newest_ledger_value(ledger, "wandb_run_id")


def project_dependencies(project: Path) -> list[str]:
    """pyproject.toml's dependencies, for a runtime_env pip install on a cluster without them."""
    import tomllib

    return tomllib.loads((project / "pyproject.toml").read_text())["project"]["dependencies"]


# ------------------------------------------------------------------------------------- jobs
def dashboard_url(address: str) -> str:
    """HOST:PORT as the http:// URL Ray's job client wants (a URL is kept as it is)."""
    return address if "://" in address else f"http://{address}"


def job_client(address: str):
    from ray.job_submission import JobSubmissionClient

    address = dashboard_url(address)
    enable_token_auth()
    for name in ("ray", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk"):
        logging.getLogger(name).setLevel(logging.WARNING)  # not the per-upload INFO lines (these set INFO themselves)
    check_answers(address)
    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise SubmitError(f"no Ray dashboard at {address}: {str(e).splitlines()[0]} "
                          f"(start one with `telucodec cluster up --local`, or pass --address http://HEAD:8265)")


def check_answers(address: str, timeout_s: float = 5.0) -> None:
    """A SubmitError within timeout_s when nothing answers HTTP at address: Ray's client has no
    timeout, so a firewalled port or a hung head would otherwise hang every command."""
    address = dashboard_url(address)
    try:
        with urllib.request.urlopen(f"{address.rstrip('/')}/api/version", timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        return  # it answers (401 with token authentication, 404 from something else: Ray's client says which)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, TimeoutError):
            reason = f"no answer within {timeout_s:g} s"
        raise SubmitError(f"no Ray dashboard at {address}: {reason or type(e).__name__} "
                          f"(is the head up and its port {urlparse(address).port or 8265} reachable from here? "
                          f"`ray dashboard CLUSTER.yaml` forwards it to http://127.0.0.1:8265)") from None


@dataclass
class JobView:
    """One job: Ray's state plus, from its run dir, progress, cost and quality."""
    job_id: str
    state: str
    run: str
    run_dir: str
    started: float | None
    ended: float | None
    message: str
    step: int | None = None
    usd: float | None = None
    restarts: int | None = None
    val_snr: float | None = None
    steps_per_s: float | None = None
    run_status: str = ""
    workers: int | None = None
    """Workers of the newest worker group (the ledger's last count)."""
    target_workers: str = ""
    """What the run asked for: "8", or "4-8" for an elastic run (train.min_workers-train.workers)."""


def state_word(status) -> str:
    """PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED, from Ray's JobStatus."""
    return str(getattr(status, "value", status))


def job_view(details) -> JobView:
    meta = details.metadata or {}
    view = JobView(details.submission_id or details.job_id, state_word(details.status),
                   meta.get("telucodec_run", ""), meta.get("run_dir", ""),
                   details.start_time / 1000 if details.start_time else None,
                   details.end_time / 1000 if details.end_time else None, details.message or "",
                   target_workers=meta.get("workers", ""))
    if view.run_dir:
        add_run_progress(view)
    return view


def add_run_progress(view: JobView) -> None:
    """Restarts, dollars so far, last val SNR and steps/s from the run's ledger and metrics."""
    from pipeline.runs.cost import LEDGER, newest_ledger_value, summarize_run
    from pipeline.runs.rundir import RunDir
    from pipeline.storage.store import StoreError

    try:
        cost = summarize_run(view.run_dir)
        view.step, view.usd, view.restarts, view.run_status = cost.step, cost.totals.usd, cost.totals.restarts, cost.status
        run = RunDir(view.run_dir)
        view.workers = newest_ledger_value(run.log(LEDGER).read(), "workers")
        metrics = run.metrics.read()
    except (StoreError, OSError, ValueError, KeyError):
        return  # not started yet, or the store is not reachable from here
    view.val_snr = next((r["val/snr"] for r in reversed(metrics) if "val/snr" in r), None)
    view.steps_per_s = next((r["steps_per_s"] for r in reversed(metrics) if "steps_per_s" in r), None)
    if metrics:  # newer than the ledger, which rank 0 writes at heartbeats and evals
        view.step = max(view.step or 0, metrics[-1]["step"])


def list_jobs(address: str) -> list[JobView]:
    """telucodec's jobs on the cluster, newest first."""
    jobs = [d for d in job_client(address).list_jobs() if (d.metadata or {}).get("telucodec_run")]
    return [job_view(d) for d in sorted(jobs, key=lambda d: d.start_time or 0, reverse=True)]


def job_details(client, job_id: str):
    """Ray's JobDetails, or a one-line SubmitError for an unknown id."""
    try:
        return client.get_job_info(job_id)
    except RuntimeError as e:
        raise SubmitError(f"no job {job_id} at {client.get_address()} ({str(e).splitlines()[0][:120]})")


def job_status(address: str, job_id: str) -> JobView:
    return job_view(job_details(job_client(address), job_id))


def job_logs(address: str, job_id: str, follow: bool = False, out=None) -> None:
    out = out or sys.stdout
    client = job_client(address)
    job_details(client, job_id)  # a clear error for an unknown id
    if not follow:
        out.write(client.get_job_logs(job_id))
        return

    async def tail():
        async for lines in client.tail_job_logs(job_id):
            out.write(lines)
            out.flush()
    asyncio.run(tail())


FINAL_STATES = ("STOPPED", "SUCCEEDED", "FAILED")


def stop_job(address: str, job_id: str, wait_s: float = STOP_GRACE_S + 30) -> JobView:
    """SIGTERM the job's driver (its workers save a checkpoint first); wait for a final state."""
    client = job_client(address)
    job_details(client, job_id)
    client.stop_job(job_id)
    deadline = time.time() + wait_s
    while state_word(client.get_job_status(job_id)) not in FINAL_STATES and time.time() < deadline:
        time.sleep(1.0)
    return job_view(job_details(client, job_id))


# ------------------------------------------------------------------------------------- local head
def local_address(port: int | None = None) -> str:
    """The local head's dashboard: port 8265, or TELUCODEC_LOCAL_RAY_PORT."""
    return f"http://127.0.0.1:{port or int(os.environ.get('TELUCODEC_LOCAL_RAY_PORT', '8265'))}"


def dashboard_up(address: str) -> bool:
    """Something answers HTTP there (401 too: a head with token authentication)."""
    try:
        with urllib.request.urlopen(f"{address}/api/version", timeout=2):
            return True
    except urllib.error.HTTPError as e:
        return e.code in (401, 403)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def ray_command() -> str:
    """The `ray` next to this Python (a venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.exists() else "ray"


def local_head_up(cpus: int | None = None, timeout_s: float = 90.0) -> tuple[str, bool]:
    """Start a Ray head on 127.0.0.1 with its dashboard on local_address(), or reuse the one there.
    Returns (address, started)."""
    address = local_address()
    port = address.rsplit(":", 1)[1]
    if dashboard_up(address):
        return address, False
    cpus = cpus or max(os.cpu_count() or 1, 3)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [ray_command(), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(free_port()),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", port, "--include-dashboard", "true",
           "--num-cpus", str(cpus), "--disable-usage-stats"]
    # A session of its own: every process of this head (and of its workers) shares one process group,
    # which `cluster down --local` ends without touching other Ray instances of this user.
    starter = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    out, err = starter.communicate()
    if starter.returncode != 0:
        last = (err.strip() or out.strip()).splitlines()[-1:] or ["?"]
        raise SubmitError(f"`ray start --head` failed: {last[0]}")
    head_record(port).parent.mkdir(parents=True, exist_ok=True)
    head_record(port).write_text(json.dumps({"pgid": starter.pid}))
    deadline = time.time() + timeout_s
    while not dashboard_up(address):
        if time.time() > deadline:
            raise SubmitError(f"the local Ray head started but its dashboard at {address} did not answer "
                              f"within {timeout_s:.0f} s (see /tmp/ray/session_latest/logs/dashboard.log)")
        time.sleep(0.5)
    return address, True


def head_record(port: str) -> Path:
    """Where `cluster up --local` notes the process group of the head it started on this dashboard port."""
    return Path(tempfile.gettempdir()) / "telucodec" / f"local-head-{port}.json"


def local_head_down(grace_s: float = 5.0) -> str:
    """Stop the local head: the process group `local_head_up` started (other Ray instances of this user
    live on), or, for a head started by hand, `ray stop` (every Ray process of this user). Says which."""
    record = head_record(local_address().rsplit(":", 1)[1])
    pgid = json.loads(record.read_text())["pgid"] if record.exists() else None
    if pgid is not None and group_alive(pgid):
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.time() + grace_s
        while group_alive(pgid) and time.time() < deadline:
            time.sleep(0.2)
        if group_alive(pgid):  # the GCS and the raylet take their time over SIGTERM, as under `ray stop`
            os.killpg(pgid, signal.SIGKILL)
            while group_alive(pgid) and time.time() < deadline + grace_s:
                time.sleep(0.2)
        record.unlink(missing_ok=True)
        return "the head it started"
    record.unlink(missing_ok=True)
    done = subprocess.run([ray_command(), "stop"], capture_output=True, text=True)
    if done.returncode != 0:
        raise SubmitError(f"`ray stop` failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    return "every Ray process of this user (`ray stop`)"


def group_alive(pgid: int) -> bool:
    """Some process of the group still runs (zombies, which a container's init may never reap, aside)."""
    if not Path("/proc/self/stat").exists():  # macOS: no /proc; a zombie counts there
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue  # the process ended while read
        if int(group) == pgid and state != "Z":
            return True
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
