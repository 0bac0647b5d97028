"""A submitted job's entry point on the cluster: claim the forwarded credentials, then train (or
prep, or reshard).

    python -m jobs.launch.entry [--credentials gcs://_telucodec_secrets_….zip] .telucodec_job.yaml
    python -m jobs.launch.entry [--credentials ...] .telucodec_stage.json       # prep or reshard

`telucodec submit` stages the resolved config in the job's working dir and, when it forwards
credentials, names their package in the GCS store (jobs/launch/credentials.py). This driver claims
them (reading and deleting the package), so they become its environment variables and, through the
job's Keeper actor, every Ray Train worker's. Only their names are printed. Then it trains with a
plain call (`run_job`), the same `train_job` that `telucodec train` runs; a prep is `run_prep`
fanned out over the job's cluster, its tasks given the credentials through the same Keeper.
"""

from __future__ import annotations

import os
import sys

from pipeline.errors import TelucodecError, environment_problem


def main(argv: list[str]) -> int:
    names: list[str] = []
    if argv[:1] == ["--credentials"]:
        names, argv = claim_credentials(argv[1]), argv[2:]
    print(f"forwarded from the submitting machine: {', '.join(names) or 'no credentials'} (values not shown)",
          flush=True)
    if len(argv) != 1:
        print("usage: python -m jobs.launch.entry [--credentials URI] JOB_CONFIG.yaml", file=sys.stderr)
        return 2
    try:
        run_job(argv[0])
    except TelucodecError as e:  # a user's mistake: one line, no traceback
        print(f"telucodec: error: {e}", file=sys.stderr, flush=True)
        return 2
    except Exception as e:  # the environment's (S3, the file system) gets one line, a bug its traceback
        if (line := environment_problem(e)) is None:
            raise
        print(f"telucodec: error: {line}", file=sys.stderr, flush=True)
        return 2
    return 0


def run_job(config_file: str):
    """Train with the staged config (the shipped base under it, as `telucodec train` layers it), or
    run the staged prep or reshard."""
    if config_file.endswith(".json"):
        return run_stage(config_file)
    from jobs.launch.trainer import train_job
    from pipeline.config import CONFIG_DIR, load_config

    return train_job(load_config([CONFIG_DIR / "base.yaml", config_file]), "auto", say=lambda line: print(line, flush=True))


def run_stage(spec_file: str) -> None:
    """A submitted prep or reshard, fanned out over every node of the job's cluster."""
    import json
    import time
    from pathlib import Path

    import ray

    from jobs.launch import credentials

    from pipeline.config import Config, from_dict
    from pipeline.runs.cost import CostTracker, worker_price
    from pipeline.runs.rundir import RunDir

    spec = json.loads(Path(spec_file).read_text(encoding="utf-8"))
    cfg = from_dict(Config, spec["config"])
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), log_to_driver=True)
    nodes = sum(1 for n in ray.nodes() if n["Alive"])
    # A worker is a node here: its hours priced as a whole instance (cost.instance_type or the cloud's).
    ledger = CostTracker(cfg, RunDir(spec["run_dir"]), workers=nodes, started=time.time(),
                         price=worker_price(cfg, per_node=True))
    ledger.begin(None, 0, stage=spec["stage"], nodes=nodes)
    try:
        run_stage_call(spec, cfg, credentials.keeper())
    except BaseException as e:
        ledger.close("crashed", 0, error=f"{type(e).__name__}: {e}"[:300])
        raise
    totals = ledger.close("finished", 0)
    print(f"cost: {totals['worker_hours']:.4f} node-hours, ${totals['usd']:.4f} (ledger {spec['run_dir']})", flush=True)


def run_stage_call(spec: dict, cfg, keeper) -> None:
    from data_prep.cluster import node_names

    if spec["stage"] == "prep":
        from data_prep.prep import run_prep

        summary = run_prep(spec["sources"], spec["out"], cfg.prep, fmt=spec["fmt"],
                           overwrite=spec["overwrite"], allow_outside=spec["allow_outside"], columns=spec["columns"],
                           ray_address=os.environ.get("RAY_ADDRESS", "auto"), keeper=keeper)
        for split, t in summary.splits.items():
            print(f"{split}: {t['shards']} shards, {t['samples']} samples, {t['seconds'] / 3600:.3f} h", flush=True)
        print(f"prep -> {summary.url}: {summary.files_ok} files, {len(summary.rejects)} rejected "
              f"({summary.rejects_url}); nodes: "
              + node_names(summary.nodes), flush=True)
    else:
        from data_prep.reshard import ReshardOptions, reshard

        options = spec["options"] | {"splits": tuple(spec["options"]["splits"])}
        done = reshard(spec["src"], spec["out"], ReshardOptions(**options), progress=True,
                       ray_address=os.environ.get("RAY_ADDRESS", "auto"), keeper=keeper)
        print(f"reshard -> {done.dst_url}: {done.written_shards} shards written, {done.kept_shards} kept; nodes: "
              + node_names(done.nodes), flush=True)


def claim_credentials(uri: str) -> list[str]:
    """Join the job's cluster and claim the package (names returned, values set in os.environ)."""
    import ray

    from jobs.launch.credentials import CredentialsError, claim

    ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), log_to_driver=True)
    try:
        return claim(uri)
    except CredentialsError as e:
        print(f"telucodec: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
