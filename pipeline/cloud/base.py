"""What every cloud provider module shares: metadata reads, the instance facts, the provider shape.

A provider (aws.py, gcp.py, azure.py) says how to tell it runs on this machine (DMI data only, so a
laptop or CI box never sends a request to a metadata address), what its metadata says about the
instance, whether a preemption notice is up, and how the fake metadata server (fake.py) answers for
it in drills and tests.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def dmi(name: str) -> str:
    """This machine's DMI field (/sys/class/dmi/id/NAME), '' where there is none."""
    try:
        return Path(f"/sys/class/dmi/id/{name}").read_text().strip()
    except OSError:
        return ""


def metadata_get(url: str, method: str = "GET", headers: dict | None = None, timeout: float = 1.0) -> str:
    """Body of a 200 answer; '' for 404 (not there)."""
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return ""
        raise


METADATA_ERRORS = (urllib.error.URLError, OSError, ValueError)
"""A metadata hiccup: never a notice, never a failed run."""


@dataclass(frozen=True)
class InstanceInfo:
    cloud: str
    """aws, gcp or azure."""
    instance_type: str
    """g5.xlarge, a2-highgpu-1g, Standard_NC4as_T4_v3, ..."""
    region: str
    """us-east-1, us-central1, eastus, ..."""
    spot: bool
    """A spot / preemptible instance."""


@dataclass(frozen=True)
class Notice:
    source: str
    """aws-spot, aws-rebalance, gcp, azure, sigterm, ..."""
    detail: str


class Provider:
    """One cloud. Subclasses fill in each method; `url` is the resolved metadata base URL."""

    name = ""
    default_endpoint = ""
    """The metadata service's address on the cloud's own machines."""

    def on_this_machine(self) -> bool:
        """Whether this machine's DMI data says it runs on this cloud."""
        raise NotImplementedError

    def instance(self, url: str) -> tuple[str, str, bool] | None:
        """(instance type, region, spot) from the metadata at url, or None if it says nothing."""
        raise NotImplementedError

    def notice(self, url: str, rebalance_is_notice: bool = True) -> Notice | None:
        """The preemption notice the metadata at url shows now, or None."""
        raise NotImplementedError

    def fake_answer(self, method: str, path: str, headers, server) -> bytes | None:
        """What the fake metadata server (fake.MetadataServer) answers for this cloud: None when the
        request is not this cloud's. `server.notice` is the announced preemption (or None) and
        `server.answers` ({path: text}) the instance facts."""
        raise NotImplementedError
