"""AWS: the EC2 instance metadata service (IMDSv2: a session token first, then reads with it)."""

from __future__ import annotations

import json

from pipeline.cloud.base import Notice, Provider, dmi, metadata_get

SPOT_ACTION = "/latest/meta-data/spot/instance-action"
"""404 until a spot reclaim is scheduled, then {"action": "terminate", "time": ...}."""
REBALANCE = "/latest/meta-data/events/recommendations/rebalance"
FAKE_TOKEN = "drill-token"


class AWS(Provider):
    name = "aws"
    default_endpoint = "http://169.254.169.254"

    def on_this_machine(self) -> bool:
        return "amazon" in dmi("sys_vendor").lower() or dmi("board_vendor").startswith("Amazon")

    def headers(self, url: str) -> dict:
        """An IMDSv2 session token, fetched now (PUT /latest/api/token)."""
        token = metadata_get(f"{url}/latest/api/token", method="PUT",
                             headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"})
        return {"X-aws-ec2-metadata-token": token}

    def instance(self, url: str) -> tuple[str, str, bool] | None:
        headers = self.headers(url)
        kind = metadata_get(f"{url}/latest/meta-data/instance-type", headers=headers).strip()
        region = metadata_get(f"{url}/latest/meta-data/placement/region", headers=headers).strip()
        life = metadata_get(f"{url}/latest/meta-data/instance-life-cycle", headers=headers).strip()
        return (kind, region, life == "spot") if kind else None

    def notice(self, url: str, rebalance_is_notice: bool = True) -> Notice | None:
        headers = self.headers(url)
        if action := metadata_get(f"{url}{SPOT_ACTION}", headers=headers):
            return Notice("aws-spot", action)
        if rebalance_is_notice and (rebalance := metadata_get(f"{url}{REBALANCE}", headers=headers)):
            return Notice("aws-rebalance", rebalance)
        return None

    def fake_answer(self, method: str, path: str, headers, server) -> bytes | None:
        if method == "PUT":
            return FAKE_TOKEN.encode() if path == "/latest/api/token" else None
        if headers.get("X-aws-ec2-metadata-token") != FAKE_TOKEN or not path.startswith("/latest/"):
            return None
        if path == SPOT_ACTION:
            return json.dumps({"action": "terminate", "time": server.notice}).encode() if server.notice else None
        text = server.answers.get(path)
        return text.encode() if text else None


PROVIDER = AWS()
