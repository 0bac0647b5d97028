"""A spot preemption drill: a fake AWS instance-metadata service on 127.0.0.1 that announces one
spot reclaim when the run reaches a step, then goes quiet (the "replacement node" gets no notice).

    with SpotDrill(run_dir, at_step=250) as drill:        # what `telucodec demo` does
        train(cfg with preempt.aws_endpoint=drill.url)
    drill.fired_at, drill.stopped_at                        # steps, or None if it never fired

The workers' PreemptionWatcher polls it exactly as it polls a real EC2 node's IMDSv2 (token, then
spot/instance-action), so the drill exercises the real path: notice, checkpoint at the next step,
clean stop, new worker group, resume. Nothing on the run's side knows it is a drill.

MetadataServer is the one fake cloud metadata endpoint, for the drill, tests and benchmarks; a test
can also give it answers about the instance (type, region, spot or not).
"""

from __future__ import annotations

import http.server
import json
import threading
import time

from pipeline.runs.rundir import RunDir

TOKEN = "drill-token"
SPOT_ACTION = "/latest/meta-data/spot/instance-action"


class MetadataServer:
    """A fake AWS IMDSv2 and GCP metadata server on 127.0.0.1: spot/instance-action answers `action`
    (404 while it is None); other paths answer from `answers` ({path: text}) to either cloud's
    headers, 404 for the rest."""

    def __init__(self, answers: dict[str, str] | None = None):
        self.action: dict | None = None
        self.answers = dict(answers or {})
        self.requests = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PUT(self):
                server.requests += 1
                self._answer(200, TOKEN.encode() if self.path == "/latest/api/token" else b"")

            def do_GET(self):
                server.requests += 1
                body = server.answer(self.path, self.headers)
                self._answer(404, b"") if body is None else self._answer(200, body)

            def _answer(self, code, body):
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True, name="fake-imds").start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def answer(self, path: str, headers) -> bytes | None:
        """The body for a GET of `path`, or None for a 404."""
        aws = headers.get("X-aws-ec2-metadata-token") == TOKEN
        if path == SPOT_ACTION:
            return json.dumps(self.action).encode() if aws and self.action else None
        text = self.answers.get(path)
        return text.encode() if text and (aws or headers.get("Metadata-Flavor") == "Google") else None

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


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
        self.server.action = {"action": "terminate", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        while not self._done.is_set():
            stop = next((e for e in self.run.events.read() if e["event"] == "preempted"), None)
            if stop is not None:
                self.stopped_at = int(stop["step"])
                break
            time.sleep(self.poll_seconds)
        self.server.action = None  # the replacement worker group gets no notice
