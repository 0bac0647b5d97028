"""A run's directory on a store: append-only JSONL records (metrics.jsonl, events.jsonl, ...).

    run = RunDir("s3://bucket/runs/r1")          # or a local folder
    run.metrics.append({"step": 10, "loss": 1.2})
    run.events.append({"event": "health", "val/snr": -3.0})
    run.flush()                                  # local: already on disk; s3: upload now

A cancel request (`request_cancel`, written by the driver when its job is stopped) is a small object
the training loop polls: the workers save a checkpoint and end the run as `cancelled`. The driver
turns its SIGTERM into one with `with cancel_on_sigterm(run_dir): ...`.

A local run dir is appended to directly (line by line, flushed). For s3:// the lines go to a local
mirror under ~/.cache/telucodec/ and the whole object is uploaded on `flush()` (at checkpoints and
evals), after first downloading what an earlier process left, so a resumed run keeps its history.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.storage.store import LocalStore, Store, StoreError, open_store


def cache_dir() -> Path:
    return Path(os.environ.get("TELUCODEC_CACHE", Path.home() / ".cache" / "telucodec"))


def local_time(epoch: float) -> str:
    """An epoch time as local ISO 8601 with its offset, to the second: 2026-12-06T10:15:02+05:30."""
    return datetime.datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


class JsonlLog:
    """One append-only JSONL object of a run."""

    def __init__(self, store: Store, name: str):
        self.store, self.name = store, name
        if isinstance(store, LocalStore):
            self.path, self.remote = store.root / name, False
        else:
            key = hashlib.sha256(store.join(name).encode()).hexdigest()[:16]
            self.path, self.remote = cache_dir() / "runs" / key / name, True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._synced = False

    def _sync_down(self) -> None:
        """Before the first append, take over the remote copy (another node may have written it)."""
        if self.remote and not self._synced:
            try:
                self.path.write_bytes(self.store.get(self.name))
            except StoreError:
                self.path.write_bytes(b"")
        self._synced = True

    def append(self, record: dict) -> None:
        """One JSON line; `time` (epoch seconds, for tools) defaults to now, `at` is the same moment as a
        local ISO time (for people)."""
        self._sync_down()
        when = record.get("time", round(time.time(), 3))
        record = {"time": when, "at": local_time(when), **{k: v for k, v in record.items() if k != "time"}}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False, default=float) + "\n")

    def flush(self) -> None:
        if self.remote and self._synced:
            self.store.put(self.name, self.path.read_bytes())

    def read(self) -> list[dict]:
        """Every record so far (from the store for remote runs, merged with unflushed local lines)."""
        if self.remote and not self._synced:
            try:
                text = self.store.get_text(self.name)
            except StoreError:
                return []
        else:
            text = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]


CANCEL_REQUEST = "control/cancel.json"
GROW_REQUEST = "control/grow.json"
CRASHES = "control/crashes/"
"""Each rank's record of each crash: step and error (RunDir.record_crash), under rankN/."""


@dataclass(frozen=True)
class RunEnd:
    """One way a worker group ends."""

    status: str
    """TrainResult.status, and the run's status in `telucodec runs`."""
    event: str
    """Its event: rank 0's line in events.jsonl and the ledger's last line."""
    message: str = ""
    """What rank 0 prints, formatted with the step and the event's fields."""
    in_events: bool = True
    """Written to events.jsonl; a crash is only the ledger's last line."""
    for_good: bool = False
    """The run chose to end: a later worker group resumes it (no gap billed), not a restart."""
    restart_reason: str = ""
    """Why the driver starts a new worker group after this end at once (empty: it does not)."""


RUN_ENDS = {end.status: end for end in (
    RunEnd("finished", "finished", for_good=True),
    RunEnd("stopped", "preempted", "stop requested: checkpoint at step {step} saved, exiting",
           restart_reason="preemption"),
    RunEnd("regrow", "regrowing", "capacity returned: checkpoint at step {step} saved, restarting with more workers",
           restart_reason="capacity returned"),
    RunEnd("budget", "budget", "budget reached ({reason}): checkpoint at step {step} saved, exiting", for_good=True),
    RunEnd("cancelled", "cancelled", "run cancelled: checkpoint at step {step} saved, exiting", for_good=True),
    RunEnd("crashed", "crashed", in_events=False),
    RunEnd("failed", "failed", "the same error at step {step} in two worker groups in a row, not retried: {error}",
           for_good=True),
)}
"""Every way a worker group ends, by status: the one table of run ends."""
RUN_END_BY_EVENT = {end.event: end for end in RUN_ENDS.values()}


class RunDir:
    def __init__(self, url: str | Store):
        self.store = open_store(url, "logs") if isinstance(url, str) else url
        self.url = self.store.url
        self.metrics = JsonlLog(self.store, "metrics.jsonl")
        self.events = JsonlLog(self.store, "events.jsonl")

    def log(self, name: str) -> JsonlLog:
        return JsonlLog(self.store, name)

    def flush(self) -> None:
        self.metrics.flush()
        self.events.flush()

    def last_end(self) -> tuple[str, int] | None:
        """(status, step) of the newest clean end in events.jsonl (RUN_ENDS), or None."""
        for event in reversed(self.events.read()):
            end = RUN_END_BY_EVENT.get(event["event"])
            if end is not None and end.in_events:
                return end.status, int(event["step"])
        return None

    def request_cancel(self, reason: str) -> None:
        """Ask the run's workers to save a checkpoint and end (they poll `cancel_requested`)."""
        self.store.put_text(CANCEL_REQUEST, json.dumps({"time": time.time(), "reason": reason}))

    def cancel_requested(self) -> bool:
        return self.store.exists(CANCEL_REQUEST)

    def request_grow(self, free_workers: int) -> None:
        """Ask a shrunk elastic run's workers to checkpoint and end, so that the driver starts a
        larger worker group from that step (they poll `grow_requested`)."""
        self.store.put_text(GROW_REQUEST, json.dumps({"time": time.time(), "free_workers": free_workers}))

    def grow_requested(self) -> bool:
        return self.store.exists(GROW_REQUEST)

    def clear_grow_request(self) -> None:
        if self.store.exists(GROW_REQUEST):
            self.store.delete(GROW_REQUEST)

    def record_crash(self, rank: int, step: int, error: str) -> None:
        """Rank `rank`'s training ended with `error` at `step` (a rank crashes at most once per group)."""
        self.store.put_text(f"{CRASHES}rank{rank}/{time.time():.6f}.json",
                            json.dumps({"time": time.time(), "rank": rank, "step": step, "error": error}))

    def repeated_crash(self) -> dict | None:
        """A rank's newest crash record when its crash before (in an earlier worker group) was at the
        same step with the same error: a deterministic failure that a restart only repeats. None else."""
        by_rank: dict[str, list[str]] = {}
        for o in self.store.list(CRASHES):
            by_rank.setdefault(o.key.rsplit("/", 1)[0], []).append(o.key)
        for keys in by_rank.values():
            records = [json.loads(self.store.get_text(key)) for key in sorted(keys)[-2:]]
            if len(records) == 2 and (records[0]["step"], records[0]["error"]) == (records[1]["step"], records[1]["error"]):
                return records[1]
        return None

    def clear_crashes(self) -> None:
        """A new driver starts: crashes of an earlier job (before a fix) must not end it."""
        self.store.delete_prefix(CRASHES)

    def clear_cancel_request(self) -> None:
        """A new driver starts: an old job's cancel request must not end it."""
        if self.store.exists(CANCEL_REQUEST):
            self.store.delete(CANCEL_REQUEST)


@contextlib.contextmanager
def cancel_on_sigterm(run_dir: str):
    """SIGTERM to the driver (`telucodec jobs stop`, `ray job stop`) becomes a cancel request the
    workers poll: they save a checkpoint and end the run as cancelled while the driver waits.
    A submitted job sets RAY_JOB_STOP_WAIT_TIME_S so Ray gives the driver that time. Used around
    in-process training too (train.workers=0), where the driver is the worker."""
    RunDir(run_dir).clear_cancel_request()  # a stopped job's request must not end this new driver
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum, frame):
        print("SIGTERM: asking the workers to save a checkpoint and stop", flush=True)
        RunDir(run_dir).request_cancel("SIGTERM to the driver")

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
