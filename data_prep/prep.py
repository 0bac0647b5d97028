"""`telucodec prep`: raw audio -> clipped, segmented, split WebDataset shards on a store.

    summary = run_prep(["corpus/manifest.tsv"], "s3://bucket/te", PrepConfig())

Per file (in a process pool, prep_file.py): decode, mix to mono, resample (soxr), optional
loudness, trim silence, cut into segments, clip each to [-1, 1] counting the clipped samples,
FLAC-encode; streamed, so an hour-long file takes no more memory than a short one. The parent
writes the results in a fixed order into `{split}-NNNNNN.tar` shards, so the same sources and
config always give the same shards, byte for byte. A file the decoder rejects, or whose worker
process dies on it (alone, on a second try: `ordered_map`), is listed in rejects.jsonl with the
reason, and the run goes on.

Resumable: after each shard lands, a record `_prep/{split}-NNNNNN.json` saves the shard's hash and
the position in the source list it ends at. A re-run with the same sources and config keeps every
shard whose hash still matches and carries on from there; `index.json` is written last and
`_prep/` is removed after it, so only a finished dataset is ever visible.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import tempfile
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path

from data_prep.dataset_job import DatasetJob, DatasetProgress, RunRecords, claim_destination, ordered_map
from data_prep.prep_file import FileJob, ItemResult, process_job, worker_died
from data_prep.sources import (PLAIN_FILES, SourceError, SourceItem, batch_key, file_identity, item_bytes, printable,
                              scan_sources, unlisted_paths)
from pipeline.config import PrepConfig, to_dict
from pipeline.errors import TelucodecError
from pipeline.storage.shards import (SPLITS, DatasetIndex, ShardInfo, ShardWriter, load_index, parse_shard_name,
                             shard_matches, write_index)
from pipeline.storage.store import Store, is_remote, open_store

REJECTS_NAME = "rejects.jsonl"
BATCH_ITEMS, CONTAINER_SPLITS = 256, 4
"""Most items of one container (parquet row group, tar.gz) one worker takes in one job (what a job
holds for the parent, and the progress's steps, stay bounded), and most jobs a container is cut
into for every worker to have some when there is little work. Each job reads its container from
the start up to its last item (a tar.gz is a stream; a row group's pages hold no index), so a
container cut into k jobs is read ~(k+1)/2 times over: a hub row group of 100 rows is one job, or
up to 4 (2.5 times over) on many workers; a FLEURS archive of ~2,300 members nine, on any number."""
FILES_PER_JOB, JOB_BYTES = 32, 16 << 20
"""Most plain files, and bytes of them, one worker takes in one job: a job costs ~0.8 ms of CPU of
its own (sent to a worker, its results sent back), ~13% of an 8-second file's prep, and only the
first of a job's remote files waits out its GET, the rest fetched ahead as the worker goes; but a
job of long files would hold back the progress and leave the other workers idle at the end (a file
larger than JOB_BYTES is a job alone)."""


class PrepError(TelucodecError, RuntimeError):
    """Prep cannot run (bad sources, a different dataset at the destination, nothing usable)."""


PREP = DatasetJob(
    records="_prep/", start_record="plan.json", outputs=(REJECTS_NAME,), error=PrepError,
    index_fingerprint=lambda index: index.lineage.get("fingerprint"), overwrite_restarts=True,
    refusals={"dataset": "{url} already holds a different dataset (use --overwrite to replace it)",
              "run": "{url} holds an unfinished prep of other sources or another config "
                     "(re-run that command to finish it, or use --overwrite)",
              "leftovers": "{url} already holds shards that are not from this prep (use --overwrite)"})


@dataclass
class SplitProgress:
    """Where a split stands: shards done, the position to go on from, and tallies so far."""
    shards: list[ShardInfo] = field(default_factory=list)
    cursor: tuple[int, int] = (0, 0)
    """(item position in the split, segment index) of the next sample to write."""
    rejects: list[dict] = field(default_factory=list)
    files_ok: int = 0
    clipped_files: int = 0
    clipped_samples: int = 0

    def record(self) -> dict:
        return {"shard": asdict(self.shards[-1]), "cursor": list(self.cursor), "rejects": self.rejects,
                "files_ok": self.files_ok, "clipped_files": self.clipped_files,
                "clipped_samples": self.clipped_samples}


@dataclass
class PrepSummary:
    url: str
    splits: dict
    samples: int
    files_ok: int
    clipped_files: dict
    clipped_samples: int
    rejects: list[dict]
    rejects_url: str
    resumed_shards: int = 0
    already_complete: bool = False
    nodes: dict = field(default_factory=dict)
    """Ray prep: each node's share of the audio it encoded (node id -> fraction)."""


def run_prep(sources: list[str], out_url: str, cfg: PrepConfig, fmt: str = "auto",
             overwrite: bool = False, progress: bool = True, allow_outside: bool = False,
             columns: dict[str, str] | None = None, ray_address: str | None = None, keeper=None) -> PrepSummary:
    """Prep `sources` into a dataset at `out_url`; resumes an interrupted run of the same command.
    With `ray_address` ("auto", "local" or host:port) the work fans out over that Ray cluster
    (`data_prep.cluster`; `keeper`: a submitted job's credentials for its tasks); the dataset is the
    same, byte for byte."""
    cluster = None
    if ray_address is not None:
        from data_prep.cluster import RayPrep

        cluster = RayPrep(ray_address, cfg, progress, keeper)
    try:
        scan = scan_sources(sources, fmt, allow_outside, columns)
    except SourceError as e:
        raise PrepError(str(e)) from None
    if not scan.items and not scan.rejects:
        raise PrepError(f"no audio files found in {', '.join(sources)}")
    if cluster:
        cluster.check_sources(sources)
    plan = plan_splits(scan.items, cfg)
    # local files' identities, each read once: by tasks on a cluster's nodes, else here
    identities = (cluster.identities(scan.items) if cluster
                  else {path: file_identity(path) for path in unlisted_paths(scan.items)})
    fingerprint = prep_fingerprint(plan, cfg, identities)
    store = open_store(out_url)
    records = RunRecords(store, PREP, fingerprint)
    if claim_destination(records, overwrite) == "done":
        return summary_from_index(store, load_index(store))

    verified = cluster.verify_recorded(records) if cluster else None
    state = {split: resume_split(records, split, verified) for split in plan}
    resumed = sum(len(s.shards) for s in state.values())
    # In source order, each split's items still in their order: a container's items stay side by
    # side for one worker to read together, and each split's shards come out as they always do.
    todo = sorted(((split, pos, item) for split, items in plan.items()
                   for pos, item in enumerate(items) if pos >= state[split].cursor[0]), key=lambda t: t[2].name)
    spill = tempfile.TemporaryDirectory(prefix="telucodec-prep-")  # long files' segments, worker -> here
    with PrepProgress(len(todo), enabled=progress and cluster is None) as bar, spill:
        workers = cluster.cpus if cluster else (cfg.workers or os.cpu_count() or 1)
        batches = batched(todo, workers, identities)
        jobs = [FileJob(tuple(item for _, _, item in batch), cfg, None if cluster else spill.name) for batch in batches]
        sink = cluster.sink(records, bar) if cluster else LocalSink(records, bar)
        results = cluster.results(jobs) if cluster else ordered_map(process_job, jobs, cfg.workers, on_death=worker_died)
        with closing(results) as results:
            for batch, batch_results in zip(batches, results):
                for (split, pos, item), result in zip(batch, batch_results):
                    add_item_result(sink, cfg, split, pos, item, result, state[split], bar)
        sink.close_all(state)
    summary = finish(records, state, scan.rejects, cfg, sources, resumed)
    if cluster:
        summary.nodes = cluster.node_shares()
    return summary


class LocalSink:
    """Shards written here, one at a time, each recorded as it lands."""

    def __init__(self, records: RunRecords, bar: "PrepProgress"):
        self.records, self.bar = records, bar
        self.open: dict[str, ShardWriter] = {}

    def writer(self, split: str, n: int) -> ShardWriter:
        if split not in self.open:
            self.open[split] = ShardWriter(self.records.store, split, n)
        return self.open[split]

    def close(self, split: str, state: "SplitProgress") -> None:
        close_shard(self.records, self.open.pop(split), state, self.bar)

    def close_all(self, state: dict[str, "SplitProgress"]) -> None:
        for split in list(self.open):
            self.close(split, state[split])


def batched(todo: list[tuple[str, int, SourceItem]], workers: int,
            identities: dict) -> list[list[tuple[str, int, SourceItem]]]:
    """Consecutive items of one container (same `batch_key`) together, cut into equal jobs of at
    most BATCH_ITEMS, or into up to CONTAINER_SPLITS when the work is small (4 jobs a worker);
    consecutive plain files at most FILES_PER_JOB and JOB_BYTES (fewer when the work is small),
    local files' sizes from their `identities` (as read for the fingerprint: on a cluster by its
    nodes, for the driver may not see the files)."""
    size = max(1, len(todo) // (4 * workers))
    batches: list[list] = []
    for key, run in itertools.groupby(todo, key=lambda entry: batch_key(entry[2])):
        run = list(run)
        if key != PLAIN_FILES:
            parts = max(math.ceil(len(run) / BATCH_ITEMS), min(CONTAINER_SPLITS, math.ceil(len(run) / size)))
            batches += [run[i * len(run) // parts:(i + 1) * len(run) // parts] for i in range(parts)]
            continue
        batch, held, most = [], 0, min(size, FILES_PER_JOB)  # held: the bytes of the batch's files
        for entry in run:
            nbytes = item_bytes(entry[2], identities)
            if not batch or len(batch) == most or held + nbytes > JOB_BYTES:
                batch, held = [], 0
                batches.append(batch)
            batch.append(entry)
            held += nbytes
    return batches


def plan_splits(items: list[SourceItem], cfg: PrepConfig) -> dict[str, list[SourceItem]]:
    """Items per split, by speaker (or path when no speaker): a speaker never straddles splits.

    Within each population (files with a speaker, files without) groups are ranked by a hash of
    their name; the first share goes to test, the next to val. A population of at least three
    groups gives each held-out split at least one. With prep.keep_source_splits an item whose
    corpus names its split (SOURCE_SPLITS) stays in it.
    """
    def group(item: SourceItem) -> str:
        return f"speaker:{item.speaker}" if item.speaker else f"path:{item.name}"

    split_of: dict[str, str] = {}
    for population in ("speaker:", "path:"):
        groups = sorted({group(i) for i in items if group(i).startswith(population)},
                        key=lambda g: hashlib.sha256(g.encode("utf-8", "surrogatepass")).hexdigest())
        n = len(groups)
        n_test, n_val = (0 if f <= 0 or n < 3 else max(1, round(n * f)) for f in (cfg.test_fraction, cfg.val_fraction))
        for i, g in enumerate(groups):
            split_of[g] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    plan: dict[str, list[SourceItem]] = {s: [] for s in SPLITS}
    for item in items:
        kept = SOURCE_SPLITS.get(item.source_split) if cfg.keep_source_splits else None
        plan[kept or split_of[group(item)]].append(item)
    return {s: v for s, v in plan.items() if v}


SOURCE_SPLITS = {"train": "train", "valid": "val", "validation": "val", "dev": "val", "test": "test",
                 "test_known": "test", "test_unknown": "test"}
"""A corpus's own split names -> ours."""
ADDED_KEYS = {"keep_source_splits": False}
"""Config keys added since datasets were first fingerprinted: at these values they are left out, so an
older unfinished prep of the same sources still resumes."""


def prep_fingerprint(plan: dict[str, list[SourceItem]], cfg: PrepConfig, identities: dict) -> str:
    """Same sources and same config -> same fingerprint. A source is its name and its file's size,
    mtime and sampled content (`file_identity`, in `identities` for the files no listing gave): a
    file edited in place, even to the same size, makes another dataset, not a resume of the old one."""
    config = {k: v for k, v in to_dict(cfg).items() if k not in ADDED_KEYS or v != ADDED_KEYS[k]}
    desc = {"config": config | {"workers": None},
            "items": {s: [(i.name, *(i.identity or identities[i.path])) for i in items] for s, items in plan.items()}}
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()


def resume_split(records: RunRecords, split: str, verified: dict[str, bool] | None = None) -> SplitProgress:
    """Progress of `split` from its records, keeping only shards whose digest still matches
    (`verified`: shard name -> match, where they were checked in parallel)."""
    state = SplitProgress()
    names = records.names(f"{split}-")
    for n, name in enumerate(names):
        rec = records.get(name)
        info = ShardInfo.from_record(rec["shard"])
        matches = verified[info.name] if verified is not None and info.name in verified else None
        if matches is None:
            matches = shard_matches(records.store, info)
        if name != f"{split}-{n:06d}.json" or not matches:
            for stale in names[n:]:
                records.delete(stale)
            break
        state.shards.append(info)
        state.cursor = tuple(rec["cursor"])
        state.rejects = rec["rejects"]  # records hold running totals
        state.files_ok, state.clipped_files = rec["files_ok"], rec["clipped_files"]
        state.clipped_samples = rec["clipped_samples"]
    return state


def add_item_result(sink, cfg: PrepConfig, split: str, pos: int, item: SourceItem,
                    result: ItemResult, state: SplitProgress, bar: "PrepProgress") -> None:
    """Append one file's segments to its split's open shard, closing shards as they fill (`sink`: a
    LocalSink, or data_prep.cluster's, whose shards are written by tasks)."""
    skip = state.cursor[1] if pos == state.cursor[0] else 0
    for seg, sample in enumerate(result.samples):  # read back from the worker's spill file if it has one
        if seg < skip:
            continue  # written before an interruption
        writer = sink.writer(split, len(state.shards))
        writer.add(sample)
        bar.audio(sample.seconds)
        last = seg == len(result.samples) - 1
        if last:
            _count_file(state, result)
        state.cursor = (pos + 1, 0) if last else (pos, seg + 1)
        if writer.samples >= cfg.shard_max_samples or writer.nbytes >= cfg.shard_max_mb * 1e6:
            sink.close(split, state)
    if not result.samples:
        _count_file(state, result)
        state.cursor = (pos + 1, 0)
    result.samples.discard()
    bar.file_done(result.reject)


def _count_file(state: SplitProgress, result: ItemResult) -> None:
    if result.reject:
        state.rejects.append(result.reject)
        return
    state.files_ok += 1
    state.clipped_files += result.clipped_samples > 0
    state.clipped_samples += result.clipped_samples


def close_shard(records: RunRecords, writer: ShardWriter, state: SplitProgress, bar: "PrepProgress") -> None:
    """Put the shard to the store, then its progress record (the record is what makes it count)."""
    if writer.samples == 0:
        writer.abort()
        return
    state.shards.append(writer.close())
    records.put(f"{writer.split}-{len(state.shards) - 1:06d}.json", state.record())
    bar.shard_done()


def finish(records: RunRecords, state: dict[str, SplitProgress], scan_rejects: list[dict], cfg: PrepConfig,
           sources: list[str], resumed: int) -> PrepSummary:
    """Write rejects.jsonl, then index.json (last), then drop the progress records."""
    store = records.store
    rejects = sorted(scan_rejects + [r for s in state.values() for r in s.rejects], key=lambda r: r["path"])
    store.put_text(REJECTS_NAME, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects))
    shards = [info for split in SPLITS if split in state for info in state[split].shards]
    if not shards:
        raise PrepError(f"nothing usable: all {len(rejects)} file(s) were rejected "
                        f"(see {store.join(REJECTS_NAME)})")
    lineage = {"fingerprint": records.fingerprint, "sources": [s if is_remote(s) else printable(str(Path(s).absolute())) for s in sources],
               "files_ok": sum(s.files_ok for s in state.values()),
               "clipped_files": {k: s.clipped_files for k, s in state.items()},
               "clipped_samples": sum(s.clipped_samples for s in state.values()), "rejects": len(rejects)}
    index = DatasetIndex(shards=shards, sample_rate=cfg.sample_rate, config={"prep": to_dict(cfg)}, lineage=lineage)
    write_index(store, index)
    records.clear()
    keep = {s.name for s in shards}
    for obj in store.list():
        if parse_shard_name(obj.key) and obj.key not in keep:
            store.delete(obj.key)
    return summary_from_index(store, index, resumed=resumed, rejects=rejects, complete=False)


def summary_from_index(store: Store, index: DatasetIndex, resumed: int = 0, rejects: list | None = None,
                       complete: bool = True) -> PrepSummary:
    if rejects is None:
        text = store.get_text(REJECTS_NAME) if store.exists(REJECTS_NAME) else ""
        rejects = [json.loads(line) for line in text.splitlines() if line.strip()]
    splits = index.splits
    return PrepSummary(url=store.url, splits=splits, samples=sum(t["samples"] for t in splits.values()),
                       files_ok=index.lineage.get("files_ok", 0),
                       clipped_files=index.lineage.get("clipped_files", {}),
                       clipped_samples=index.lineage.get("clipped_samples", 0), rejects=rejects,
                       rejects_url=store.join(REJECTS_NAME), resumed_shards=resumed, already_complete=complete)


class PrepProgress(DatasetProgress):
    """A rich progress bar: files, audio hours written, shards, rejects."""

    def __init__(self, total_files: int, enabled: bool = True):
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

        super().__init__([TextColumn("prep"), BarColumn(), MofNCompleteColumn(), TextColumn("files"),
                          TextColumn("{task.fields[info]}"), TimeRemainingColumn()], enabled)
        self.rejects = 0
        self.task = self.add_task("prep", total_files)

    def file_done(self, reject: dict | None) -> None:
        self.rejects += reject is not None
        self.advance(1)

    def info(self) -> str:
        return f"{self.seconds / 3600:.3f} h audio · {self.shards} shards · {self.rejects} rejected"
