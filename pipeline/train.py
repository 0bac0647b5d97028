"""The training loop: Accelerate owns device, DDP, precision and accumulation; one function per job.

    result = train(cfg)                          # single process
    result = train(cfg, ctx=ray_context)         # per Ray worker (jobs/ray_train.py), unchanged

`train_step(state, batch, accel, cfg)` is one optimisation step; `train` is the outer loop with its
once-in-a-while blocks (log, eval, checkpoint). Everything the old codec got wrong is watched:
non-finite losses or gradients skip the step and, K times in a row, roll back to the last checkpoint
with a lower learning rate; after warm-up a val SNR below 0 dB or an output/input range ratio
below 0.5 is a loud warning and an event. Resume is automatic from `run.dir`. Rank 0 keeps the cost
ledger (pipeline/cost.py) and the W&B run (pipeline/tracking.py) through the RunContext, and a
budget (budget.max_usd, budget.max_gpu_hours) stops the run like a preemption notice, for good.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipeline.checkpoint import Checkpoints
from pipeline.config import Config, to_dict
from pipeline.cost import CostTotals, CostTracker
from pipeline.data import CropLoader, eval_clips
from pipeline.discriminator import Discriminator
from pipeline.losses import adversarial_active, discriminator_loss, generator_loss
from pipeline.metrics import codebook_perplexity, mel_distance, range_ratio, si_sdr_db, snr_db
from pipeline.model import Codec
from pipeline.rundir import RUN_ENDS, RunDir, RunEnd
from pipeline.tracking import Tracker, make_tracker


class RunContext:
    """What a launcher can hook into; the default is a plain single-process run. On rank 0 every
    context keeps the run's cost ledger and its W&B run (a no-op tracker when tracking is off)."""

    def __init__(self):
        self.started = time.time()
        """This worker group's start: the cost clock runs from here."""
        self.cost: CostTracker | None = None
        self.tracker: Tracker = Tracker()
        self.restored: dict = {}
        self.run: RunDir | None = None
        self.cancel_poll_seconds = 5.0
        self._next_cancel_check = 0.0

    def begin(self, cfg: Config, accel, run: RunDir, step: int) -> None:
        """Rank 0, before the first step: continue the cost ledger and the W&B run of the checkpoint."""
        if not accel.is_main_process:
            return
        self.run, self.cancel_poll_seconds = run, cfg.preempt.poll_seconds
        self.cost = CostTracker(cfg, run, workers=accel.num_processes, started=self.started)
        self.tracker = make_tracker(cfg, self.restored.get("wandb_run_id") or self.cost.ledger_value("wandb_run_id"))
        self.cost.begin(self.restored.get("cost"), step, wandb_run_id=self.tracker.run_id)

    def stop_requested(self) -> bool:
        """True when the node is about to go away (a preemption notice)."""
        return False

    def cancel_requested(self) -> bool:
        """Rank 0: True when the run was asked to end for good (its job was stopped: the driver's
        RunDir.request_cancel); one store lookup per preempt.poll_seconds."""
        if self.run is None or time.monotonic() < self._next_cancel_check:
            return False
        self._next_cancel_check = time.monotonic() + self.cancel_poll_seconds
        return self.run.cancel_requested()

    def over_budget(self, step: int) -> str | None:
        """Rank 0: why the run must stop for good now (budget.*), else None."""
        return self.cost.over_budget(step) if self.cost else None

    def after_checkpoint(self, step: int, metrics: dict, checkpoints: Checkpoints) -> None:
        """Called on every rank after each checkpoint (Ray reports it here)."""

    def extra_state(self) -> dict:
        """Launcher state to keep in the checkpoint (cost totals, tracker run id); rank 0."""
        return {"cost": self.cost.state(), "wandb_run_id": self.tracker.run_id} if self.cost else {}

    def restore_extra_state(self, state: dict) -> None:
        self.restored = state
        if self.cost is not None and state.get("cost"):  # a rollback: the work since then is redone
            self.cost.rolled_back(state["cost"])

    def log(self, metrics: dict, step: int) -> None:
        """Metrics for the tracker (W&B) with the running cost, rank 0 only."""
        if self.cost is not None:
            self.tracker.log({**metrics, **self.cost.metrics(step)}, step)

    def log_eval(self, ev: dict, step: int, model, clips: list) -> None:
        """Eval metrics, dollars per dB, a ledger line and audio samples, rank 0 only."""
        if self.cost is not None:
            self.tracker.log({**ev, **self.cost.evaluated(step, ev["val/snr"])}, step)
            self.tracker.log_samples(step, model, clips)

    def event(self, record: dict) -> None:
        """A health or rollback event (as in events.jsonl): a ledger line and a W&B alert, rank 0."""
        if self.cost is not None:
            fields = {k: v for k, v in record.items() if k not in ("event", "step")}
            self.cost.record(record["event"], record["step"], **fields)
            self.tracker.alert(f"{record['event']} at step {record['step']}",
                               record.get("problem") or record.get("message", ""))

    def end(self, status: str, step: int) -> None:
        """Rank 0: the final cost to W&B, close it, and the ledger's last line (finished, preempted, budget)."""
        if self.cost is not None:
            self.tracker.log(self.cost.metrics(step), step)
            self.tracker.finish(exit_code=1 if status == "crashed" else 0, preempted=status == "stopped")
            self.cost.close(RUN_ENDS[status].event, step)
            self.cost = None


@dataclass
class State:
    model: torch.nn.Module
    opt_g: torch.optim.Optimizer
    sched_g: Any
    disc: torch.nn.Module | None = None
    opt_d: torch.optim.Optimizer | None = None
    sched_d: Any = None
    step: int = 0
    lr_scale: float = 1.0
    """Multiplier on the schedule; each non-finite rollback lowers it."""
    nonfinite_in_row: int = 0
    nonfinite_total: int = 0
    rollbacks: int = 0
    best_snr: float | None = None


@dataclass
class TrainResult:
    step: int
    status: str
    """finished, stopped (preemption notice: restart), budget or cancelled (job stopped: final)."""
    last_eval: dict = field(default_factory=dict)


def make_accelerator(cfg: Config):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    precision = cfg.train.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and cfg.train.use_gpu else "no"
    # Our loader already gives each rank its own batches; nothing may re-dispatch them from rank 0.
    return Accelerator(mixed_precision=precision, cpu=not cfg.train.use_gpu,
                       gradient_accumulation_steps=cfg.train.grad_accum,
                       dataloader_config=DataLoaderConfiguration(dispatch_batches=False, split_batches=False))


def lr_lambda(cfg: Config):
    """Linear warm-up, then cosine decay to train.min_lr_ratio of the peak."""
    warm, total, floor = cfg.train.warmup_steps, max(cfg.train.steps, 1), cfg.train.min_lr_ratio

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def build_state(cfg: Config, accel) -> State:
    torch.manual_seed(cfg.train.seed)
    model = Codec(cfg.model)
    betas = tuple(cfg.train.betas)
    opt_g = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, betas=betas, weight_decay=cfg.train.weight_decay)
    sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, lr_lambda(cfg))
    disc = opt_d = sched_d = None
    if cfg.loss.adversarial:
        disc = Discriminator(cfg.model)
        opt_d = torch.optim.AdamW(disc.parameters(), lr=cfg.train.lr, betas=betas)
        sched_d = torch.optim.lr_scheduler.LambdaLR(opt_d, lr_lambda(cfg))
        model, opt_g, disc, opt_d = accel.prepare(model, opt_g, disc, opt_d)
    else:
        model, opt_g = accel.prepare(model, opt_g)
    return State(model=model, opt_g=opt_g, sched_g=sched_g, disc=disc, opt_d=opt_d, sched_d=sched_d)


def set_lr(state: State) -> None:
    for sched in (state.sched_g, state.sched_d):
        if sched is not None:
            for group, base in zip(sched.optimizer.param_groups, sched.base_lrs):
                group["lr"] = base * sched.lr_lambdas[0](state.step) * state.lr_scale


def train_step(state: State, batch: torch.Tensor, accel, cfg: Config) -> dict:
    """One optimisation step on `batch` [B, 1, T]; returns its metrics (floats)."""
    set_lr(state)
    model, metrics = state.model, {}
    adv = state.disc is not None and adversarial_active(cfg.loss, state.step)
    with accel.accumulate(model), accel.autocast():
        out = model(batch)
        if adv:
            d = discriminator_loss(state.disc, batch, out.audio, cfg.loss)
            state.opt_d.zero_grad(set_to_none=True)
            accel.backward(d.total)
            accel.clip_grad_norm_(state.disc.parameters(), cfg.train.grad_clip)
            state.opt_d.step()
            metrics.update({k: float(v) for k, v in d.terms.items()})
        g = generator_loss(out, batch, cfg, disc=state.disc if adv else None, step=state.step)
        accel.backward(g.total)
        grad_norm = accel.clip_grad_norm_(model.parameters(), cfg.train.grad_clip) if accel.sync_gradients else None
        finite = bool(torch.isfinite(g.total)) and (grad_norm is None or bool(torch.isfinite(grad_norm)))
        if finite:
            state.opt_g.step()
            state.nonfinite_in_row = 0
        else:  # skip: an update from a NaN/Inf gradient would poison every weight
            state.nonfinite_in_row += 1
            state.nonfinite_total += 1
        state.opt_g.zero_grad(set_to_none=True)
    metrics.update({f"loss/{k}": float(v) for k, v in g.terms.items()})
    metrics.update({"loss/total": float(g.total.detach()), "lr": state.opt_g.param_groups[0]["lr"],
                    "grad_norm": float(grad_norm) if grad_norm is not None else None,
                    "skipped": int(not finite), "n_quantizers": out.n_quantizers, "bitrate": out.bitrate})
    return metrics


@torch.no_grad()
def evaluate(model: Codec, clips: list[tuple[str, np.ndarray]], cfg: Config, device) -> dict:
    """Val metrics over clips: SNR, SI-SDR, range ratio, mel distance, codebook perplexity."""
    model.eval()
    rows, codes = [], []
    for _, audio in clips:
        x = torch.from_numpy(audio).to(device)[None, None]
        out = model(x)
        y = out.audio.float().cpu()
        rows.append([float(snr_db(x.cpu(), y)[0]), float(si_sdr_db(x.cpu(), y)[0]),
                     float(range_ratio(x.cpu(), y)[0]), float(mel_distance(x.cpu(), y, cfg.model.sample_rate)[0])])
        codes.append(out.codes[0].cpu())
    model.train()
    snr, sisdr, rr, mel = np.mean(rows, axis=0)
    perp = codebook_perplexity(torch.cat(codes, dim=-1), cfg.model.codebook_size)
    metrics = {"val/snr": snr, "val/si_sdr": sisdr, "val/range_ratio": rr, "val/mel_distance": mel,
               "val/bitrate": model.bitrate(), "val/clips": len(clips)}
    metrics.update({f"val/perplexity/{i}": float(p) for i, p in enumerate(perp)})
    return {k: float(v) for k, v in metrics.items()}


def health_problems(ev: dict, step: int, cfg: Config) -> list[str]:
    """The old failure, made visible: negative SNR or a collapsed output range after warm-up."""
    if step < cfg.train.warmup_steps:
        return []
    problems = []
    if ev["val/snr"] < 0:
        problems.append(f"val SNR is {ev['val/snr']:.2f} dB (< 0): the codec is worse than silence")
    if ev["val/range_ratio"] < 0.5:
        problems.append(f"output/input range ratio is {ev['val/range_ratio']:.2f} (< 0.5): outputs are "
                        "collapsing toward zero")
    return problems


# ------------------------------------------------------------------------------------- checkpoints
def unwrap(accel, module):
    return accel.unwrap_model(module) if module is not None else None


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": list(np.random.get_state()[1].tolist()),
            "python": list(random.getstate()[1])}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.seed(0)
    st = np.random.get_state()
    np.random.set_state((st[0], np.array(s["numpy"], dtype=np.uint32), 624, 0, 0.0))
    random.setstate((3, tuple(s["python"]), None))


def save_checkpoint(state: State, accel, cfg: Config, ckpts: Checkpoints, ctx: RunContext,
                    metrics: dict) -> None:
    """Rank 0 writes model and optimizer state, every rank its RNG; rank 0 commits once all are in."""
    step = state.step
    parts = {}
    rank_state = {"rng": rng_state(), "step": step}
    if cfg.train.debug_rank_digests:
        rank_state["params_sha256"] = params_digest(unwrap(accel, state.model))
    part = ckpts.save_part(step, f"rank{accel.process_index}", rank_state)
    if accel.is_main_process:
        train_state = {"step": step, "lr_scale": state.lr_scale, "nonfinite_total": state.nonfinite_total,
                       "rollbacks": state.rollbacks, "best_snr": state.best_snr, "config": to_dict(cfg),
                       "world": accel.num_processes, "extra": ctx.extra_state()}
        parts["model"] = ckpts.save_part(step, "model", unwrap(accel, state.model).state_dict())
        parts["optim"] = ckpts.save_part(step, "optim", {
            "opt_g": state.opt_g.state_dict(), "sched_g": state.sched_g.state_dict(),
            "disc": unwrap(accel, state.disc).state_dict() if state.disc is not None else {},
            "opt_d": state.opt_d.state_dict() if state.opt_d is not None else {},
            "sched_d": state.sched_d.state_dict() if state.sched_d is not None else {}})
        parts["train"] = ckpts.save_part(step, "train", train_state)
    parts.update(gather_parts(accel, f"rank{accel.process_index}", part))
    if accel.is_main_process:
        ckpts.commit(step, parts, meta={k: v for k, v in metrics.items() if k.startswith("val/")})
        if "val/snr" in metrics and ckpts.mark_best(step, "val/snr", metrics["val/snr"]):
            state.best_snr = metrics["val/snr"]
        ckpts.prune(cfg.train.keep_checkpoints)
    accel.wait_for_everyone()
    ctx.after_checkpoint(step, metrics, ckpts)


def params_digest(model: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer: equal on all ranks when DDP keeps them in sync
    (stored per rank under train.debug_rank_digests)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def gather_parts(accel, name: str, part: dict) -> dict:
    """Every rank's part entry, on every rank."""
    if accel.num_processes == 1:
        return {name: part}
    import torch.distributed as dist

    out: list = [None] * accel.num_processes
    dist.all_gather_object(out, (name, part))
    return dict(out)


def load_optimizer(opt, sched, opt_state: dict, sched_state: dict) -> None:
    """Moments and step from the checkpoint; lr, betas and weight decay stay the config's (a forced
    resume changes them, and the saved param groups and base_lrs would silently bring back the old)."""
    hyper = [{k: v for k, v in group.items() if k != "params"} for group in opt.param_groups]
    base_lrs = list(sched.base_lrs)
    opt.load_state_dict(opt_state)
    sched.load_state_dict(sched_state)
    for group, h in zip(opt.param_groups, hyper):
        group.update(h)
    sched.base_lrs = base_lrs


def load_checkpoint(state: State, accel, ckpts: Checkpoints, step: int, ctx: RunContext) -> None:
    model = unwrap(accel, state.model)
    model.load_state_dict(ckpts.load(step, "model"))
    optim = ckpts.load(step, "optim")
    load_optimizer(state.opt_g, state.sched_g, optim["opt_g"], optim["sched_g"])
    if state.disc is not None and optim["disc"]:
        unwrap(accel, state.disc).load_state_dict(optim["disc"])
        load_optimizer(state.opt_d, state.sched_d, optim["opt_d"], optim["sched_d"])
    train_state = ckpts.load(step, "train")
    state.step, state.lr_scale = train_state["step"], train_state["lr_scale"]
    state.nonfinite_total, state.rollbacks = train_state["nonfinite_total"], train_state["rollbacks"]
    state.best_snr, state.nonfinite_in_row = train_state["best_snr"], 0
    ctx.restore_extra_state(train_state.get("extra", {}))
    rank_part = f"rank{accel.process_index}"
    if ckpts.has_part(step, rank_part):  # same world size: this rank's RNG continues exactly
        set_rng_state(ckpts.load(step, rank_part)["rng"])


# ------------------------------------------------------------------------------------- the loop
def train(cfg: Config, ctx: RunContext | None = None, accel=None) -> TrainResult:
    """Train until cfg.train.steps (resuming from run.dir); returns the final step and status."""
    ctx = ctx or RunContext()
    accel = accel or make_accelerator(cfg)
    run, ckpts = RunDir(cfg.run.dir), Checkpoints(cfg.run.dir)
    state = build_state(cfg, accel)
    main = accel.is_main_process
    latest = ckpts.latest_step()
    if latest is not None:
        load_checkpoint(state, accel, ckpts, latest, ctx)
        if main:
            run.events.append({"event": "resumed", "step": state.step})
            print(f"resumed {run.url} from step {state.step}", flush=True)
    elif main:
        run.events.append({"event": "start", "step": 0, "bitrate": cfg.model.bitrate()})
    ctx.begin(cfg, accel, run, state.step)
    try:
        result = train_loop(state, accel, cfg, ctx, run, ckpts)
    except BaseException:
        with contextlib.suppress(Exception):  # the ledger's last line; the original error is what matters
            ctx.end("crashed", state.step)
        raise
    ctx.end(result.status, result.step)
    return result


def train_loop(state: State, accel, cfg: Config, ctx: RunContext, run: RunDir, ckpts: Checkpoints) -> TrainResult:
    """Steps until cfg.train.steps, a stop notice or the budget, with the once-in-a-while blocks."""
    main = accel.is_main_process
    crop = int(cfg.train.segment_seconds * cfg.model.sample_rate)
    loader = CropLoader(cfg.data.url, "train", cfg.train.batch_size, crop, cfg.train.seed,
                        rank=accel.process_index, world=accel.num_processes)
    clips = eval_clips(cfg.train.eval_url or cfg.data.url, cfg.train.eval_split, cfg.train.eval_clips,
                       int(cfg.train.eval_seconds * cfg.model.sample_rate)) if main else []
    last_eval: dict = {}
    last_save, t_log, n_log, t_print = time.monotonic(), time.monotonic(), 0, time.monotonic()
    while state.step < cfg.train.steps:
        rolled_back = False
        for _, batch in loader.batches(state.step):
            metrics = train_step(state, batch.to(accel.device), accel, cfg)
            state.step += 1
            n_log += 1
            if state.nonfinite_in_row >= cfg.train.max_nonfinite:
                rolled_back = rollback(state, accel, ckpts, run, cfg, ctx)
                break
            log_due = state.step % cfg.train.log_every == 0 or state.step == cfg.train.steps
            if main and (log_due or time.monotonic() - t_print >= cfg.train.progress_seconds):
                dt = time.monotonic() - t_log  # rates since the last logged step
                metrics.update({"steps_per_s": n_log / dt, "audio_s_per_s": n_log * batch.shape[0] * batch.shape[-1]
                                / cfg.model.sample_rate * accel.num_processes / dt,
                                "nonfinite_total": state.nonfinite_total})
                print(progress_line(state.step, cfg.train.steps, metrics, ctx.cost.totals(), cfg.train.use_gpu),
                      flush=True)
                t_print = time.monotonic()
            if main and log_due:
                run.metrics.append({"step": state.step, **metrics})
                ctx.log(metrics, state.step)
                t_log, n_log = time.monotonic(), 0
            done = state.step >= cfg.train.steps
            if main and (state.step % cfg.train.eval_every == 0 or done):
                last_eval = evaluate(unwrap(accel, state.model), clips, cfg, accel.device)
                report_eval(last_eval, state, run, cfg, ctx, unwrap(accel, state.model), clips)
            over = ctx.over_budget(state.step)
            stop, cancel, budget, due = agree_each(
                accel, ctx.stop_requested(), main and ctx.cancel_requested(), over is not None,
                time.monotonic() - last_save > cfg.train.checkpoint_minutes * 60)
            if done or stop or cancel or budget or due or state.step % cfg.train.checkpoint_every == 0:
                save_checkpoint(state, accel, cfg, ckpts, ctx, last_eval if main else {})
                last_save = time.monotonic()
                if main:
                    run.flush()
            if budget:  # for good: the driver does not restart a budget stop
                return end_loop(RUN_ENDS["budget"], state.step, run, main, last_eval, reason=over)
            if cancel:  # for good too: the job was stopped
                return end_loop(RUN_ENDS["cancelled"], state.step, run, main, last_eval)
            if stop:
                return end_loop(RUN_ENDS["stopped"], state.step, run, main, last_eval)
            if done:
                break
        if not rolled_back and state.step >= cfg.train.steps:
            break
    return end_loop(RUN_ENDS["finished"], state.step, run, main, last_eval)


def end_loop(end: RunEnd, step: int, run: RunDir, main: bool, last_eval: dict, **fields) -> TrainResult:
    """How train_loop returns: rank 0 writes the end to events.jsonl and says so (end.message)."""
    if main:
        run.events.append({"event": end.event, "step": step, **fields})
        run.flush()
        if end.message:
            print(end.message.format(step=step, **fields), flush=True)
    return TrainResult(step, end.status, last_eval)


def progress_line(step: int, steps: int, metrics: dict, spent: CostTotals, gpu: bool) -> str:
    """One line of progress for the job log: step/total, loss, rates, ETA and what was spent so far
    (GPU-hours on GPU, worker-hours on CPU)."""
    rate = metrics["steps_per_s"]
    eta = round((steps - step) / rate) if rate > 0 else 0
    hours, minutes, seconds = eta // 3600, eta // 60 % 60, eta % 60
    eta_text = f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"
    hours_text = f"{spent.gpu_hours:.2f} GPU-h" if gpu else f"{spent.worker_hours:.2f} worker-h"
    return (f"step {step}/{steps}  loss {metrics['loss/total']:.3f}  {rate:.2f} steps/s  "
            f"{metrics['audio_s_per_s']:.1f} audio-s/s  ETA {eta_text}  {hours_text}  ${spent.usd:.2f}")


def agree_each(accel, *flags: bool) -> list[bool]:
    """Each flag true on every rank if it is true on any; one all-reduce for all of them."""
    if accel.num_processes == 1:
        return [bool(f) for f in flags]
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=accel.device)
    return [bool(v > 0) for v in accel.reduce(t, reduction="sum").tolist()]


def report_eval(ev: dict, state: State, run: RunDir, cfg: Config, ctx: RunContext, model, clips: list) -> None:
    run.metrics.append({"step": state.step, **ev})
    ctx.log_eval(ev, state.step, model, clips)
    print(f"step {state.step}: val SNR {ev['val/snr']:.2f} dB, SI-SDR {ev['val/si_sdr']:.2f} dB, "
          f"range ratio {ev['val/range_ratio']:.2f}, mel distance {ev['val/mel_distance']:.3f}", flush=True)
    for problem in health_problems(ev, state.step, cfg):
        print(f"WARNING step {state.step}: {problem}", flush=True)
        record = {"event": "health", "step": state.step, "problem": problem,
                  "val/snr": ev["val/snr"], "val/range_ratio": ev["val/range_ratio"]}
        run.events.append(record)
        ctx.event(record)


def rollback(state: State, accel, ckpts: Checkpoints, run: RunDir, cfg: Config, ctx: RunContext) -> bool:
    """K non-finite steps in a row: reload the last checkpoint and lower the learning rate."""
    latest = ckpts.latest_step()
    bad_step, scale = state.step, state.lr_scale * cfg.train.rollback_lr_factor
    if latest is not None:
        load_checkpoint(state, accel, ckpts, latest, ctx)
    state.lr_scale, state.rollbacks = scale, state.rollbacks + 1
    state.nonfinite_in_row = 0
    message = (f"{cfg.train.max_nonfinite} non-finite steps in a row at step {bad_step}: rolled back to "
               f"{'step ' + str(latest) if latest is not None else 'the start'} with LR x{scale:g}")
    if accel.is_main_process:
        print(f"WARNING {message}", flush=True)
        record = {"event": "rollback", "step": bad_step, "to_step": latest, "lr_scale": scale, "message": message}
        run.events.append(record)
        ctx.event(record)
    return True
