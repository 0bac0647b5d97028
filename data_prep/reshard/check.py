"""The last word before a reshard writes index.json: does the destination hold exactly what the plan
promised? Every planned shard, the source's keys (or the keys derived from them when re-cutting) as a
multiset, and the source's seconds within the rounding that cuts and resampling allow. Pure: it reads
the run's scan and done records, not the store.

    check_split(plan, done, scans, rate_out, resampled)   # raises ReshardError on a mismatch
"""

from __future__ import annotations

from data_prep.reshard.plan import ReshardError, SplitPlan
from pipeline.storage.shards import ShardInfo, shard_name


def check_split(plan: SplitPlan, done: dict[str, dict], scans: dict[str, dict], rate_out: int,
                resampled: bool) -> None:
    """Raise unless the destination split holds exactly the planned keys and the source's seconds."""
    names = [shard_name(plan.split, j) for j in range(plan.n_shards)]
    missing = [n for n in names if n not in done]
    if missing:
        raise ReshardError(f"{plan.split}: destination shards missing: {', '.join(missing[:5])}")
    infos = [ShardInfo.from_record(done[n]["info"]) for n in names]
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
