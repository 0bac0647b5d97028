"""Every Ray API we use that Ray does not publish, in one place, each with its fallback.

    dashboard_request(client, "PUT", "/api/packages/gcs/NAME", data=b"...")   # credentials: stage
    kv_take("gcs://NAME")                        # credentials: read and delete a staged package
    enable_token_auth()                          # submit: send this machine's Ray token
    quiet_train_report_log()                     # each Ray Train worker: drop the per-report INFO line
    available_per_node()                         # capacity watch: each node's unreserved resources
    refresh_train_node_view()                    # capacity watch: Ray Train re-reads the node list

`INTERNALS` names each one and where it lives; tests/launch/test_ray_internals.py checks each is still
there and fails naming the Ray version when one moves. pyproject bounds `ray` to the versions tested
(TESTED_RAY). Where Ray has no public equivalent the fallback is a one-line error (credentials) or a
degraded but working behaviour (a noisier log, a slower grow, the whole cluster as one node).
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass

from pipeline.errors import TelucodecError

TESTED_RAY = ("2.60",)
"""Ray minor versions these internals were checked against (pyproject's bound follows it)."""


class RayInternalMissing(TelucodecError, RuntimeError):
    """A Ray internal we rely on without a public fallback is gone in this Ray; printed as one line."""


@dataclass(frozen=True)
class Internal:
    module: str
    attribute: str
    used_for: str

    def probe(self) -> str | None:
        """None when module.attribute exists in this Ray, else why not (naming the Ray version)."""
        try:
            found = importlib.import_module(self.module)
        except ImportError as e:
            return f"{self.module} cannot be imported in Ray {ray_version()} ({e}); used for {self.used_for}"
        for name in self.attribute.split("."):
            found = getattr(found, name, None)
        return None if found is not None else (f"{self.module}.{self.attribute} is gone in Ray {ray_version()}; "
                                   f"used for {self.used_for}")


INTERNALS = {
    "dashboard_request": Internal("ray.job_submission", "JobSubmissionClient._do_request",
                                  "staging and pinning forwarded credentials in the GCS package store"),
    "kv": Internal("ray.experimental.internal_kv", "_internal_kv_get", "claiming forwarded credentials"),
    "kv_del": Internal("ray.experimental.internal_kv", "_internal_kv_del", "claiming forwarded credentials"),
    "token_auth": Internal("ray._private.authentication.authentication_token_setup",
                           "maybe_enable_token_auth_if_token_available", "sending the Ray auth token on submit"),
    "report_log": Internal("ray.train.v2._internal.execution.context", "__file__",
                           "silencing Ray Train's per-report INFO line"),
    "resources_per_node": Internal("ray._private.state", "available_resources_per_node",
                                   "the capacity watch's view of free resources per node"),
    "draining_nodes": Internal("ray._private.state", "state", "leaving draining nodes out of the capacity watch"),
}
"""Each internal: where it lives and what for (the coordinator actor below is looked up by name)."""

COORDINATOR = ("AutoscalingCoordinator", "AutoscalingCoordinator")
"""(name, namespace) of Ray Train's autoscaling coordinator actor, an internal actor."""


def ray_version() -> str:
    import ray

    return ray.__version__


def dashboard_request(client, method: str, endpoint: str, data: bytes | None = None):
    """An HTTP request to the Ray dashboard of a JobSubmissionClient, with its cookies and auth headers
    (`_do_request`); without it, a plain request to `client.get_address()` carrying RAY_AUTH_TOKEN."""
    do_request = getattr(client, "_do_request", None)
    if do_request is not None:
        return do_request(method, endpoint, data=data)
    import requests

    token = os.environ.get("RAY_AUTH_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(method, client.get_address() + endpoint, data=data, headers=headers, timeout=60)


def kv_take(key: str) -> bytes | None:
    """Read and delete one key of the cluster's internal key-value store (needs ray connected); None
    while it is not there."""
    try:
        from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_get
    except ImportError:
        raise RayInternalMissing(f"Ray {ray_version()} has no internal_kv to claim forwarded credentials from; "
                                 "submit with --no-forward and give the cluster its own credentials") from None
    data = _internal_kv_get(key)
    if data is not None:
        _internal_kv_del(key)
    return data


def enable_token_auth() -> None:
    """Send this machine's Ray token (RAY_AUTH_TOKEN or ~/.ray/auth_token) when it has one, as
    `ray job submit` does: Ray 2.5x heads require it by default. A Ray without token auth: nothing."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:
        return
    quiet = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level, quiet.level = quiet.level, logging.ERROR  # it warns that auth is on, each command
    try:
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        quiet.setLevel(level)


def quiet_train_report_log() -> None:
    """Silence Ray Train's INFO line per ray.train.report (a dump of the whole report), which drowns
    rank 0's prints in the job log. Ray logs it through `logging.getLogger(__file__)` in its
    execution-context module, outside the "ray.train" logger tree that LoggingConfig levels.
    Without that module: the log is noisier, nothing else changes."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def available_per_node() -> dict[str, dict[str, float]]:
    """Each alive node's unreserved resources, leaving out nodes being drained (a spot node about to
    go takes no new worker). Without Ray's per-node view: the whole cluster as one node."""
    import ray

    try:
        from ray._private.state import available_resources_per_node, state
    except ImportError:
        return {"cluster": ray.available_resources()}
    draining = state.get_draining_nodes()
    return {node: free for node, free in available_resources_per_node().items() if node not in draining}


def refresh_train_node_view() -> None:
    """Have Ray Train's AutoscalingCoordinator re-read the cluster's nodes now: its elastic policy
    sizes each new worker group from that actor's node list, which it re-reads only every 20 s, so a
    group started soon after a node joined comes back at the old size. Without the actor or its
    `recompute` flag a grow that brought no growth is simply asked for again later."""
    import ray

    if not ray.is_initialized():
        return
    name, namespace = COORDINATOR
    try:
        coordinator = ray.get_actor(name, namespace=namespace)
        ray.get(coordinator.get_reserved_resources.remote("telucodec-capacity-watch", recompute=True), timeout=30)
    except Exception as error:  # another Ray version, or no elastic run has made the actor yet
        print(f"capacity watch: could not refresh Ray Train's node list ({type(error).__name__})", flush=True)
