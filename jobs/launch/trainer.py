"""Ray Train entry point: the pipeline's `train` per worker, as DDP, restarted after failures.

    result = train_on_ray(cfg)      # what `telucodec train` calls when train.workers > 0

A TorchTrainer runs `pipeline.training.loop.train` on `train.workers` workers; Accelerate inside each
worker reuses the process group Ray set up (gloo on CPU, NCCL on GPU). State lives in our own
checkpoints on `run.dir` (local or s3://), so any restart, by Ray after a crashed worker or by this
driver after a preemption, resumes from the newest whole checkpoint. Ray's failure policy counts
real errors (`train.max_failures`); a clean stop on a preemption notice is followed by a new
`fit()` here, without limit, as long as steps remain; a budget stop (status budget) is final.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

from jobs.launch import credentials
from jobs.launch.ray_internals import available_per_node, quiet_train_report_log, refresh_train_node_view
from pipeline.config import Config, ConfigError, TrainConfig, from_dict, to_dict, with_absolute_paths
from pipeline.errors import TelucodecError
from pipeline.runs.rundir import RUN_ENDS, RunDir, cancel_on_sigterm
from pipeline.storage.store import is_remote
from pipeline.training.loop import RunContext, TrainResult


class RayRunContext(RunContext):
    """Hooks of one Ray worker, on every rank: preemption watcher in, `ray.train.report` out (rank 0's
    own duties are the pipeline's: pipeline.training.duties.MainProcessDuties)."""

    def __init__(self, cfg: Config):
        import ray.train

        from jobs.launch.preemption import PreemptionWatcher

        super().__init__()  # the cost clock of this worker group starts now
        self.cfg, self.polls, self.ray_notice = cfg, 0, None
        self.watcher = PreemptionWatcher(cfg.preempt).start()
        self.rank = ray.train.get_context().get_world_rank()
        # Who runs where, from when to when, for checks from outside (train.debug_worker_records).
        self.records = RunDir(cfg.run.dir).store if cfg.train.debug_worker_records else None
        self.info = {"rank": self.rank, "pid": os.getpid(), "host": socket.gethostname(), "start": self.started}
        self.write_record(self.info)

    def finished(self) -> None:
        self.watcher.stop()
        self.write_record({**self.info, "end": time.time()})

    def write_record(self, info: dict) -> None:
        if self.records is not None:
            self.records.put_text(f"workers/rank{self.rank}.json", json.dumps(info))

    def stop_requested(self) -> bool:
        """A notice from this worker's own watcher (cloud metadata, SIGTERM) or, every
        preempt.ray_notice_every calls, from Ray Train (a node of the run being drained). Every rank
        calls this once per step, so all of them reach Ray's barrier together."""
        self.polls += 1
        every = self.cfg.preempt.ray_notice_every
        if self.ray_notice is None and every and self.cfg.preempt.enabled and self.polls % every == 0:
            import ray.train

            self.ray_notice = ray.train.get_preemption_info()
            if self.ray_notice is not None and self.rank == 0:
                print(f"Ray reports a preemption of node(s) {', '.join(self.ray_notice.preempted_node_ids)}: "
                      f"checkpointing at this step", flush=True)
        return self.watcher.poll() is not None or self.ray_notice is not None

    def crashed(self, step: int, error: BaseException) -> None:
        lines = str(error).strip().splitlines()
        RunDir(self.cfg.run.dir).record_crash(self.rank, step,
                                              f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": "))

    def after_checkpoint(self, step: int, metrics: dict, checkpoints) -> None:
        import ray.train

        # Every rank reports once per checkpoint, so all ranks report equally often.
        ray.train.report({"step": step, **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}})


def train_worker(config: dict) -> None:
    """The function Ray runs on every worker."""
    import ray.train
    import torch

    cfg = from_dict(Config, config["cfg"])
    # A W&B service token (WANDB_SERVICE, which wandb.init leaves in its process's environment) that
    # the process that started Ray had: the workers inherit it and would all send their runs through
    # that process's wandb-core, which dies with it, and which kept a killed group's run open, so the
    # next group's resume of the same run was refused ("run ID ... is in use", seen in CI: the test
    # process had used W&B before starting Ray). Each worker starts its own.
    os.environ.pop("WANDB_SERVICE", None)
    names = credentials.receive(config.get("keeper"))  # before anything reads S3 or starts W&B
    if names:
        print(f"rank {ray.train.get_context().get_world_rank()}: forwarded credentials {', '.join(names)} "
              f"(values not shown)", flush=True)
    torch.set_num_threads(max(1, cfg.train.cpus_per_worker))
    quiet_train_report_log()
    from pipeline.training.loop import train

    run = RunDir(cfg.run.dir)
    if (repeat := run.repeated_crash()) is not None:  # a restart would only fail the same way again
        if ray.train.get_context().get_world_rank() == 0:
            run.events.append({"event": "failed", "step": repeat["step"], "error": repeat["error"]})
            run.flush()
        return

    ctx = RayRunContext(cfg)
    result = train(cfg, ctx=ctx)
    ctx.finished()
    ray.train.report({"step": result.step})


def init_ray(train: TrainConfig) -> bool:
    """Join the cluster in RAY_ADDRESS, or start a local Ray sized for this run; True if this call
    connected (so the caller shuts it down again), False if Ray was already up."""
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
    else:
        cpus = max(os.cpu_count() or 1, train.workers * train.cpus_per_worker + 1)
        ray.init(address="local", num_cpus=cpus, include_dashboard=True, log_to_driver=True)
    return True


def storage_for(run_dir: str) -> tuple[str, str]:
    """(storage_path, name) so Ray keeps its own run state under RUN/ray."""
    if is_remote(run_dir):
        return run_dir.rstrip("/"), "ray"
    return str(Path(run_dir).absolute()), "ray"


def train_job(cfg: Config, resume: str = "auto", say=print) -> TrainResult:
    """Check the resume, say what will run, train (on Ray, or in this process with train.workers=0)
    and say how it ended: `telucodec train` and a submitted job's entry point alike."""
    from pipeline.runs.resume import check_resume

    if not cfg.data.url:
        raise ConfigError("no dataset: give data.url=URL (a folder or s3:// prefix made by `telucodec prep`)")
    from pipeline.evaluation.clips import require_split
    from pipeline.storage.shards import load_index

    for line in check_resume(cfg, resume):
        say(line)
    eval_url = cfg.train.eval_url or cfg.data.url
    require_split(load_index(eval_url), eval_url, cfg.train.eval_split)  # before any worker starts
    say(f"run {cfg.run.dir}: {cfg.model.n_codebooks} codebooks x {cfg.model.codebook_size} -> "
        f"{cfg.model.bitrate() / 1000:.2f} kbps at {cfg.model.sample_rate} Hz, "
        f"{cfg.train.steps} steps, {max(cfg.train.workers, 1)} worker(s)")
    if cfg.train.workers == 0:
        from pipeline.training.loop import train

        with cancel_on_sigterm(cfg.run.dir):
            result = train(cfg)
    else:
        result = train_on_ray(cfg)
    say(f"{result.status} at step {result.step}; checkpoints in {cfg.run.dir}/checkpoints")
    return result


def train_on_ray(cfg: Config) -> TrainResult:
    """Fit on Ray; restart after each clean preemption stop until train.steps are done."""
    import ray

    from pipeline.training.loader import crop_loader

    cfg = with_absolute_paths(cfg)
    # A wrong dataset URL or a split too small for the ranks fails here, in one line, not in every
    # worker (where Ray would retry it train.max_failures times).
    crop_loader(cfg, rank=0, world=max(cfg.train.workers, 1))
    started = init_ray(cfg.train)
    try:
        with cancel_on_sigterm(cfg.run.dir):
            return fit_until_done(cfg)
    finally:
        if started:  # a caller in the same process (the demo, a test) may start its own Ray next
            ray.shutdown()


def fit_until_done(cfg: Config) -> TrainResult:
    """Fit, and fit again after each clean preemption stop, until train.steps are done."""
    from ray.train import FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # Ray Train's print patch would double the workers' prints in the driver's log. Ray Train hands
    # this variable from the driver's environment to its controller and workers, so setting it here,
    # where the trainer is made, covers local, joined and submitted runs alike (a value the user set wins).
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    storage_path, name = storage_for(cfg.run.dir)
    resources = {"CPU": cfg.train.cpus_per_worker, **({"GPU": 1} if cfg.train.use_gpu else {})}
    watch = CapacityWatch(cfg, resources)
    RunDir(cfg.run.dir).clear_crashes()  # a new driver: an earlier job's crashes (before a fix) do not count
    while True:
        trainer = TorchTrainer(
            train_worker,
            train_loop_config={"cfg": to_dict(cfg), "keeper": credentials.keeper()},
            scaling_config=ScalingConfig(num_workers=worker_range(cfg.train), use_gpu=cfg.train.use_gpu,
                                         resources_per_worker=resources,
                                         # Ray's own growing (a kill: the steps since the newest
                                         # checkpoint are redone) is the fallback of CapacityWatch's
                                         elastic_resize_monitor_interval_s=RAY_GROW_FALLBACK * cfg.train.resize_check_s),
            run_config=RunConfig(name=name, storage_path=storage_path,
                                 failure_config=FailureConfig(max_failures=cfg.train.max_failures),
                                 # Ray Train's own INFO lines; the per-report one needs
                                 # quiet_train_report_log() on the worker as well.
                                 logging_config=LoggingConfig(log_level="WARNING")),
        )
        try:
            with watch:
                trainer.fit()
        except Exception:  # Ray gave up (train.max_failures): say why in one line if it was one error twice
            if (repeat := RunDir(cfg.run.dir).repeated_crash()) is not None:
                raise TrainingFailed(failed_message(repeat)) from None
            raise
        run = RunDir(cfg.run.dir)  # fresh: the workers wrote to the run's logs meanwhile
        status, step = final_status(run)
        if status == "failed":
            raise TrainingFailed(failed_message(run.repeated_crash() or {"step": step, "error": "?"}))
        reason = RUN_ENDS[status].restart_reason
        if reason and step < cfg.train.steps:  # cancelled and budget are final
            print(f"run stopped at step {step} ({reason}): restarting the worker group", flush=True)
            run.events.append({"event": "restarted", "step": step, "reason": reason})
            run.flush()
            time.sleep(1)
            continue
        return TrainResult(step, status)


RAY_GROW_FALLBACK = 10
"""Ray Train looks for room to grow every this many train.resize_check_s (CapacityWatch every one)."""


class CapacityWatch:
    """While a fit of a shrunk elastic run is under way, looks every train.resize_check_s for room
    for one more worker on some node and then asks the run to grow (RunDir.request_grow): its
    workers checkpoint at the next step and end, and fit_until_done starts a group as large as the
    cluster allows from that step, so no step is redone. (Ray Train's own growing kills the group
    and redoes the steps since the newest checkpoint; it stays as a slower fallback.) The room must
    be there at two checks in a row, Ray Train's view of the nodes is refreshed before asking (see
    refresh_train_node_view), and a request that brought no growth doubles the interval, up to an hour."""

    def __init__(self, cfg: Config, per_worker: dict[str, float], available=None, refresh=None):
        self.cfg, self.per_worker = cfg, per_worker
        self.available = available or available_per_node
        """() -> each node's unreserved resources."""
        self.refresh = refresh or refresh_train_node_view
        """() -> None: bring the view the next worker group is sized from up to date."""
        self.run = RunDir(cfg.run.dir)
        self.interval = cfg.train.resize_check_s
        self.asked: tuple[int, int] | None = None
        """(worker groups begun, the newest one's size) when the last grow request was made."""
        self.room_seen = False
        """Whether the last check found room."""
        self.done = threading.Event()
        self.thread: threading.Thread | None = None

    def __enter__(self) -> "CapacityWatch":
        self.run.clear_grow_request()
        if 0 < self.cfg.train.min_workers < self.cfg.train.workers:
            self.done.clear()
            self.thread = threading.Thread(target=self.watch, name="capacity-watch", daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        if self.thread is not None:
            self.thread.join(timeout=10)
        self.run.clear_grow_request()

    def watch(self) -> None:
        while not self.done.wait(self.interval):
            try:
                self.check()
            except Exception as error:  # a store or GCS hiccup: look again next time
                print(f"capacity watch: {type(error).__name__}: {error}", flush=True)

    def check(self) -> None:
        groups = self.group_sizes()
        if not groups:
            return
        if self.asked is not None:
            begun, size = self.asked
            if len(groups) == begun:
                return  # the request is still being acted on
            grew = groups[-1] > size
            self.interval = self.cfg.train.resize_check_s if grew else min(2 * self.interval, 3600.0)
            self.asked = None
        if groups[-1] >= self.cfg.train.workers:
            return
        free = free_workers(self.available(), self.per_worker)
        seen_before, self.room_seen = self.room_seen, free > 0
        if free > 0 and seen_before:
            print(f"room for {free} more worker(s): asking the run to checkpoint and grow", flush=True)
            self.refresh()
            self.run.request_grow(free)
            self.asked, self.room_seen = (len(groups), groups[-1]), False

    def group_sizes(self) -> list[int]:
        """The size of each worker group begun so far, from the run's cost ledger (rank 0 writes a
        line as each begins)."""
        from pipeline.runs.cost import LEDGER

        return [r["workers"] for r in self.run.log(LEDGER).read()
                if r.get("event") in ("start", "restarted", "resumed") and r.get("workers")]


def free_workers(available: dict[str, dict[str, float]], per_worker: dict[str, float]) -> int:
    """How many more workers, each needing `per_worker` on one node, the nodes' `available`
    resources hold."""
    needs = {k: v for k, v in per_worker.items() if v > 0}
    return sum(int(min(node.get(k, 0.0) // v for k, v in needs.items())) for node in available.values())


def worker_range(train: TrainConfig) -> int | tuple[int, int]:
    """Ray Train's num_workers: train.workers, or (train.min_workers, train.workers) when elastic."""
    if 0 < train.min_workers < train.workers:
        return train.min_workers, train.workers
    return train.workers


class TrainingFailed(TelucodecError, RuntimeError):
    """Two worker groups in a row failed at the same step with the same error; printed as one line."""


def failed_message(crash: dict) -> str:
    return (f"training failed at step {crash['step']} with the same error in two worker groups in a row "
            f"(not retried again): {crash['error']}")


def final_status(run: RunDir) -> tuple[str, int]:
    """How the last fit ended, from the run's own events (rank 0 writes them)."""
    return run.last_end() or ("finished", 0)
