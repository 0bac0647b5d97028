"""A fake cloud metadata service on 127.0.0.1 that answers as every registered provider does, for
the spot drill, tests and benchmarks.

    with MetadataServer({"/latest/meta-data/instance-type": "g5.xlarge"}) as server:
        cfg ... preempt.endpoints.aws=server.url        # or .gcp / .azure: the same server
        server.notice = "2026-12-06T10:00:00Z"           # every cloud's preemption notice goes up
"""

from __future__ import annotations

import http.server
import threading

from pipeline.cloud import PROVIDERS


class MetadataServer:
    """Each request goes to each provider's fake_answer; the first answer wins, none is a 404.
    `notice` (a time, or None) is the announced preemption; `answers` ({path: text}) the instance facts."""

    def __init__(self, answers: dict[str, str] | None = None):
        self.notice: str | None = None
        self.answers = dict(answers or {})
        self.requests = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PUT(self):
                self._answer(server.answer("PUT", self.path, self.headers))

            def do_GET(self):
                self._answer(server.answer("GET", self.path, self.headers))

            def _answer(self, body: bytes | None):
                self.send_response(404 if body is None else 200)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True, name="fake-metadata").start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def answer(self, method: str, path: str, headers) -> bytes | None:
        self.requests += 1
        for provider in PROVIDERS.values():
            if (body := provider.fake_answer(method, path, headers, self)) is not None:
                return body
        return None

    def __enter__(self) -> "MetadataServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
