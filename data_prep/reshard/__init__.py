"""Reshard a dataset store to store: new shard sizes, balanced for N ranks, shuffled, re-cut or resampled.

    telucodec reshard s3://bucket/te s3://bucket/te-r8 --shard-mb 256 --ranks 8 --shuffle --seed 1
    summary = reshard("s3://bucket/te", "/data/te-5s", ReshardOptions(segment_seconds=5.0))

Planned before any audio moves, streamed, resumable, checked against the source before index.json
(docs/design.md, "Reshard").

The package, in the order a reshard uses it:
    plan.py      options and errors, and where every output item goes (pure: no store I/O, no threads)
    recut.py     what happens to one sample when re-cutting or resampling (run in worker processes)
    run.py       `reshard`: claim the destination, stream the source, make and record the shards;
                 `RunTally` is the one owner of the run's records, counters and progress bar
    cluster.py   the same run fanned out over a Ray cluster (`reshard(..., ray_address=...)`)
    transfer.py  fetch a source shard checked against its index, fill a destination shard, bounded uploads
    check.py     the destination against the source, before index.json
"""

from functools import partial

from data_prep.reshard.check import check_split
from data_prep.reshard.cluster import RayResharder
from data_prep.reshard.plan import (ReshardError, ReshardOptions, SplitPlan, keys_digest, plan_split,
                                    select_splits)
from data_prep.reshard.run import RESHARD, ReshardSummary
from data_prep.reshard.run import reshard as _reshard


def reshard(src_url: str, dst_url: str, opts: ReshardOptions = ReshardOptions(), progress: bool = True,
            ray_address: str | None = None, keeper=None) -> ReshardSummary:
    """Copy the dataset at `src_url` to `dst_url` in a new shape; the source is never modified. With
    `ray_address` ("auto", "local" or HOST:PORT) the work fans out over that Ray cluster
    (cluster.py), to the same bytes; `keeper` holds a submitted job's credentials."""
    engine = None if ray_address is None else partial(RayResharder, address=ray_address, keeper=keeper)
    return _reshard(src_url, dst_url, opts, progress, engine)


__all__ = ["RESHARD", "ReshardError", "ReshardOptions", "ReshardSummary", "SplitPlan", "check_split",
           "keys_digest", "plan_split", "reshard", "select_splits"]
