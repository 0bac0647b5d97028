"""Ray jobs from a laptop: `submit` (a training run as a Ray job), `jobs ls|status|logs|stop`, and
`cluster up|down --local` (a Ray head on this machine for users without a cluster). Like the Ray CLI,
the cluster is --address, else $RAY_ADDRESS, else the local head at 127.0.0.1:8265."""

from __future__ import annotations

from urllib.parse import urlparse

from rich.table import Table

from jobs.cli.common import (FORMATTER, UsageError, add_config_items, amount, cell, console, err_console,
                             load_cli_config, when)
from pipeline.errors import TelucodecError


def register(sub) -> None:
    register_submit(sub)
    register_jobs(sub)
    register_cluster(sub)


HEALTHY_STATES = ("PENDING", "RUNNING", "SUCCEEDED")
"""`jobs status` exits 0 for these Ray job states, 1 for the others (FAILED, STOPPED)."""


def add_cluster_options(s) -> None:
    g = s.add_mutually_exclusive_group()
    g.add_argument("--address", help="the cluster's dashboard, http://HEAD:8265 (default: $RAY_ADDRESS, "
                   "else the local head at http://127.0.0.1:8265)")
    g.add_argument("--local", action="store_true", help="a Ray head on this machine (started if not running)")


def cluster_address(args) -> str:
    """--address; --local (starting or reusing the local head); $RAY_ADDRESS when it is a dashboard
    URL; else, as the Ray CLI does, the local head's dashboard, which must answer."""
    import os

    from jobs.launch.submit import dashboard_up, local_address, local_head_up

    if args.address:
        return args.address
    if args.local:
        address, started = local_head_up()
        if started:
            err_console.print(f"started a local Ray head, dashboard {address} (stop it: telucodec cluster down --local)")
        return address
    env = os.environ.get("RAY_ADDRESS", "")
    if env.startswith(("http://", "https://")):
        return env
    address = local_address()
    if not dashboard_up(address):
        raise UsageError(f"no Ray cluster answers at {address} (used when neither --address nor an http:// "
                         f"RAY_ADDRESS is given): start one with `telucodec cluster up --local`, or pass "
                         f"--address http://HEAD:8265")
    return address


def ray_head_errors(command):
    """Errors the Ray head or its job agent returns (Ray's client raises them as RuntimeError with
    the server's traceback inside, or as a dropped connection) become one line: the cause, not the
    traceback."""
    import functools

    @functools.wraps(command)
    def wrapped(args) -> int:
        import requests

        try:
            return command(args)
        except (RuntimeError, requests.exceptions.ConnectionError) as e:
            if isinstance(e, TelucodecError):
                raise  # ours: already one line
            raise UsageError(f"the Ray head at {getattr(args, 'address', None) or 'the local head'} failed "
                             f"the request: {server_cause(str(e))[:300]}") from None
    return wrapped


def server_cause(text: str) -> str:
    """The innermost `SomeError: message` line of a server traceback, else the first line."""
    import re

    lines = [line.strip() for line in text.strip().splitlines() if line.strip()] or ["unknown error"]
    for line in reversed(lines):
        found = re.match(r"^[\w.]*(?:Error|Exception): (.+)$", line)
        if found:
            return found.group(1)
    return lines[0]


# ---------------------------------------------------------------- submit
def register_submit(sub) -> None:
    s = sub.add_parser("submit", help="submit training, prep or reshard to a Ray cluster (from a laptop)",
                       usage="telucodec submit [--address URL | --local] [options] [train] CONFIG... [key=value...]\n"
                             "       telucodec submit [--address URL | --local] [options] prep SRC... --out URL ...\n"
                             "       telucodec submit [--address URL | --local] [options] reshard SRC_URL DST_URL ...",
                       description="Resolve and check the config here, stage the project (less .git, .venv, "
                       "data, runs and caches; size-checked before upload) and submit `telucodec train` (or, "
                       "after the word prep or reshard, that command with its own words, fanned out over "
                       "the cluster) as a Ray job. This machine's WANDB_API_KEY and AWS credentials (variables or profile) are "
                       "forwarded to the job's driver and every training worker in memory only: never in the "
                       "working dir, runtime_env, metadata or logs, and never printed (--no-forward for a "
                       "cluster with its own credentials). Prints `job: ID`, "
                       "the dashboard URL and the W&B run URL.",
                       epilog="examples:\n"
                       "  telucodec submit --address http://HEAD:8265 prep s3://b/indicvoices-te/ --out s3://b/te\n"
                       "  telucodec submit --address http://HEAD:8265 reshard s3://b/te s3://b/te-r8 --ranks 8\n"
                       "  telucodec submit --local configs/tiny.yaml data.url=demo_out/data-r2 train.eval_url=demo_out/data train.eval_split=test train.steps=50\n"
                       "  telucodec submit --address http://HEAD:8265 --runs s3://b/runs configs/gpu.yaml \\\n"
                       "      data.url=s3://b/te-r8 train.workers=8\n"
                       "  telucodec submit --address http://HEAD:8265 --runs s3://b/runs --run te-20261124-101500-1a2b "
                       "configs/gpu.yaml ...   # resume that run",
                       formatter_class=FORMATTER)
    add_cluster_options(s)
    s.add_argument("--run", help="run name to resume (or to start with this name); default: a new unique name")
    s.add_argument("--runs", default="runs", metavar="URL",
                   help="where run dirs go: s3://bucket/runs on a real cluster (default ./runs, fine with --local)")
    s.add_argument("--max-upload-mb", type=float, default=100.0, help="refuse a bigger working dir (default 100)")
    s.add_argument("--pip", action="store_true",
                   help="install pyproject's dependencies in the job's runtime env (a cluster image without them)")
    s.add_argument("--no-forward", action="store_true",
                   help="forward no credentials: the cluster's own (instance profile, a W&B key on the nodes) are used")
    add_config_items(s)
    s.set_defaults(func=submit)


SUBMITTED_STAGES = ("prep", "reshard", "train")
VALUED_OPTIONS = ("--address", "--run", "--runs", "--max-upload-mb", "--config")


def split_stage(argv: list[str]) -> tuple[list[str], str | None, list[str]]:
    """`submit [OPTIONS] prep|reshard WORDS...` -> (the submit part, the stage, its own words);
    `submit [OPTIONS] train CONFIG...` is today's `submit [OPTIONS] CONFIG...`."""
    if argv[:1] != ["submit"]:
        return argv, None, []
    for i in range(1, len(argv)):
        if argv[i] in SUBMITTED_STAGES and argv[i - 1] not in VALUED_OPTIONS:
            if argv[i] == "train":
                return argv[:i] + argv[i + 1:], None, []
            return argv[:i], argv[i], argv[i + 1:]
    return argv, None, []


def absolute(url: str) -> str:
    from pathlib import Path

    from pipeline.storage.store import is_remote

    return url if is_remote(url) or url.startswith("file://") else str(Path(url).expanduser().absolute())


@ray_head_errors
def submit_stage(args) -> int:
    """`telucodec submit prep ...` / `submit reshard ...`: the stage's own words, checked here, as a job."""
    import dataclasses

    from jobs.cli.data import prep_call, reshard_options
    from jobs.launch.submit import submit_stage as submit_job
    from pipeline.config import to_dict

    if args.items:
        raise UsageError(f"`submit {args.stage}` takes the stage's own words after it; "
                         f"put {' '.join(args.items)} after `{args.stage}`")
    stage = args.stage_args
    if args.stage == "prep":
        call = prep_call(stage)
        cfg = call["cfg"]
        spec = {"sources": [absolute(s) for s in call["sources"]], "out": absolute(call["out"]),
                "fmt": call["fmt"], "overwrite": call["overwrite"], "allow_outside": call["allow_outside"],
                "columns": call["columns"]}
    else:
        cfg = load_cli_config([])
        spec = {"src": absolute(stage.src), "out": absolute(stage.dst),
                "options": dataclasses.asdict(reshard_options(stage))}
    spec["config"] = to_dict(cfg)  # prep's settings, and the cost section that prices the job's nodes
    address = cluster_address(args)
    sub = submit_job(address, args.stage, spec, runs_root=args.runs, max_upload_mb=args.max_upload_mb, pip=args.pip,
                     forward=not args.no_forward)
    print_submission(sub, args, f"{args.stage}:      -> {spec['out']}  (cost ledger: {sub.run_dir})")
    return 0


def print_submission(sub, args, *lines: str) -> None:
    """What `submit` prints: the job id first (scripts read it), then the job's own lines."""
    print(f"job: {sub.job_id}")
    console.print(f"forwarded: {', '.join(sub.forwarded) or 'no credentials (the cluster uses its own)'}"
                  f"{' (values not shown)' if sub.forwarded else ''}", highlight=False)
    for line in (*lines, f"dashboard: {sub.dashboard_url}"):
        console.print(line, highlight=False)
    console.print(f"next:      telucodec jobs status {sub.job_id}{' --local' if args.local else ''}"
                  f"   |   jobs logs {sub.job_id} --follow   |   jobs stop {sub.job_id}", highlight=False)


@ray_head_errors
def submit(args) -> int:
    from jobs.launch.submit import submit
    from pipeline.config import with_absolute_paths

    if getattr(args, "stage", None):
        return submit_stage(args)

    cfg = load_cli_config(args.items)  # checked here: a typo fails before any upload
    if not cfg.data.url:
        raise UsageError("no dataset: give data.url=URL (an s3:// prefix made by `telucodec prep`, or a folder "
                         "the cluster's nodes can read)")
    run_dir_given = any(i.startswith("run.dir=") for i in args.items)
    cfg = with_absolute_paths(cfg)  # the job runs in another directory (a relative path means nothing there)
    address = cluster_address(args)
    if urlparse(address).hostname not in ("127.0.0.1", "localhost", "::1"):
        from pipeline.storage.store import is_remote

        local = [name for name, url in (("data.url", cfg.data.url), ("run dir", cfg.run.dir if run_dir_given else args.runs))
                 if not is_remote(url)]
        if local:
            err_console.print(f"telucodec: warning: {' and '.join(local)} on this machine's disk: the cluster's nodes "
                              f"must see the same path (a shared file system), else use s3://", highlight=False)
    sub = submit(address, cfg, run=args.run or "", runs_root=args.runs, run_dir_given=run_dir_given,
                 max_upload_mb=args.max_upload_mb, pip=args.pip,
                 forward=not args.no_forward)
    print_submission(sub, args, f"run:       {sub.run}  ({'resuming' if sub.resumed else 'new'}, {sub.run_dir})",
                     f"W&B:       {sub.wandb_url}")
    return 0


# ---------------------------------------------------------------- jobs
def register_jobs(sub) -> None:
    j = sub.add_parser("jobs", help="list, inspect, follow or stop submitted jobs",
                       description="Ray's job state plus, from each run's ledger and metrics: step, steps/s, "
                       "dollars so far, restarts and the last val SNR.", formatter_class=FORMATTER,
                       epilog="examples:\n  telucodec jobs ls --local\n  telucodec jobs status ID --address "
                       "http://HEAD:8265\n  telucodec jobs logs ID --follow\n  telucodec jobs stop ID")
    jsub = j.add_subparsers(dest="jobs_command", required=True, metavar="ls|status|logs|stop")
    s = jsub.add_parser("ls", help="table of telucodec jobs: state, step, cost, SNR")
    add_cluster_options(s)
    s.set_defaults(func=jobs_ls)
    s = jsub.add_parser("status", help="the Ray state word (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED), then details; "
                          "exit status 0 only for PENDING, RUNNING and SUCCEEDED")
    add_cluster_options(s)
    s.add_argument("job_id", metavar="ID")
    s.set_defaults(func=jobs_status)
    s = jsub.add_parser("logs", help="the job's driver log (rank 0's prints among it)")
    add_cluster_options(s)
    s.add_argument("job_id", metavar="ID")
    s.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    s.set_defaults(func=jobs_logs)
    s = jsub.add_parser("stop", help="stop a job: the workers save a checkpoint first, then it is STOPPED")
    add_cluster_options(s)
    s.add_argument("job_id", metavar="ID")
    s.add_argument("--wait", type=float, default=150.0, help="seconds to wait for the final state (default 150)")
    s.set_defaults(func=jobs_stop)


@ray_head_errors
def jobs_ls(args) -> int:
    from rich import box

    from jobs.launch.submit import list_jobs

    address = cluster_address(args)
    views = list_jobs(address)
    table = Table(title=f"telucodec jobs on {address}", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("job (run-nonce)", no_wrap=True, min_width=max([len(v.job_id) for v in views] + [15]))
    for col in ("state", "step", "steps/s", "$", "val SNR dB"):
        table.add_column(col, justify="left" if col == "state" else "right")
    for v in views:  # restarts, times and messages: `jobs status ID`
        table.add_row(v.job_id, v.state, cell(v.step, 0), cell(v.steps_per_s, 2),
                      "-" if v.usd is None else amount(v.usd), cell(v.val_snr, 2))
    console.print(table if views else "no telucodec jobs on this cluster")
    return 0


@ray_head_errors
def jobs_status(args) -> int:
    from jobs.launch.submit import job_status

    v = job_status(cluster_address(args), args.job_id)
    print(v.state)  # the first line is Ray's state word alone, for scripts
    rows = [("run", f"{v.run}  ({v.run_dir})"), ("run status", v.run_status or "-"),
            ("started", when(v.started)), ("ended", when(v.ended)), ("step", cell(v.step, 0)),
            ("steps/s", cell(v.steps_per_s, 2)),
            ("workers", f"{cell(v.workers, 0)} now, {v.target_workers or '-'} asked for"),
            ("cost so far", "-" if v.usd is None else f"${amount(v.usd)}"),
            ("restarts", cell(v.restarts, 0)), ("last val SNR", cell(v.val_snr, 2) + " dB"),
            ("message", v.message or "-")]
    for key, value in rows:
        console.print(f"{key + ':':14}{value}", highlight=False, markup=False)
    return 0 if v.state in HEALTHY_STATES else 1


@ray_head_errors
def jobs_logs(args) -> int:
    from jobs.launch.submit import job_logs

    job_logs(cluster_address(args), args.job_id, follow=args.follow)
    return 0


@ray_head_errors
def jobs_stop(args) -> int:
    from pipeline.runs.checkpoints import Checkpoints
    from jobs.launch.submit import stop_job

    v = stop_job(cluster_address(args), args.job_id, wait_s=args.wait)
    print(v.state)
    if v.run_dir:
        step = Checkpoints(v.run_dir).latest_step()
        console.print(f"last checkpoint: step {step} in {v.run_dir}/checkpoints; resume with "
                      f"`telucodec submit --run {v.run} ...`", highlight=False)
    return 0


# ---------------------------------------------------------------- cluster
def register_cluster(sub) -> None:
    s = sub.add_parser("cluster", help="start or stop a local Ray head (for users without a cluster)",
                       description="`up --local` starts a Ray head on 127.0.0.1 with its dashboard on port 8265 "
                       "(TELUCODEC_LOCAL_RAY_PORT), or reuses the one there; `down --local` stops the head "
                       "`up` started (other Ray work of yours lives on; a head started by hand gets `ray stop`). "
                       "For cloud clusters "
                       "use `ray up jobs/clusters/aws-spot.yaml`.",
                       epilog="examples:\n  telucodec cluster up --local\n  telucodec cluster down --local",
                       formatter_class=FORMATTER)
    s.add_argument("action", choices=("up", "down"))
    s.add_argument("--local", action="store_true", help="this machine")
    s.add_argument("--cpus", type=int, help="CPUs the local head offers (default: this machine's, at least 3)")
    s.set_defaults(func=cluster)


def cluster(args) -> int:
    from jobs.launch.submit import local_address, local_head_down, local_head_up

    if not args.local:
        raise UsageError("only --local clusters are managed here; for AWS or GCP spot nodes use "
                         "`ray up jobs/clusters/aws-spot.yaml` / `ray down ...` (see README)")
    if args.action == "up":
        address, started = local_head_up(cpus=args.cpus)
        console.print(f"{'started' if started else 'reusing'} local Ray head: dashboard {address}", highlight=False)
        console.print("submit with: telucodec submit --local CONFIG.yaml data.url=...", highlight=False)
    else:
        what = local_head_down()
        console.print(f"stopped the local Ray head ({local_address()}): {what}", highlight=False)
    return 0
