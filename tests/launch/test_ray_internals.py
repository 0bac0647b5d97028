"""Each Ray internal telucodec uses is still where jobs/launch/ray_internals.py expects it; when Ray
moves one, the failure names the Ray version and what it was used for. The fallbacks work without
the internals."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest
import ray

from jobs.launch import ray_internals
from jobs.launch.ray_internals import INTERNALS, TESTED_RAY, Internal, dashboard_request

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(INTERNALS))
def test_each_ray_internal_is_where_we_use_it(name):
    problem = INTERNALS[name].probe()
    assert problem is None, problem


def test_a_moved_internal_is_reported_with_the_ray_version():
    moved = Internal("ray._private.state", "no_such_function", "a test").probe()
    gone = Internal("ray._no_such_module", "x", "a test").probe()
    assert f"Ray {ray.__version__}" in moved and "no_such_function" in moved
    assert f"Ray {ray.__version__}" in gone and "a test" in gone


def test_pyproject_bounds_ray_to_the_tested_versions():
    """The installed Ray is a tested one, and pyproject refuses the next minor version."""
    assert ".".join(ray.__version__.split(".")[:2]) in TESTED_RAY
    line = next(l for l in (REPO / "pyproject.toml").read_text().splitlines() if '"ray[' in l)
    low, high = TESTED_RAY[0], TESTED_RAY[-1].split(".")
    assert f">={low}" in line and f"<{high[0]}.{int(high[1]) + 1}" in line


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list = []

    def do_PUT(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((self.command, self.path, self.headers.get("Authorization"), body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_dashboard_requests_fall_back_to_plain_http_with_the_ray_token(monkeypatch):
    """A client without `_do_request` (a Ray that dropped it): the request goes to the client's public
    address with RAY_AUTH_TOKEN as a bearer token."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        class PublicOnly:
            def get_address(self):
                return f"http://127.0.0.1:{server.server_address[1]}"

        monkeypatch.setenv("RAY_AUTH_TOKEN", "tok")
        reply = dashboard_request(PublicOnly(), "PUT", "/api/packages/gcs/x.zip", data=b"{}")
        assert reply.status_code == 200
        assert _Recorder.seen == [("PUT", "/api/packages/gcs/x.zip", "Bearer tok", b"{}")]
    finally:
        server.shutdown()
        server.server_close()


def test_without_rays_per_node_view_the_cluster_counts_as_one_node(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_private_state(name, *args, **kwargs):
        if name == "ray._private.state":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(ray, "available_resources", lambda: {"CPU": 3.0})
    monkeypatch.setattr(builtins, "__import__", no_private_state)
    assert ray_internals.available_per_node() == {"cluster": {"CPU": 3.0}}
