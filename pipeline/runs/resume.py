"""Resume is explicit: a run dir's checkpoint is continued only with a config it can continue under.

    lines = check_resume(cfg, mode="auto")   # "changed on resume: train.steps 500 -> 2000", ...
    # raises ResumeError (one line) for a change that needs a new run.dir or `--resume force`

Each dotted key of the config has one rule in RESUME_RULES (the longest matching prefix wins):
harmless keys (length, cadence, eval, budget, tracking, where it runs) are accepted and reported;
forceable keys (optimisation, loss, data, batch shape) change training but not what the weights
are, so they are refused unless forced; `never` keys change the weights' shapes or meaning, so the
checkpoint cannot be continued under them at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pipeline.runs.checkpoints import CheckpointError, Checkpoints
from pipeline.config import Config, to_dict

HARMLESS, FORCEABLE, NEVER = "harmless", "forceable", "never"

RESUME_RULES: dict[str, str] = {
    "data.url": FORCEABLE,  # other audio: the data position and the model's fit no longer carry over
    "data.workers": HARMLESS,  # the batches do not depend on how many processes decode them
    "data.shuffle_samples": FORCEABLE,  # another crop order from here on
    "data.block_samples": FORCEABLE,  # another deal from here on
    "data.cache_dir": HARMLESS,  # where the same bytes are kept
    "data.cache_gb": HARMLESS,
    "data.loudness_db": FORCEABLE,
    "data.gain_db": FORCEABLE,
    "prep": HARMLESS,  # used by `prep` only; training reads what data.url holds
    "model.sample_rate": NEVER,
    "model.channels": NEVER,
    "model.decoder_channels": NEVER,
    "model.activation": NEVER,  # snake has its own weights
    "model.latent_dim": NEVER,
    "model.strides": NEVER,
    "model.dilations": NEVER,
    "model.kernel_size": NEVER,
    "model.final_tanh": NEVER,  # same weights, another function
    "model.n_codebooks": NEVER,
    "model.codebook_size": NEVER,
    "model.codebook_dim": NEVER,
    "model.quantizer_dropout": FORCEABLE,
    "model.quantizer_dropout_per": FORCEABLE,
    "model.quantizer_gradient": FORCEABLE,
    "model.ema_decay": FORCEABLE,
    "model.dead_code_ratio": FORCEABLE,
    "model.kmeans_init": HARMLESS,  # used only before the codebooks are initialised; a checkpoint is past that
    "model.kmeans_iters": HARMLESS,
    "model.disc_channels": NEVER,
    "model.disc_periods": NEVER,
    "model.disc_stft_windows": NEVER,
    "model.disc_stft_bands": NEVER,
    "loss": FORCEABLE,  # turning adversarial on starts a fresh discriminator, which works
    "train.steps": HARMLESS,  # the cosine schedule is stretched to the new length
    "train.batch_size": FORCEABLE,
    "train.segment_seconds": FORCEABLE,
    "train.lr": FORCEABLE,
    "train.betas": FORCEABLE,
    "train.weight_decay": FORCEABLE,
    "train.warmup_steps": FORCEABLE,
    "train.min_lr_ratio": FORCEABLE,
    "train.grad_clip": FORCEABLE,
    "train.disc_grad_clip": FORCEABLE,
    "train.grad_accum": FORCEABLE,
    "train.micro_batch": HARMLESS,  # the same step in one pass or several
    "train.mixed_precision": FORCEABLE,
    "train.seed": FORCEABLE,  # data order and crops from here on
    "train.log_every": HARMLESS,
    "train.progress_seconds": HARMLESS,
    "train.eval_every": HARMLESS,
    "train.eval_split": HARMLESS,
    "train.eval_url": HARMLESS,
    "train.eval_clips": HARMLESS,
    "train.eval_seconds": HARMLESS,
    "train.checkpoint_every": HARMLESS,
    "train.checkpoint_minutes": HARMLESS,
    "train.keep_checkpoints": HARMLESS,
    "train.best_metric": HARMLESS,  # the next eval that beats best.json's metric takes its place
    "train.max_nonfinite": HARMLESS,
    "train.health_alarm_step": HARMLESS,
    "train.rollback_lr_factor": HARMLESS,  # the rollbacks so far stay in the checkpoint's lr_scale
    # Another world size resumes exactly: weights and optimizer load on every rank, the global batch
    # at each step is the same on any number of ranks (each takes a block of its rows), and so is
    # every random draw of a step (quantize.StepDraws).
    "train.workers": HARMLESS,
    "train.min_workers": HARMLESS,  # elastic or not: the same optimisation at any size
    "train.resize_check_s": HARMLESS,
    "train.cpus_per_worker": HARMLESS,
    "train.max_failures": HARMLESS,
    "train.use_gpu": HARMLESS,
    "train.compile": HARMLESS,  # the same weights, compiled or not  # checkpoints load on the CPU and move to the device
    "train.debug_rank_digests": HARMLESS,
    "train.debug_worker_records": HARMLESS,
    "run": HARMLESS,  # the checkpoint was found in run.dir; a copied run keeps its old path inside
    "preempt": HARMLESS,
    "cost": HARMLESS,
    "budget": HARMLESS,
    "tracking": HARMLESS,  # a resumed run keeps its W&B run id from the checkpoint
}
"""How a change to each dotted key (or section) is treated when a run resumes."""


class ResumeError(CheckpointError):
    """A run dir's checkpoint that cannot be continued under the given config (or mode)."""


@dataclass(frozen=True)
class Change:
    key: str
    old: Any
    new: Any
    rule: str

    def __str__(self) -> str:
        return f"{self.key} {_show(self.old)} -> {_show(self.new)}"


def resume_rule(key: str) -> str | None:
    """The rule of dotted `key`: its own entry or its longest listed prefix (None if unlisted)."""
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        if (rule := RESUME_RULES.get(".".join(parts[:n]))) is not None:
            return rule
    return None


PREDATED = {"data.block_samples": 1}
"""Keys added since a checkpoint may have been saved whose default is not what such a run did:
the value that behaves as it did (one ranged read per sample)."""


def config_changes(saved: dict, cfg: Config) -> list[Change]:
    """Every leaf key whose value differs between a checkpoint's saved config and `cfg`."""
    # A key the checkpoint predates ran with its default, or as PREDATED says.
    old = {**_flatten(to_dict(Config())), **PREDATED, **_flatten(saved)}
    return [Change(key, old.get(key), value, resume_rule(key) or NEVER)
            for key, value in _flatten(to_dict(cfg)).items() if old.get(key) != value]


def check_resume(cfg: Config, mode: str = "auto") -> list[str]:
    """Whether cfg may continue the checkpoint in cfg.run.dir; returns the "changed on resume" lines.

    mode "auto" accepts harmless changes, "force" forceable ones too, "never" refuses any checkpoint.
    Raises ResumeError with one line naming each refused key (old -> new) and how to proceed.
    """
    if mode not in ("auto", "never", "force"):
        raise ValueError(f"resume mode must be auto, never or force, not {mode!r}")
    ckpts = Checkpoints(cfg.run.dir)
    step = ckpts.latest_step()
    if step is None:
        return []
    if mode == "never":
        raise ResumeError(f"{cfg.run.dir} already holds a run at step {step}: give a new run.dir, "
                          f"or --resume auto to continue it")
    changes = config_changes(ckpts.load(step, "train")["config"], cfg)
    allowed = (HARMLESS, FORCEABLE) if mode == "force" else (HARMLESS,)
    refused = [c for c in changes if c.rule not in allowed]
    if refused:
        named = ", ".join(map(str, refused))
        head = f"{cfg.run.dir} holds a run at step {step} trained with another config: {named}"
        never = [c.key for c in refused if c.rule == NEVER]
        if never:
            raise ResumeError(f"{head}; {', '.join(never)} cannot change in a trained run: "
                              f"give a new run.dir to start one")
        raise ResumeError(f"{head}; give a new run.dir to start a new run, or --resume force to "
                          f"continue this one with the new values")
    return [f"changed on resume: {c}" + (" (forced)" if c.rule == FORCEABLE else "") for c in changes]


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
