"""The training loop: `train(cfg)` resumes from run.dir and steps until train.steps, a stop notice or
the budget, with its once-in-a-while blocks (log, eval, checkpoint).

    result = train(cfg)                          # single process
    result = train(cfg, ctx=ray_context)         # per Ray worker (jobs/launch/trainer.py), unchanged

Non-finite losses or gradients skip the step and, K times in a row, roll back to the last
checkpoint with a lower learning rate. A launcher hooks in through a RunContext (preemption notices
in, checkpoints out); rank 0's duties are in duties.py, the step in step.py, the state in state.py.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.config import Config, TrainConfig
from pipeline.runs.checkpoints import Checkpoints
from pipeline.runs.rundir import RUN_ENDS, RunDir, RunEnd
from pipeline.storage.store import REQUESTS, no_requests
from pipeline.training.duties import MainProcessDuties, RankDuties
from pipeline.training.loader import crop_loader, rank_rows
from pipeline.training.state import State, build_state, load_checkpoint, make_accelerator, save_checkpoint, unwrap
from pipeline.training.step import MetricWindow, train_step


class RequestMeter:
    """The worker group's requests to remote stores (storage.REQUESTS: every rank's process and
    loader workers), summed over the ranks when asked: one all-reduce of what each rank sent
    since the last time, on every rank at the same step."""

    def __init__(self):
        self.start = REQUESTS.snapshot()
        self.loader = None  # its worker processes count their own requests (CropLoader.worker_requests)
        self.sent = self.total = no_requests()

    def mine(self) -> np.ndarray:
        """This rank's requests since the meter started: its own process's and its loader workers'."""
        return REQUESTS.snapshot() - self.start + (self.loader.worker_requests if self.loader else 0)

    def sync(self, accel) -> np.ndarray:
        mine = self.mine()
        delta, self.sent = mine - self.sent, mine
        if accel.num_processes > 1:  # float64: exact to 2^53
            summed = accel.reduce(torch.from_numpy(delta.astype(np.float64)).to(accel.device), reduction="sum")
            delta = summed.cpu().numpy().round().astype(np.int64)
        self.total = self.total + delta
        return self.total

    def with_mine(self) -> np.ndarray:
        """The last sum with this rank's requests since then added (no collective: rank 0 at the end)."""
        return self.total + self.mine() - self.sent


class RunContext:
    """What a launcher hooks into on every rank; the default is a plain single-process run."""

    def __init__(self):
        self.started = time.time()
        """This worker group's start: the cost clock runs from here."""

    def stop_requested(self) -> bool:
        """True when the node is about to go away (a preemption notice)."""
        return False

    def after_checkpoint(self, step: int, metrics: dict, checkpoints: Checkpoints) -> None:
        """Called on every rank after each checkpoint (Ray reports it here)."""

    def crashed(self, step: int, error: BaseException) -> None:
        """Called on the rank whose training raised (a launcher that restarts records it)."""


@dataclass
class TrainResult:
    step: int
    status: str
    """finished, stopped (preemption notice: restart), budget or cancelled (job stopped: final)."""
    last_eval: dict = field(default_factory=dict)


def train(cfg: Config, ctx: RunContext | None = None, accel=None) -> TrainResult:
    """Train until cfg.train.steps (resuming from run.dir); returns the final step and status."""
    ctx = ctx or RunContext()
    meter = RequestMeter()  # from here: the checkpoint read and the ledger's first lines count too
    accel = accel or make_accelerator(cfg)
    run, ckpts = RunDir(cfg.run.dir), Checkpoints(cfg.run.dir)
    state = build_state(cfg, accel)
    duties = MainProcessDuties(cfg, accel, run, ctx.started) if accel.is_main_process else RankDuties()
    latest = ckpts.latest_step()
    saved = load_checkpoint(state, accel, ckpts, latest) if latest is not None else None
    duties.begin(state.step, saved)
    try:
        result = train_loop(state, accel, cfg, ctx, duties, ckpts, meter)
    except BaseException as error:
        with contextlib.suppress(Exception):  # the ledger's last line; the original error is what matters
            duties.close("crashed", state.step)
            if isinstance(error, Exception):
                ctx.crashed(state.step, error)
        raise
    duties.seen_requests(meter.with_mine())  # what rank 0 wrote after the last sum (the run's end records)
    duties.close(result.status, result.step)
    return result


def train_loop(state: State, accel, cfg: Config, ctx: RunContext, duties: RankDuties,
               ckpts: Checkpoints, meter: RequestMeter) -> TrainResult:
    """Steps until cfg.train.steps, a stop notice or the budget, with the once-in-a-while blocks."""
    loader = crop_loader(cfg, accel.process_index, accel.num_processes, pin_memory=accel.device.type == "cuda")
    meter.loader = loader
    duties.load_eval_clips()
    last_eval: dict = {}
    last_save, t_log, n_log, t_print = time.monotonic(), time.monotonic(), 0, time.monotonic()
    rows = rank_rows(cfg.train.batch_size, accel.num_processes, accel.process_index)
    window = MetricWindow(weight=len(rows) / cfg.train.batch_size if accel.num_processes > 1 else 1.0)
    while state.step < cfg.train.steps:
        rolled_back = False
        for _, batch in loader.batches(state.step):
            window.add(train_step(state, batch.to(accel.device, non_blocking=True), accel, cfg))
            state.step += 1
            n_log += 1
            if state.nonfinite_in_row >= cfg.train.max_nonfinite:
                rolled_back = rollback(state, accel, ckpts, cfg.train, duties)
                break
            log_due = state.step % cfg.train.log_every == 0 or state.step == cfg.train.steps
            if log_due or time.monotonic() - t_print >= cfg.train.progress_seconds:
                dt = time.monotonic() - t_log  # rates since the last logged step
                metrics = window.read() if log_due else window.peek()
                metrics.update({"steps_per_s": n_log / dt, "audio_s_per_s": n_log * cfg.train.batch_size * batch.shape[-1]
                                / cfg.model.sample_rate / dt,
                                "nonfinite_total": state.nonfinite_total})
                duties.print_progress(state.step, metrics)
                t_print = time.monotonic()
            if log_due:
                duties.seen_requests(meter.sync(accel))
                duties.log(metrics, state.step)
                t_log, n_log = time.monotonic(), 0
            done = state.step >= cfg.train.steps
            if state.step % cfg.train.eval_every == 0 or done:
                last_eval = duties.evaluate_and_report(unwrap(accel, state.model), state.step)
            over = duties.over_budget(state.step)
            cancel, grow = duties.driver_requests()
            stop, cancel, grow, budget, due = agree_each(
                accel, ctx.stop_requested(), cancel, grow, over is not None,
                time.monotonic() - last_save > cfg.train.checkpoint_minutes * 60)
            if done or stop or cancel or grow or budget or due or state.step % cfg.train.checkpoint_every == 0:
                save_checkpoint(state, accel, cfg, ckpts, last_eval, extra=duties.checkpoint_extra())
                ctx.after_checkpoint(state.step, last_eval, ckpts)
                duties.seen_requests(meter.sync(accel))  # the checkpoint's own requests: in the ledger's last line
                last_save = time.monotonic()
                duties.flush()
            if budget:  # for good: the driver does not restart a budget stop
                return end_loop(RUN_ENDS["budget"], state.step, duties, last_eval, reason=over)
            if cancel:  # for good too: the job was stopped
                return end_loop(RUN_ENDS["cancelled"], state.step, duties, last_eval)
            if stop and not done:  # a notice at the last step: the run is finished all the same
                return end_loop(RUN_ENDS["stopped"], state.step, duties, last_eval)
            if grow and not done:  # the driver starts a larger group from this checkpoint: no step redone
                return end_loop(RUN_ENDS["regrow"], state.step, duties, last_eval)
            if done:
                break
        if not rolled_back and state.step >= cfg.train.steps:
            break
    return end_loop(RUN_ENDS["finished"], state.step, duties, last_eval)


def end_loop(end: RunEnd, step: int, duties: RankDuties, last_eval: dict, **fields) -> TrainResult:
    """How train_loop returns: rank 0 writes the end to events.jsonl and says so (end.message)."""
    duties.record_end(end, step, **fields)
    return TrainResult(step, end.status, last_eval)


def agree_each(accel, *flags: bool) -> list[bool]:
    """Each flag true on every rank if it is true on any; one all-reduce for all of them."""
    if accel.num_processes == 1:
        return [bool(f) for f in flags]
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=accel.device)
    return [bool(v > 0) for v in accel.reduce(t, reduction="sum").tolist()]


def rollback(state: State, accel, ckpts: Checkpoints, train: TrainConfig, duties: RankDuties) -> bool:
    """K non-finite steps in a row: reload the last checkpoint and lower the learning rate."""
    latest = ckpts.latest_step()
    bad_step, scale = state.step, state.lr_scale * train.rollback_lr_factor
    if latest is not None:
        duties.rolled_back(load_checkpoint(state, accel, ckpts, latest))
    state.lr_scale, state.rollbacks = scale, state.rollbacks + 1
    state.nonfinite_in_row = 0
    message = (f"{train.max_nonfinite} non-finite steps in a row at step {bad_step}: rolled back to "
               f"{'step ' + str(latest) if latest is not None else 'the start'} with LR x{scale:g}")
    duties.warn(message, {"event": "rollback", "step": bad_step, "to_step": latest, "lr_scale": scale,
                          "message": message})
    return True
