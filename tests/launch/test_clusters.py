"""The Ray cluster launcher configs in jobs/clusters/ against Ray's own schema for them
(ray/autoscaler/ray-schema.json, what `ray up` validates), plus what telucodec relies on."""

import json
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml

CLUSTERS = Path(__file__).resolve().parents[2] / "jobs" / "clusters"


@pytest.mark.parametrize("name", ["aws-spot.yaml", "gcp-spot.yaml"])
def test_cluster_config_matches_rays_schema_and_runs_jobs_in_the_venv(name):
    config = yaml.safe_load((CLUSTERS / name).read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in config[key] if "ray start" in c)
        assert "PATH=$HOME/venv/bin:$PATH" in start  # a job's `python` is the venv's, with telucodec
    workers = [t for name_, t in config["available_node_types"].items() if name_ != config["head_node_type"]]
    assert workers and all(t["max_workers"] >= 1 for t in workers)
    text = json.dumps([t["node_config"] for t in workers])
    assert ('"MarketType": "spot"' in text) if name.startswith("aws") else ("SPOT" in text or "preemptible" in text)
