"""Shared fixtures: a real S3-compatible server (moto's, run_fixtures.MotoS3) on 127.0.0.1; and the
one rule for running the suite on two processes (`make test`: pytest-xdist, --dist loadgroup)."""

import os
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
RAY_TESTS = ("launch/", "training/test_tracking.py", "runs/test_cost.py", "cli/test_demo.py",
             "data_prep/test_on_ray.py")
"""Tests that start Ray clusters and time their faults: one xdist worker runs them in turn while the
other runs the rest. Two at once on a 2-core machine failed now and then (a resumed job of
test_submit FAILED while another Ray test ran beside it; alone it passes), so they do not share
the machine with each other. (`cluster down --local` no longer ends other Ray instances: that is
not why.)"""


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        if Path(item.path).resolve().relative_to(ROOT).as_posix().startswith(RAY_TESTS):
            item.add_marker(pytest.mark.xdist_group("ray"))

# Tests never talk to W&B's servers: every run they start is an offline run.
os.environ.setdefault("WANDB_MODE", "offline")
# Ray runs its workers at nice 15 (its default keeps a head's own processes responsive). Beside the
# other xdist process at nice 0 they got a few percent of a core: a worker group took 90 s to start
# instead of 10, and the Ray tests ran 2-3x slower in the suite than alone. Every Ray instance the
# tests start (clusters, `ray start`, jobs) inherits this.
os.environ.setdefault("RAY_worker_niceness", "0")
# One compute thread per process (torch, numpy's BLAS): the two xdist processes, and the Ray
# workers beside them, each get a core at most. With torch's default (a thread per core) each
# training test spun two threads on a core the other process was using (test_learning: 226 s
# alone, 610 s in the suite).
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def s3_server():
    """Start moto's S3 server on a free loopback port and point boto3 (AWS_ENDPOINT_URL) at it."""
    from run_fixtures import MotoS3

    with MotoS3() as s3:
        yield s3.endpoint


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh, empty bucket on the local S3 server; returns its s3:// URL."""
    import boto3

    name = f"t-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}"
