"""Which cloud this machine runs on, and what its metadata service says about the instance.

    urls = metadata_endpoints(cfg.preempt)       # Endpoints(aws="http://169.254.169.254", gcp="") on EC2
    info = this_instance(cfg)                    # InstanceInfo("aws", "g5.xlarge", "us-east-1", True)
    metadata_get(f"{urls.aws}/latest/meta-data/spot/instance-action", headers=aws_headers(urls.aws))

The endpoints are config (preempt.aws_endpoint, preempt.gcp_endpoint) and are resolved here only.
"auto" trusts only this machine's DMI data (/sys/class/dmi/id), so a laptop or CI box never sends a
request to a metadata address; an explicit URL (a fake server on 127.0.0.1 in tests) is used as is.
Read by the preemption watcher (jobs/launch/preemption.py) and the cost tracker (pipeline/runs/cost.py).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Config, PreemptConfig

AWS_DEFAULT = "http://169.254.169.254"
GCP_DEFAULT = "http://metadata.google.internal"


def _dmi(name: str) -> str:
    try:
        return Path(f"/sys/class/dmi/id/{name}").read_text().strip()
    except OSError:
        return ""


def resolve_endpoint(setting: str, cloud: str) -> str:
    """'auto' -> the cloud's metadata address if DMI says we run there, else ''; '' -> off."""
    if setting != "auto":
        return setting.rstrip("/")
    if cloud == "aws" and ("amazon" in _dmi("sys_vendor").lower() or _dmi("board_vendor").startswith("Amazon")):
        return AWS_DEFAULT
    if cloud == "gcp" and "google" in _dmi("product_name").lower():
        return GCP_DEFAULT
    return ""


@dataclass(frozen=True)
class Endpoints:
    aws: str
    """AWS instance metadata URL, '' = off."""
    gcp: str
    """GCP metadata URL, '' = off."""


def metadata_endpoints(preempt: PreemptConfig) -> Endpoints:
    """The config's metadata endpoints, resolved ('auto' -> this machine's cloud or off)."""
    return Endpoints(resolve_endpoint(preempt.aws_endpoint, "aws"), resolve_endpoint(preempt.gcp_endpoint, "gcp"))


GCP_HEADERS = {"Metadata-Flavor": "Google"}
"""What every GCP metadata read sends."""


def aws_headers(url: str) -> dict:
    """What every AWS metadata read sends: an IMDSv2 session token, fetched now (PUT /latest/api/token)."""
    token = metadata_get(f"{url}/latest/api/token", method="PUT",
                         headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"})
    return {"X-aws-ec2-metadata-token": token}


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


@dataclass(frozen=True)
class InstanceInfo:
    cloud: str
    """aws or gcp."""
    instance_type: str
    """g5.xlarge, a2-highgpu-1g, ..."""
    region: str
    """us-east-1, us-central1, ..."""
    spot: bool
    """A spot / preemptible instance."""


def this_instance(cfg: Config) -> InstanceInfo | None:
    """What the config's metadata endpoints say about this machine; None off any cloud."""
    urls = metadata_endpoints(cfg.preempt)
    return instance_info(urls.aws, urls.gcp)


def instance_info(aws: str, gcp: str) -> InstanceInfo | None:
    """What the metadata endpoints (resolved URLs, '' = off) say about this instance; None if none answer."""
    for cloud, url, read in (("aws", aws, _aws_instance), ("gcp", gcp, _gcp_instance)):
        if not url:
            continue
        try:
            found = read(url)
        except (urllib.error.URLError, OSError, ValueError):
            found = None  # a metadata hiccup: treat as unknown, never fail the run
        if found:
            return InstanceInfo(cloud, *found)
    return None


def _aws_instance(url: str) -> tuple[str, str, bool] | None:
    headers = aws_headers(url)
    kind = metadata_get(f"{url}/latest/meta-data/instance-type", headers=headers).strip()
    region = metadata_get(f"{url}/latest/meta-data/placement/region", headers=headers).strip()
    life = metadata_get(f"{url}/latest/meta-data/instance-life-cycle", headers=headers).strip()
    return (kind, region, life == "spot") if kind else None


def _gcp_instance(url: str) -> tuple[str, str, bool] | None:
    headers = GCP_HEADERS
    base = f"{url}/computeMetadata/v1/instance"
    kind = metadata_get(f"{base}/machine-type", headers=headers).strip().rsplit("/", 1)[-1]
    zone = metadata_get(f"{base}/zone", headers=headers).strip().rsplit("/", 1)[-1]
    model = metadata_get(f"{base}/scheduling/provisioning-model", headers=headers).strip().upper()
    preemptible = metadata_get(f"{base}/scheduling/preemptible", headers=headers).strip().upper()
    return (kind, zone.rsplit("-", 1)[0], model == "SPOT" or preemptible == "TRUE") if kind else None
