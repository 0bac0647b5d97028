"""Prep and reshard on one machine against the same on a Ray cluster of 1 and of 2 nodes with the
same total cores, side by side in one run.

    .venv/bin/python benchmarks/prep_ray_bench.py [--minutes 30] [--cores 2]

Prints audio seconds per wall second per core for each, the scaling efficiency from 1 node to 2
(per-core rate on 2 nodes / on 1; 1.0 is perfect), the load average before each run (a busy machine
reads as poor scaling), whether each dataset is byte-identical to the one-machine one, and the
bytes that travel beyond the one-machine path (every encoded sample once through Ray's object
store, the size of the shards). The nodes of `ray.cluster_utils.Cluster` are processes on this
machine, so this measures the engine's overhead and balance, not a network.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from audio_fixtures import write_manifest_corpus  # noqa: E402
from data_prep.prep import run_prep  # noqa: E402
from pipeline.config import PrepConfig  # noqa: E402
from pipeline.storage.shards import load_index  # noqa: E402


def digest(folder: Path) -> str:
    """Of a dataset's shards and rejects (index.json names its own path)."""
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.suffix in (".tar", ".jsonl"):
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


RESHARDS = {"reshard re-pack, shuffled": dict(shard_mb=16, shuffle=True),
            "reshard re-cut 4 s, 8 kHz": dict(segment_seconds=4.0, sample_rate=8000, shuffle=True)}
"""The reshards timed, of the prepped dataset: bytes moved as they are, and decoded, resampled and
encoded again."""


def run_jobs(tmp: Path, tag: str, sources: list[str], cfg: PrepConfig, cores: int, address: str | None) -> dict:
    """Prep, then each of RESHARDS of its dataset: job -> (wall s, load average before, digest, node shares)."""
    from data_prep.reshard import ReshardOptions, reshard

    out, rows = tmp / tag, {}
    load, started = os.getloadavg()[0], time.perf_counter()
    summary = run_prep(sources, str(out / "prep"), cfg, progress=False, ray_address=address)
    rows["prep"] = (time.perf_counter() - started, load, digest(out / "prep"), summary.nodes)
    for job, options in RESHARDS.items():
        load, started = os.getloadavg()[0], time.perf_counter()
        done = reshard(str(out / "prep"), str(out / job), ReshardOptions(workers=cores, **options), progress=False,
                       ray_address=address)
        rows[job] = (time.perf_counter() - started, load, digest(out / job), done.nodes)
    return rows


def on_cluster(node_cpus: list[int], *args) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": node_cpus[0]})
    for cpus in node_cpus[1:]:
        cluster.add_node(num_cpus=cpus)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        return run_jobs(*args, cluster.address)
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="audio to prep (8 s files)")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2, help="cores in every setup")
    args = ap.parse_args()
    cfg = PrepConfig(workers=args.cores, shard_max_mb=16)
    setups = {"one machine (process pool)": None, "Ray, 1 node": [args.cores], f"Ray, {args.cores} nodes": [1] * args.cores}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest = write_manifest_corpus(tmp / "src", n_files=int(args.minutes * 60 / 8), n_speakers=20, seconds=8.0)
        sources = [str(manifest)]
        results = {}
        for n, (name, cpus) in enumerate(setups.items()):
            call = (tmp, f"setup{n}", sources, cfg, args.cores)
            results[name] = run_jobs(*call, None) if cpus is None else on_cluster(cpus, *call)
        audio_s = sum(t["seconds"] for t in load_index(str(tmp / "setup0" / "prep")).splits.values())
        shard_bytes = sum(p.stat().st_size for p in (tmp / "setup0" / "prep").glob("*.tar"))

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}; {args.cores} cores in every setup")
    print(f"audio: {audio_s / 60:.1f} min, {shard_bytes / 1e6:.1f} MB of shards")
    one_machine, one_node, many = setups
    for job in results[one_machine]:
        print(f"\n{job}")
        print(f"  {'setup':28} {'wall s':>8} {'audio s/s/core':>15} {'load avg before':>16}  same output  node shares")
        rates = {}
        for name, rows in results.items():
            took, load, dig, nodes = rows[job]
            rates[name] = audio_s / took / args.cores
            same = "reference" if name == one_machine else "yes" if dig == results[one_machine][job][2] else "NO"
            shares = " ".join(f"{share:.0%}" for share in nodes.values())
            print(f"  {name:28} {took:8.1f} {rates[name]:15.1f} {load:16.2f}  {same:11}  {shares}")
        print(f"  scaling efficiency 1 -> {args.cores} nodes (same cores): {rates[many] / rates[one_node]:.2f}; "
              f"Ray 1 node / one machine: {rates[one_node] / rates[one_machine]:.2f}")
    print(f"\nbeyond the one-machine path: prep sends each encoded sample once through Ray's object store "
          f"(~{shard_bytes / 1e6:.1f} MB), a reshard each routed sample once (about its output's size); the "
          "stores write and read nothing more")


if __name__ == "__main__":
    main()
