"""Reshard a dataset store to store: new shard sizes, balanced for N ranks, shuffled, re-cut or resampled.

    telucodec reshard s3://bucket/te s3://bucket/te-r8 --shard-mb 256 --ranks 8 --shuffle --seed 1
    summary = reshard("s3://bucket/te", "/data/te-5s", ReshardOptions(segment_seconds=5.0))

The destination is planned before any audio moves. Every output item (a source sample, or one segment
of it when re-cutting) gets a destination position: its place in source order, or a seeded permutation
with `shuffle`. Each split's positions are cut into K shards whose sample counts differ by at most one,
K a multiple of `ranks`. Re-cutting needs each sample's length, so it first scans the source once.

Source shards then stream through, a few fetched ahead by threads; a plain re-pack copies each sample's
tar bytes as they are (the byte range the source index records; an index written before ranges
existed makes it parse the tar and write the same bytes, slower), a re-cut or resample decodes and
encodes in worker processes. In source order a destination shard fills front to back and goes up (in
an upload thread) as soon as it is full. Shuffled, items are appended to a local spill file and each
shard is written in position order once its last item is in; shuffled shards are made in waves that
fit `spill_gb` of local disk, one source pass per wave. Memory holds a few samples and offsets; disk holds a few shards and one wave's
spill, however large the dataset.

The source is only read. Each finished destination shard leaves a record under `_reshard/` at the
destination; a re-run of the same command keeps the shards whose digest still matches and makes the
rest again, deterministically. Before index.json is written (last, with the lineage) the destination
is checked against the source: the same multiset of keys (or derived keys) and the same seconds per
split; a mismatch raises. Then `_reshard/` is deleted.

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
