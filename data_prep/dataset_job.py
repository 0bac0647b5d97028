"""What every job that writes a dataset (prep, reshard) shares to finish it safely at a destination.

    records = RunRecords(store, PREP, fingerprint)
    if claim_destination(records, overwrite) == "done":       # "done", "resume" or "fresh"
        ...                                                    # this very dataset is already there
    records.put("train-000000.json", {...})                    # after each shard lands
    write_index(store, index); records.clear()                 # index.json last, then the records

A destination holds a finished dataset (index.json, written last), an unfinished run of one job (a
start record under the job's prefix naming the run's fingerprint, then a record per finished piece of
work), or nothing of ours. A re-run with the same fingerprint resumes from the records, keeping the
shards `pipeline.storage.shards.shard_matches` still finds as recorded; anything else is refused unless the
user asks to overwrite it. `ordered_map` (worker processes that may die without ending the run) and
`prefetched` (any executor) are the bounded look-ahead the jobs read through, `DatasetProgress` the
progress bar they share.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping

from pipeline.errors import TelucodecError
from pipeline.storage.shards import INDEX_NAME, DatasetError, DatasetIndex, load_index, parse_shard_name
from pipeline.storage.store import Store, StoreError


@dataclass(frozen=True)
class DatasetJob:
    """One kind of job that writes datasets: where it keeps its records and what it says when refusing."""
    records: str
    """Prefix of its run records at the destination, e.g. "_prep/"."""
    start_record: str
    """A run's first record (under `records`), naming the run's fingerprint, e.g. "plan.json"."""
    index_fingerprint: Callable[[DatasetIndex], str | None]
    """Where its index.json keeps the fingerprint of the dataset."""
    refusals: Mapping[str, str]
    """Its words, `{url}` filled in, for a destination holding another "dataset", an unfinished "run" of
    other sources or options, or "leftovers" (shards or its outputs with neither)."""
    error: type[TelucodecError]
    outputs: tuple[str, ...] = ()
    """Files it writes beside the shards and index.json."""
    overwrite_restarts: bool = False
    """Whether overwriting also starts this very dataset over (finished or not) instead of keeping it."""


class RunRecords:
    """One run's records at its destination: JSON objects under the job's prefix, the start record first."""

    def __init__(self, store: Store, job: DatasetJob, fingerprint: str):
        self.store, self.job, self.fingerprint = store, job, fingerprint

    @property
    def start_key(self) -> str:
        return self.job.records + self.job.start_record

    def started(self) -> str | None:
        """Fingerprint of the run the records at the destination belong to; None if unknown."""
        try:
            return json.loads(self.store.get(self.start_key))["fingerprint"]
        except (StoreError, ValueError, KeyError):
            return None

    def start(self, fields: Mapping | None = None) -> None:
        self.store.put_text(self.start_key, json.dumps({"fingerprint": self.fingerprint, **(fields or {})}))

    def put(self, name: str, record: dict) -> None:
        self.store.put_text(self.job.records + name, json.dumps(record))

    def get(self, name: str) -> dict:
        return json.loads(self.store.get(self.job.records + name))

    def names(self, under: str = "") -> list[str]:
        """Sorted names (below the prefix) of the records whose names start with `under`."""
        return sorted(o.key[len(self.job.records):] for o in self.store.list(self.job.records + under))

    def delete(self, name: str) -> None:
        self.store.delete(self.job.records + name)

    def clear(self) -> None:
        self.store.delete_prefix(self.job.records)


def claim_destination(records: RunRecords, overwrite: bool, start: Mapping | None = None) -> str:
    """"done" (this very dataset is there), "resume" (an unfinished run of it) or "fresh" (start record,
    with `start`, written); a destination holding anything else is refused unless `overwrite`, then
    cleared (as it is whenever overwriting restarts the job)."""
    store, job = records.store, records.job
    try:
        keys = [o.key for o in store.list()]
    except StoreError:
        raise
    except Exception as e:  # a missing bucket or a denied listing, in the S3 client's own words
        raise job.error(f"{store.url}: cannot list the destination ({e})") from None
    restart = overwrite and job.overwrite_restarts
    if INDEX_NAME in keys:
        if finished_fingerprint(store, job) == records.fingerprint and not restart:
            return "done"
        conflict = "dataset"
    elif records.start_key in keys:
        if records.started() == records.fingerprint and not restart:
            return "resume"
        conflict = "run"
    elif any(parse_shard_name(k) or k in job.outputs for k in keys):
        conflict = "leftovers"
    else:
        conflict = None
    if conflict and not overwrite:
        raise job.error(job.refusals[conflict].format(url=store.url))
    if conflict or restart:
        clear_dataset(store, job, keys)
    records.start(start)
    return "fresh"


def finished_fingerprint(store: Store, job: DatasetJob) -> str | None:
    try:
        return job.index_fingerprint(load_index(store))
    except DatasetError:  # not readable as ours: another dataset
        return None


def clear_dataset(store: Store, job: DatasetJob, keys: list[str]) -> None:
    """Delete index.json (first, so it stops being a dataset), then the shards, outputs and records."""
    store.delete(INDEX_NAME)
    for key in keys:
        if parse_shard_name(key) or key in job.outputs or key.startswith(job.records):
            store.delete(key)


# ---------------------------------------------------------------- bounded look-ahead
def prefetched(pool: Executor, fn: Callable, items: Iterable, ahead: int) -> Iterator[tuple]:
    """(item, fn(item)) in order, with up to `ahead` calls running in `pool` ahead of the consumer."""
    window: deque[tuple] = deque()
    try:
        for item in items:
            window.append((item, pool.submit(fn, item)))
            if len(window) >= ahead:
                item, fut = window.popleft()
                yield item, fut.result()
        while window:
            item, fut = window.popleft()
            yield item, fut.result()
    finally:
        for _, fut in window:
            fut.cancel()


def ordered_map(fn: Callable, jobs: Iterable, workers: int, on_death: Callable[[Any, str], Any]) -> Iterator:
    """fn over jobs in worker processes, results in job order, at most a few jobs ahead per worker.

    A worker that dies (the OOM killer, a crash inside a C decoder) breaks the whole pool and fails
    every job it held, not just its own. Rather than end the run, the jobs the dead worker may have
    been running are run again one at a time, each alone in a process: one that dies again is the
    culprit, and `on_death(job, how)` ("killed by signal 9 (SIGKILL), likely out of memory") stands
    in for its result; the innocent ones complete. A fresh pool takes the rest. `fn` runs in another
    process even with one worker, so no job can take the caller down with it.
    """
    workers = workers or os.cpu_count() or 1
    pool = SurvivingPool(fn, workers, on_death)
    window: deque[list] = deque()  # [job, future], in job order
    try:
        for job in jobs:
            window.append([job, pool.submit(job)])
            if len(window) >= 4 * workers:
                yield pool.pop_result(window)
        while window:
            yield pool.pop_result(window)
    finally:
        pool.close()


class SurvivingPool:
    """The process pool behind `ordered_map`: a spawn ProcessPoolExecutor, replaced when a worker
    dies, with the jobs it held settled as `ordered_map` tells."""

    def __init__(self, fn: Callable, workers: int, on_death: Callable[[Any, str], Any]):
        self.fn, self.workers, self.on_death = fn, workers, on_death
        self.pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn, not fork: the parent runs I/O threads (uploads) that a fork would copy mid-call
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, job: Any) -> Future:
        try:
            return self.pool.submit(self.fn, job)
        except BrokenProcessPool as e:  # it broke since the last result: settled with the others
            return _settled(error=e)

    def pop_result(self, window: deque) -> Any:
        """Result of the window's first job, which leaves the window; if the pool broke, every job
        in the window is settled first."""
        try:
            result = window[0][1].result()
        except BrokenProcessPool:
            self._recover(window)
            result = window[0][1].result()
        window.popleft()
        return result

    def _recover(self, window: deque) -> None:
        """Keep what finished, run the suspects alone, give the rest to a fresh pool.

        The pool starts jobs in order, so those running when it broke (one per worker at most) are
        the first of the failed ones; `workers + 1` of them are run alone, one for good measure. Were
        the culprit not among them, it would break the fresh pool and come back here, nearer the
        front; every recovery settles at least the window's first job, so the run moves on."""
        self.pool.shutdown(wait=True)  # from here on every future of the broken pool is settled
        failed = [entry for entry in window if isinstance(entry[1].exception(), BrokenProcessPool)]
        suspects, rest = failed[: self.workers + 1], failed[self.workers + 1:]
        for entry, done in zip(suspects, self._run_alone([job for job, _ in suspects])):
            entry[1] = done
        self.pool = self._new_pool()
        for entry in rest:
            entry[1] = self.submit(entry[0])

    def _run_alone(self, jobs: list) -> list[Future]:
        """Each job alone in a worker process of its own (kept until a job kills it): its result, or
        on_death's when the job kills that process too."""
        settled, solo = [], None
        try:
            for job in jobs:
                solo = solo or SoloWorker(self.fn)
                try:
                    settled.append(_settled(solo.run(job)))
                except WorkerDied as death:
                    solo = None
                    settled.append(_settled(self.on_death(job, str(death))))
                except Exception as e:  # fn's own error: raised where its result is read, as from the pool
                    settled.append(_settled(error=e))
        finally:
            if solo is not None:
                solo.close()
        return settled

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _settled(result: Any = None, error: BaseException | None = None) -> Future:
    future: Future = Future()
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
    return future


class WorkerDied(Exception):
    """A worker process ended without answering; the message says how."""


class SoloWorker:
    """One spawned process running `fn` on one job at a time; `run` raises WorkerDied, saying how
    the process ended (which a ProcessPoolExecutor does not tell), if the job kills it."""

    def __init__(self, fn: Callable):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve_jobs, args=(fn, child), daemon=True)
        self.process.start()
        child.close()

    def run(self, job: Any) -> Any:
        try:
            self.conn.send(job)
            ok, value = self.conn.recv()
        except (EOFError, OSError):  # the pipe's other end is gone: the process died
            self.process.join()
            self.conn.close()
            raise WorkerDied(death_reason(self.process.exitcode)) from None
        if not ok:
            raise value
        return value

    def close(self) -> None:
        self.conn.close()  # the worker reads end-of-file and returns
        self.process.join()


def _serve_jobs(fn: Callable, conn) -> None:
    """A SoloWorker's process: (True, fn(job)) or (False, the exception) for each job received."""
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        try:
            answer = (True, fn(job))
        except Exception as e:
            answer = (False, e)
        conn.send(answer)


def death_reason(exitcode: int | None) -> str:
    """How a process ended, in words: "killed by signal 9 (SIGKILL), likely out of memory"."""
    if exitcode is None or exitcode >= 0:
        return f"exited with status {exitcode}"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = "unknown signal"
    likely = ", likely out of memory" if -exitcode == signal.SIGKILL else ""
    return f"killed by signal {-exitcode} ({name}){likely}"


# ---------------------------------------------------------------- progress
class DatasetProgress:
    """A rich progress bar over a job's units (files, samples) whose `info` text tells the audio and
    shards written so far; thread-safe, silent when disabled. Subclasses pick the columns and the text."""

    def __init__(self, columns: list, enabled: bool, stderr: bool = False):
        from rich.console import Console
        from rich.progress import Progress

        self.bar = Progress(*columns, console=Console(stderr=True) if stderr else None, disable=not enabled)
        self.enabled = enabled
        self.task = None
        self.seconds, self.shards = 0.0, 0
        self.pending, self.shown = 0, 0.0
        """Units advanced but not yet given to the bar, and when it was last updated (monotonic)."""
        self.lock = threading.Lock()

    def start(self) -> None:
        self.bar.start()

    def stop(self) -> None:
        with self.lock:
            self._show()
        self.bar.stop()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def add_task(self, description: str, total: int):
        return self.bar.add_task(description, total=total, info="")

    def audio(self, seconds: float) -> None:
        """Count audio written; it shows at the next update."""
        with self.lock:
            self.seconds += seconds

    def advance(self, units: int, seconds: float = 0.0) -> None:
        """Count `units` done; the bar is updated at most every UPDATE_S (it redraws at 10 Hz anyway,
        and a reshard calls this once per sample)."""
        with self.lock:
            self.seconds += seconds
            self.pending += units
            if self.enabled and time.monotonic() - self.shown >= self.UPDATE_S:
                self._show()

    UPDATE_S = 0.1

    def shard_done(self) -> None:
        with self.lock:
            self.shards += 1
            self._show()

    def _show(self) -> None:
        """Give the bar the pending units and the info text (the caller holds the lock)."""
        if self.task is not None:
            self.bar.update(self.task, advance=self.pending, info=self.info())
            self.pending, self.shown = 0, time.monotonic()

    def info(self) -> str:
        raise NotImplementedError
