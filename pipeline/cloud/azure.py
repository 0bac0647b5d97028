"""Azure: the Instance Metadata Service (every read sends Metadata: true). A spot eviction shows in
Scheduled Events as an event of type Preempt, at least 30 seconds before the VM goes."""

from __future__ import annotations

import json

from pipeline.cloud.base import Notice, Provider, dmi, metadata_get

HEADERS = {"Metadata": "true"}
COMPUTE = "/metadata/instance/compute"
EVENTS = "/metadata/scheduledevents"
API = {COMPUTE: "2021-02-01", EVENTS: "2020-07-01"}
"""The api-version each read asks for."""
ASSET_TAG = "7783-7084-3265-9085-8269-3286-77"
"""The chassis asset tag every Azure VM carries in its DMI data."""


class Azure(Provider):
    name = "azure"
    default_endpoint = "http://169.254.169.254"

    def on_this_machine(self) -> bool:
        return dmi("chassis_asset_tag") == ASSET_TAG

    def read(self, url: str, path: str) -> dict:
        body = metadata_get(f"{url}{path}?api-version={API[path]}", headers=HEADERS)
        found = json.loads(body) if body.strip() else {}
        return found if isinstance(found, dict) else {}

    def instance(self, url: str) -> tuple[str, str, bool] | None:
        compute = self.read(url, COMPUTE)
        kind = str(compute.get("vmSize", ""))
        return (kind, str(compute.get("location", "")), str(compute.get("priority", "")).lower() == "spot") if kind else None

    def notice(self, url: str, rebalance_is_notice: bool = True) -> Notice | None:
        events = self.read(url, EVENTS).get("Events") or []
        preempt = next((e for e in events if isinstance(e, dict) and e.get("EventType") == "Preempt"), None)
        if preempt is None:
            return None
        return Notice("azure", f"scheduled event {preempt.get('EventId', '?')}: Preempt, not before "
                               f"{preempt.get('NotBefore') or 'now'}")

    def fake_answer(self, method: str, path: str, headers, server) -> bytes | None:
        path, _, _ = path.partition("?")
        if method != "GET" or headers.get("Metadata") != "true" or not path.startswith("/metadata/"):
            return None
        if path == EVENTS:
            events = [{"EventId": "drill", "EventType": "Preempt", "ResourceType": "VirtualMachine",
                       "Resources": ["telucodec-drill"], "EventStatus": "Scheduled", "NotBefore": server.notice,
                       "EventSource": "Platform"}] if server.notice else []
            return json.dumps({"DocumentIncarnation": 1 + bool(server.notice), "Events": events}).encode()
        text = server.answers.get(path)
        return text.encode() if text else None


PROVIDER = Azure()
