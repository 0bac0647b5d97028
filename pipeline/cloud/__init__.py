"""Clouds behind one registry: each provider is one module (aws, gcp, azure) with its metadata reads,
instance lookup, preemption-notice check and fake metadata answers; adding a cloud is one module and
one line in PROVIDERS.

    urls = metadata_endpoints(cfg.preempt.endpoints)   # {"aws": "http://169.254.169.254"} on EC2, {} off any cloud
    info = this_instance(cfg.preempt.endpoints)        # InstanceInfo("aws", "g5.xlarge", "us-east-1", True)
    notice = preemption_notice(urls)                   # Notice("aws-spot", "{...}") or None

Endpoints are config (preempt.endpoints.NAME): "auto" trusts only this machine's DMI data, so a laptop
or CI box never sends a request to a metadata address; an explicit URL (a fake server on 127.0.0.1 in
tests) is used as is; '' is off.
"""

from __future__ import annotations

from pipeline.cloud import aws, azure, gcp
from pipeline.cloud.base import METADATA_ERRORS, InstanceInfo, Notice, Provider

PROVIDERS: dict[str, Provider] = {p.name: p for p in (aws.PROVIDER, gcp.PROVIDER, azure.PROVIDER)}


def resolve_endpoint(setting: str, provider: Provider) -> str:
    """'auto' -> the provider's metadata address if DMI says we run there, else ''; '' -> off."""
    if setting != "auto":
        return setting.rstrip("/")
    return provider.default_endpoint if provider.on_this_machine() else ""


def metadata_endpoints(endpoints: dict[str, str]) -> dict[str, str]:
    """The providers whose metadata to read, by name -> resolved URL (those resolved off are left out)."""
    resolved = {name: resolve_endpoint(setting, PROVIDERS[name]) for name, setting in endpoints.items()}
    return {name: url for name, url in resolved.items() if url}


def this_instance(endpoints: dict[str, str]) -> InstanceInfo | None:
    """What the configured metadata endpoints say about this machine; None off any cloud."""
    for name, url in metadata_endpoints(endpoints).items():
        try:
            found = PROVIDERS[name].instance(url)
        except METADATA_ERRORS:
            found = None  # a metadata hiccup: treat as unknown, never fail the run
        if found:
            return InstanceInfo(name, *found)
    return None


def preemption_notice(urls: dict[str, str], rebalance_is_notice: bool = True) -> Notice | None:
    """The first notice any resolved endpoint shows now, or None."""
    for name, url in urls.items():
        try:
            found = PROVIDERS[name].notice(url, rebalance_is_notice)
        except METADATA_ERRORS:
            found = None  # metadata hiccups are not notices
        if found:
            return found
    return None
