"""Spot preemption notices: a watcher thread per worker that turns a cloud's notice into a flag.

    watcher = PreemptionWatcher(cfg.preempt).start()
    ...
    if watcher.notice:            # polled by the training loop at each step boundary
        save a checkpoint, report it, exit

Sources, each optional:
- AWS IMDSv2: PUT /latest/api/token, then GET /latest/meta-data/spot/instance-action (404 until
  a reclaim is scheduled) and /latest/meta-data/events/recommendations/rebalance;
- GCP: GET /computeMetadata/v1/instance/preempted (with Metadata-Flavor: Google) -> TRUE;
- SIGTERM to the worker process (what most schedulers send before a kill).
Endpoints come from config; "auto" enables a cloud only when this machine's DMI data says it runs
there, so a laptop or CI box never sends a request to a metadata address. The watcher only sets a
flag: the training loop acts on it at the next step boundary, on all ranks together.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import urllib.error
from dataclasses import dataclass

from pipeline.cloud import metadata_get as _http
from pipeline.cloud import resolve_endpoint
from pipeline.config import PreemptConfig

@dataclass
class Notice:
    source: str
    """aws-spot, aws-rebalance, gcp or sigterm."""
    detail: str
    time: float


class PreemptionWatcher:
    def __init__(self, cfg: PreemptConfig):
        self.cfg = cfg
        self.aws = resolve_endpoint(cfg.aws_endpoint, "aws")
        self.gcp = resolve_endpoint(cfg.gcp_endpoint, "gcp")
        self.notice: Notice | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "PreemptionWatcher":
        if not self.cfg.enabled:
            return self
        try:  # only possible in the main thread; Ray may run us elsewhere
            previous = signal.getsignal(signal.SIGTERM)

            def on_sigterm(signum, frame):
                self._set("sigterm", "SIGTERM received")
                if callable(previous) and previous not in (signal.SIG_DFL, signal.SIG_IGN):
                    previous(signum, frame)
            signal.signal(signal.SIGTERM, on_sigterm)
        except ValueError:
            pass
        if self.aws or self.gcp:
            self._thread = threading.Thread(target=self._run, daemon=True, name="preemption-watcher")
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _set(self, source: str, detail: str) -> None:
        if self.notice is None:
            self.notice = Notice(source, detail, time.time())
            print(f"preemption notice ({source}): {detail}", flush=True)
            if self.cfg.drain_node:
                drain_this_node(detail)

    def _run(self) -> None:
        while not self._stop.is_set() and self.notice is None:
            for source, check in (("aws", self._check_aws), ("gcp", self._check_gcp)):
                try:
                    found = check()
                except (urllib.error.URLError, OSError, ValueError):
                    found = None  # metadata hiccups are not notices
                if found:
                    self._set(*found)
            self._stop.wait(self.cfg.poll_seconds)

    def _check_aws(self) -> tuple[str, str] | None:
        if not self.aws:
            return None
        token = _http(f"{self.aws}/latest/api/token", method="PUT",
                      headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"})
        headers = {"X-aws-ec2-metadata-token": token}
        action = _http(f"{self.aws}/latest/meta-data/spot/instance-action", headers=headers)
        if action:
            return "aws-spot", action
        if self.cfg.rebalance_is_notice:
            rebalance = _http(f"{self.aws}/latest/meta-data/events/recommendations/rebalance", headers=headers)
            if rebalance:
                return "aws-rebalance", rebalance
        return None

    def _check_gcp(self) -> tuple[str, str] | None:
        if not self.gcp:
            return None
        body = _http(f"{self.gcp}/computeMetadata/v1/instance/preempted", headers={"Metadata-Flavor": "Google"})
        return ("gcp", "instance/preempted is TRUE") if body.strip().upper() == "TRUE" else None


def drain_this_node(detail: str) -> None:
    """Tell Ray this node is going away (`ray drain-node`), where this Ray has the command."""
    try:
        import ray

        if not ray.is_initialized():
            return
        node_id = ray.get_runtime_context().get_node_id()
        subprocess.run(["ray", "drain-node", "--address", "auto", "--node-id", node_id,
                        "--reason", "DRAIN_NODE_REASON_PREEMPTION", "--reason-message", detail[:200],
                        "--deadline-remaining-seconds", "60"],
                       capture_output=True, timeout=20, check=False)
    except Exception:  # best effort: the checkpoint is what matters
        pass
