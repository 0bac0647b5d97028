"""Shared fixtures: a real S3-compatible server (moto's, run_fixtures.MotoS3) on 127.0.0.1; and the
one rule for running the suite on two processes (`make test`: pytest-xdist, --dist loadgroup)."""

import os
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
SHARED_CLUSTER = ("launch/test_submit.py", "data_prep/test_prep_on_ray.py")
"""Modules whose tests share one Ray cluster (a module fixture): one xdist worker runs each module's
tests in turn; every other test goes to whichever worker is free (each Ray test starts and stops a
Ray instance of its own)."""


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        module = Path(item.path).resolve().relative_to(ROOT).as_posix()
        if module in SHARED_CLUSTER:
            item.add_marker(pytest.mark.xdist_group(module))

# Tests never talk to W&B's servers: every run they start is an offline run.
os.environ.setdefault("WANDB_MODE", "offline")


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
