"""Reshard a dataset store to store: new shard sizes, balanced for N ranks, shuffled, re-cut or resampled.

    telucodec reshard s3://bucket/te s3://bucket/te-r8 --shard-mb 256 --ranks 8 --shuffle --seed 1
    summary = reshard("s3://bucket/te", "/data/te-5s", ReshardOptions(segment_seconds=5.0))

The destination is planned before any audio moves. Every output item (a source sample, or one segment
of it when re-cutting) gets a destination position: its place in source order, or a seeded permutation
with `shuffle`. Each split's positions are cut into K shards whose sample counts differ by at most one,
K a multiple of `ranks`. Re-cutting needs each sample's length, so it first scans the source once.

Source shards then stream through, a few fetched ahead by threads; a plain re-pack copies each sample's
FLAC and JSON bytes as they are, a re-cut or resample decodes and encodes in worker processes. In
source order a destination shard fills front to back and goes up (in an upload thread) as soon as it is
full. Shuffled, items are appended to a local spill file and each shard is written in position order
once its last item is in; shuffled shards are made in waves that fit `spill_gb` of local disk, one
source pass per wave. Memory holds a few samples and offsets; disk holds a few shards and one wave's
spill, however large the dataset.

The source is only read. Each finished destination shard leaves a record under `_reshard/` at the
destination; a re-run of the same command keeps the shards whose sha256 still matches and makes the
rest again, deterministically. Before index.json is written (last, with the lineage) the destination
is checked against the source: the same multiset of keys (or derived keys) and the same seconds per
split; a mismatch raises. Then `_reshard/` is deleted.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import multiprocessing
import os
import tempfile
import threading
import time
import zlib
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from typing import BinaryIO, Callable, Iterable, Iterator

import numpy as np
import soundfile as sf

from data_prep.dataset_job import DatasetJob, DatasetProgress, RunRecords, claim_destination, prefetched
from pipeline.errors import TelucodecError
from pipeline.shards import (FORMAT, DatasetIndex, EncodedSample, ShardInfo, ShardWriter, decode_flac,
                             encode_sample, encoded_from_parts, index_sha256, iter_tar, load_index,
                             shard_matches, shard_mismatches, shard_name, write_index)
from pipeline.store import LocalStore, Store, iter_chunks, open_store


class ReshardError(TelucodecError, RuntimeError):
    """A reshard that cannot be done as asked, or whose result does not match its source."""


RESHARD = DatasetJob(
    records="_reshard/", start_record="run.json", error=ReshardError,
    index_fingerprint=lambda index: index.config.get("fingerprint"),
    refusals={"dataset": "{url} already holds a different dataset (index.json); pass --overwrite to replace it",
              "run": "{url} already holds an unfinished reshard with other options or of another source; "
                     "pass --overwrite to replace it",
              "leftovers": "{url} already holds shards without an index.json (an unfinished dataset); "
                           "pass --overwrite to replace it"})


@dataclass(frozen=True)
class ReshardOptions:
    samples_per_shard: int | None = None
    """Shape: at most this many samples per destination shard."""
    shard_mb: float | None = None
    """Shape: destination shards of about this many megabytes (10^6 bytes)."""
    shards: int | None = None
    """Shape: this many shards per split. With no shape option each split keeps its shard count."""
    ranks: int = 1
    """Every split's shard count becomes a multiple of this, with sample counts balanced."""
    shuffle: bool = False
    """Shuffle samples across the whole split (seeded, deterministic)."""
    seed: int = 0
    """Seed of the shuffle."""
    splits: tuple[str, ...] = ()
    """Splits to copy; empty means all."""
    segment_seconds: float | None = None
    """Re-cut every sample into equal parts no longer than this; keys become `{key}_s{i:03d}`."""
    sample_rate: int | None = None
    """Resample to this rate (soxr)."""
    overwrite: bool = False
    """Replace a different dataset (or an unfinished reshard with other options) at the destination."""
    workers: int = 0
    """Processes for re-cut, resample and FLAC encode; 0 means one per CPU core."""
    io_threads: int = 8
    """Threads for downloads and uploads."""
    spill_gb: float = 16.0
    """Local disk a shuffle may spill to per wave; a larger dataset takes more source passes."""
    tmp_dir: str | None = None
    """Where fetched source shards and spill files go (default: the system temp folder)."""

    def __post_init__(self):
        shapes = [f for f in ("samples_per_shard", "shard_mb", "shards") if getattr(self, f) is not None]
        if len(shapes) > 1:
            raise ReshardError(f"give one of samples_per_shard, shard_mb, shards (got {', '.join(shapes)})")
        for name in ("samples_per_shard", "shard_mb", "shards", "segment_seconds", "sample_rate"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ReshardError(f"{name} must be > 0 (got {value})")
        if self.sample_rate is not None and self.sample_rate < 1000:
            raise ReshardError(f"sample_rate must be at least 1000 Hz (got {self.sample_rate})")
        if self.ranks < 1 or self.workers < 0 or self.io_threads < 1 or self.spill_gb <= 0:
            raise ReshardError("ranks and io_threads must be >= 1, workers >= 0, spill_gb > 0")
        if self.seed < 0:
            raise ReshardError(f"seed must be >= 0 (got {self.seed})")

    def content(self, source_rate: int) -> dict:
        """The options that decide the destination's bytes (what the fingerprint covers)."""
        rate = self.sample_rate or source_rate
        return {"samples_per_shard": self.samples_per_shard, "shard_mb": self.shard_mb, "shards": self.shards,
                "ranks": self.ranks, "shuffle": self.shuffle, "seed": self.seed if self.shuffle else None,
                "splits": sorted(self.splits), "segment_seconds": self.segment_seconds,
                "sample_rate": rate if rate != source_rate else None}


@dataclass
class ReshardSummary:
    src_url: str
    dst_url: str
    splits: dict[str, dict]
    """Destination totals per split: shards, samples, seconds, bytes."""
    written_shards: int = 0
    kept_shards: int = 0
    """Shards an interrupted run had finished, checked and kept."""
    noop: bool = False
    """The destination already held this reshard; nothing was done."""
    bytes_read: int = 0
    bytes_written: int = 0
    elapsed_s: float = 0.0
    fingerprint: str = ""


def reshard(src_url: str, dst_url: str, opts: ReshardOptions = ReshardOptions(),
            progress: bool = True) -> ReshardSummary:
    """Copy the dataset at `src_url` to `dst_url` in a new shape; the source is never modified."""
    started = time.monotonic()
    src, dst = open_store(src_url), open_store(dst_url)
    if src.url == dst.url:
        raise ReshardError(f"{dst.url}: destination is the source; reshard into another prefix")
    src_index = load_index(src)
    src_sha = index_sha256(src)
    splits = select_splits(src_index, opts.splits)
    content = opts.content(src_index.sample_rate)
    fingerprint = hashlib.sha256(json.dumps({"format": FORMAT, "source_index_sha256": src_sha, **content},
                                            sort_keys=True).encode()).hexdigest()
    ledger = Ledger(dst, RESHARD, fingerprint)
    if claim_destination(ledger, opts.overwrite, {"source": src.url}) == "done":
        ledger.clear()  # left over if a run stopped between index.json and this
        return ReshardSummary(src.url, dst.url, load_index(dst).splits, noop=True, fingerprint=fingerprint,
                              elapsed_s=time.monotonic() - started)
    with _Resharder(src, dst, src_index, opts, ledger, progress) as job:
        infos = job.run(splits)
    index = DatasetIndex(shards=infos, sample_rate=job.rate_out,
                         config={"reshard": content, "fingerprint": fingerprint},
                         lineage={"source": src.url, "source_index_sha256": src_sha,
                                  "source_version": src_index.version, "source_lineage": src_index.lineage})
    write_index(dst, index)
    ledger.clear()
    return ReshardSummary(src.url, dst.url, index.splits, written_shards=job.written, kept_shards=job.kept,
                          bytes_read=job.bytes_read, bytes_written=sum(i.bytes for i in infos),
                          elapsed_s=time.monotonic() - started, fingerprint=fingerprint)


def select_splits(index: DatasetIndex, wanted: Iterable[str]) -> list[str]:
    """The splits to copy, in the source's order."""
    have = list(index.splits)
    unknown = [s for s in wanted if s not in have]
    if unknown:
        raise ReshardError(f"no split {', '.join(map(repr, unknown))} in the source (splits: {', '.join(have)})")
    return [s for s in have if not wanted or s in wanted]


# ---------------------------------------------------------------- planning
def resampled_length(frames: int, rate_in: int, rate_out: int) -> int:
    """Frames after resampling (rounded half up, as soxr does)."""
    return (2 * frames * rate_out + rate_in) // (2 * rate_in)


def segment_count(frames: int, rate: int, segment_seconds: float | None) -> int:
    """Parts a sample of `frames` at `rate` is cut into (at least one)."""
    if segment_seconds is None:
        return 1
    return max(1, math.ceil(frames / max(1, round(segment_seconds * rate))))


def segment_starts(frames: int, count: int) -> list[int]:
    """[count + 1] boundaries of `count` equal parts (lengths differ by at most one frame)."""
    return [i * frames // count for i in range(count + 1)]


def derived_keys(key: str, count: int, recut: bool) -> list[str]:
    return [f"{key}_s{i:03d}" for i in range(count)] if recut else [key]


def keys_digest(keys: Iterable[str]) -> int:
    """An order-free digest of a multiset of keys; digests of disjoint parts add up (mod 2^128)."""
    return sum(int.from_bytes(hashlib.blake2b(k.encode(), digest_size=16).digest(), "big")
               for k in keys) % (1 << 128)


@dataclass
class SplitPlan:
    """Where every output item of one split goes: a pure function of the source index, the options and,
    when re-cutting, the source samples' lengths."""
    split: str
    sources: list[ShardInfo]
    counts: list[np.ndarray] | None
    """Output items of each source sample, one array per source shard; None: one item per sample."""
    first_item: np.ndarray
    """[S + 1] index of the first output item of each source shard."""
    bounds: np.ndarray
    """[K + 1] first destination position of each destination shard."""
    position: np.ndarray | None
    """[N] destination position of each output item (a permutation); None keeps source order."""
    est_bytes: float

    @property
    def items(self) -> int:
        return int(self.first_item[-1])

    @property
    def n_shards(self) -> int:
        return len(self.bounds) - 1

    def shard_samples(self, j: int) -> int:
        return int(self.bounds[j + 1] - self.bounds[j])

    def item_counts(self, s: int) -> np.ndarray:
        return self.counts[s] if self.counts is not None else np.ones(self.sources[s].samples, np.int64)

    def destinations(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions, destination shards) of source shard `s`'s output items, in item order."""
        items = np.arange(self.first_item[s], self.first_item[s + 1])
        pos = items if self.position is None else self.position[items]
        return pos, np.searchsorted(self.bounds, pos, side="right") - 1


def plan_split(split: str, sources: list[ShardInfo], opts: ReshardOptions, rate_ratio: float,
               counts: list[np.ndarray] | None = None) -> SplitPlan:
    """Plan one split: balanced shard sizes, and a seeded permutation when shuffling."""
    per_shard = [int(c.sum()) for c in counts] if counts is not None else [s.samples for s in sources]
    first_item = np.concatenate([[0], np.cumsum(per_shard)]).astype(np.int64)
    n = int(first_item[-1])
    est_bytes = sum(s.bytes for s in sources) * rate_ratio
    k = shard_count(split, n, est_bytes, len(sources), opts)
    sizes = n // k + (np.arange(k) < n % k)
    bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    position = shuffled_positions(n, opts.seed, split) if opts.shuffle else None
    return SplitPlan(split, sources, counts, first_item, bounds, position, est_bytes)


def shard_count(split: str, n: int, est_bytes: float, source_shards: int, opts: ReshardOptions) -> int:
    if opts.samples_per_shard:
        k = math.ceil(n / opts.samples_per_shard)
    elif opts.shard_mb:
        k = math.ceil(est_bytes / (opts.shard_mb * 1e6))
    else:
        k = opts.shards or source_shards
    k = math.ceil(max(1, min(k, n)) / opts.ranks) * opts.ranks
    if k > n:
        k = n // opts.ranks * opts.ranks
    if k == 0:
        raise ReshardError(f"split {split!r} has {n} samples, too few for {opts.ranks} ranks "
                           "(leave it out with --splits)")
    return k


def shuffled_positions(n: int, seed: int, split: str) -> np.ndarray:
    """[n] a seeded permutation; from a bit generator's raw stream, which numpy keeps stable."""
    raw = np.random.PCG64(np.random.SeedSequence([seed, zlib.crc32(split.encode())])).random_raw(n)
    position = np.empty(n, np.int64)
    position[np.argsort(raw, kind="stable")] = np.arange(n)
    return position


# ---------------------------------------------------------------- audio (runs in worker processes)
def resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Mono [T] -> [resampled_length(T)], soxr HQ, clipped to [-1, 1]."""
    import soxr

    n = resampled_length(len(audio), rate_in, rate_out)
    out = soxr.resample(audio, rate_in, rate_out) if len(audio) else np.zeros(0, np.float32)
    out = out[:n] if len(out) >= n else np.pad(out, (0, n - len(out)))
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def recut_sample(key: str, parts: dict[str, bytes], rate_out: int, segment_seconds: float | None,
                 count: int, wanted: list[int]) -> list[EncodedSample]:
    """Decode one sample, resample it, cut it into `count` equal parts; encode the `wanted` ones."""
    audio, rate_in = decode_flac(parts["flac"])
    if rate_in != rate_out:
        audio = resample(audio, rate_in, rate_out)
    if segment_count(len(audio), rate_out, segment_seconds) != count:
        raise ReshardError(f"{key}: length differs from the scan (the source changed during the reshard?)")
    meta = {**json.loads(parts.get("json", b"{}")), "source_key": key}
    keys, starts = derived_keys(key, count, segment_seconds is not None), segment_starts(len(audio), count)
    out = []
    for i in wanted:
        a, b = starts[i], starts[i + 1]
        extra = {"segment": i, "source_start": round(a / rate_out, 6)} if segment_seconds is not None else {}
        out.append(encode_sample(keys[i], audio[a:b], rate_out, {**meta, **extra}))
    return out


def exit_with_parent(parent: int) -> None:
    """Worker initializer: leave once the parent is gone, so a killed reshard leaves no workers behind."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def scan_counts(parts: dict[str, bytes], rate_out: int, segment_seconds: float | None) -> int:
    """Output items of one source sample, from its FLAC header alone."""
    info = sf.info(io.BytesIO(parts["flac"]))
    return segment_count(resampled_length(info.frames, info.samplerate, rate_out), rate_out, segment_seconds)


# ---------------------------------------------------------------- destination bookkeeping
class Ledger(RunRecords):
    """The `_reshard/` records at the destination: what a run leaves for the next one if it is cut short.

    run.json names the fingerprint; scan/NAME.json holds each source shard's keys digest (and, when
    re-cutting, its samples' segment counts); done/NAME.json holds each finished destination shard.
    Every record carries the run's fingerprint."""

    def load(self, kind: str, pool: ThreadPoolExecutor) -> dict[str, dict]:
        """Records of `kind` ("scan" or "done") with this run's fingerprint, by shard name."""
        names = [n for n in self.names(f"{kind}/") if n.endswith(".json")]
        return {r["name"]: r for r in pool.map(self.get, names) if r.get("fingerprint") == self.fingerprint}

    def save(self, kind: str, record: dict) -> None:
        record = {**record, "fingerprint": self.fingerprint}
        self.put(f"{kind}/{record['name']}.json", record)


# ---------------------------------------------------------------- moving bytes
def fetch_shard(store: Store, info: ShardInfo, tmp_dir: str | None) -> BinaryIO:
    """Source shard `info` as a local file at offset 0, checked against the index's size and sha256."""
    if isinstance(store, LocalStore):
        f = store.open(info.name)
        mismatches = shard_mismatches(info, iter_chunks(f))
    else:
        f = tempfile.TemporaryFile(dir=tmp_dir)
        with store.open(info.name) as src:
            mismatches = shard_mismatches(info, copied(iter_chunks(src), f))
    f.seek(0)
    if mismatches:
        f.close()
        raise ReshardError(f"{store.join(info.name)}: sha256 differs from the source index "
                           "(the source changed or is corrupt)")
    return f


def copied(chunks: Iterable[bytes], f: BinaryIO) -> Iterator[bytes]:
    """`chunks`, each written to `f` on its way through."""
    for chunk in chunks:
        f.write(chunk)
        yield chunk


class Spill:
    """One local file a shuffled wave appends its items to; each destination shard reads its own back."""

    def __init__(self, tmp_dir: str | None):
        self.file = tempfile.TemporaryFile(dir=tmp_dir)
        self.size = 0

    def append(self, data: bytes) -> int:
        """Offset of `data` in the spill (called by the router thread only)."""
        offset = self.size
        self.file.write(data)
        self.size += len(data)
        return offset

    def flush(self) -> None:
        self.file.flush()

    def read(self, offset: int, n: int) -> bytes:
        """Bytes already flushed; safe from any thread."""
        return os.pread(self.file.fileno(), n, offset)

    def close(self) -> None:
        self.file.close()


class DestShard:
    """One destination shard being filled: straight into its tar when items come in position order,
    else into the wave's spill, and then into the tar in position order once the last item is in."""

    def __init__(self, store: Store, plan: SplitPlan, j: int, spill: Spill | None):
        self.store, self.split, self.j, self.spill = store, plan.split, j, spill
        self.first, self.count = int(plan.bounds[j]), plan.shard_samples(j)
        self.received, self.digest = 0, 0
        self.writer = ShardWriter(store, plan.split, j) if spill is None else None
        self.slots: list[tuple | None] = [] if spill is None else [None] * self.count

    @property
    def complete(self) -> bool:
        return self.received == self.count

    def add(self, position: int, sample: EncodedSample) -> None:
        slot = position - self.first
        if self.spill is None:
            if slot != self.received:
                raise ReshardError(f"{self.split} shard {self.j}: item {slot} came out of order")
            self.writer.add(sample)
        else:
            if self.slots[slot] is not None:
                raise ReshardError(f"{self.split} shard {self.j}: position {position} filled twice")
            offset = self.spill.append(sample.flac + sample.meta)
            self.slots[slot] = (sample.key, offset, len(sample.flac), len(sample.meta), sample.seconds)
        self.received += 1
        self.digest = (self.digest + keys_digest([sample.key])) % (1 << 128)

    def finish(self) -> ShardInfo:
        """Write the tar (from the spill, in position order) and put it to the store."""
        if self.spill is not None:
            self.writer = ShardWriter(self.store, self.split, self.j)
            for key, offset, n_flac, n_meta, seconds in self.slots:
                data = self.spill.read(offset, n_flac + n_meta)
                self.writer.add(EncodedSample(key, data[:n_flac], data[n_flac:], seconds))
        return self.writer.close()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


# ---------------------------------------------------------------- the run
class _Resharder:
    """State of one reshard run: stores, pools, ledger and progress. `run` returns the destination shards."""

    def __init__(self, src: Store, dst: Store, src_index: DatasetIndex, opts: ReshardOptions, ledger: Ledger,
                 progress: bool):
        self.src, self.dst, self.src_index, self.opts, self.ledger = src, dst, src_index, opts, ledger
        self.rate_out = opts.sample_rate or src_index.sample_rate
        self.recut = opts.segment_seconds is not None
        self.resampled = self.rate_out != src_index.sample_rate
        self.transform = self.recut or self.resampled
        self.workers = opts.workers or os.cpu_count() or 1
        self.io = ThreadPoolExecutor(opts.io_threads, thread_name_prefix="reshard-io")
        self.cpu = None
        if self.transform:  # spawn, not fork: this process already runs boto3 and I/O threads
            self.cpu = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                           initializer=exit_with_parent, initargs=(os.getpid(),))
        self.progress = ReshardProgress(progress)
        self.uploads = _Uploads(self.io, opts.io_threads)
        self.fetch_ahead = max(2, opts.io_threads // 2)
        """Source shards fetched ahead of the router (each on local disk while it waits)."""
        self.lock = threading.Lock()
        self.scans: dict[str, dict] = {}
        self.done: dict[str, dict] = {}
        self.written = self.kept = self.bytes_read = 0

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *_):
        self.progress.stop()
        self.io.shutdown(wait=True, cancel_futures=True)
        if self.cpu is not None:
            self.cpu.shutdown(wait=True, cancel_futures=True)

    def run(self, splits: list[str]) -> list[ShardInfo]:
        self.scans = self.ledger.load("scan", self.io)
        plans = [self.plan(split) for split in splits]
        self.done = self.keep_finished(plans)
        self.progress.begin(sum(p.items for p in plans), sum(p.n_shards for p in plans),
                            [r for r in self.done.values()])
        for plan in plans:
            todo = [j for j in range(plan.n_shards) if shard_name(plan.split, j) not in self.done]
            for wave in self.waves(plan, todo):
                _Wave(self, plan, set(wave)).run()
        for plan in plans:
            check_split(plan, self.done, self.scans, self.rate_out, self.resampled)
        return [ShardInfo(**self.done[shard_name(p.split, j)]["info"]) for p in plans for j in range(p.n_shards)]

    def plan(self, split: str) -> SplitPlan:
        sources = self.src_index.split_shards(split)
        counts = None
        if self.recut:  # segment counts need every sample's length: scan what an earlier run did not
            missing = [s for s in sources if s.name not in self.scans]
            self.progress.scanning(split, len(missing))
            for info, record in prefetched(self.io, self.scan_shard, missing, self.opts.io_threads):
                self.scans[info.name] = record
                self.progress.scanned()
            counts = [np.asarray(self.scans[s.name]["counts"], np.int64) for s in sources]
        return plan_split(split, sources, self.opts, self.rate_out / self.src_index.sample_rate, counts)

    def scan_shard(self, info: ShardInfo) -> dict:
        with fetch_shard(self.src, info, self.opts.tmp_dir) as f:
            counts, keys = [], []
            for key, parts in iter_tar(f):
                counts.append(scan_counts(parts, self.rate_out, self.opts.segment_seconds))
                keys += derived_keys(key, counts[-1], True)
        return self.save_scan(info, keys, counts)

    def save_scan(self, info: ShardInfo, keys: list[str], counts: list[int] | None) -> dict:
        if len(counts or keys) != info.samples:
            raise ReshardError(f"{self.src.join(info.name)}: {len(counts or keys)} samples, "
                               f"the source index says {info.samples}")
        record = {"name": info.name, "samples": info.samples, "keys_digest": f"{keys_digest(keys):032x}"}
        if counts is not None:
            record["counts"] = counts
        self.ledger.save("scan", record)
        return record

    def keep_finished(self, plans: list[SplitPlan]) -> dict[str, dict]:
        """Done records of an interrupted run whose shard is still there with the same sha256."""
        planned = {shard_name(p.split, j): p.shard_samples(j) for p in plans for j in range(p.n_shards)}
        records = [r for name, r in self.ledger.load("done", self.io).items()
                   if planned.get(name) == r["info"]["samples"]]
        intact = self.io.map(lambda r: shard_matches(self.dst, ShardInfo(**r["info"])), records)
        kept = {r["name"]: r for r, ok in zip(records, intact) if ok}
        self.kept = len(kept)
        return kept

    def waves(self, plan: SplitPlan, todo: list[int]) -> Iterator[list[int]]:
        """Groups of destination shards made in one source pass: all at once in source order; shuffled,
        as many as fit `spill_gb` of local disk."""
        per_wave = len(todo)
        if self.opts.shuffle and plan.n_shards:
            per_wave = max(1, int(self.opts.spill_gb * 1e9 // max(1.0, plan.est_bytes / plan.n_shards)))
        for i in range(0, len(todo), max(1, per_wave)):
            yield todo[i:i + per_wave]

    def finish_shard(self, builder: DestShard) -> None:
        info = builder.finish()
        record = {"name": info.name, "info": asdict(info), "keys_digest": f"{builder.digest:032x}"}
        self.ledger.save("done", record)
        with self.lock:
            self.done[info.name] = record
            self.written += 1
        self.progress.shard_done()


class _Wave:
    """One pass over the source for a set of destination shards: route each output item bound for
    them to its shard, and put every shard to the store as soon as its last item is in."""

    def __init__(self, job: _Resharder, plan: SplitPlan, shards: set[int]):
        self.job, self.plan, self.shards = job, plan, shards
        self.builders: dict[int, DestShard] = {}
        self.pending: deque[tuple[list, Future]] = deque()
        """Re-cut/resample results in submission order: they are placed in source order."""
        self.spill = Spill(job.opts.tmp_dir) if job.opts.shuffle else None

    def run(self) -> None:
        job, plan = self.job, self.plan
        needed = [s for s in range(len(plan.sources)) if plan.sources[s].name not in job.scans
                  or np.isin(plan.destinations(s)[1], list(self.shards)).any()]

        def fetch(s: int) -> BinaryIO:
            return fetch_shard(job.src, plan.sources[s], job.opts.tmp_dir)

        try:
            for s, f in prefetched(job.io, fetch, needed, job.fetch_ahead):
                with f:
                    self.route_shard(s, f)
                job.bytes_read += plan.sources[s].bytes
            while self.pending:
                self.place_results(*self.pending.popleft())
            if self.builders:
                raise ReshardError(f"{plan.split}: shards {sorted(self.builders)} did not fill up "
                                   "(the source changed?)")
            job.uploads.wait()
        finally:
            for builder in self.builders.values():
                builder.abort()
            if self.spill is not None:
                job.uploads.wait(check=False)  # the spill must outlive the uploads reading it
                self.spill.close()

    def route_shard(self, s: int, f: BinaryIO) -> None:
        """Send each output item of source shard `s` bound for this wave to its destination shard."""
        job, info = self.job, self.plan.sources[s]
        positions, dests = self.plan.destinations(s)
        counts = self.plan.item_counts(s)
        starts = np.concatenate([[0], np.cumsum(counts)])
        keys = []
        for g, (key, parts) in enumerate(iter_tar(f)):
            keys.append(key)
            if g >= len(counts):
                break  # more samples than the index says: reported below
            wanted = [i for i in range(int(starts[g]), int(starts[g + 1])) if int(dests[i]) in self.shards]
            targets = [(int(positions[i]), int(dests[i])) for i in wanted]
            if not wanted:
                continue
            if not job.transform:
                self.place(targets[0], encoded_from_parts(key, parts))
                continue
            self.pending.append((targets, job.cpu.submit(recut_sample, key, parts, job.rate_out,
                                                         job.opts.segment_seconds, int(counts[g]),
                                                         [i - int(starts[g]) for i in wanted])))
            while len(self.pending) > 4 * job.workers:
                self.place_results(*self.pending.popleft())
        if info.name not in job.scans:
            job.scans[info.name] = job.save_scan(info, keys, None)
        elif len(keys) != info.samples:
            raise ReshardError(f"{job.src.join(info.name)}: {len(keys)} samples, the source index says "
                               f"{info.samples}")

    def place_results(self, targets: list[tuple[int, int]], fut: Future) -> None:
        for target, sample in zip(targets, fut.result()):
            self.place(target, sample)

    def place(self, target: tuple[int, int], sample: EncodedSample) -> None:
        """Add `sample` at destination (position, shard); hand the shard to an upload once it is full."""
        position, j = target
        if j not in self.builders:
            self.builders[j] = DestShard(self.job.dst, self.plan, j, self.spill)
        builder = self.builders[j]
        builder.add(position, sample)
        self.job.progress.advance(1, sample.seconds)
        if builder.complete:
            del self.builders[j]
            if self.spill is not None:
                self.spill.flush()
            self.job.uploads.submit(lambda: self.job.finish_shard(builder))


class _Uploads:
    """Shard uploads in a thread pool, at most `limit` in flight (each holds a tar on local disk)."""

    def __init__(self, pool: ThreadPoolExecutor, limit: int):
        self.pool, self.slots, self.futures = pool, threading.Semaphore(limit), []

    def submit(self, fn: Callable[[], None]) -> None:
        self.raise_failures()
        self.slots.acquire()
        fut = self.pool.submit(fn)
        fut.add_done_callback(lambda _: self.slots.release())
        self.futures.append(fut)

    def raise_failures(self) -> None:
        for fut in self.futures:
            if fut.done() and fut.exception() is not None:
                raise fut.exception()
        self.futures = [f for f in self.futures if not f.done()]

    def wait(self, check: bool = True) -> None:
        """Wait for every upload in flight; raise the first failure if `check`."""
        futures, self.futures = self.futures, []
        wait(futures)
        for fut in futures if check else ():
            fut.result()


def check_split(plan: SplitPlan, done: dict[str, dict], scans: dict[str, dict], rate_out: int,
                resampled: bool) -> None:
    """Raise unless the destination split holds exactly the planned keys and the source's seconds."""
    names = [shard_name(plan.split, j) for j in range(plan.n_shards)]
    missing = [n for n in names if n not in done]
    if missing:
        raise ReshardError(f"{plan.split}: destination shards missing: {', '.join(missing[:5])}")
    infos = [ShardInfo(**done[n]["info"]) for n in names]
    samples = sum(i.samples for i in infos)
    if samples != plan.items:
        raise ReshardError(f"{plan.split}: destination has {samples} samples, expected {plan.items}")
    got = sum(int(done[n]["keys_digest"], 16) for n in names) % (1 << 128)
    want = sum(int(scans[s.name]["keys_digest"], 16) for s in plan.sources) % (1 << 128)
    if got != want:
        raise ReshardError(f"{plan.split}: destination keys differ from the source's")
    src_seconds = sum(s.seconds for s in plan.sources)
    dst_seconds = sum(i.seconds for i in infos)
    n_src = sum(s.samples for s in plan.sources)
    # one frame per output item for the cuts, half a frame per source sample for resampling, and
    # the 1e-6 s rounding of per-sample metadata and per-shard totals
    tolerance = (samples + (0.5 * n_src if resampled else 0)) / rate_out + 1e-6 * (samples + len(infos) + n_src)
    if abs(src_seconds - dst_seconds) > tolerance:
        raise ReshardError(f"{plan.split}: destination holds {dst_seconds:.6f} s, the source "
                           f"{src_seconds:.6f} s (tolerance {tolerance:.6f} s)")


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
        self.bar.advance(self.scan_task)

    def begin(self, samples: int, shards: int, kept: list[dict]) -> None:
        self.total_shards = shards
        self.task = self.add_task("samples", samples)
        for record in kept:
            self.advance(record["info"]["samples"], record["info"]["seconds"])
            self.shard_done()

    def info(self) -> str:
        return f"{self.seconds / 3600:.2f} h  {self.shards}/{self.total_shards} shards"
