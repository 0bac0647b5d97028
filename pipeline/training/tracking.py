"""Weights & Biases from rank 0, or nothing: the loop calls the same methods either way.

    tracker = make_tracker(cfg, run_id)             # WandbTracker, or the no-op Tracker when disabled
    tracker.log({"loss/total": 1.2, "cost/usd": 0.4}, step=100)
    tracker.log_samples(step, model, clips)         # at evals: input vs decoded audio and spectrograms
    tracker.alert("health at step 900", "val SNR is -3.1 dB")
    tracker.finish()

W&B runs offline (files only, no network) whenever WANDB_API_KEY is not set and WANDB_MODE does not
say otherwise. The run id is kept in every checkpoint, so a restarted worker group resumes the same
W&B run (resume="allow"); offline, each worker group writes its own offline-run-* folder with that id
(W&B's writer never appends to an existing .wandb file), and `sync_run(RUN)` uploads them as one run.
A worker group stopped by a preemption notice ends its segment marked preempting with exit code 143
(W&B's "preempted"), never a plain finish. The x-axis is our own `step` (a restart replays steps,
which W&B's internal step would refuse). The resolved config goes to W&B with any value that
contains a secret from the environment (a *KEY*, *SECRET*, *TOKEN* variable) redacted; the key
itself is never printed, logged or stored by us.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np

from pipeline.storage.audio import log_spectrogram
from pipeline.config import Config, RunConfig, to_dict
from pipeline.errors import TelucodecError
from pipeline.runs.rundir import cache_dir
from pipeline.storage.store import LocalStore, open_store

_SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.IGNORECASE)
PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM
"""A preempted segment's exit code: a SIGTERM's, as W&B's docs advise; with mark_preempting W&B
records the run as preempted, where exit code 0 would record it finished."""


class TrackingError(TelucodecError, RuntimeError):
    """A run's W&B files cannot be synced (none there, or `wandb sync` failed); one line for the CLI."""


class Tracker:
    """The no-op tracker: what runs with tracking.enabled=false get (other ranks have none: only
    rank 0's duties track)."""

    run_id: str | None = None

    def log(self, metrics: dict, step: int) -> None:
        pass

    def log_samples(self, step: int, model, clips: list[tuple[str, np.ndarray]]) -> None:
        pass

    def alert(self, title: str, text: str) -> None:
        pass

    def finish(self, exit_code: int = 0, preempted: bool = False) -> None:
        pass


class WandbTracker(Tracker):
    def __init__(self, cfg: Config, run_id: str | None):
        import wandb

        self.cfg = cfg
        folder = tracking_dir(cfg)
        folder.mkdir(parents=True, exist_ok=True)
        offline = not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE")
        run_id = run_id or cfg.tracking.run_id or uuid.uuid4().hex[:12]
        self.run = wandb.init(project=cfg.tracking.project, entity=cfg.tracking.entity or None,
                              name=run_name(cfg.run), id=run_id, resume="allow",
                              dir=str(folder), mode="offline" if offline else None,
                              config=redact_secrets(to_dict(cfg)),
                              settings=wandb.Settings(console="off", silent=True))
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        self.run_id = self.run.id

    def log(self, metrics: dict, step: int) -> None:
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.run.log({"step": step, **numbers})

    def log_samples(self, step: int, model, clips: list[tuple[str, np.ndarray]]) -> None:
        import wandb

        n, sr = self.cfg.tracking.audio_samples, self.cfg.model.sample_rate
        media = {}
        for i, (name, audio, decoded) in enumerate(decode_clips(model, clips[:n])):
            media[f"samples/{i}/input"] = wandb.Audio(audio, sample_rate=sr, caption=name)
            media[f"samples/{i}/decoded"] = wandb.Audio(np.clip(decoded, -1, 1), sample_rate=sr, caption=name)
            media[f"samples/{i}/spectrogram"] = wandb.Image(spectrogram_image([audio, decoded]),
                                                            caption=f"{name}: input (top), decoded (bottom)")
        if media:
            self.run.log({"step": step, **media})

    def alert(self, title: str, text: str) -> None:
        import wandb

        try:  # online, W&B rate-limits alerts; offline it is recorded in the run file
            self.run.alert(title=title, text=text, level=wandb.AlertLevel.WARN)
        except Exception as e:  # an alert must never stop training
            print(f"WARNING W&B alert failed: {e}", flush=True)

    def finish(self, exit_code: int = 0, preempted: bool = False) -> None:
        """Close the run; `preempted`: this worker group stopped on a notice and the run goes on in the next."""
        if preempted:
            self.run.mark_preempting()
            exit_code = exit_code or PREEMPTED_EXIT_CODE
        self.run.finish(exit_code=exit_code)


def make_tracker(cfg: Config, run_id: str | None = None) -> Tracker:
    """W&B when tracking.enabled (resuming `run_id` if given), else the no-op tracker."""
    if not cfg.tracking.enabled:
        return Tracker()
    try:
        return WandbTracker(cfg, run_id)
    except Exception as e:  # W&B down or misconfigured: train anyway, the ledger still has the cost
        print(f"WARNING W&B disabled for this run: {type(e).__name__}: {e}", flush=True)
        return Tracker()


def tracking_dir(cfg: Config) -> Path:
    """Where wandb/ goes: tracking.dir, else the run dir when local, else a cache folder per run."""
    return Path(cfg.tracking.dir).expanduser() if cfg.tracking.dir else default_tracking_dir(cfg.run.dir)


def default_tracking_dir(run_dir: str) -> Path:
    """A run's tracking dir when tracking.dir is '': the run dir when local, else this machine's cache
    folder for its URL."""
    store = open_store(run_dir)
    if isinstance(store, LocalStore):
        return store.root
    return cache_dir() / "wandb" / hashlib.sha256(store.url.encode()).hexdigest()[:16]


def sync_run(run: str, project: str = "", entity: str = "", dry_run: bool = False) -> list[Path]:
    """Upload `run`'s offline W&B folders (one per worker group) as one W&B run; returns them, oldest first.

    `run`: a run dir or s3:// URL (its W&B files are where its rank 0 wrote them: the run dir, or for an
    s3:// run that machine's cache), or a tracking.dir folder. All folders go to ONE `wandb sync`: it
    groups same-id folders, replays them oldest first and resumes the run for each later one, so a
    resumed segment's history goes on where the previous one ended (one call per folder, out of order,
    would replay them out of order). Folders synced before (a .synced mark) are skipped.
    """
    folder = default_tracking_dir(run).absolute()
    segments = sorted((folder / "wandb").glob("offline-run-*"))  # offline-run-<start time>-<id>: oldest first
    if not segments:
        raise TrackingError(f"{run}: no offline W&B run under {folder / 'wandb'} "
                            "(if its tracking.dir was set, give that folder)")
    flags = [*(["--project", project] if project else []), *(["--entity", entity] if entity else []),
             *(["--dry-run"] if dry_run else [])]
    # from the tracking dir: wandb sync's own debug logs go to its wandb/, beside the segments
    done = subprocess.run([sys.executable, "-m", "wandb", "sync", *flags, *map(str, segments)], cwd=folder)
    if done.returncode != 0:
        raise TrackingError(f"wandb sync of {folder / 'wandb'} exited with code {done.returncode}")
    return segments


def run_name(run: RunConfig) -> str:
    return run.name or run.dir.rstrip("/").rsplit("/", 1)[-1]


def redact_secrets(obj, secrets: list[str] | None = None):
    """`obj` (plain data) with every secret value from the environment replaced by <redacted>."""
    if secrets is None:
        secrets = [v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= 8]
    if isinstance(obj, dict):
        return {k: redact_secrets(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_secrets(v, secrets) for v in obj]
    if isinstance(obj, str):
        for s in secrets:
            obj = obj.replace(s, "<redacted>")
    return obj


def decode_clips(model, clips: list[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, input [T], decoded [T]) per clip, in eval mode (no EMA codebook updates)."""
    return [(name, audio, model.reconstruct(audio).audio[0, 0].float().cpu().numpy()) for name, audio in clips]


def spectrogram_image(signals: list[np.ndarray], n_fft: int = 512, hop: int = 128) -> np.ndarray:
    """Log-magnitude spectrograms of `signals` stacked top to bottom (low frequencies down), uint8."""
    rows = [log_spectrogram(x, n_fft, hop)[::-1] for x in signals]
    width = min(r.shape[1] for r in rows)
    img = np.concatenate([r[:, :width] for r in rows], axis=0)
    img = np.clip((img - (img.max() - 80.0)) / 80.0, 0.0, 1.0)  # an 80 dB range below the peak
    return (img * 255).astype(np.uint8)
