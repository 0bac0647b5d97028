"""Reshard fanned out over a Ray cluster: the destination one machine would make, byte for byte.

    reshard(src, dst, opts, ray_address="auto")          # `telucodec reshard SRC DST --ray`

The plan, the run records and the final check are the one-machine reshard's (run.py); only the moving
of bytes runs as tasks. Each source shard a wave needs is read by one `route` task: fetched and checked
against its index entry as on one machine, its samples routed to the wave's destination shards that
want them (re-cut and resampled there when asked), one object per destination shard (a plain
re-pack's back-to-back byte ranges as one run). Each destination shard is written by one `write`
task from the objects bound for it, in position order, as soon as the last source feeding it is
routed: several shards are written at once, on any node. Route tasks are spread over the nodes
(Ray's SPREAD strategy: each reads its source shard through its own node's network), writes go
where their inputs are. A re-cut's scan, and the re-hash of the
shards an interrupted run finished, are tasks too.

Faults: tasks are retried on another node when theirs is lost, and routed objects a lost node held
are rebuilt from lineage (Ray's `max_retries`). A shard's done record is written once its write task
has put it, so a killed driver (or a stopped job) resumes as a killed one-machine reshard does: the
same command again. A write cut short leaves nothing (Store.stage).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict, deque
from typing import Iterator

import numpy as np

from data_prep.cluster import RETRIES, connect, take_credentials, verify
from data_prep.reshard.plan import ReshardError, SplitPlan, keys_digest
from data_prep.reshard.recut import recut_sample
from data_prep.reshard.run import Ledger, _Resharder, check_sample_count, scan_shard
from data_prep.reshard.transfer import RawSample, fetch_shard, ranged_samples
from pipeline.errors import TelucodecError
from pipeline.storage.shards import EncodedSample, ShardInfo, ShardWriter, encoded_from_parts, iter_tar
from pipeline.storage.store import Store, open_store

# ------------------------------------------------------------------------------------- tasks


class Bucket(list):
    """What one source shard sends one destination shard: entries in position order, each
    ("raw", first position, bytes, [(key, range, seconds)...]) for byte ranges back to back in the
    source, or ("enc", position, EncodedSample)."""

    def add(self, position: int, sample: EncodedSample | RawSample) -> None:
        if not isinstance(sample, RawSample):
            self.append(("enc", position, sample))
            return
        last = self[-1] if self else None
        if (last is not None and last[0] == "raw" and last[1] + len(last[3]) == position
                and last[3][-1][1].end == sample.source.start):
            last[2].append(sample.data)
            last[3].append((sample.key, sample.source, sample.seconds))
        else:
            self.append(("raw", position, [sample.data], [(sample.key, sample.source, sample.seconds)]))

    def sealed(self) -> list[tuple]:
        """The entries, their byte ranges joined into bytes (the source's mapping is not shipped)."""
        return [("raw", e[1], b"".join(e[2]), e[3]) if e[0] == "raw" else e for e in self]


def route(keeper, src_url: str, info: ShardInfo, rates: tuple[int, int], segment_seconds: float | None,
          transform: bool, counts: np.ndarray, positions: np.ndarray, dests: np.ndarray, targets: list[int],
          want_keys: bool, tmp_dir: str | None):
    """Source shard `info`'s output items bound for destination shards `targets`, one Bucket each, after
    a summary: its keys (if `want_keys`), this node and the seconds routed."""
    import ray

    take_credentials(keeper)
    src = open_store(src_url)
    rate_in, rate_out = rates
    where = {j: k for k, j in enumerate(targets)}
    buckets = [Bucket() for _ in targets]
    starts = np.concatenate([[0], np.cumsum(counts)]).tolist()
    counts, positions, dests = counts.tolist(), positions.tolist(), dests.tolist()
    keys, seconds = [], 0.0
    with fetch_shard(src, info, tmp_dir) as fetched:
        if transform or info.sample_ranges is None:
            samples: Iterator = iter_tar(fetched.file)
        else:
            samples = ((s.key, s) for s in ranged_samples(fetched, info, rate_in))
        for g, (key, sample) in enumerate(samples):
            keys.append(key)
            if g >= len(counts):
                break  # more samples than the index says: reported below
            wanted = [i for i in range(starts[g], starts[g + 1]) if dests[i] in where]
            if not wanted:
                continue
            if transform:
                made = recut_sample(key, sample, rate_out, segment_seconds, counts[g], [i - starts[g] for i in wanted])
            else:
                made = [sample if isinstance(sample, RawSample) else encoded_from_parts(key, sample)]
            for i, out in zip(wanted, made):
                buckets[where[dests[i]]].add(positions[i], out)
                seconds += out.seconds
        check_sample_count(src, info, len(keys))
        summary = {"keys": keys if want_keys else None, "node": ray.get_runtime_context().get_node_id(),
                   "seconds": seconds, "ranges": sum(len(e[3]) for b in buckets for e in b if e[0] == "raw")}
        out = [b.sealed() for b in buckets]
    return (summary, *out) if out else summary


def write(keeper, dst_url: str, split: str, j: int, first: int, count: int, *buckets) -> tuple[ShardInfo, int]:
    """Destination shard `j` of `split` (positions first..first+count) from its buckets; (its info, its
    keys digest)."""
    take_credentials(keeper)
    entries = sorted((e for bucket in buckets for e in bucket), key=lambda e: e[1])
    expected = first
    for e in entries:
        if e[1] != expected:
            raise ReshardError(f"{split} shard {j}: item {e[1] - first} came {'twice' if e[1] < expected else 'out of order'}")
        expected += len(e[3]) if e[0] == "raw" else 1
    if expected != first + count:
        raise ReshardError(f"{split} shard {j}: {expected - first} items, planned {count} (the source changed?)")
    with ShardWriter(open_store(dst_url), split, j) as writer:
        for e in entries:
            if e[0] == "raw":
                writer.add_raw(e[2], e[3])
            else:
                writer.add(e[2])
    return writer.info, keys_digest(writer.keys)


def scan(keeper, src_url: str, info: ShardInfo, rate_out: int, segment_seconds: float | None,
         tmp_dir: str | None) -> tuple[list[str], list[int]]:
    take_credentials(keeper)
    return scan_shard(open_store(src_url), info, rate_out, segment_seconds, tmp_dir)


# ------------------------------------------------------------------------------------- driver
class RayResharder(_Resharder):
    """A reshard run whose scans, checks, routing and writes are Ray tasks (the rest is _Resharder's)."""

    def __init__(self, src: Store, dst: Store, src_index, opts, ledger: Ledger, progress: bool, address: str,
                 keeper=None):
        super().__init__(src, dst, src_index, opts, ledger, progress)
        ray = connect(address)
        self.ray, self.keeper, self.say_progress = ray, keeper, progress
        self.cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        nodes = [n for n in ray.nodes() if n["Alive"]]
        self.spill_scale = len(nodes)  # a shuffled wave's routed objects spill on every node's disk
        self.route = ray.remote(route)
        self.write = ray.remote(write).options(max_retries=RETRIES, num_cpus=0.5)
        self.seconds_by_node: Counter = Counter()
        self.last_said = 0.0
        self.say(f"reshard on Ray: {len(nodes)} node(s), {self.cpus} CPUs")

    def say(self, line: str) -> None:
        if self.say_progress:
            print(line, flush=True)

    def get(self, ref):
        """ray.get, a task's own error (ReshardError, a store's) raised as it is: one line, not a Ray trace."""
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, TelucodecError):
                raise e.cause from None
            raise

    def scan(self, infos: list[ShardInfo]) -> None:
        task = self.ray.remote(scan).options(max_retries=RETRIES, scheduling_strategy="SPREAD")
        refs = [task.remote(self.keeper, self.src.url, info, self.rate_out, self.opts.segment_seconds,
                            self.opts.tmp_dir) for info in infos]
        for info, ref in zip(infos, refs):
            keys, counts = self.get(ref)
            self.tally.scanned(info, keys, counts)

    def intact(self, infos: list[dict]) -> list[bool]:
        """Re-hashed by tasks, 8 shards each, all at once."""
        task = self.ray.remote(verify).options(max_retries=RETRIES)
        refs = [task.remote(self.keeper, self.dst.url, infos[i:i + 8]) for i in range(0, len(infos), 8)]
        return [ok for ref in refs for ok in self.get(ref)]

    def make(self, plan: SplitPlan, shards: set[int]) -> None:
        """Route every source shard the wave needs, in order, with 2 tasks per CPU in flight; write each
        destination shard once the last source feeding it is routed."""
        wave = np.array(sorted(shards))
        routes, feeding = [], Counter()
        for s, info in enumerate(plan.sources):
            positions, dests = plan.destinations(s)
            targets = sorted(set(dests[np.isin(dests, wave)].tolist()))
            if targets or not self.tally.has_scan(info.name):
                routes.append((s, positions, dests, targets))
                feeding.update(targets)
        parts: dict[int, list] = defaultdict(list)
        routing: deque = deque()
        writing: deque = deque()
        rates = (self.src_index.sample_rate, self.rate_out)
        try:
            for s, positions, dests, targets in routes:
                info = plan.sources[s]
                refs = self.route.options(num_returns=1 + len(targets), max_retries=RETRIES, num_cpus=1,
                                          scheduling_strategy="SPREAD").remote(
                    self.keeper, self.src.url, info, rates, self.opts.segment_seconds, self.transform,
                    plan.item_counts(s), positions, dests, targets, not self.tally.has_scan(info.name),
                    self.opts.tmp_dir)
                refs = refs if targets else [refs]
                routing.append((info, refs[0]))
                for j, ref in zip(targets, refs[1:]):
                    parts[j].append(ref)
                    feeding[j] -= 1
                    if not feeding[j]:
                        writing.append(self.write.remote(self.keeper, self.dst.url, plan.split, j,
                                                         int(plan.bounds[j]), plan.shard_samples(j), *parts.pop(j)))
                self.land(routing, writing, 2 * self.cpus)
            self.land(routing, writing, 0)
        except BaseException:
            for ref in writing:
                self.ray.cancel(ref, force=True)
            raise
        if parts:
            raise ReshardError(f"{plan.split}: shards {sorted(parts)} were not fed by every source (a bug)")
        self.tally.save_scans()

    def land(self, routing: deque, writing: deque, limit: int) -> None:
        """Take results, oldest first, until at most `limit` routes and `limit` writes are in flight."""
        while len(routing) > limit:
            info, ref = routing.popleft()
            summary = self.get(ref)
            if summary["keys"] is not None:
                self.tally.scanned(info, summary["keys"], None, save=False)
            self.tally.read(info, summary["ranges"])
            self.seconds_by_node[summary["node"]] += summary["seconds"]
        while len(writing) > limit:
            info, digest = self.get(writing.popleft())
            self.tally.shard_written(info, digest, placed=True)
            if time.monotonic() - self.last_said > 10:
                self.last_said = time.monotonic()
                self.say(f"reshard: {len(self.tally.done)} shards, {sum(self.seconds_by_node.values()) / 3600:.2f} h "
                         f"audio routed, {len(self.seconds_by_node)} node(s) at work so far")

    def node_shares(self) -> dict[str, float]:
        total = sum(self.seconds_by_node.values()) or 1.0
        return {node: seconds / total for node, seconds in self.seconds_by_node.most_common()}

