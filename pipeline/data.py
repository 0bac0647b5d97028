"""Training batches from shards: fixed-length random crops, equal per rank, resumable to the step.

    loader = CropLoader(url, "train", batch_size=16, crop_samples=16000, seed=0, rank=r, world=w)
    for step, batch in loader.batches(start_step):      # batch: float32 [B, 1, crop_samples]
        ...

Every rank gets exactly `loader.steps_per_epoch` batches per epoch, whatever the shard counts, so
DDP never waits on a rank that ran dry. The order is a pure function of (seed, epoch, rank): shards
are permuted per epoch, each shard's samples are shuffled in memory, crops are drawn from an RNG
seeded by the sample's position. Resuming at step s therefore yields the same batches an
uninterrupted run would have seen, skipping whole shards by their index counts without reading them.
With at least as many shards as ranks each rank reads its own shards; with fewer, every rank reads
every shard and keeps every world-th sample.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from pipeline.errors import TelucodecError
from pipeline.shards import DatasetIndex, ShardInfo, iter_tar, load_index, sample_from_parts
from pipeline.store import open_store


class DataError(TelucodecError, RuntimeError):
    """A split too small for the batch size and world, or similar."""


@dataclass(frozen=True)
class RankPlan:
    """Which shards one rank reads in one epoch and which of their samples it keeps."""
    shards: list[ShardInfo]
    stride: int
    offset: int

    def kept(self, info: ShardInfo) -> int:
        return len(range(self.offset, info.samples, self.stride))


class CropLoader:
    def __init__(self, url: str, split: str, batch_size: int, crop_samples: int, seed: int,
                 rank: int = 0, world: int = 1, index: DatasetIndex | None = None):
        self.store = open_store(url)
        self.index = index or load_index(self.store)
        self.shards = self.index.split_shards(split)
        self.split, self.batch_size, self.crop = split, batch_size, crop_samples
        self.seed, self.rank, self.world = seed, rank, world
        fewest = self.fewest_samples_per_rank()
        self.steps_per_epoch = fewest // batch_size
        if self.steps_per_epoch == 0:
            raise DataError(f"{url}: split {split!r} guarantees only {fewest} samples per rank per epoch "
                            f"over {world} rank(s), fewer than one batch of {batch_size} (reshard with "
                            f"--ranks {world} to balance it)")

    def fewest_samples_per_rank(self) -> int:
        """A bound that holds for every rank in every epoch, whatever the shard permutation.

        With at least as many shards as ranks a rank reads floor(n / world) or more shards, so it
        gets at least the smallest floor(n / world) shards' samples; with fewer shards every rank
        keeps at least floor(samples / world) of each shard.
        """
        counts = sorted(s.samples for s in self.shards)
        if len(counts) >= self.world:
            return sum(counts[: len(counts) // self.world])
        return sum(c // self.world for c in counts)

    def plan(self, epoch: int, rank: int) -> RankPlan:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
        shards = [self.shards[i] for i in order]
        if len(shards) >= self.world:
            return RankPlan(shards[rank::self.world], 1, 0)
        return RankPlan(shards, self.world, rank)

    def batches(self, start_step: int = 0, prefetch: int = 4) -> Iterator[tuple[int, torch.Tensor]]:
        """(step, [B, 1, crop]) forever from `start_step`, read ahead in a background thread."""
        q: queue.Queue = queue.Queue(maxsize=prefetch)
        stop = threading.Event()

        def fill():
            try:
                for item in self._batches(start_step):
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

        thread = threading.Thread(target=fill, daemon=True, name="crop-loader")
        thread.start()
        try:
            while True:
                item = q.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()

    def _batches(self, start_step: int) -> Iterator[tuple[int, torch.Tensor]]:
        step = start_step
        while True:
            epoch, pos = divmod(step, self.steps_per_epoch)
            crops = self._epoch_crops(epoch, skip=pos * self.batch_size)
            for _ in range(pos, self.steps_per_epoch):
                batch = [next(crops) for _ in range(self.batch_size)]
                yield step, torch.from_numpy(np.stack(batch)[:, None, :])
                step += 1

    def _epoch_crops(self, epoch: int, skip: int) -> Iterator[np.ndarray]:
        """This rank's crops of one epoch, in order, after the first `skip`."""
        plan = self.plan(epoch, self.rank)
        n = 0
        for shard_no, info in enumerate(plan.shards):
            kept = plan.kept(info)
            if n + kept <= skip:  # consumed before the resume point: skip without reading
                n += kept
                continue
            with self.store.open(info.name) as f:
                raw = list(iter_tar(f))
            order = np.random.default_rng([self.seed, epoch, shard_no]).permutation(len(raw))
            for i in order[plan.offset::plan.stride]:
                if n >= skip:
                    sample = sample_from_parts(*raw[i])
                    yield self._crop(sample.audio, np.random.default_rng([self.seed, epoch, self.rank, n]))
                n += 1

    def _crop(self, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if len(audio) <= self.crop:  # short clip: zero-pad at the end
            return np.pad(audio, (0, self.crop - len(audio))).astype(np.float32)
        start = int(rng.integers(0, len(audio) - self.crop + 1))
        return audio[start:start + self.crop].astype(np.float32)


def eval_clips(url: str, split: str, n: int, max_samples: int) -> list[tuple[str, np.ndarray]]:
    """The first `n` samples of a split (in shard order), each cut to at most `max_samples`."""
    store = open_store(url)
    out = []
    for info in load_index(store).split_shards(split):
        with store.open(info.name) as f:
            for key, parts in iter_tar(f):
                out.append((key, sample_from_parts(key, parts).audio[:max_samples]))
                if len(out) == n:
                    return out
    return out
