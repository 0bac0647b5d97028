"""The training loop: Accelerate owns device, DDP, precision and accumulation; one function per job.

    result = train(cfg)                          # single process
    result = train(cfg, ctx=ray_context)         # per Ray worker (jobs/ray_train.py), unchanged

`train_step(state, batch, accel, cfg)` is one optimisation step; `train` is the outer loop with its
once-in-a-while blocks (log, eval, checkpoint). Everything the old codec got wrong is watched:
non-finite losses or gradients skip the step and, K times in a row, roll back to the last checkpoint
with a lower learning rate; after warm-up a val SNR below 0 dB or an output/input range ratio
below 0.5 is a loud warning and an event. Resume is automatic from `run.dir`. Rank 0's duties (run logs,
printed progress and evals, the cost ledger of pipeline/cost.py, the W&B run of pipeline/tracking.py)
are MainProcessDuties; every other rank gets their no-ops (RankDuties). A budget (budget.max_usd,
budget.max_gpu_hours) stops the run like a preemption notice, for good. A launcher hooks in through
a RunContext (preemption notices in, checkpoints out).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import random
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, TypeVar

import numpy as np
import torch

from pipeline.checkpoint import Checkpoints
from pipeline.config import BEST_METRICS, Config, to_dict
from pipeline.cost import CostTotals, CostTracker
from pipeline.data import crop_loader, eval_clips, rank_rows
from pipeline.discriminator import Discriminator
from pipeline.losses import adversarial_active, discriminator_loss, generator_loss
from pipeline.metrics import (SCORERS, codebook_perplexity, mean_score, mel_distance, pesq_wb, range_ratio,
                              scorer, si_sdr_db, snr_db, stoi)
from pipeline.model import Codec
from pipeline.quantize import StepDraws, all_reduce_sum_
from pipeline.rundir import RUN_ENDS, RunDir, RunEnd
from pipeline.tracking import Tracker, make_tracker

T = TypeVar("T")


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


class RankDuties:
    """What rank 0 does besides training, as no-ops: what every other rank gets (`train` builds
    MainProcessDuties where `accel.is_main_process`), so the loop calls them without asking."""

    def begin(self, step: int, saved: dict | None) -> None:
        """Before the first step; `saved`: the checkpoint's extra state, None on a fresh start."""

    def load_eval_clips(self) -> None:
        """The val clips every eval decodes."""

    def print_progress(self, step: int, metrics: dict) -> None:
        """One progress line for the job log."""

    def log(self, metrics: dict, step: int) -> None:
        """A step's metrics: metrics.jsonl and W&B."""

    def evaluate_and_report(self, model, step: int) -> dict:
        """Val metrics, reported everywhere; {} where no eval runs."""
        return {}

    def warn(self, text: str, record: dict) -> None:
        """A warning (health, rollback): job log, events.jsonl, ledger and a W&B alert."""

    def driver_requests(self) -> tuple[bool, bool]:
        """(cancel, grow): whether the driver asked the run to end for good (its job was stopped),
        and to restart a shrunk elastic run's worker group larger (capacity returned)."""
        return False, False

    def over_budget(self, step: int) -> str | None:
        """Why the run must stop for good now (budget.*), else None."""
        return None

    def checkpoint_extra(self) -> dict:
        """What the checkpoint keeps besides the training state (cost totals, W&B run id)."""
        return {}

    def rolled_back(self, saved: dict) -> None:
        """The loop went back to a checkpoint with this extra state."""

    def flush(self) -> None:
        """The run's logs to the store (s3 run dirs)."""

    def record_end(self, end: RunEnd, step: int, **fields) -> None:
        """How the loop ended: events.jsonl and its message."""

    def close(self, status: str, step: int) -> None:
        """The final cost to W&B, close it, and the ledger's last line."""


class MainProcessDuties(RankDuties):
    """Rank 0's duties: events.jsonl and metrics.jsonl, the printed progress and eval lines, evals,
    cancel polling, the cost ledger and budget (pipeline/cost.py) and W&B (pipeline/tracking.py;
    its no-op tracker when tracking is off)."""

    def __init__(self, cfg: Config, accel, run: RunDir, started: float):
        self.cfg, self.run, self.started = cfg, run, started
        self.workers, self.device = accel.num_processes, accel.device
        self.clips: list = []
        self._next_request_check = 0.0
        self.cost: CostTracker  # both made in begin
        self.tracker: Tracker

    def begin(self, step: int, saved: dict | None) -> None:
        """Continue the cost ledger and the W&B run of the checkpoint (`saved`), or start them."""
        if saved is None:
            self.run.events.append({"event": "start", "step": 0, "bitrate": self.cfg.model.bitrate()})
        else:
            self.run.events.append({"event": "resumed", "step": step})
            print(f"resumed {self.run.url} from step {step}", flush=True)
        saved = saved or {}
        self.cost = CostTracker(self.cfg, self.run, workers=self.workers, started=self.started)
        self.tracker = make_tracker(self.cfg, saved.get("wandb_run_id") or self.cost.ledger_value("wandb_run_id"))
        self.cost.begin(saved.get("cost"), step, wandb_run_id=self.tracker.run_id)
        if saved.get("world") not in (None, self.workers):
            self.resized(saved["world"], step)
        if problem := best_metric_problem(self.cfg):
            self.warn(problem, {"event": "warning", "step": step, "message": problem})

    def resized(self, before: int, step: int) -> None:
        """The worker group came back at another size (elastic training): say so everywhere."""
        why = "workers lost (a node vanished or was preempted)" if self.workers < before else "capacity returned"
        record = {"event": "resized", "step": step, "from": before, "to": self.workers, "why": why}
        print(f"resized from {before} to {self.workers} workers at step {step}: {why}; the global batch "
              f"stays {self.cfg.train.batch_size}", flush=True)
        self.run.events.append(record)
        self.cost.record("resized", step, **{k: record[k] for k in ("from", "to", "why")})
        self.tracker.alert(f"resized to {self.workers} workers at step {step}", why)

    def load_eval_clips(self) -> None:
        cfg = self.cfg
        self.clips = eval_clips(cfg.train.eval_url or cfg.data.url, cfg.train.eval_split, cfg.train.eval_clips,
                                int(cfg.train.eval_seconds * cfg.model.sample_rate))

    def print_progress(self, step: int, metrics: dict) -> None:
        print(progress_line(step, self.cfg.train.steps, metrics, self.cost.totals(), self.cfg.train.use_gpu),
              flush=True)

    def log(self, metrics: dict, step: int) -> None:
        """metrics.jsonl, and W&B with the running cost."""
        self.run.metrics.append({"step": step, **metrics})
        self.tracker.log({**metrics, **self.cost.metrics(step)}, step)

    def evaluate_and_report(self, model, step: int) -> dict:
        """Eval metrics to metrics.jsonl, W&B (with dollars per dB and audio samples), the ledger and the
        job log; a health warning for each problem."""
        ev = evaluate(model, self.clips, self.cfg, self.device)
        self.run.metrics.append({"step": step, **ev})
        self.tracker.log({**ev, **self.cost.evaluated(step, ev["val/snr"])}, step)
        self.tracker.log_samples(step, model, self.clips)
        perceptual = "".join(f", {label} {ev[key]:.2f}" for key, label in (("val/pesq", "PESQ-WB"), ("val/stoi", "STOI"))
                             if key in ev)
        print(f"step {step}: val SNR {ev['val/snr']:.2f} dB, SI-SDR {ev['val/si_sdr']:.2f} dB, "
              f"range ratio {ev['val/range_ratio']:.2f}, mel distance {ev['val/mel_distance']:.3f}{perceptual}",
              flush=True)
        for problem in health_problems(ev, step, self.cfg):
            self.warn(f"step {step}: {problem}", {"event": "health", "step": step, "problem": problem,
                                                  "val/snr": ev["val/snr"], "val/range_ratio": ev["val/range_ratio"]})
        return ev

    def warn(self, text: str, record: dict) -> None:
        print(f"WARNING {text}", flush=True)
        self.run.events.append(record)
        fields = {k: v for k, v in record.items() if k not in ("event", "step")}
        self.cost.record(record["event"], record["step"], **fields)
        self.tracker.alert(f"{record['event']} at step {record['step']}",
                           record.get("problem") or record.get("message", ""))

    def driver_requests(self) -> tuple[bool, bool]:
        """The driver's RunDir.request_cancel and request_grow; store lookups once per
        preempt.poll_seconds (a grow only while the group is below train.workers)."""
        if time.monotonic() < self._next_request_check:
            return False, False
        self._next_request_check = time.monotonic() + self.cfg.preempt.poll_seconds
        return self.run.cancel_requested(), self.workers < self.cfg.train.workers and self.run.grow_requested()

    def over_budget(self, step: int) -> str | None:
        return self.cost.over_budget(step)

    def checkpoint_extra(self) -> dict:
        return {"cost": self.cost.state(), "wandb_run_id": self.tracker.run_id}

    def rolled_back(self, saved: dict) -> None:
        if saved.get("cost"):  # the work since then is redone
            self.cost.rolled_back(saved["cost"])

    def flush(self) -> None:
        self.run.flush()

    def record_end(self, end: RunEnd, step: int, **fields) -> None:
        self.run.events.append({"event": end.event, "step": step, **fields})
        self.run.flush()
        if end.message:
            print(end.message.format(step=step, **fields), flush=True)

    def close(self, status: str, step: int) -> None:
        """The final cost to W&B, close it (crashed: exit code 1; stopped or regrow: preempted, the
        run goes on in the next worker group), and the ledger's last line (finished, preempted,
        regrowing, budget, cancelled, crashed)."""
        self.tracker.log(self.cost.metrics(step), step)
        self.tracker.finish(exit_code=1 if status == "crashed" else 0, preempted=bool(RUN_ENDS[status].restart_reason))
        self.cost.close(RUN_ENDS[status].event, step)


@dataclass
class State:
    model: torch.nn.Module
    opt_g: torch.optim.Optimizer
    disc: torch.nn.Module | None = None
    opt_d: torch.optim.Optimizer | None = None
    step: int = 0
    lr_scale: float = 1.0
    """Multiplier on the schedule; each non-finite rollback lowers it."""
    nonfinite_in_row: int = 0
    nonfinite_total: int = 0
    rollbacks: int = 0


@dataclass
class TrainResult:
    step: int
    status: str
    """finished, stopped (preemption notice: restart), budget or cancelled (job stopped: final)."""
    last_eval: dict = field(default_factory=dict)


def make_accelerator(cfg: Config):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs

    # Denormal floats (ELU's exp of large negatives, near-silent early outputs) are ~100x slower on
    # x86 CPUs: v1's tiny codec measured 0.2-17 s per step with them, 0.17 s flushed to zero.
    torch.set_flush_denormal(True)
    if cfg.train.use_gpu and torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True  # fixed crop shapes: the autotuned kernels are reused
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    precision = cfg.train.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and cfg.train.use_gpu else "no"
    # Our loader already gives each rank its own batches; nothing may re-dispatch them from rank 0.
    # No buffer broadcast: the quantizer all-reduces its EMA statistics itself, and DDP would copy
    # ~8 MB of codebooks from rank 0 every forward. Only v1's per-batch quantizer dropout leaves
    # weights without a gradient (the skipped levels' projections).
    ddp = DistributedDataParallelKwargs(broadcast_buffers=False, find_unused_parameters=unused_parameters(cfg))
    # torch 2.13 deprecates broadcast_buffers for forward_sync_buffers, which Accelerate cannot pass
    # yet; its False still means what we want (no sync at all: ranks start from the same weights or
    # checkpoint), so each worker group's start need not print a FutureWarning per rank.
    warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
    # Accelerate sets torch's threads to the machine's cores / ranks on it when OMP_NUM_THREADS is
    # unset, which can raise a count set lower on purpose (a Ray worker's train.cpus_per_worker, a
    # test's 1): keep the smaller. The thread count also decides how CPU kernels split their sums,
    # so a worker that takes over another's rows computes them bit for bit only with the same count.
    threads = torch.get_num_threads()
    accel = Accelerator(mixed_precision=precision, cpu=not cfg.train.use_gpu,
                        gradient_accumulation_steps=cfg.train.grad_accum, kwargs_handlers=[ddp],
                        dataloader_config=DataLoaderConfiguration(dispatch_batches=False, split_batches=False))
    torch.set_num_threads(min(threads, torch.get_num_threads()))
    return accel


def unused_parameters(cfg: Config) -> bool:
    """Whether a step can leave codec weights without a gradient (DDP must then look for them)."""
    return cfg.model.quantizer_dropout > 0 and cfg.model.quantizer_dropout_per == "batch"


def lr_factor(cfg: Config, step: int) -> float:
    """The schedule, as a fraction of train.lr: linear warm-up, then cosine decay to
    train.min_lr_ratio. A pure function of the step, so a checkpoint needs no scheduler state."""
    warm, total, floor = cfg.train.warmup_steps, max(cfg.train.steps, 1), cfg.train.min_lr_ratio
    if step < warm:
        return (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_state(cfg: Config, accel) -> State:
    torch.manual_seed(cfg.train.seed)
    model = Codec(cfg.model)
    betas = tuple(cfg.train.betas)
    hyper = {"lr": cfg.train.lr, "betas": betas, "weight_decay": cfg.train.weight_decay}
    opt_g = torch.optim.AdamW(model.parameters(), **hyper)
    disc = opt_d = None
    if cfg.loss.adversarial:
        disc = Discriminator(cfg.model)
        opt_d = torch.optim.AdamW(disc.parameters(), **hyper)  # not AdamW's default decay of 0.01
        model, opt_g, disc, opt_d = accel.prepare(model, opt_g, disc, opt_d)
    else:
        model, opt_g = accel.prepare(model, opt_g)
    if cfg.train.compile and accel.device.type == "cuda":
        compile_parts(accel.unwrap_model(model), accel.unwrap_model(disc) if disc is not None else None)
    return State(model=model, opt_g=opt_g, disc=disc, opt_d=opt_d)


def compile_parts(model: Codec, disc: Discriminator | None, **options) -> None:
    """torch.compile (with `options`) the encoder, decoder and each sub-discriminator in place (the
    state-dict keys stay); the quantizer stays eager (its data-dependent code re-seeding would break
    the graphs)."""
    model.encoder.compile(**options)
    model.decoder.compile(**options)
    for sub in disc.subs.values() if disc is not None else ():
        sub.compile(**options)


def count_flops(step: Callable[[], T]) -> tuple[float, T]:
    """(matmul/conv FLOPs as torch.utils.flop_counter counts them, what `step` returned) of one call
    of `step`, which runs eager. Under
    the counter dynamo will not run a compiled part, and torch 2.13 then marks the part's code as
    skipped for good: every later step would run it eager (a compiled run measured as an eager one).
    Forcing the compiler's stance to eager for the counted call keeps dynamo out of it, so the
    compiled code is used again afterwards."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.compiler.set_stance("force_eager"), FlopCounterMode(display=False) as counter:
        result = step()
    return float(counter.get_total_flops()), result


def set_lr(state: State, cfg: Config) -> None:
    """Both optimizers' learning rate for state.step: train.lr x the schedule x the rollback scale."""
    lr = cfg.train.lr * lr_factor(cfg, state.step) * state.lr_scale
    for opt in (state.opt_g, state.opt_d):
        if opt is not None:
            for group in opt.param_groups:
                group["lr"] = lr


def train_step(state: State, batch: torch.Tensor, accel, cfg: Config) -> dict:
    """One optimisation step on this rank's rows `batch` [B, 1, T]; returns its metrics: detached
    device tensors (the loss terms, grad norm, re-seeded codes) and plain numbers. It reads one
    value back from the device, whether the step was finite; everything else is read once per
    log_every (MetricWindow).

    Rows pass through the model in micro-batches of at most train.micro_batch (a worker of a shrunk
    elastic run holds more rows than at full size): gradients accumulate, and the discriminator's
    and the codebooks' updates are made once over all of them, so it is the step one pass makes."""
    set_lr(state, cfg)
    model, codec = state.model, accel.unwrap_model(state.model)
    quantizer = codec.quantizer
    # The step's random draws over the global batch: the same choices on any number of ranks.
    offset, total = global_rows(accel, cfg, batch.shape[0])
    draws = StepDraws.for_step(cfg.train.seed, state.step, offset, total)
    parts = micro_batches(batch.shape[0], micro_rows(cfg))
    # Ranks may hold one row more than others (a global batch over any number of ranks): weighting
    # each row by its share of the global batch makes DDP's average of gradients the global mean.
    rows_weight = accel.num_processes / cfg.train.batch_size if accel.num_processes > 1 else 1 / batch.shape[0]

    def forward(rows: slice):
        quantizer.draws = draws.shifted(rows.start)
        return model(batch[rows])

    metrics, terms, finite = {}, {}, None
    with accel.accumulate(model), accel.autocast():
        if not quantizer.ready:  # k-means over all of this rank's rows before the first micro-batch
            with torch.no_grad():
                quantizer.initialize([codec.latents(batch[rows]) for rows in parts], draws)
        quantizer.start_step()
        kept, adv = None, state.disc is not None and adversarial_active(cfg.loss, state.step)
        if adv:
            kept, d_terms = discriminator_step(state, accel, cfg, batch, parts, forward, rows_weight)
            metrics.update(d_terms)
        # The generator pass runs the bare discriminator, frozen: no gradient is computed for (or
        # all-reduced across) its weights only to be thrown away.
        with frozen(unwrap(accel, state.disc) if adv else None) as disc:
            for rows in parts:
                with synced_if(accel, model, rows.stop == batch.shape[0]):
                    out = kept if kept is not None else forward(rows)
                    g = generator_loss(out, batch[rows], cfg, disc=disc, step=state.step)
                    accel.backward(g.total * (rows.stop - rows.start) * rows_weight)
                add_weighted(terms, {"total": g.total, **g.terms}, (rows.stop - rows.start) / batch.shape[0])
                ok = torch.isfinite(g.total.detach())
                finite = ok if finite is None else finite & ok
        quantizer.draws = None  # this step's only: a later training-mode call outside train_step draws its own
        reseeded = quantizer.finish_step(batch.shape[0], draws)
        grad_norm = accel.clip_grad_norm_(model.parameters(), cfg.train.grad_clip) if accel.sync_gradients else None
        if grad_norm is not None:
            finite = finite & torch.isfinite(grad_norm)
        if bool(finite):  # the step's one host read
            state.opt_g.step()
            state.nonfinite_in_row = 0
        else:  # skip: an update from a NaN/Inf gradient would poison every weight
            state.nonfinite_in_row += 1
            state.nonfinite_total += 1
        state.opt_g.zero_grad(set_to_none=True)
    metrics.update({f"loss/{k}": v for k, v in terms.items()})
    metrics.update({"lr": state.opt_g.param_groups[0]["lr"],
                    # the global batch's mean square: the same at a step on any number of ranks
                    "data/mean_square": batch.detach().float().square().mean(),
                    "skipped": (~finite).float(), "n_quantizers": out.n_quantizers,
                    "bitrate": out.bitrate, "vq/reseeded": reseeded})
    if grad_norm is not None:
        metrics["grad_norm"] = grad_norm.detach()
    return metrics


def discriminator_step(state: State, accel, cfg: Config, batch: torch.Tensor, parts: list[slice],
                       forward, rows_weight: float):
    """The discriminator's update against the codec's output for the step's rows; returns (that
    output when the step is one pass, for the generator pass to reuse; else None) and its metrics.
    Over several micro-batches the codec runs here once more per micro-batch, without a graph and
    without touching the codebooks (the generator pass makes their update)."""
    kept, terms = None, {}
    for rows in parts:
        with synced_if(accel, state.disc, rows.stop == batch.shape[0]):
            if len(parts) == 1:
                kept = out = forward(rows)
            else:
                with torch.no_grad(), accel.unwrap_model(state.model).quantizer.replaying():
                    out = forward(rows)
            d = discriminator_loss(state.disc, batch[rows], out.audio, cfg.loss)
            accel.backward(d.total * (rows.stop - rows.start) * rows_weight)  # into empty grads (below)
        add_weighted(terms, d.terms, (rows.stop - rows.start) / batch.shape[0])
    accel.clip_grad_norm_(state.disc.parameters(), cfg.train.disc_grad_clip)
    state.opt_d.step()
    state.opt_d.zero_grad(set_to_none=True)  # and the generator pass adds none
    return kept, terms


def micro_rows(cfg: Config) -> int:
    """Most rows one pass through the model takes: train.micro_batch, or the rows a worker holds
    at train.workers."""
    return cfg.train.micro_batch or -(-cfg.train.batch_size // max(cfg.train.workers, 1))


def micro_batches(rows: int, most: int) -> list[slice]:
    """`rows` rows in as few contiguous micro-batches of at most `most` as can be, of even sizes."""
    bounds = np.linspace(0, rows, -(-rows // most) + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def synced_if(accel, model, last: bool):
    """DDP all-reduces gradients in the last micro-batch's backward only."""
    return contextlib.nullcontext() if last or model is None else accel.no_sync(model)


def add_weighted(sums: dict, terms: dict, weight: float) -> None:
    """sums[k] += weight x terms[k] (detached), for the step's micro-batches' metrics."""
    for k, v in terms.items():
        v = v.detach() * weight
        sums[k] = sums[k] + v if k in sums else v


@contextlib.contextmanager
def frozen(module: torch.nn.Module | None):
    """`module` with requires_grad off for the block (and back on after)."""
    if module is None:
        yield None
        return
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p in params:
            p.requires_grad_(True)


class MetricWindow:
    """Step metrics between two logged steps: tensors summed on the device, read back in one
    transfer when logged (as means over the window); plain numbers keep their last value.

    `read` (on every rank at the same steps) averages the ranks' sums weighted by `weight`, each
    rank's share of the global batch, so a logged loss is the global batch's, whatever the number of
    ranks; `peek` (a progress line, at any time) is this rank's alone."""

    def __init__(self, weight: float = 1.0):
        self.weight = weight
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.last: dict = {}

    def add(self, metrics: dict) -> None:
        for k, v in metrics.items():
            if isinstance(v, torch.Tensor):
                v = v.detach().float()
                self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
                self.counts[k] = self.counts.get(k, 0) + 1
            else:
                self.last[k] = v

    def peek(self, over_ranks: bool = False) -> dict:
        """The window's metrics so far as floats (one device read); "skipped" is the share of
        skipped steps."""
        keys = list(self.sums)
        values = []
        if keys:
            stacked = torch.stack([self.sums[k] for k in keys])
            if over_ranks:
                stacked = all_reduce_sum_(stacked * self.weight)
            values = stacked.tolist()
        return {**self.last, **{k: v / self.counts[k] for k, v in zip(keys, values)}}

    def read(self) -> dict:
        """The window's metrics over all ranks (a collective: every rank calls it at the same
        steps), and a fresh window."""
        out = self.peek(over_ranks=True)
        self.sums, self.counts, self.last = {}, {}, {}
        return out


def evaluate(model: Codec, clips: list[tuple[str, np.ndarray]], cfg: Config, device) -> dict:
    """Val metrics over clips: SNR, SI-SDR, range ratio, mel distance, PESQ-WB and STOI (over the
    clips they can score; absent when none), codebook perplexity. The model runs eager even where
    train.compile compiled its parts: every clip length would be a new shape to compile for."""
    rows, codes, pesq_scores, stoi_scores = [], [], [], []
    for _, audio in clips:
        with torch.compiler.set_stance("force_eager"):
            out = model.reconstruct(audio)
        x, y = torch.from_numpy(audio)[None, None], out.audio.float().cpu()
        rows.append([float(snr_db(x, y)[0]), float(si_sdr_db(x, y)[0]),
                     float(range_ratio(x, y)[0]), float(mel_distance(x, y, cfg.model.sample_rate)[0])])
        pesq_scores += pesq_wb(x, y, cfg.model.sample_rate)
        stoi_scores += stoi(x, y, cfg.model.sample_rate)
        codes.append(out.codes[0].cpu())
    snr, sisdr, rr, mel = np.mean(rows, axis=0)
    perp = codebook_perplexity(torch.cat(codes, dim=-1), cfg.model.codebook_size)
    metrics = {"val/snr": snr, "val/si_sdr": sisdr, "val/range_ratio": rr, "val/mel_distance": mel,
               "val/bitrate": model.bitrate(), "val/clips": len(clips)}
    for name, scores in (("pesq", pesq_scores), ("stoi", stoi_scores)):
        if (value := mean_score(scores)) is not None:
            metrics[f"val/{name}"] = value
    metrics.update({f"val/perplexity/{i}": float(p) for i, p in enumerate(perp)})
    return {k: float(v) for k, v in metrics.items()}


def best_metric_problem(cfg: Config) -> str | None:
    """Why evaluation cannot measure train.best_metric here (a perceptual score whose optional
    package is missing), or None. The run goes on, keeping no best checkpoint."""
    name = cfg.train.best_metric
    if name not in SCORERS:
        return None
    _, missing = scorer(name)
    return missing and (f"train.best_metric is {name}, but {missing}: val/{name} is not measured and no best "
                        f"checkpoint is kept (or set train.best_metric=mel_distance)")


def health_problems(ev: dict, step: int, cfg: Config) -> list[str]:
    """The old failure, made visible: a collapsed output range after warm-up, or a negative SNR
    before the adversarial stage (which trades SNR for sound on purpose: there it is no alarm)."""
    if step < cfg.train.warmup_steps:
        return []
    problems = []
    if ev["val/snr"] < 0 and not adversarial_active(cfg.loss, step):
        problems.append(f"val SNR is {ev['val/snr']:.2f} dB (< 0): the codec is worse than silence")
    if ev["val/range_ratio"] < 0.5:
        problems.append(f"output/input range ratio is {ev['val/range_ratio']:.2f} (< 0.5): outputs are "
                        "collapsing toward zero")
    return problems


# ------------------------------------------------------------------------------------- checkpoints
def global_rows(accel, cfg: Config, rows: int) -> tuple[int, int]:
    """(first row of this rank's batch in the global batch, rows in the global batch)."""
    if accel.num_processes == 1:
        return 0, rows
    return rank_rows(cfg.train.batch_size, accel.num_processes, accel.process_index).start, cfg.train.batch_size


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


def save_checkpoint(state: State, accel, cfg: Config, ckpts: Checkpoints, duties: RankDuties,
                    metrics: dict) -> None:
    """Rank 0 writes model and optimizer state (and duties.checkpoint_extra()), every rank its RNG;
    rank 0 commits once all are in."""
    step = state.step
    parts = {}
    rank_state = {"rng": rng_state(), "step": step}
    if cfg.train.debug_rank_digests:
        rank_state["params_sha256"] = params_digest(unwrap(accel, state.model))
    part = ckpts.save_part(step, f"rank{accel.process_index}", rank_state)
    if accel.is_main_process:
        train_state = {"step": step, "lr_scale": state.lr_scale, "nonfinite_total": state.nonfinite_total,
                       "rollbacks": state.rollbacks, "config": to_dict(cfg),
                       "world": accel.num_processes, "extra": duties.checkpoint_extra()}
        parts["model"] = ckpts.save_part(step, "model", unwrap(accel, state.model).state_dict())
        parts["optim"] = ckpts.save_part(step, "optim", {
            "opt_g": state.opt_g.state_dict(),
            "disc": unwrap(accel, state.disc).state_dict() if state.disc is not None else {},
            "opt_d": state.opt_d.state_dict() if state.opt_d is not None else {}})
        parts["train"] = ckpts.save_part(step, "train", train_state)
    parts.update(gather_parts(accel, f"rank{accel.process_index}", part))
    if accel.is_main_process:
        ckpts.commit(step, parts, meta={k: v for k, v in metrics.items() if k.startswith("val/")})
        best = f"val/{cfg.train.best_metric}"
        if best in metrics:
            ckpts.mark_best(step, best, metrics[best], higher_is_better=BEST_METRICS[cfg.train.best_metric])
        ckpts.prune(cfg.train.keep_checkpoints)
    accel.wait_for_everyone()


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


def load_optimizer(opt, opt_state: dict) -> None:
    """Moments and step from the checkpoint; lr, betas and weight decay stay the config's (a forced
    resume changes them, and the saved param groups would silently bring back the old)."""
    hyper = [{k: v for k, v in group.items() if k != "params"} for group in opt.param_groups]
    opt.load_state_dict(opt_state)
    for group, h in zip(opt.param_groups, hyper):
        group.update(h)


def load_checkpoint(state: State, accel, ckpts: Checkpoints, step: int) -> dict:
    """Load checkpoint `step` into `state`; returns its extra state (rank 0's cost totals, W&B run id)."""
    model = unwrap(accel, state.model)
    model.load_state_dict(ckpts.load(step, "model"))
    optim = ckpts.load(step, "optim")
    load_optimizer(state.opt_g, optim["opt_g"])
    if state.disc is not None and optim["disc"]:
        unwrap(accel, state.disc).load_state_dict(optim["disc"])
        load_optimizer(state.opt_d, optim["opt_d"])
    train_state = ckpts.load(step, "train")
    state.step, state.lr_scale = train_state["step"], train_state["lr_scale"]
    state.nonfinite_total, state.rollbacks = train_state["nonfinite_total"], train_state["rollbacks"]
    state.nonfinite_in_row = 0
    rank_part = f"rank{accel.process_index}"
    if ckpts.has_part(step, rank_part):  # training draws no longer depend on it (StepDraws); other users might
        set_rng_state(ckpts.load(step, rank_part)["rng"])
    return {**train_state.get("extra", {}), "world": train_state.get("world")}


# ------------------------------------------------------------------------------------- the loop
def train(cfg: Config, ctx: RunContext | None = None, accel=None) -> TrainResult:
    """Train until cfg.train.steps (resuming from run.dir); returns the final step and status."""
    ctx = ctx or RunContext()
    accel = accel or make_accelerator(cfg)
    run, ckpts = RunDir(cfg.run.dir), Checkpoints(cfg.run.dir)
    state = build_state(cfg, accel)
    duties = MainProcessDuties(cfg, accel, run, ctx.started) if accel.is_main_process else RankDuties()
    latest = ckpts.latest_step()
    saved = load_checkpoint(state, accel, ckpts, latest) if latest is not None else None
    duties.begin(state.step, saved)
    try:
        result = train_loop(state, accel, cfg, ctx, duties, ckpts)
    except BaseException:
        with contextlib.suppress(Exception):  # the ledger's last line; the original error is what matters
            duties.close("crashed", state.step)
        raise
    duties.close(result.status, result.step)
    return result


def train_loop(state: State, accel, cfg: Config, ctx: RunContext, duties: RankDuties,
               ckpts: Checkpoints) -> TrainResult:
    """Steps until cfg.train.steps, a stop notice or the budget, with the once-in-a-while blocks."""
    loader = crop_loader(cfg, accel.process_index, accel.num_processes, pin_memory=accel.device.type == "cuda")
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
                rolled_back = rollback(state, accel, ckpts, cfg, duties)
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
                save_checkpoint(state, accel, cfg, ckpts, duties, last_eval)
                ctx.after_checkpoint(state.step, last_eval, ckpts)
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


def rollback(state: State, accel, ckpts: Checkpoints, cfg: Config, duties: RankDuties) -> bool:
    """K non-finite steps in a row: reload the last checkpoint and lower the learning rate."""
    latest = ckpts.latest_step()
    bad_step, scale = state.step, state.lr_scale * cfg.train.rollback_lr_factor
    if latest is not None:
        duties.rolled_back(load_checkpoint(state, accel, ckpts, latest))
    state.lr_scale, state.rollbacks = scale, state.rollbacks + 1
    state.nonfinite_in_row = 0
    message = (f"{cfg.train.max_nonfinite} non-finite steps in a row at step {bad_step}: rolled back to "
               f"{'step ' + str(latest) if latest is not None else 'the start'} with LR x{scale:g}")
    duties.warn(message, {"event": "rollback", "step": bad_step, "to_step": latest, "lr_scale": scale,
                          "message": message})
    return True
