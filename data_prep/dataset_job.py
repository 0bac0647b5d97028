"""What every job that writes a dataset (prep, reshard) shares to finish it safely at a destination.

    records = RunRecords(store, PREP, fingerprint)
    if claim_destination(records, overwrite) == "done":       # "done", "resume" or "fresh"
        ...                                                    # this very dataset is already there
    records.put("train-000000.json", {...})                    # after each shard lands
    write_index(store, index); records.clear()                 # index.json last, then the records

A destination holds a finished dataset (index.json, written last), an unfinished run of one job (a
start record under the job's prefix naming the run's fingerprint, then a record per finished piece of
work), or nothing of ours. A re-run with the same fingerprint resumes from the records, keeping the
shards `pipeline.shards.shard_matches` still finds as recorded; anything else is refused unless the
user asks to overwrite it. `ordered_map` and `prefetched` are the bounded look-ahead the jobs read
through, `DatasetProgress` the progress bar they share.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
from collections import deque
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping

from pipeline.errors import TelucodecError
from pipeline.shards import INDEX_NAME, DatasetError, DatasetIndex, load_index, parse_shard_name
from pipeline.store import Store, StoreError


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


def ordered_map(fn: Callable, jobs: list, workers: int) -> Iterator:
    """fn over jobs in a process pool, results in job order, at most a few jobs ahead per worker."""
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(jobs) <= 1:
        yield from map(fn, jobs)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for _, result in prefetched(pool, fn, jobs, 4 * workers):
            yield result


# ---------------------------------------------------------------- progress
class DatasetProgress:
    """A rich progress bar over a job's units (files, samples) whose `info` text tells the audio and
    shards written so far; thread-safe, silent when disabled. Subclasses pick the columns and the text."""

    def __init__(self, columns: list, enabled: bool, stderr: bool = False):
        from rich.console import Console
        from rich.progress import Progress

        self.bar = Progress(*columns, console=Console(stderr=True) if stderr else None, disable=not enabled)
        self.task = None
        self.seconds, self.shards = 0.0, 0
        self.lock = threading.Lock()

    def start(self) -> None:
        self.bar.start()

    def stop(self) -> None:
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
        with self.lock:
            self.seconds += seconds
            self.bar.update(self.task, advance=units, info=self.info())

    def shard_done(self) -> None:
        with self.lock:
            self.shards += 1
            self.bar.update(self.task, info=self.info())

    def info(self) -> str:
        raise NotImplementedError
