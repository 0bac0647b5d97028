"""Training batches from shards: decoded in worker processes, mixed across shards, and the same global
batch at every step whatever the number of ranks or workers.

    loader = CropLoader(url, "train", CropRecipe(batch_size=32, crop=16000, seed=0), rank=r, world=w,
                        workers=7, pin_memory=True)
    for step, batch in loader.batches(start_step):     # float32 [rows of this rank, 1, crop]
        ...

The order is a pure function of the index, the recipe and the epoch, never of the world or the
workers (docs/design.md, "Elastic determinism").
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from pipeline.errors import TelucodecError
from pipeline.storage.cache import ShardCache, admitted
from pipeline.storage.shards import DatasetIndex, ShardInfo, decode_flac, load_index
from pipeline.storage.store import (REQUESTS, Store, is_remote, no_requests, open_store, s3_environment,
                                    take_s3_environment)


class DataError(TelucodecError, RuntimeError):
    """A split too small for the batch, an index without sample ranges, a sample that does not
    decode as its index says, or similar."""


@dataclass(frozen=True)
class CropRecipe:
    """Everything that decides which crops a step sees (and so must not change on exact resume)."""
    batch_size: int
    """Rows of the global batch (all ranks together); also the number of streams."""
    crop: int
    """Crop length in samples."""
    seed: int
    shuffle_samples: int = 4
    """Crops of this many consecutive samples of a stream are shuffled together."""
    loudness_db: float | None = None
    """Scale each sample to this RMS level in dBFS (peak-limited to 1.0); None leaves levels alone."""
    gain_db: tuple[float, float] = (0.0, 0.0)
    """A random gain per crop, uniform in this range of dB (peak-limited to 1.0)."""
    block_samples: int = 32
    """Samples are dealt in blocks of up to this many consecutive samples of one shard, each read
    with one ranged request (1: a request per sample)."""


class SplitTable:
    """The samples of one split as arrays, in index order: shard number, FLAC byte range, frames."""

    def __init__(self, index: DatasetIndex, split: str, where: str):
        shards = index.split_shards(split)
        if any(s.sample_ranges is None for s in shards):
            raise DataError(f"{where}: index.json has no per-sample byte ranges (written by an older "
                            f"telucodec); add them with one read of every shard: telucodec shards upgrade {where}")
        self.shards = [dataclasses.replace(s, sample_ranges=None) for s in shards]
        """Each shard's name, size and digest (what a node's cache checks a fetched shard against)."""
        rows = [(i, r.flac_offset, r.flac_size, r.frames) for i, s in enumerate(shards) for r in s.sample_ranges]
        self.shard, self.offset, self.size, self.frames = np.array(rows, dtype=np.int64).reshape(-1, 4).T

    def __len__(self) -> int:
        return len(self.frames)

    def blocks(self, block_samples: int) -> np.ndarray:
        """[blocks + 1] the first sample of each block: runs of up to `block_samples` consecutive
        samples of one shard (a shard's last block may be shorter), in index order."""
        firsts = np.flatnonzero(np.diff(self.shard, prepend=-1))  # each shard's first sample
        within = np.arange(len(self.shard)) - np.repeat(firsts, np.diff(np.append(firsts, len(self.shard))))
        return np.append(np.flatnonzero(within % block_samples == 0), len(self.shard))


def crops_per_sample(frames: np.ndarray, crop: int) -> np.ndarray:
    """Non-overlapping crops a sample of `frames` yields (a short one is padded into one)."""
    return np.maximum(1, frames // crop)


BLOCKS_PER_STREAM = 16
"""Blocks shrink (to one sample at least) until each stream is dealt about this many an epoch: the
deal balances streams to within one block, so an epoch loses at most ~1/16 of its crops."""


def block_size(samples: int, recipe: CropRecipe) -> int:
    """Samples per block: recipe.block_samples, or fewer for a split too small for it."""
    return max(1, min(recipe.block_samples, samples // (BLOCKS_PER_STREAM * recipe.batch_size)))


def block_crops(table: SplitTable, recipe: CropRecipe) -> tuple[np.ndarray, np.ndarray]:
    """(the first sample of each block and the end, the crops each block yields)."""
    bounds = table.blocks(block_size(len(table), recipe))
    counts = crops_per_sample(table.frames, recipe.crop)
    return bounds, np.add.reduceat(counts, bounds[:-1]) if len(counts) else counts


def steps_per_epoch(table: SplitTable, recipe: CropRecipe) -> int:
    """Steps every stream can serve in every epoch: the fewest crops any stream is dealt (the same
    in every epoch, see deal)."""
    n = block_crops(table, recipe)[1]
    return int(greedy(np.sort(n)[::-1], recipe.batch_size)[0].min()) if len(n) else 0


def greedy(crops: np.ndarray, streams: int) -> tuple[np.ndarray, np.ndarray]:
    """(crops each stream holds, who got each) after dealing `crops` in turn, each to the stream
    with the fewest so far (ties: the lowest stream)."""
    heap = [(0, v) for v in range(streams)]
    owner = np.empty(len(crops), dtype=np.int64)
    for i, c in enumerate(crops.tolist()):
        load, v = heap[0]
        owner[i] = v
        heapq.heapreplace(heap, (load + c, v))
    loads = np.zeros(streams, dtype=np.int64)
    for load, v in heap:
        loads[v] = load
    return loads, owner


def deal(order: np.ndarray, crops: np.ndarray, streams: int) -> list[np.ndarray]:
    """Samples `order` (with `crops` each) dealt to `streams`, longest first (a stable sort: ties
    keep `order`'s order), each to the stream with the fewest crops so far. Each stream's samples
    come back in `order`'s order. Only which sample of a length goes where depends on `order`: the
    loads are the same for every permutation of the same lengths."""
    longest_first = np.argsort(-crops, kind="stable")
    _, owner_sorted = greedy(crops[longest_first], streams)
    owner = np.empty(len(order), dtype=np.int64)
    owner[longest_first] = owner_sorted
    return [order[owner == v] for v in range(streams)]


def rank_rows(batch_size: int, world: int, rank: int) -> range:
    """The rows (streams) of the global batch that `rank` of `world` serves: a contiguous block."""
    bounds = np.linspace(0, batch_size, world + 1).round().astype(int)
    return range(int(bounds[rank]), int(bounds[rank + 1]))


class SampleReader:
    """Ranged reads of blocks of FLAC samples (one request a block: from its first sample's FLAC
    bytes to its last's), a few in flight on threads, and the decode that checks each sample."""

    def __init__(self, url: str, table: SplitTable, bounds: np.ndarray, threads: int = 4,
                 cache: CacheSpec | None = None):
        """`bounds`: the first sample of each block, and the end (SplitTable.blocks); `cache`: the
        node's shard cache, for a remote store."""
        self.url, self.table, self.bounds, self.cache_spec = url, table, bounds, cache
        self.store: Store | None = None  # opened in the process that reads (a worker)
        self.pool: ThreadPoolExecutor | None = None
        self.cache: ShardCache | None = None
        self.cached: set[str] = set()
        """The shards read through the cache (those that fit in it, see cache.admitted)."""
        self.threads = threads
        self.bytes_read = self.bytes_decoded = 0
        self.read_seconds = 0.0
        """A block read's duration, as measured (a moving average): how far ahead streams read."""
        self.lock = threading.Lock()

    def fetch(self, block: int) -> Future:
        """Block `block`'s bytes, read on a thread: a Future of (its first byte in the shard, the bytes)."""
        if self.store is None:
            self.open()
        t, first, last = self.table, int(self.bounds[block]), int(self.bounds[block + 1]) - 1
        start = int(t.offset[first])
        return self.pool.submit(self._read, t.shards[t.shard[first]], start, int(t.offset[last] + t.size[last]) - start)

    def open(self) -> None:
        self.store = open_store(self.url, "loader")
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="sample-read")
        if self.cache_spec is not None and is_remote(self.url) and self.cache_spec.gb > 0:
            try:
                self.cache = ShardCache(self.cache_spec.folder, self.cache_spec.gb)
            except OSError as e:  # no cache is slower, not wrong
                print(f"WARNING data.cache_dir {self.cache_spec.folder}: {e.strerror}; reading without a cache",
                      flush=True)
                return
            self.cached = admitted(self.table.shards, self.cache_spec.gb)

    def _read(self, shard: ShardInfo, start: int, length: int) -> tuple[int, bytes]:
        started = time.monotonic()
        if shard.name in self.cached:
            data = self.cache.get_range(self.store, shard, start, length)
        else:
            data = self.store.get_range(shard.name, start, length)
        took = time.monotonic() - started
        with self.lock:
            self.bytes_read += len(data)
            self.read_seconds = took if not self.read_seconds else 0.8 * self.read_seconds + 0.2 * took
        return start, data

    def sample(self, j: int, block: tuple[int, bytes]) -> bytes:
        """Sample `j`'s FLAC bytes out of its block's (start, bytes)."""
        at = int(self.table.offset[j]) - block[0]
        return block[1][at:at + int(self.table.size[j])]

    def decode(self, j: int, data: bytes) -> np.ndarray:
        t = self.table
        where = f"{self.store.join(t.shards[t.shard[j]].name)} at byte {t.offset[j]}"
        if data[:4] != b"fLaC":
            raise DataError(f"{where}: no FLAC sample where index.json says (the shard changed since the "
                            f"index was written? run `telucodec shards verify {self.store.url}`)")
        audio, _ = decode_flac(data)
        self.bytes_decoded += len(data)
        if len(audio) != t.frames[j]:
            raise DataError(f"{where}: decodes to {len(audio)} frames, index.json says {t.frames[j]} "
                            f"(run `telucodec shards verify {self.store.url}`)")
        return audio

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class CacheSpec:
    """Where a node keeps the shards it reads from a remote store, and how many GB at most
    (data.cache_dir, data.cache_gb; 0 GB: no cache)."""
    folder: str
    gb: float


def normalise_loudness(audio: np.ndarray, target_db: float) -> np.ndarray:
    """`audio` scaled to an RMS of `target_db` dBFS, or less where that would push a peak past 1."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if rms < 1e-6:  # digital silence stays silence
        return audio
    return audio * np.float32(min(10 ** (target_db / 20) / rms, 1.0 / peak))


AHEAD_GROUPS_MAX = 8
"""The furthest a stream reads ahead, in groups of samples (its memory: these groups' blocks)."""


class StreamCrops:
    """One stream's crops in one epoch: its blocks' samples decoded a group of `shuffle_samples` at a
    time (a group may span two blocks), cut and shuffled inside the group; each block read once, far
    enough ahead that it is in when its first group is: as many groups ahead as twice a read takes
    (as measured) over the time the stream takes to use a group once its bytes are in (as
    measured), plus one."""

    def __init__(self, reader: SampleReader, recipe: CropRecipe, epoch: int, stream: int, blocks: np.ndarray,
                 counts: np.ndarray):
        """`blocks`: the stream's blocks, in order; `counts`: crops per sample of the whole split."""
        self.reader, self.recipe, self.epoch, self.stream = reader, recipe, epoch, stream
        bounds = reader.bounds
        samples = np.concatenate([np.arange(bounds[b], bounds[b + 1]) for b in blocks.tolist()] or [[]]).astype(np.int64)
        self.block_of = dict(zip(samples.tolist(), np.repeat(blocks, np.diff(bounds)[blocks]).tolist()))
        k = recipe.shuffle_samples
        self.groups = [samples[i:i + k] for i in range(0, len(samples), k)]
        self.group_start = np.concatenate([[0], np.cumsum([counts[g].sum() for g in self.groups])])
        self.last_group = {self.block_of[j]: g for g, group in enumerate(self.groups) for j in group.tolist()}
        """Each block's last group (the block can go once that group is decoded)."""

    def crops_from(self, start: int) -> Iterator[np.ndarray]:
        """Crops [crop] from the stream's `start`-th on; blocks wholly before it are never read."""
        g = int(np.searchsorted(self.group_start, start, side="right")) - 1
        skip = start - int(self.group_start[g])
        held: dict[int, Future] = {}
        self.read_for(g, g + 1, held)
        pace = 0.0  # the seconds the stream takes to use a group once its bytes are in (moving average)
        for g in range(g, len(self.groups)):
            data = [self.reader.sample(j, held[self.block_of[j]].result()) for j in self.groups[g].tolist()]
            ready = time.monotonic()
            # twice the measured read time ahead (reads vary), in groups at the measured pace
            ahead = 1 if not pace else min(AHEAD_GROUPS_MAX, 1 + math.ceil(2 * self.reader.read_seconds / pace))
            self.read_for(g + 1, g + 1 + ahead, held)
            yield from self.group_crops(g, data)[skip:]
            skip = 0
            used = time.monotonic() - ready
            pace = used if not pace else 0.8 * pace + 0.2 * used

    def group_rng(self, g: int) -> np.random.Generator:
        """Group `g`'s draws: the order of its crops, then their gains."""
        return np.random.default_rng([self.recipe.seed, self.epoch, self.stream, g])

    def read_for(self, first: int, end: int, held: dict[int, Future]) -> None:
        """Have the blocks of groups first..end-1 read (each once), dropping those of groups before `first`."""
        for b in [b for b in held if self.last_group[b] < first]:
            del held[b]
        for group in self.groups[first:end]:
            for b in (self.block_of[j] for j in group.tolist()):
                if b not in held:
                    held[b] = self.reader.fetch(b)

    def group_crops(self, g: int, data: list[bytes]) -> list[np.ndarray]:
        """The group's crops in their shuffled order: views into the decoded samples (the batch's
        stack is the one copy), scaled copies only when a gain is drawn."""
        r, crop = self.recipe, self.recipe.crop
        crops = []
        for j, raw in zip(self.groups[g].tolist(), data):
            audio = self.reader.decode(j, raw)
            if r.loudness_db is not None:
                audio = normalise_loudness(audio, r.loudness_db)
            n = max(1, len(audio) // crop)
            if len(audio) < crop:  # a short clip: padded into one crop
                audio = np.pad(audio, (0, crop - len(audio)))
            start = int(np.random.default_rng([r.seed, self.epoch, j]).integers(0, len(audio) - n * crop + 1))
            crops += list(audio[start:start + n * crop].reshape(n, crop))
        rng = self.group_rng(g)
        crops = [crops[i] for i in rng.permutation(len(crops))]
        if r.gain_db != (0.0, 0.0):
            gains = 10 ** (rng.uniform(*r.gain_db, size=len(crops)) / 20)
            crops = [c * np.float32(min(gain, 1.0 / max(float(np.abs(c).max()), 1e-9)))
                     for c, gain in zip(crops, gains)]
        return crops


class StreamSet:
    """The rows one process serves: for each step from `start_step` on, one crop [crop] of each of
    its streams (views into the decoded audio, which is never written to), with the bytes read and
    decoded so far."""

    def __init__(self, url: str, table: SplitTable, recipe: CropRecipe, streams: list[int], steps: int,
                 cache: CacheSpec | None = None):
        self.url, self.table, self.recipe, self.streams, self.cache = url, table, recipe, streams, cache
        self.steps_per_epoch = steps
        """steps_per_epoch(table, recipe), worked out once by the CropLoader (a pass over the split)."""
        self.counts = crops_per_sample(table.frames, recipe.crop)
        self.bounds, self.block_counts = block_crops(table, recipe)

    def rows(self, start_step: int) -> Iterator[tuple[np.ndarray, int, int]]:
        # a thread per read in flight: each stream has a block or two in flight when reads are slow
        reader = SampleReader(self.url, self.table, self.bounds, threads=min(64, max(4, 2 * len(self.streams))),
                              cache=self.cache)
        epoch, pos = divmod(start_step, self.steps_per_epoch)
        try:
            while True:
                dealt = self.epoch_streams(epoch)
                its = [StreamCrops(reader, self.recipe, epoch, v, dealt[v], self.counts).crops_from(pos)
                       for v in self.streams]
                for _ in range(pos, self.steps_per_epoch):
                    yield [next(it) for it in its], reader.bytes_read, reader.bytes_decoded
                epoch, pos = epoch + 1, 0
        finally:
            reader.close()

    def epoch_streams(self, epoch: int) -> list[np.ndarray]:
        """Each stream's blocks this epoch."""
        order = np.random.default_rng([self.recipe.seed, epoch]).permutation(len(self.block_counts))
        return deal(order, self.block_counts[order], self.recipe.batch_size)


class _WorkerRows(torch.utils.data.IterableDataset):
    """What DataLoader worker k runs: the rows of its share of the rank's streams (every n-th),
    stacked into slot i % len(ring) of its ring of shared-memory buffers, made by the training
    process and handed to the worker once, at its start. Each step only the slot's number crosses
    the pipe: sending the rows as a shared tensor each step (a descriptor passed over a socket and
    mapped again) cost the training process more than the copy out of it, and a fresh shared
    tensor per step more than the decode (mapping and zeroing 2 MB). A slot is reused only after
    the trainer copied it out: a worker holds at most `prefetch` unanswered requests, plus the item
    being copied, and the ring has two slots more. A worker reads the store with the training
    process's S3 endpoint and credentials as they were when the loader started (the forkserver it
    comes from keeps the environment it started with)."""

    def __init__(self, sets: list[StreamSet], start_step: int, prefetch: int):
        self.sets, self.start_step = sets, start_step
        self.s3_env = s3_environment()  # the trainer's store endpoint and credentials, as they are now
        self.rings = [torch.empty((prefetch + 2, len(s.streams), s.recipe.crop)).share_memory_() for s in sets]

    def __iter__(self):
        k = torch.utils.data.get_worker_info().id
        take_s3_environment(self.s3_env)
        ring = self.rings[k].numpy()
        try:
            for i, (crops, read, decoded) in enumerate(self.sets[k].rows(self.start_step)):
                slot = i % len(ring)
                np.stack(crops, out=ring[slot])
                yield k, slot, read, decoded, REQUESTS.snapshot().tolist()  # this process's requests to the store
        except TelucodecError as e:  # the trainer raises it as it is: one line, not a worker traceback
            yield k, e, 0, 0, REQUESTS.snapshot().tolist()


class CropLoader:
    """This rank's rows of the global batch, step by step, from worker processes (or a thread)."""

    def __init__(self, url: str, split: str, recipe: CropRecipe, rank: int = 0, world: int = 1,
                 workers: int = 0, pin_memory: bool = False, index: DatasetIndex | None = None,
                 cache: CacheSpec | None = None):
        store = open_store(url, "loader")
        self.table = SplitTable(index or load_index(store), split, store.url)
        self.url, self.recipe, self.pin_memory, self.cache = store.url, recipe, pin_memory, cache
        self.rows = rank_rows(recipe.batch_size, world, rank)
        if recipe.batch_size < world:
            raise DataError(f"train.batch_size {recipe.batch_size} is smaller than the {world} ranks: every "
                            "rank needs at least one row of the global batch")
        self.steps_per_epoch = steps_per_epoch(self.table, recipe)
        if self.steps_per_epoch <= 0:
            raise DataError(f"{store.url}: split {split!r} holds {len(self.table)} samples, too few for a "
                            f"global batch of {recipe.batch_size} crops of {recipe.crop} samples (dealt to "
                            f"{recipe.batch_size} streams, each needs more than one sample's crops)")
        self.workers = max(0, min(workers, len(self.rows)))
        self.bytes_read = self.bytes_decoded = 0
        """What this rank's readers have read and decoded since batches() started (FLAC bytes)."""
        self.worker_requests = no_requests()
        """The requests this rank's worker processes sent to the store (a tally array, storage.REQUESTS);
        a loader without workers reads in this process, whose REQUESTS counts them."""

    def stream_sets(self) -> list[StreamSet]:
        """One StreamSet per worker (every n-th of this rank's streams), or one for all."""
        n = max(1, self.workers)
        return [StreamSet(self.url, self.table, self.recipe, list(self.rows)[k::n], self.steps_per_epoch, self.cache)
                for k in range(n)]

    def batches(self, start_step: int = 0, prefetch: int = 4) -> Iterator[tuple[int, torch.Tensor]]:
        """(step, [rows, 1, crop]) forever from `start_step`."""
        sets = self.stream_sets()
        parts = self._worker_parts(sets, start_step, prefetch) if self.workers else \
            _threaded(((*row, no_requests()) for row in sets[0].rows(start_step)), prefetch)
        n, step = len(sets), start_step
        read, decoded = [0] * n, [0] * n
        before, requests = self.worker_requests, [no_requests()] * n
        try:
            while True:
                batch = torch.empty((len(self.rows), 1, self.recipe.crop), pin_memory=self.pin_memory)
                out = batch[:, 0].numpy()  # numpy copies on this thread: torch would wake its thread pool for a memcpy
                for k in range(n):
                    rows, read[k], decoded[k], requests[k] = next(parts)
                    if isinstance(rows, TelucodecError):
                        raise rows
                    if isinstance(rows, list):
                        np.stack(rows, out=out)
                    else:
                        out[k::n] = rows
                self.bytes_read, self.bytes_decoded = sum(read), sum(decoded)
                self.worker_requests = before + sum(requests)
                yield step, batch
                step += 1
        finally:
            parts.close()

    def _worker_parts(self, sets: list[StreamSet], start_step: int, prefetch: int):
        rows = _WorkerRows(sets, start_step, prefetch)
        loader = torch.utils.data.DataLoader(
            rows, batch_size=None, num_workers=self.workers, prefetch_factor=prefetch,
            # forkserver: the training process holds threads (gloo, W&B, Ray) that fork would copy mid-lock
            multiprocessing_context="forkserver")
        rings = [ring.numpy() for ring in rows.rings]
        parts = iter(loader)
        try:
            for k, slot, read, decoded, requests in parts:  # DataLoader takes one item from each worker in turn, in order
                yield (slot if isinstance(slot, TelucodecError) else rings[k][slot]), read, decoded, np.array(requests)
        finally:
            del parts  # shuts the workers down


def _threaded(items: Iterator, prefetch: int = 4) -> Iterator:
    """`items` produced ahead in a background thread (the decode releases the GIL)."""
    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def fill():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as e:  # hand the error to the consumer
            q.put(e)
        finally:
            items.close()

    threading.Thread(target=fill, daemon=True, name="crop-loader").start()
    try:
        while True:
            item = q.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def crop_loader(cfg, rank: int = 0, world: int = 1, pin_memory: bool = False) -> CropLoader:
    """The training loader a Config describes (`cfg`: pipeline.config.Config)."""
    d = cfg.data
    index = load_index(open_store(d.url, "loader"))
    if index.sample_rate != cfg.model.sample_rate:
        raise DataError(f"{d.url}: the dataset is {index.sample_rate} Hz and model.sample_rate is "
                        f"{cfg.model.sample_rate} Hz; resample a copy with `telucodec reshard {d.url} "
                        f"{d.url.rstrip('/')}-{cfg.model.sample_rate // 1000}k --sample-rate {cfg.model.sample_rate}` "
                        f"or set model.sample_rate={index.sample_rate}")
    recipe = CropRecipe(cfg.train.batch_size, int(round(cfg.train.segment_seconds * cfg.model.sample_rate)),
                        cfg.train.seed, d.shuffle_samples, d.loudness_db, tuple(d.gain_db),
                        block_samples=d.block_samples)
    workers = d.workers if d.workers >= 0 else cfg.train.cpus_per_worker - 1
    return CropLoader(d.url, "train", recipe, rank, world, workers, pin_memory, index=index,
                      cache=CacheSpec(d.cache_dir, d.cache_gb))
