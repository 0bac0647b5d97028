"""Prep fanned out over a Ray cluster: the dataset one machine would make, byte for byte.

    run_prep(sources, "s3://bucket/te", cfg, ray_address="auto")    # `telucodec prep ... --ray`

Every step that grows with the corpus runs as Ray tasks: the sources' identities for the
fingerprint, the re-hash of shards a resumed run keeps, decoding and encoding (`encode_job`: one
file, or a container's rows, as on one machine), and writing the shards (`write_shard`, several at
once, on any node). The driver keeps only sizes: it cuts shards by the rule one machine uses (a tar
grows by `tar_bytes` per sample), so shard boundaries depend on the samples alone, not on the
number of nodes. Encoded samples wait in Ray's object store (spilled to disk when it fills) until
their shard's task writes them.

Faults: tasks are retried on another node when theirs is lost (Ray's `max_retries`; a lost node's
encoded samples are rebuilt from lineage). A job whose worker process dies every time is split
into its files, and a file that still kills its worker is a reject, as on one machine. A shard's
run record is written once it and every earlier shard of its split have landed, so a driver that is
killed (or a stopped job) resumes like a killed one-machine prep: the same command again.
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from typing import Iterator

from data_prep.prep_file import FileJob, ItemResult, process_job, rejected, retry_parts
from data_prep.sources import SourceItem, file_identity, unlisted_paths
from pipeline.config import PrepConfig
from pipeline.errors import TelucodecError
from pipeline.storage.shards import EncodedSample, ShardInfo, ShardWriter, shard_matches
from pipeline.storage.store import is_remote, open_store

RETRIES = 3
"""Times a task is run again after its node or worker process is lost."""
ALONE_RETRIES = 1
"""The same for the parts of a job whose task died on every try (the culprit is among them)."""
TAR_BLOCK = 512


class ClusterError(TelucodecError, RuntimeError):
    """The Ray cluster cannot be used (no cluster at the address)."""


def tar_bytes(sample: EncodedSample) -> int:
    """What a sample adds to its shard's tar (ShardWriter.nbytes): a header and the padded data of
    each of its two members."""
    padded = (-(-len(sample.flac) // TAR_BLOCK) + -(-len(sample.meta) // TAR_BLOCK)) * TAR_BLOCK
    return 2 * TAR_BLOCK + padded


@dataclass(frozen=True)
class Stub:
    """An encoded sample as the driver sees it: its sizes, and where its bytes wait."""
    key: str
    seconds: float
    nbytes: int
    payload: object
    """The ObjectRef of its job's encoded samples."""
    item: int
    index: int


class Stubs(list):
    """An item's samples as stubs (what `add_item_result` iterates)."""

    def discard(self) -> None:
        pass


@dataclass
class PlannedShard:
    """A shard being cut: the writer `add_item_result` fills, counting what ShardWriter would."""
    split: str
    n: int
    stubs: list[Stub] = field(default_factory=list)
    samples: int = 0
    nbytes: int = 0

    def add(self, stub: Stub) -> None:
        self.stubs.append(stub)
        self.samples += 1
        self.nbytes += stub.nbytes


def connect(address: str):
    """Ray, joined to the cluster at `address` ("auto", "local" or HOST:PORT) unless already joined."""
    import ray

    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except ConnectionError as e:
            raise ClusterError(f"no Ray cluster at {address!r} ({str(e).splitlines()[0]}): start one "
                               "(`ray start --head`), or give its address with --ray HOST:PORT") from None
    return ray


# ------------------------------------------------------------------------------------- tasks
def take_credentials(keeper) -> None:
    """Credentials a submitted job was given (held by its Keeper actor, jobs/launch/credentials.py)
    into this worker's environment, before anything reads the store: a Ray worker does not inherit
    what the driver set after the cluster started."""
    if keeper is not None:
        import ray

        os.environ.update(ray.get(keeper.get.remote()))


def encode_job(keeper, job: FileJob) -> tuple[list[dict], list[list[EncodedSample]]]:
    """A job's items -> (per item: its tallies and the sizes of its samples; its encoded samples)."""
    import ray

    take_credentials(keeper)
    node = ray.get_runtime_context().get_node_id()
    summaries, payload = [], []
    for result in process_job(job):
        samples = list(result.samples)
        summaries.append({"reject": result.reject, "clipped": result.clipped_samples, "node": node,
                          "samples": [(s.key, s.seconds, tar_bytes(s)) for s in samples]})
        payload.append(samples)
    return summaries, payload


def write_shard(keeper, url: str, split: str, n: int, parts: list[tuple[int, int, int]], *payloads) -> ShardInfo:
    """Write shard `n` of `split` from (payload, item, sample) positions into `payloads` (Ray hands
    them over resolved)."""
    take_credentials(keeper)
    with ShardWriter(open_store(url), split, n) as writer:
        for p, item, index in parts:
            writer.add(payloads[p][item][index])
    return writer.info


def identities(keeper, paths: list[str]) -> list[tuple]:
    take_credentials(keeper)
    return [file_identity(p) for p in paths]


def verify(keeper, url: str, records: list[dict]) -> list[bool]:
    take_credentials(keeper)
    store = open_store(url)
    return [shard_matches(store, ShardInfo.from_record(r)) for r in records]


# ------------------------------------------------------------------------------------- driver
class RayPrep:
    """The Ray side of one `run_prep`: tasks out, results back in order, shards written by tasks."""

    def __init__(self, address: str, cfg: PrepConfig, progress: bool = True, keeper=None):
        ray = connect(address)
        self.ray, self.cfg, self.progress, self.keeper = ray, cfg, progress, keeper
        self.cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.seconds_by_node: Counter = Counter()
        self.shards_landed = 0
        # Spread over the nodes: with Ray's default policy a node still starting its first worker
        # could be passed over for the whole run (seen in CI: 2 of 3 nodes took all the work).
        encode, spread = ray.remote(encode_job), {"num_returns": 2, "num_cpus": 1, "scheduling_strategy": "SPREAD"}
        self.encode = encode.options(max_retries=RETRIES, **spread)
        self.encode_alone = encode.options(max_retries=ALONE_RETRIES, **spread)
        self.write = ray.remote(write_shard).options(max_retries=RETRIES, num_cpus=0.5)
        self.say(f"prep on Ray: {len(ray.nodes())} node(s), {self.cpus} CPUs")

    def say(self, line: str) -> None:
        if self.progress:
            print(line, flush=True)

    def check_sources(self, sources: list[str]) -> None:
        local = [s for s in sources if not is_remote(s)]
        if local and len([n for n in self.ray.nodes() if n["Alive"]]) > 1:
            self.say(f"note: {', '.join(local)} must be readable at the same path on every node "
                     "(shared storage); sources on S3 need nothing")

    def identities(self, items: list[SourceItem]) -> dict:
        """Local files' identities, read by tasks in chunks of 500."""
        paths = unlisted_paths(items)
        chunks = [paths[i:i + 500] for i in range(0, len(paths), 500)]
        task = self.ray.remote(identities).options(max_retries=RETRIES)
        found = self.ray.get([task.remote(self.keeper, c) for c in chunks])
        return {p: tuple(ident) for chunk, got in zip(chunks, found) for p, ident in zip(chunk, got)}

    def verify_recorded(self, records) -> dict[str, bool]:
        """Every recorded shard re-hashed by tasks at once: name -> still as recorded."""
        recs = [records.get(name)["shard"] for name in records.names() if name != records.job.start_record]
        task = self.ray.remote(verify).options(max_retries=RETRIES)
        chunks = [recs[i:i + 8] for i in range(0, len(recs), 8)]
        found = self.ray.get([task.remote(self.keeper, records.store.url, c) for c in chunks])
        return {r["name"]: ok for chunk, oks in zip(chunks, found) for r, ok in zip(chunk, oks)}

    def results(self, jobs: list[FileJob]) -> Iterator[list[ItemResult]]:
        """Each job's results in job order (stubs for its samples), with 4 jobs per CPU in flight."""
        window: deque = deque()
        pending = iter(jobs)
        done_files, total, last_said = 0, sum(len(j.items) for j in jobs), 0.0
        while True:
            while len(window) < 4 * self.cpus and (job := next(pending, None)) is not None:
                window.append((job, *self.encode.remote(self.keeper, job)))
            if not window:
                return
            job, summary_ref, payload_ref = window.popleft()
            results = self._collect(job, summary_ref, payload_ref)
            done_files += len(results)
            if time.monotonic() - last_said > 10:
                last_said = time.monotonic()
                self.say(f"prep: {done_files}/{total} files, {sum(self.seconds_by_node.values()) / 3600:.2f} h audio, "
                         f"{self.shards_landed} shards, {len(self.seconds_by_node)} node(s) at work so far")
            yield results

    def _collect(self, job: FileJob, summary_ref, payload_ref, tries: int = RETRIES + 1) -> list[ItemResult]:
        """A job's results; if its task died on every try, its items run again in parts (all at
        once: a container's in halves, plain files one a task), a part that dies again split in
        turn, as on one machine (`worker_died`)."""
        ray = self.ray
        try:
            summaries = ray.get(summary_ref)
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.ObjectLostError,
                ray.exceptions.RayTaskError) as e:
            how = type(e).__name__
            if len(job.items) == 1:  # its worker died on every try: this file kills its worker
                return [rejected(job.items[0], f"worker died: {how} on {tries} tries")]
            parts = retry_parts(job)
            refs = [self.encode_alone.remote(self.keeper, part) for part in parts]
            return [result for part, (summary, payload) in zip(parts, refs)
                    for result in self._collect(part, summary, payload, tries=ALONE_RETRIES + 1)]
        out = []
        for i, s in enumerate(summaries):
            result = ItemResult(samples=Stubs(Stub(key, seconds, nbytes, payload_ref, i, k)
                                              for k, (key, seconds, nbytes) in enumerate(s["samples"])),
                                reject=s["reject"], clipped_samples=s["clipped"])
            self.seconds_by_node[s["node"]] += sum(seconds for _, seconds, _ in s["samples"])
            out.append(result)
        return out

    def sink(self, records, bar) -> "RaySink":
        return RaySink(self, records, bar)

    def node_shares(self) -> dict[str, float]:
        total = sum(self.seconds_by_node.values()) or 1.0
        return {node: seconds / total for node, seconds in self.seconds_by_node.most_common()}


class RaySink:
    """Shards cut here and written by tasks, several at once; each split's run records are written
    in order as its shards land."""

    def __init__(self, cluster: RayPrep, records, bar):
        self.cluster, self.records, self.bar = cluster, records, bar
        self.open: dict[str, PlannedShard] = {}
        self.in_flight: deque = deque()  # (split, n, ref, record without its shard, state)

    def writer(self, split: str, n: int) -> PlannedShard:
        if split not in self.open:
            self.open[split] = PlannedShard(split, n)
        return self.open[split]

    def close(self, split: str, state) -> None:
        shard = self.open.pop(split)
        if not shard.samples:
            return
        payloads = list(dict.fromkeys(s.payload for s in shard.stubs))
        where = {ref: p for p, ref in enumerate(payloads)}
        parts = [(where[s.payload], s.item, s.index) for s in shard.stubs]
        ref = self.cluster.write.remote(self.cluster.keeper, self.records.store.url, split, shard.n, parts, *payloads)
        record = {"cursor": list(state.cursor), "rejects": list(state.rejects), "files_ok": state.files_ok,
                  "clipped_files": state.clipped_files, "clipped_samples": state.clipped_samples}
        state.shards.append(None)  # its ShardInfo once it lands
        self.in_flight.append((split, shard.n, ref, record, state))
        while len(self.in_flight) > 2 * self.cluster.cpus:
            self.land_first()

    def land_first(self) -> None:
        """Wait for the oldest shard in flight (each split's land in order), then record it."""
        split, n, ref, record, state = self.in_flight.popleft()
        info = self.cluster.ray.get(ref)
        state.shards[n] = info
        self.records.put(f"{split}-{n:06d}.json", {"shard": asdict(info), **record})
        self.bar.shard_done()
        self.cluster.shards_landed += 1

    def close_all(self, state) -> None:
        for split in list(self.open):
            self.close(split, state[split])
        while self.in_flight:
            self.land_first()



def node_names(nodes: dict[str, float]) -> str:
    """'ID… NN%, …' per node, for the summary."""
    return ", ".join(f"{node[:8]} {share:.0%}" for node, share in nodes.items())
