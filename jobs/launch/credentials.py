"""Forwarded credentials: from the submitting machine to every Ray Train worker, in memory only.

    uri = stage(client, {"AWS_ACCESS_KEY_ID": ...})   # laptop, before submitting the job
    names = claim(uri)                                 # the job's driver (jobs/launch/entry.py)
    receive(keeper())                                  # each Ray Train worker (jobs/launch/trainer.py)

A forwarded value never appears in the job's runtime_env, metadata, entrypoint, logs, checkpoints
or ledgers, and nothing holding it is left on disk or in the package store after the job starts
(docs/design.md, "The credential path": the trust model and the channel).
"""

from __future__ import annotations

import json
import os
import secrets
import time

from jobs.launch.ray_internals import dashboard_request, kv_take
from pipeline.errors import TelucodecError

PREFIX = "_telucodec_secrets_"
"""Package names in the GCS store: PREFIX + 32 random hex digits + .zip (Ray wants the suffix)."""
CLAIM_WAIT_S = 30.0


class CredentialsError(TelucodecError, RuntimeError):
    """The forwarded credentials cannot be staged or claimed; printed as one line."""


def stage(client, values: dict[str, str]) -> str:
    """Put values in the cluster's GCS store through the dashboard at `client` (a Ray
    JobSubmissionClient); returns the package URI for the job's entrypoint ("" when nothing to send)."""
    if not values:
        return ""
    name = f"{PREFIX}{secrets.token_hex(16)}.zip"
    reply = dashboard_request(client, "PUT", f"/api/packages/gcs/{name}", data=json.dumps(values).encode())
    if reply.status_code != 200:
        raise CredentialsError(f"the Ray head refused the forwarded credentials (HTTP {reply.status_code}); "
                               f"set credentials on the cluster instead and submit with --no-forward")
    dashboard_request(client, "GET", f"/api/packages/gcs/{name}")  # pins it: Ray deletes it after the pin expires, if unclaimed
    return f"gcs://{name}"


def claim(uri: str, wait_s: float = CLAIM_WAIT_S) -> list[str]:
    """Read the staged values from the GCS store, delete them there, set them in this process's
    environment and hand them to the job's Keeper; returns their names. Needs ray connected."""
    if not uri.startswith(f"gcs://{PREFIX}"):
        raise CredentialsError(f"not a telucodec credentials package: {uri}")
    deadline = time.time() + wait_s
    while (data := kv_take(uri)) is None:
        if time.time() > deadline:
            raise CredentialsError(
                "the forwarded credentials are gone from the cluster: the job started after Ray's package "
                "pin expired (RAY_RUNTIME_ENV_TEMPORARY_REFERENCE_EXPIRATION_S, 600 s by default) or "
                "another job claimed them; submit again, or give the cluster its own credentials")
        time.sleep(0.5)
    values = json.loads(data)
    os.environ.update(values)
    share(values)
    return sorted(values)


_KEEPER = None


def share(values: dict[str, str]) -> None:
    """Start this job's Keeper actor holding values (in memory, for the workers)."""
    global _KEEPER
    import ray

    @ray.remote(num_cpus=0)
    class Keeper:
        """Holds the forwarded values; gives them to whoever has its handle."""

        def __init__(self):
            self.values: dict[str, str] = {}

        def hold(self, values: dict[str, str]) -> None:
            self.values = values

        def get(self) -> dict[str, str]:
            return self.values

    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # Beside the driver (the head, for a submitted job): not on a spot node that may vanish.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    _KEEPER = Keeper.options(scheduling_strategy=here).remote()
    ray.get(_KEEPER.hold.remote(values))


def keeper():
    """The Keeper's handle for the trainer's workers, or None when nothing was forwarded."""
    return _KEEPER


def receive(handle) -> list[str]:
    """In a Ray worker: set the Keeper's values as environment variables; returns their names."""
    if handle is None:
        return []
    import ray

    values = ray.get(handle.get.remote())
    os.environ.update(values)
    return sorted(values)
