"""Where every output item of a reshard goes, decided before any audio moves: pure functions of the
source index, the options and (when re-cutting) the source samples' lengths. No store I/O, no threads.

    plan = plan_split("train", index.split_shards("train"), ReshardOptions(ranks=8, shuffle=True), 1.0)
    positions, shards = plan.destinations(s)      # of source shard s's output items, in item order

Every output item (a source sample, or one segment of it when re-cutting) gets a destination position:
its place in source order, or a seeded permutation with `shuffle`. Each split's positions are cut into K
shards whose sample counts differ by at most one, K a multiple of `ranks`.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from pipeline.errors import TelucodecError
from pipeline.storage.shards import FORMAT, DatasetIndex, ShardInfo


class ReshardError(TelucodecError, RuntimeError):
    """A reshard that cannot be done as asked, or whose result does not match its source."""


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
        for name, ok, rule in (("ranks", self.ranks >= 1, ">= 1"), ("io_threads", self.io_threads >= 1, ">= 1"),
                               ("workers", self.workers >= 0, ">= 0"), ("spill_gb", self.spill_gb > 0, "> 0")):
            if not ok:
                raise ReshardError(f"--{name.replace('_', '-')} must be {rule} (got {getattr(self, name)})")
        if self.seed < 0:
            raise ReshardError(f"seed must be >= 0 (got {self.seed})")

    def content(self, source_rate: int) -> dict:
        """The options that decide the destination's bytes (what the fingerprint covers)."""
        rate = self.sample_rate or source_rate
        return {"samples_per_shard": self.samples_per_shard, "shard_mb": self.shard_mb, "shards": self.shards,
                "ranks": self.ranks, "shuffle": self.shuffle, "seed": self.seed if self.shuffle else None,
                "splits": sorted(self.splits), "segment_seconds": self.segment_seconds,
                "sample_rate": rate if rate != source_rate else None}


def reshard_fingerprint(source_index_sha256: str, content: dict) -> str:
    """What names this very reshard (source index and content options) at the destination."""
    return hashlib.sha256(json.dumps({"format": FORMAT, "source_index_sha256": source_index_sha256, **content},
                                     sort_keys=True).encode()).hexdigest()


def select_splits(index: DatasetIndex, wanted: Iterable[str]) -> list[str]:
    """The splits to copy, in the source's order."""
    have = list(index.splits)
    unknown = [s for s in wanted if s not in have]
    if unknown:
        raise ReshardError(f"no split {', '.join(map(repr, unknown))} in the source (splits: {', '.join(have)})")
    return [s for s in have if not wanted or s in wanted]


# ---------------------------------------------------------------- items and keys
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


# ---------------------------------------------------------------- one split
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


def waves(plan: SplitPlan, todo: list[int], opts: ReshardOptions, machines: int = 1) -> Iterator[list[int]]:
    """Groups of destination shards made in one source pass: all at once in source order; shuffled,
    as many as fit `spill_gb` of local disk on each of `machines`."""
    per_wave = len(todo)
    if opts.shuffle and plan.n_shards:
        per_wave = max(1, int(machines * opts.spill_gb * 1e9 // max(1.0, plan.est_bytes / plan.n_shards)))
    for i in range(0, len(todo), max(1, per_wave)):
        yield todo[i:i + per_wave]
