"""The running half of a reshard: claim the destination, stream the source through, make the planned
shards, check them and write index.json last.

    summary = reshard("s3://bucket/te", "/data/te-5s", ReshardOptions(segment_seconds=5.0))

`_Resharder` holds one run's stores, pools and settings and drives it: plan each split (scanning the
source first when re-cutting), keep what an interrupted run finished, make the other shards wave by
wave, check. `RunTally` is the one owner of what the run has done: its scan and done records (in memory
and under `_reshard/`), the counters the summary reports and the progress bar; the waves, scan threads
and upload threads report to it through its methods. A `_Wave` is one source pass: it routes every
output item bound for its shards to a `DestShard` (transfer.py), through the worker processes when
re-cutting or resampling (recut.py), and hands each full shard to an upload. A plain re-pack of a source
shard whose index entry records sample ranges copies each sample as its byte range, tar headers and
all (`RawSample`), parsing nothing but the key from the first header; without ranges it reads every
tar member and writes it again, to the same bytes.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Iterator

import numpy as np

from data_prep.dataset_job import DatasetJob, DatasetProgress, RunRecords, claim_destination, prefetched
from data_prep.reshard.check import check_split
from data_prep.reshard.plan import (ReshardError, ReshardOptions, SplitPlan, derived_keys, keys_digest,
                                    plan_split, reshard_fingerprint, select_splits, waves)
from data_prep.reshard.recut import recut_sample, scan_counts
from data_prep.reshard.transfer import (HELD_MAPPINGS_MAX, DestShard, Fetched, RawSample, Spill, Uploads, fetch_shard,
                                       ranged_samples)
from pipeline.storage.shards import (DatasetIndex, EncodedSample, ShardInfo, encoded_from_parts, index_sha256, iter_tar,
                             load_index, shard_matches, shard_name, write_index)
from pipeline.storage.store import Store, open_store

RESHARD = DatasetJob(
    records="_reshard/", start_record="run.json", error=ReshardError,
    index_fingerprint=lambda index: index.config.get("fingerprint"),
    refusals={"dataset": "{url} already holds a different dataset (index.json); pass --overwrite to replace it",
              "run": "{url} already holds an unfinished reshard with other options or of another source; "
                     "pass --overwrite to replace it",
              "leftovers": "{url} already holds shards without an index.json (an unfinished dataset); "
                           "pass --overwrite to replace it"})


@dataclass
class ReshardSummary:
    src_url: str
    dst_url: str
    splits: dict[str, dict]
    """Destination totals per split: shards, samples, seconds, bytes."""
    written_shards: int = 0
    kept_shards: int = 0
    """Shards an interrupted run had finished, checked and kept."""
    copied_ranges: int = 0
    """Samples copied as byte ranges (a plain re-pack of shards whose index entry records them); the
    others were parsed, or re-cut and resampled, and written again."""
    noop: bool = False
    """The destination already held this reshard; nothing was done."""
    bytes_read: int = 0
    bytes_written: int = 0
    elapsed_s: float = 0.0
    fingerprint: str = ""
    nodes: dict[str, float] = field(default_factory=dict)
    """On Ray: each node's share of the audio routed (node id -> fraction)."""


def reshard(src_url: str, dst_url: str, opts: ReshardOptions = ReshardOptions(), progress: bool = True,
            engine=None) -> ReshardSummary:
    """Copy the dataset at `src_url` to `dst_url` in a new shape; the source is never modified.
    `engine(src, dst, src_index, opts, ledger, progress)` makes the run (default: this machine's
    _Resharder; cluster.py's RayResharder fans it out, to the same bytes)."""
    started = time.monotonic()
    src, dst = open_store(src_url), open_store(dst_url)
    if src.url == dst.url:
        raise ReshardError(f"{dst.url}: destination is the source; reshard into another prefix")
    src_index = load_index(src)
    src_sha = index_sha256(src)
    splits = select_splits(src_index, opts.splits)
    content = opts.content(src_index.sample_rate)
    fingerprint = reshard_fingerprint(src_sha, content)
    ledger = Ledger(dst, RESHARD, fingerprint)
    if claim_destination(ledger, opts.overwrite, {"source": src.url}) == "done":
        ledger.clear()  # left over if a run stopped between index.json and this
        return ReshardSummary(src.url, dst.url, load_index(dst).splits, noop=True, fingerprint=fingerprint,
                              elapsed_s=time.monotonic() - started)
    with (engine or _Resharder)(src, dst, src_index, opts, ledger, progress) as job:
        infos = job.run(splits)
    index = DatasetIndex(shards=infos, sample_rate=job.rate_out,
                         config={"reshard": content, "fingerprint": fingerprint},
                         lineage={"source": src.url, "source_index_sha256": src_sha,
                                  "source_version": src_index.version, "source_lineage": src_index.lineage})
    write_index(dst, index)
    ledger.clear()
    tally = job.tally
    return ReshardSummary(src.url, dst.url, index.splits, written_shards=tally.written, kept_shards=tally.kept,
                          copied_ranges=tally.copied_ranges, bytes_read=tally.bytes_read,
                          bytes_written=sum(i.bytes for i in infos), elapsed_s=time.monotonic() - started,
                          fingerprint=fingerprint, nodes=job.node_shares())


# ---------------------------------------------------------------- what a run has done
class Ledger(RunRecords):
    """The `_reshard/` records at the destination: what a run leaves for the next one if it is cut short.

    run.json names the fingerprint; done/NAME.json holds each finished destination shard and the
    scans of the source shards a wave finished reading since the record before it (each source
    shard's keys digest); scan/NAME.json holds one source shard's scan where no done record took it
    (when re-cutting, every scan, with its samples' segment counts: made before any shard). Every
    record carries the run's fingerprint."""

    def load(self, kind: str, pool: ThreadPoolExecutor) -> dict[str, dict]:
        """Records of `kind` ("scan" or "done") with this run's fingerprint, by shard name."""
        names = [n for n in self.names(f"{kind}/") if n.endswith(".json")]
        return {r["name"]: r for r in pool.map(self.get, names) if r.get("fingerprint") == self.fingerprint}

    def save(self, kind: str, record: dict) -> None:
        record = {**record, "fingerprint": self.fingerprint}
        self.put(f"{kind}/{record['name']}.json", record)


class RunTally:
    """The one owner of what a run has done: its scan and done records (here and in the ledger), the
    counters the summary reports and the progress bar that shows them. Threads report to it through
    its methods, which are thread-safe; nothing else changes its fields."""

    def __init__(self, ledger: Ledger, progress: bool):
        self.ledger, self.progress = ledger, ReshardProgress(progress)
        self.lock = threading.Lock()
        self.scans: dict[str, dict] = {}
        """Scan records by source shard name: keys digest and, when re-cutting, segment counts."""
        self.done: dict[str, dict] = {}
        """Done records by destination shard name: its ShardInfo and keys digest."""
        self.unsaved: list[dict] = []
        """Scan records of a wave not in the ledger yet: the next done record takes them."""
        self.recorded: dict[str, dict] = {}
        """The done records an interrupted run left (this run's fingerprint), by shard name."""
        self.written = self.kept = self.bytes_read = self.copied_ranges = 0

    def start(self) -> None:
        self.progress.start()

    def stop(self) -> None:
        self.progress.stop()

    def resume(self, pool: ThreadPoolExecutor) -> None:
        """Take the scans an interrupted run of this reshard recorded, and its done records."""
        self.scans = self.ledger.load("scan", pool)
        self.recorded = self.ledger.load("done", pool)
        for record in self.recorded.values():
            for scan in record.get("scans", []):
                self.scans.setdefault(scan["name"], scan)

    def has_scan(self, name: str) -> bool:
        return name in self.scans

    def scanning(self, split: str, shards: int) -> None:
        self.progress.scanning(split, shards)

    def scanned(self, info: ShardInfo, keys: list[str], counts: list[int] | None, save: bool = True) -> None:
        """Record source shard `info`'s keys (and, when re-cutting, its samples' segment counts): in
        the ledger now if `save`, else with the next done record (or `save_scans`)."""
        record = {"name": info.name, "samples": info.samples, "keys_digest": f"{keys_digest(keys):032x}"}
        if counts is not None:
            record["counts"] = counts
        if save:
            self.ledger.save("scan", record)
        with self.lock:
            self.scans[info.name] = record
            if not save:
                self.unsaved.append(record)
        self.progress.scanned()

    def save_scans(self) -> None:
        """Put the scans no done record took in the ledger (a wave's end, its uploads done)."""
        with self.lock:
            unsaved, self.unsaved = self.unsaved, []
        for record in unsaved:
            self.ledger.save("scan", record)

    def begin(self, plans: list[SplitPlan], kept: dict[str, dict]) -> None:
        """Start on the planned shards, the `kept` done records of an interrupted run counted as done."""
        self.done, self.kept = kept, len(kept)
        self.progress.begin(sum(p.items for p in plans), sum(p.n_shards for p in plans), list(kept.values()))

    def has_shard(self, name: str) -> bool:
        return name in self.done

    def read(self, info: ShardInfo, ranges: int = 0) -> None:
        """Source shard `info` went through (on Ray, with `ranges` of its samples copied as byte ranges)."""
        with self.lock:
            self.bytes_read += info.bytes
            self.copied_ranges += ranges

    def placed(self, sample: EncodedSample | RawSample) -> None:
        """An output item went to its destination shard (called by the router thread only)."""
        self.copied_ranges += isinstance(sample, RawSample)
        self.progress.advance(1, sample.seconds)

    def shard_written(self, info: ShardInfo, digest: int, placed: bool = False) -> None:
        """Destination shard `info`, of keys digest `digest`, is in the store: record it (and, if
        `placed`, count its samples as placed: on Ray, where nothing is placed here)."""
        if placed:
            self.progress.advance(info.samples, info.seconds)
        record = {"name": info.name, "info": asdict(info), "keys_digest": f"{digest:032x}"}
        with self.lock:
            scans, self.unsaved = self.unsaved, []
        if scans:  # one write for these too, not one per source shard (on S3, a PUT each on the router thread)
            record["scans"] = scans
        self.ledger.save("done", record)
        with self.lock:
            self.done[info.name] = record
            self.written += 1
        self.progress.shard_done()

    def shards(self, plans: list[SplitPlan]) -> list[ShardInfo]:
        """Every planned destination shard, in order (all of them done)."""
        return [ShardInfo.from_record(self.done[shard_name(p.split, j)]["info"]) for p in plans for j in range(p.n_shards)]


class ReshardProgress(DatasetProgress):
    """A rich progress bar on stderr: samples, hours and shards, after a scan bar per split when re-cutting."""

    def __init__(self, enabled: bool):
        from rich.progress import (BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        super().__init__([TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn()],
                         enabled, stderr=True)
        self.scan_task = None
        self.total_shards = 0

    def scanning(self, split: str, total: int) -> None:
        if total:
            self.scan_task = self.add_task(f"scan {split} shards", total)

    def scanned(self) -> None:
        if self.scan_task is not None:  # a plain copy records its scans as it goes, with no scan bar
            self.bar.advance(self.scan_task)

    def begin(self, samples: int, shards: int, kept: list[dict]) -> None:
        self.total_shards = shards
        self.task = self.add_task("samples", samples)
        for record in kept:
            self.advance(record["info"]["samples"], record["info"]["seconds"])
            self.shard_done()

    def info(self) -> str:
        return f"{self.seconds / 3600:.2f} h  {self.shards}/{self.total_shards} shards"


# ---------------------------------------------------------------- the run
def check_sample_count(store: Store, info: ShardInfo, samples: int) -> None:
    """Raise unless source shard `info` held as many samples as the source index says."""
    if samples != info.samples:
        raise ReshardError(f"{store.join(info.name)}: {samples} samples, the source index says {info.samples}")


def exit_with_parent(parent: int) -> None:
    """Worker initializer: leave once the parent is gone, so a killed reshard leaves no workers behind."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def scan_shard(src: Store, info: ShardInfo, rate_out: int, segment_seconds: float | None,
               tmp_dir: str | None) -> tuple[list[str], list[int]]:
    """A re-cut's scan of source shard `info`: (its output keys, each sample's output item count)."""
    with fetch_shard(src, info, tmp_dir) as fetched:
        counts, keys = [], []
        for key, parts in iter_tar(fetched.file):
            counts.append(scan_counts(parts, rate_out, segment_seconds))
            keys += derived_keys(key, counts[-1], True)
    check_sample_count(src, info, len(counts))
    return keys, counts


class _Resharder:
    """One reshard run's stores, pools and settings. `run` plans every split, makes the destination shards
    an interrupted run did not finish, wave by wave, checks them and returns them all; `tally` owns what
    the run has done."""

    def __init__(self, src: Store, dst: Store, src_index: DatasetIndex, opts: ReshardOptions, ledger: Ledger,
                 progress: bool):
        self.src, self.dst, self.src_index, self.opts, self.ledger = src, dst, src_index, opts, ledger
        self.rate_out = opts.sample_rate or src_index.sample_rate
        self.recut = opts.segment_seconds is not None
        self.resampled = self.rate_out != src_index.sample_rate
        self.transform = self.recut or self.resampled
        self.workers = opts.workers or os.cpu_count() or 1
        self.io = ThreadPoolExecutor(opts.io_threads, thread_name_prefix="reshard-io")
        self._cpu: ProcessPoolExecutor | None = None
        self.tally = RunTally(ledger, progress)
        self.uploads = Uploads(self.io, opts.io_threads)
        self.fetch_ahead = max(2, opts.io_threads // 2)
        """Source shards fetched ahead of the router (each on local disk while it waits)."""

    def __enter__(self):
        self.tally.start()
        return self

    def __exit__(self, *_):
        self.tally.stop()
        self.io.shutdown(wait=True, cancel_futures=True)
        if self._cpu is not None:
            self._cpu.shutdown(wait=True, cancel_futures=True)

    @property
    def cpu(self) -> ProcessPoolExecutor:
        """The worker processes that re-cut and resample, started on first use."""
        if self._cpu is None:  # spawn, not fork: this process already runs boto3 and I/O threads
            self._cpu = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=exit_with_parent, initargs=(os.getpid(),))
        return self._cpu

    def run(self, splits: list[str]) -> list[ShardInfo]:
        self.tally.resume(self.io)
        plans = [self.plan(split) for split in splits]
        self.tally.begin(plans, self.keep_finished(plans))
        for plan in plans:
            todo = [j for j in range(plan.n_shards) if not self.tally.has_shard(shard_name(plan.split, j))]
            for wave in waves(plan, todo, self.opts, self.spill_scale):
                self.make(plan, set(wave))
        for plan in plans:
            check_split(plan, self.tally.done, self.tally.scans, self.rate_out, self.resampled)
        return self.tally.shards(plans)

    spill_scale = 1
    """Machines whose local disks a shuffled wave spills to."""

    def node_shares(self) -> dict[str, float]:
        return {}

    def make(self, plan: SplitPlan, shards: set[int]) -> None:
        """Make destination `shards` of `plan` in one source pass."""
        _Wave(self, plan, shards).run()

    def plan(self, split: str) -> SplitPlan:
        sources = self.src_index.split_shards(split)
        counts = None
        if self.recut:  # segment counts need every sample's length: scan what an earlier run did not
            missing = [s for s in sources if not self.tally.has_scan(s.name)]
            self.tally.scanning(split, len(missing))
            self.scan(missing)
            counts = [np.asarray(self.tally.scans[s.name]["counts"], np.int64) for s in sources]
        return plan_split(split, sources, self.opts, self.rate_out / self.src_index.sample_rate, counts)

    def scan(self, infos: list[ShardInfo]) -> None:
        """Scan source shards `infos` for a re-cut, each reported to the tally."""
        scan = partial(scan_shard, self.src, rate_out=self.rate_out, segment_seconds=self.opts.segment_seconds,
                       tmp_dir=self.opts.tmp_dir)
        for info, (keys, counts) in prefetched(self.io, scan, infos, self.opts.io_threads):
            self.tally.scanned(info, keys, counts)

    def keep_finished(self, plans: list[SplitPlan]) -> dict[str, dict]:
        """Done records of an interrupted run whose shard is still there with the same digest."""
        planned = {shard_name(p.split, j): p.shard_samples(j) for p in plans for j in range(p.n_shards)}
        records = [r for name, r in self.tally.recorded.items() if planned.get(name) == r["info"]["samples"]]
        return {r["name"]: r for r, ok in zip(records, self.intact([r["info"] for r in records])) if ok}

    def intact(self, infos: list[dict]) -> list[bool]:
        """Whether each recorded destination shard (ShardInfo records) is in the store as recorded."""
        return list(self.io.map(lambda info: shard_matches(self.dst, ShardInfo.from_record(info)), infos))


@dataclass
class Routed:
    """A source sample bound for a wave: which of its `count` output items the wave wants, and where
    each of them goes."""
    key: str
    sample: dict[str, bytes] | RawSample
    """Its tar members by extension, or (a plain re-pack of a shard with sample ranges) its byte range."""
    count: int
    wanted: list[int]
    """Indices of the wanted items among the sample's `count`."""
    targets: list[tuple[int, int]]
    """(destination position, destination shard) of each wanted item."""


def recut_routed(item: Routed, rate_out: int, segment_seconds: float | None) -> list[EncodedSample]:
    """The wanted output items of a routed sample, re-cut and resampled (in a worker process)."""
    return recut_sample(item.key, item.sample, rate_out, segment_seconds, item.count, item.wanted)


def repacked(item: Routed) -> EncodedSample | RawSample:
    """A routed sample of a plain re-pack, ready to be written again byte for byte."""
    return item.sample if isinstance(item.sample, RawSample) else encoded_from_parts(item.key, item.sample)


class _Wave:
    """One pass over the source for a set of destination shards: route each output item bound for
    them to its shard, and put every shard to the store as soon as its last item is in."""

    def __init__(self, job: _Resharder, plan: SplitPlan, shards: set[int]):
        self.job, self.plan, self.shards, self.tally = job, plan, shards, job.tally
        self.builders: dict[int, DestShard] = {}
        self.spill = Spill(job.opts.tmp_dir, len(plan.sources) <= HELD_MAPPINGS_MAX) if job.opts.shuffle else None

    def run(self) -> None:
        job = self.job
        try:
            for item, samples in self.made(self.routed()):
                for target, sample in zip(item.targets, samples):
                    self.place(target, sample)
            if self.builders:
                raise ReshardError(f"{self.plan.split}: shards {sorted(self.builders)} did not fill up "
                                   "(the source changed?)")
            job.uploads.wait()
            self.tally.save_scans()
        finally:
            for builder in self.builders.values():
                builder.abort()
            if self.spill is not None:
                job.uploads.wait(check=False)  # the spill must outlive the uploads reading it
                self.spill.close()

    def routed(self) -> Iterator[Routed]:
        """The samples of every source shard this wave needs (or has yet to scan) bound for it, in order."""
        job, plan = self.job, self.plan
        needed = [s for s in range(len(plan.sources)) if not self.tally.has_scan(plan.sources[s].name)
                  or np.isin(plan.destinations(s)[1], list(self.shards)).any()]

        def fetch(s: int) -> Fetched:
            return fetch_shard(job.src, plan.sources[s], job.opts.tmp_dir)

        for s, fetched in prefetched(job.io, fetch, needed, job.fetch_ahead):
            with fetched:
                yield from self.route_shard(s, fetched)
            self.tally.read(plan.sources[s])

    def route_shard(self, s: int, fetched: Fetched) -> Iterator[Routed]:
        """The samples of source shard `s` with an output item bound for this wave; records its scan."""
        info = self.plan.sources[s]
        positions, dests = (a.tolist() for a in self.plan.destinations(s))  # Python ints: read per sample
        counts = self.plan.item_counts(s)
        starts = np.concatenate([[0], np.cumsum(counts)]).tolist()
        counts, shards, keys = counts.tolist(), self.shards, []
        for g, (key, sample) in enumerate(self.source_samples(info, fetched)):
            keys.append(key)
            if g >= len(counts):
                break  # more samples than the index says: reported below
            first = starts[g]
            wanted = [i for i in range(first, starts[g + 1]) if dests[i] in shards]
            if wanted:
                yield Routed(key, sample, counts[g], [i - first for i in wanted], [(positions[i], dests[i]) for i in wanted])
        check_sample_count(self.job.src, info, len(keys))
        if not self.tally.has_scan(info.name):
            self.tally.scanned(info, keys, None, save=False)

    def source_samples(self, info: ShardInfo, fetched: Fetched
                       ) -> Iterator[tuple[str, dict[str, bytes] | RawSample]]:
        """(key, sample) of fetched source shard `info`, in tar order: as byte ranges when a plain re-pack
        can copy them (its index entry records them), else as parsed tar members."""
        if self.job.transform or info.sample_ranges is None:
            return iter_tar(fetched.file)
        return ((sample.key, sample) for sample in ranged_samples(fetched, info, self.job.src_index.sample_rate))

    def made(self, routed: Iterator[Routed]) -> Iterator[tuple[Routed, list[EncodedSample | RawSample]]]:
        """Each routed sample with its wanted output items, in order: re-cut or resampled in the worker
        processes, a few samples ahead of the placing; else its bytes as they are."""
        job = self.job
        if not job.transform:
            return ((item, [repacked(item)]) for item in routed)
        recut = partial(recut_routed, rate_out=job.rate_out, segment_seconds=job.opts.segment_seconds)
        ahead = 4 * job.workers + 1  # the oldest result is placed once more than 4 per worker are pending
        return prefetched(job.cpu, recut, routed, ahead)

    def place(self, target: tuple[int, int], sample: EncodedSample | RawSample) -> None:
        """Add `sample` at destination (position, shard); hand the shard to an upload once it is full."""
        position, j = target
        if j not in self.builders:
            self.builders[j] = DestShard(self.job.dst, self.plan, j, self.spill)
        builder = self.builders[j]
        builder.add(position, sample)
        self.tally.placed(sample)
        if builder.complete:
            del self.builders[j]
            if self.spill is not None:
                self.spill.flush()
            self.job.uploads.submit(lambda: self.tally.shard_written(builder.finish(), builder.digest))
