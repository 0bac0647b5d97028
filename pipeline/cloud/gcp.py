"""GCP: the Compute Engine metadata server (every read sends Metadata-Flavor: Google)."""

from __future__ import annotations

from pipeline.cloud.base import Notice, Provider, dmi, metadata_get

HEADERS = {"Metadata-Flavor": "Google"}
INSTANCE = "/computeMetadata/v1/instance"
PREEMPTED = f"{INSTANCE}/preempted"
"""FALSE, then TRUE once the instance is being preempted."""


class GCP(Provider):
    name = "gcp"
    default_endpoint = "http://metadata.google.internal"

    def on_this_machine(self) -> bool:
        return "google" in dmi("product_name").lower()

    def instance(self, url: str) -> tuple[str, str, bool] | None:
        base = f"{url}{INSTANCE}"
        kind = metadata_get(f"{base}/machine-type", headers=HEADERS).strip().rsplit("/", 1)[-1]
        zone = metadata_get(f"{base}/zone", headers=HEADERS).strip().rsplit("/", 1)[-1]
        model = metadata_get(f"{base}/scheduling/provisioning-model", headers=HEADERS).strip().upper()
        preemptible = metadata_get(f"{base}/scheduling/preemptible", headers=HEADERS).strip().upper()
        return (kind, zone.rsplit("-", 1)[0], model == "SPOT" or preemptible == "TRUE") if kind else None

    def notice(self, url: str, rebalance_is_notice: bool = True) -> Notice | None:
        body = metadata_get(f"{url}{PREEMPTED}", headers=HEADERS)
        return Notice("gcp", "instance/preempted is TRUE") if body.strip().upper() == "TRUE" else None

    def fake_answer(self, method: str, path: str, headers, server) -> bytes | None:
        if method != "GET" or headers.get("Metadata-Flavor") != "Google" or not path.startswith("/computeMetadata/"):
            return None
        if path == PREEMPTED:
            return b"TRUE" if server.notice else b"FALSE"
        text = server.answers.get(path)
        return text.encode() if text else None


PROVIDER = GCP()
