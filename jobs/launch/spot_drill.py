"""A spot preemption drill: the fake cloud metadata service (pipeline/cloud/fake.py) on 127.0.0.1
announces one spot reclaim when the run reaches a step, then goes quiet (the "replacement node" gets
no notice).

    with SpotDrill(run_dir, at_step=250) as drill:        # what `telucodec demo` does
        train(cfg with preempt.endpoints.aws=drill.url)   # or .gcp / .azure: every cloud's notice goes up
    drill.fired_at, drill.stopped_at                        # steps, or None if it never fired

The workers' PreemptionWatcher polls it exactly as it polls a real cloud's metadata, so the drill
exercises the real path: notice, checkpoint at the next step, clean stop, new worker group, resume.
"""

from __future__ import annotations

import threading
import time

from pipeline.cloud.fake import MetadataServer
from pipeline.runs.rundir import RunDir


class SpotDrill:
    """One simulated spot reclaim at `at_step` of the run in `run_dir` (read from its metrics)."""

    def __init__(self, run_dir: str, at_step: int, poll_seconds: float = 0.2):
        self.run = RunDir(run_dir)
        self.at_step, self.poll_seconds = at_step, poll_seconds
        self.server = MetadataServer()
        self.url = self.server.url
        self.fired_at: int | None = None
        """The run's step when the notice went up."""
        self.stopped_at: int | None = None
        """The step the workers checkpointed and stopped at."""
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._operate, daemon=True, name="spot-drill")

    def __enter__(self) -> "SpotDrill":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join(timeout=5)
        self.server.close()

    def _step(self) -> int:
        return max((r["step"] for r in self.run.metrics.read() if "step" in r), default=0)

    def _operate(self) -> None:
        while not self._done.is_set() and self._step() < self.at_step:
            time.sleep(self.poll_seconds)
        if self._done.is_set():
            return
        self.fired_at = self._step()
        self.server.notice = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        while not self._done.is_set():
            stop = next((e for e in self.run.events.read() if e["event"] == "preempted"), None)
            if stop is not None:
                self.stopped_at = int(stop["step"])
                break
            time.sleep(self.poll_seconds)
        self.server.notice = None  # the replacement worker group gets no notice
