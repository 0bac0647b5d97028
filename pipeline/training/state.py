"""Training state: the model, optimizers and counters, built on an Accelerator, and saved to and
loaded from a run's checkpoints (model and optimizer from rank 0, every rank's RNG).

    accel = make_accelerator(cfg)
    state = build_state(cfg, accel)
    save_checkpoint(state, accel, cfg, ckpts, metrics, extra=duties.checkpoint_extra())
    extra = load_checkpoint(state, accel, ckpts, step)
"""

from __future__ import annotations

import hashlib
import random
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.codec.discriminator import Discriminator
from pipeline.codec.model import Codec
from pipeline.config import BEST_METRICS, Config, ModelConfig, TrainConfig, to_dict
from pipeline.runs.checkpoints import Checkpoints
from pipeline.training.loader import rank_rows


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


def make_accelerator(cfg: Config):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs

    # Denormal floats (ELU's exp of large negatives, near-silent early outputs) are ~100x slower on
    # x86 CPUs: v1.yaml's tiny codec measured 0.2-17 s per step with them, 0.17 s flushed to zero.
    torch.set_flush_denormal(True)
    if cfg.train.use_gpu and torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True  # fixed crop shapes: the autotuned kernels are reused
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    precision = cfg.train.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and cfg.train.use_gpu else "no"
    # Our loader already gives each rank its own batches; nothing may re-dispatch them from rank 0.
    # No buffer broadcast: the quantizer all-reduces its EMA statistics itself, and DDP would copy
    # ~8 MB of codebooks from rank 0 every forward. Only v1.yaml's per-batch quantizer dropout leaves
    # weights without a gradient (the skipped levels' projections).
    ddp = DistributedDataParallelKwargs(broadcast_buffers=False, find_unused_parameters=unused_parameters(cfg.model))
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


def unused_parameters(model: ModelConfig) -> bool:
    """Whether a step can leave codec weights without a gradient (DDP must then look for them)."""
    return model.quantizer_dropout > 0 and model.quantizer_dropout_per == "batch"


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


def global_rows(accel, train: TrainConfig, rows: int) -> tuple[int, int]:
    """(first row of this rank's batch in the global batch, rows in the global batch)."""
    if accel.num_processes == 1:
        return 0, rows
    return rank_rows(train.batch_size, accel.num_processes, accel.process_index).start, train.batch_size


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


def save_checkpoint(state: State, accel, cfg: Config, ckpts: Checkpoints, metrics: dict,
                    extra: dict | None = None) -> None:
    """Rank 0 writes model and optimizer state (with rank 0's `extra`: cost totals, W&B run id), every rank its RNG;
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
                       "world": accel.num_processes, "extra": extra or {}}
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
