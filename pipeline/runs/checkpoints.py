"""Checkpoints on a store (local folder or s3://), never half-visible, loaded without pickle.

    ckpts = Checkpoints("s3://bucket/runs/r1")
    ckpts.save(step, {"model": ..., "rank0": ...}, meta={"val_snr": 3.1})   # parts, then manifest
    step = ckpts.latest_step()                                               # None for a new run
    state = ckpts.load(step, "model")

Layout under RUN/checkpoints/:
    step_00001200/<part>.pt        torch.save of tensors and plain data (weights_only-loadable)
    step_00001200/manifest.json    written last: size and sha256 of every part, meta
    latest.json, best.json         pointers; a pointer to a step without a whole manifest is ignored
A checkpoint counts only once its manifest is in place and every part matches it, so a save that
dies halfway is never loaded: `latest_step` falls back to the newest whole one.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.errors import TelucodecError
from pipeline.storage.store import Store, StoreError, open_store

_STEP_RE = re.compile(r"^step_(\d{8})/manifest\.json$")


class CheckpointError(TelucodecError, RuntimeError):
    """A checkpoint that is missing, incomplete or does not fit the model."""


def step_dir(step: int) -> str:
    return f"step_{step:08d}"


def to_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def from_bytes(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


class Checkpoints:
    def __init__(self, run_url: str | Store):
        run = open_store(run_url) if isinstance(run_url, str) else run_url
        self.store = run.sub("checkpoints")
        self.store.purpose = "checkpoints"

    def save_part(self, step: int, name: str, obj: Any) -> dict:
        """Write one part (any rank may write its own); returns its manifest entry."""
        data = to_bytes(obj)
        self.store.put(f"{step_dir(step)}/{name}.pt", data)
        return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    def commit(self, step: int, parts: dict[str, dict], meta: dict | None = None) -> None:
        """Make step whole: write its manifest (last), then point latest.json at it."""
        manifest = {"step": step, "parts": parts, "meta": meta or {},
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.store.put_text(f"{step_dir(step)}/manifest.json", json.dumps(manifest, indent=1))
        self.store.put_text("latest.json", json.dumps({"step": step}))

    def save(self, step: int, parts: dict[str, Any], meta: dict | None = None) -> None:
        """Save every part, then commit."""
        self.commit(step, {name: self.save_part(step, name, obj) for name, obj in parts.items()}, meta)

    def manifest(self, step: int) -> dict | None:
        try:
            return json.loads(self.store.get(f"{step_dir(step)}/manifest.json"))
        except (StoreError, ValueError):
            return None

    def is_whole(self, step: int) -> bool:
        manifest = self.manifest(step)
        if manifest is None:
            return False
        sizes = {o.key: o.size for o in self.store.list(step_dir(step) + "/")}
        return all(sizes.get(f"{step_dir(step)}/{name}.pt") == p["bytes"] for name, p in manifest["parts"].items())

    def steps(self) -> list[int]:
        """Steps that have a manifest, oldest first."""
        return sorted(int(m[1]) for o in self.store.list("step_") if (m := _STEP_RE.match(o.key)))

    def latest_step(self) -> int | None:
        """The newest whole checkpoint, or None."""
        try:
            pointed = json.loads(self.store.get("latest.json"))["step"]
            if self.is_whole(pointed) and pointed == max(self.steps(), default=pointed):
                return pointed
        except (StoreError, ValueError, KeyError):
            pass
        return next((s for s in reversed(self.steps()) if self.is_whole(s)), None)

    def load(self, step: int, name: str) -> Any:
        """Load one part, checking it against the manifest (weights_only: never arbitrary pickle)."""
        manifest = self.manifest(step)
        if manifest is None or name not in manifest["parts"]:
            raise CheckpointError(f"{self.store.join(step_dir(step))}: no whole checkpoint with part {name!r}")
        data = self.store.get(f"{step_dir(step)}/{name}.pt")
        if hashlib.sha256(data).hexdigest() != manifest["parts"][name]["sha256"]:
            raise CheckpointError(f"{self.store.join(step_dir(step))}/{name}.pt does not match its manifest")
        return from_bytes(data)

    def has_part(self, step: int, name: str) -> bool:
        manifest = self.manifest(step)
        return manifest is not None and name in manifest["parts"]

    def mark_best(self, step: int, metric: str, value: float, higher_is_better: bool = True) -> bool:
        """Record step as best if `value` beats the current best of the same `metric` (a best by
        another metric, from before a change of train.best_metric, is replaced)."""
        best = self.best()
        if best is not None and best.get("metric") == metric:
            if (best["value"] >= value) if higher_is_better else (best["value"] <= value):
                return False
        self.store.put_text("best.json", json.dumps({"step": step, "metric": metric, "value": value}))
        return True

    def best(self) -> dict | None:
        try:
            return json.loads(self.store.get("best.json"))
        except (StoreError, ValueError):
            return None

    def prune(self, keep_last: int) -> list[int]:
        """Delete all but the newest `keep_last` whole checkpoints and the best; returns what went."""
        steps = [s for s in self.steps() if self.is_whole(s)]
        best = (self.best() or {}).get("step")
        doomed = [s for s in steps[:-keep_last] if s != best] if keep_last > 0 else []
        for s in doomed:  # the manifest first, so a half-deleted step is no longer whole
            self.store.delete(f"{step_dir(s)}/manifest.json")
            self.store.delete_prefix(step_dir(s) + "/")
        return doomed


_STEP_DIR = re.compile(r"^(?P<run>.*?)/?checkpoints/step_(?P<step>\d{8})/?$")


@dataclass
class CheckpointRef:
    run_url: str
    """The run dir the checkpoint belongs to (metrics.jsonl lives there)."""
    step: int
    checkpoints: Checkpoints
    chosen_as: str
    """Why this step: 'named' (a step dir was given), 'best' or 'latest'."""


RUN_FOLDER_RULE = "a run folder means its best checkpoint (by train.best_metric), else its latest"
"""The one rule every command and the Python API follow (resolve_checkpoint)."""


def resolve_checkpoint(url: str) -> CheckpointRef:
    """A checkpoints/step_NNNNNNNN dir, or a run dir: its best whole checkpoint, else its latest
    (RUN_FOLDER_RULE) -> CheckpointRef."""
    url = str(url).rstrip("/")
    m = _STEP_DIR.match(url)
    run_url = m["run"] if m else url
    ckpts = Checkpoints(run_url)
    best = (ckpts.best() or {}).get("step") if not m else None
    if m:
        step, chosen_as = int(m["step"]), "named"
    elif best is not None and ckpts.is_whole(best):
        step, chosen_as = best, "best"
    else:
        step, chosen_as = ckpts.latest_step(), "latest"
    if step is None or not ckpts.is_whole(step):
        raise CheckpointError(f"{url}: no whole checkpoint there (give a run dir or a "
                              "checkpoints/step_NNNNNNNN dir)")
    return CheckpointRef(run_url, step, ckpts, chosen_as)
