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
    transfer.py  fetch a source shard checked against its index, fill a destination shard, bounded uploads
    check.py     the destination against the source, before index.json
"""

from data_prep.reshard.check import check_split
from data_prep.reshard.plan import (ReshardError, ReshardOptions, SplitPlan, keys_digest, plan_split,
                                    select_splits)
from data_prep.reshard.run import RESHARD, ReshardSummary, reshard

__all__ = ["RESHARD", "ReshardError", "ReshardOptions", "ReshardSummary", "SplitPlan", "check_split",
           "keys_digest", "plan_split", "reshard", "select_splits"]
