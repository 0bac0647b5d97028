"""Prep on one machine against prep on a Ray cluster of 1 and of 2 nodes with the same total cores,
side by side in one run.

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


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.suffix in (".tar", ".jsonl"):
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def on_cluster(node_cpus: list[int], sources: list[str], out: Path, cfg: PrepConfig) -> tuple[float, dict]:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": node_cpus[0]})
    for cpus in node_cpus[1:]:
        cluster.add_node(num_cpus=cpus)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        started = time.perf_counter()
        summary = run_prep(sources, str(out), cfg, progress=False, ray_address=cluster.address)
        return time.perf_counter() - started, summary.nodes
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="audio to prep (8 s files)")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2, help="cores in every setup")
    args = ap.parse_args()
    cfg = PrepConfig(workers=args.cores, shard_max_mb=16)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest = write_manifest_corpus(tmp / "src", n_files=int(args.minutes * 60 / 8), n_speakers=20, seconds=8.0)
        sources = [str(manifest)]
        rows = []
        load = os.getloadavg()[0]
        started = time.perf_counter()
        summary = run_prep(sources, str(tmp / "one"), cfg, progress=False)
        rows.append(("one machine (process pool)", time.perf_counter() - started, load, None))
        audio_s = sum(t["seconds"] for t in summary.splits.values())
        shard_bytes = sum(p.stat().st_size for p in (tmp / "one").glob("*.tar"))
        reference = digest(tmp / "one")
        for name, cpus in (("Ray, 1 node", [args.cores]), (f"Ray, {args.cores} nodes", [1] * args.cores)):
            load = os.getloadavg()[0]
            out = tmp / name.replace(" ", "_").replace(",", "")
            took, nodes = on_cluster(cpus, sources, out, cfg)
            rows.append((name, took, load, (digest(out) == reference, nodes)))

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}; {args.cores} cores in every setup")
    print(f"audio: {audio_s / 60:.1f} min, {summary.samples} samples, {shard_bytes / 1e6:.1f} MB of shards")
    print(f"{'setup':28} {'wall s':>8} {'audio s/s/core':>15} {'load avg before':>16}  same dataset  node shares")
    rates = {}
    for name, took, load, extra in rows:
        rates[name] = audio_s / took / args.cores
        same, nodes = ("", {}) if extra is None else ("yes" if extra[0] else "NO", extra[1])
        shares = " ".join(f"{share:.0%}" for share in nodes.values())
        print(f"{name:28} {took:8.1f} {rates[name]:15.1f} {load:16.2f}  {same or 'reference':12}  {shares}")
    one, many = rates["Ray, 1 node"], rates[f"Ray, {args.cores} nodes"]
    print(f"scaling efficiency 1 -> {args.cores} nodes (same cores): {many / one:.2f}; "
          f"Ray 1 node / one machine: {one / rates['one machine (process pool)']:.2f}")
    print(f"beyond the one-machine path: ~{shard_bytes / 1e6:.1f} MB through Ray's object store (each encoded "
          f"sample once); the store writes and reads nothing more")


if __name__ == "__main__":
    main()
