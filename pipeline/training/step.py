"""One optimisation step: `train_step(state, batch, accel, cfg)`, its learning-rate schedule and
micro-batches, and the window that averages step metrics between logged steps.

Rows pass through the model in micro-batches; the step's random draws are those of the global batch,
so a step is the same on any number of ranks (docs/design.md, "Elastic determinism").
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from pipeline.codec.losses import adversarial_active, discriminator_loss, generator_loss
from pipeline.codec.quantizer import StepDraws, all_reduce_sum_
from pipeline.config import Config, TrainConfig
from pipeline.training.state import State, global_rows, unwrap


def lr_factor(train: TrainConfig, step: int) -> float:
    """The schedule, as a fraction of train.lr: linear warm-up, then cosine decay to
    train.min_lr_ratio. A pure function of the step, so a checkpoint needs no scheduler state."""
    warm, total, floor = train.warmup_steps, max(train.steps, 1), train.min_lr_ratio
    if step < warm:
        return (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(state: State, cfg: Config) -> None:
    """Both optimizers' learning rate for state.step: train.lr x the schedule x the rollback scale."""
    lr = cfg.train.lr * lr_factor(cfg.train, state.step) * state.lr_scale
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
    offset, total = global_rows(accel, cfg.train, batch.shape[0])
    draws = StepDraws.for_step(cfg.train.seed, state.step, offset, total)
    parts = micro_batches(batch.shape[0], micro_rows(cfg.train))
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


def micro_rows(train: TrainConfig) -> int:
    """Most rows one pass through the model takes: train.micro_batch, or the rows a worker holds
    at train.workers."""
    return train.micro_batch or -(-train.batch_size // max(train.workers, 1))


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
