"""Spot preemption notices: a watcher thread per worker that turns a cloud's notice into a flag.

    watcher = PreemptionWatcher(cfg.preempt).start()
    ...
    if watcher.notice:            # polled by the training loop at each step boundary
        save a checkpoint, report it, exit

Sources, each optional:
- each cloud's metadata (pipeline/cloud/: AWS spot instance-action and rebalance, GCP
  instance/preempted, Azure Scheduled Events' Preempt), for the clouds whose endpoint resolves;
- SIGTERM to the worker process (what most schedulers send before a kill). Ray Train runs the
  training function in a thread, where Python refuses `signal.signal`; the handler is then
  installed by the worker actor's own main thread (its `execute` method), and only records the
  time: the loop saves and exits at the next step instead of Ray's default of exiting at once.
Endpoints come from config (preempt.endpoints), resolved by pipeline/cloud; "auto" enables a cloud
only when this machine's DMI data says it runs there, so a laptop or CI box never sends a request to
a metadata address. The watcher only sets a flag: the training
loop acts on it at the next step boundary, on all ranks together.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from dataclasses import dataclass

from pipeline.cloud import metadata_endpoints, preemption_notice
from pipeline.config import PreemptConfig


class SigtermClock:
    """When this process got SIGTERM, or None: set by the handler, read by the watchers."""

    def __init__(self):
        self.at: float | None = None

    def record(self, signum=None, frame=None) -> None:
        self.at = self.at or time.time()


SIGTERM = SigtermClock()
"""This process's clock: a signal handler belongs to the whole process, so every watcher reads this one."""


def _install_sigterm_handler() -> None:
    # A module function (Ray pickles it by reference): the worker actor's main thread then installs
    # the handler of that process's SIGTERM clock, not of a pickled copy.
    signal.signal(signal.SIGTERM, SIGTERM.record)


def catch_sigterm() -> bool:
    """Route this process's SIGTERM to its SIGTERM clock, from the main thread or, inside a Ray Train
    worker, through the worker actor's main thread. False when neither is possible."""
    if threading.current_thread() is threading.main_thread():
        _install_sigterm_handler()
        return True
    try:
        import ray

        actor = ray.get_runtime_context().current_actor
        ray.get(actor.execute.remote(_install_sigterm_handler), timeout=30)
        return True
    except Exception:  # not in a Ray actor, or a Ray Train without `execute`: metadata notices only
        return False


@dataclass
class Notice:
    source: str
    """aws-spot, aws-rebalance, gcp, azure or sigterm."""
    detail: str
    time: float


class PreemptionWatcher:
    def __init__(self, cfg: PreemptConfig, sigterm: SigtermClock = SIGTERM):
        self.cfg, self.sigterm = cfg, sigterm
        self.urls = metadata_endpoints(cfg.endpoints)
        self.notice: Notice | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "PreemptionWatcher":
        if not self.cfg.enabled:
            return self
        catch_sigterm()  # where it cannot (no main thread, no Ray actor) metadata notices still work
        if self.urls:
            self._thread = threading.Thread(target=self._run, daemon=True, name="preemption-watcher")
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def poll(self) -> Notice | None:
        """The notice so far (a SIGTERM to this process counts); cheap, for every step."""
        if self.notice is None and self.cfg.enabled and self.sigterm.at is not None:
            self._set("sigterm", "SIGTERM received")
        return self.notice

    def _set(self, source: str, detail: str) -> None:
        if self.notice is None:
            self.notice = Notice(source, detail, time.time())
            print(f"preemption notice ({source}): {detail}", flush=True)
            if self.cfg.drain_node:  # in the background: the training loop must not wait for it
                threading.Thread(target=drain_this_node, args=(detail,), daemon=True, name="drain-node").start()

    def _run(self) -> None:
        while not self._stop.is_set() and self.notice is None:
            if found := preemption_notice(self.urls, self.cfg.rebalance_is_notice):
                self._set(found.source, found.detail)
            self._stop.wait(self.cfg.poll_seconds)


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
