"""Shared fixtures: a real S3-compatible server (moto's, run_fixtures.MotoS3) on 127.0.0.1."""

import os
import uuid

import pytest

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
