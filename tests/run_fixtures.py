"""Tiny training runs and the local S3 server they can use, shared by the tests and benchmarks/
(which put tests/ on sys.path); the audio and datasets they train on are in audio_fixtures.py, the
fake cloud metadata server in pipeline/cloud/fake.py (the demo's drill uses it too).

    from run_fixtures import TINY, wait_for
    load_config(["configs/base.yaml"], [f"data.url={url}", f"run.dir={run}", *TINY, "train.steps=6"])
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from audio_fixtures import tone
from pipeline.config import Config, ModelConfig, to_dict
from pipeline.runs.rundir import RunDir

OFF_CLOUD = ["preempt.endpoints.aws=''", "preempt.endpoints.gcp=''", "preempt.endpoints.azure=''"]
"""No cloud metadata endpoints: the run is on a local machine (free) and gets no preemption notice."""

QUICK_EVAL = ["train.eval_clips=1", "train.eval_seconds=0.2", "train.eval_split=train"]
"""Evaluation on one short clip of the train split (the tiny datasets have no test split)."""

TINY_RUN = ["model.channels=2", "model.latent_dim=8", "model.codebook_size=16", "model.n_codebooks=2",
            "model.kmeans_iters=2", "model.dilations=[1]", "train.batch_size=2", "train.segment_seconds=0.1",
            "train.warmup_steps=2", "train.log_every=1", *QUICK_EVAL, *OFF_CLOUD]
"""A model and batch small enough for quick CPU steps, every step logged; add steps, workers and
what the test is about."""

TINY_MEL = ["loss.mel_windows=[128]", "loss.mel_bins=[16]"]
"""One small mel resolution instead of base's four (windows up to 2048 samples)."""

TINY = [*TINY_RUN, "train.eval_every=1000", "train.workers=2", "train.max_failures=2",
        "loss.weights={mel: 1.0, stft: 0.0}", *TINY_MEL]
"""TINY_RUN over base.yaml on two Ray workers (restarted at most twice), mel loss only, eval every 1000 steps."""

TINY_CODEC = ModelConfig(channels=4, latent_dim=16, codebook_size=16, n_codebooks=4, kmeans_iters=2)
"""The model of make_checkpoint."""


def make_checkpoint(run_dir: Path, model_cfg: ModelConfig = TINY_CODEC, step: int = 7, cfg: Config | None = None) -> str:
    """A tiny codec whose codebooks were initialised by one training call, saved as a checkpoint
    with `cfg` (default: Config(model=model_cfg)) as its training config."""
    import torch  # here, not above: prep_bench's spawned workers import this module and need no torch

    from pipeline.runs.checkpoints import Checkpoints
    from pipeline.codec.model import Codec

    cfg = cfg or Config(model=model_cfg)
    model_cfg = cfg.model
    torch.manual_seed(0)
    codec = Codec(model_cfg)
    codec.train()
    codec(torch.from_numpy(tone(0.5, model_cfg.sample_rate))[None, None])
    Checkpoints(str(run_dir)).save(step, {"model": codec.state_dict(),
                                          "train": {"config": to_dict(cfg), "step": step}})
    return str(run_dir)


def losses_by_step(run_dir) -> dict[int, float]:
    """Last logged loss per step (a restarted run logs replayed steps again)."""
    return {r["step"]: r["loss/total"] for r in RunDir(str(run_dir)).metrics.read() if "loss/total" in r}


def wait_for(predicate, timeout: float = 240.0, every: float = 0.05) -> None:
    """Call `predicate` every `every` seconds until it is true; TimeoutError after `timeout` seconds."""
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s")
        time.sleep(every)


class MotoS3:
    """moto's S3 server on a free loopback port, with the AWS variables pointing boto3 at it while
    open; creates `bucket` if given.

        with MotoS3(bucket="bench") as s3:   # s3.endpoint; s3://bench/... reaches it through boto3
    """

    def __init__(self, bucket: str | None = None, own_process: bool = False):
        """`own_process`: the server runs in a child process (`proc`), whose CPU a benchmark can
        tell apart from its own (a real S3 costs the client's machine none)."""
        self.bucket, self.own_process, self.proc = bucket, own_process, None

    def __enter__(self) -> "MotoS3":
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
        if self.own_process:
            self.endpoint = self._start_process()
        else:
            from moto.server import ThreadedMotoServer

            self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            self.server.start()
            host, port = self.server.get_host_and_port()
            self.endpoint = f"http://{host}:{port}"
        env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
        self.saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        if self.bucket:
            import boto3

            boto3.client("s3").create_bucket(Bucket=self.bucket)
        return self

    def _start_process(self) -> str:
        import socket
        import subprocess
        import sys
        import time
        import urllib.request

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        script = ("import logging, time; logging.getLogger('werkzeug').setLevel(logging.ERROR); "
                  "from moto.server import ThreadedMotoServer; "
                  f"ThreadedMotoServer(ip_address='127.0.0.1', port={port}, verbose=False).start(); time.sleep(1e9)")
        self.proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        endpoint, deadline = f"http://127.0.0.1:{port}", time.time() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
                return endpoint
            except OSError:
                assert self.proc.poll() is None and time.time() < deadline, "moto's server did not start"
                time.sleep(0.1)

    def __exit__(self, *exc) -> None:
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        else:
            self.server.stop()


class CountingProxy:
    """A plain HTTP proxy on 127.0.0.1 in front of an S3 endpoint that counts what really passes:
    requests by method, the bytes of GET answers, and the distinct (path, Range) GETs (a client's
    retry of the same read is one). Point AWS_ENDPOINT_URL at `url`. `latency_s` holds every GET's
    answer back that long (a far store's first byte) and `bytes_per_s` paces each answer's body
    (a connection's bandwidth); both off by default, and both may be changed while it runs. A GET
    whose path holds one of `denied` is answered 403 AccessDenied, as S3 answers a key its caller
    may not read.

        with CountingProxy(os.environ["AWS_ENDPOINT_URL"]) as proxy:   # proxy.requests["GET"], proxy.get_bytes
    """

    def __init__(self, upstream: str, latency_s: float = 0.0, bytes_per_s: float | None = None):
        import collections
        import http.client
        import http.server
        import threading
        from urllib.parse import urlparse

        target = urlparse(upstream)
        self.upstream = upstream
        self.requests: collections.Counter = collections.Counter()
        self.get_bytes = 0
        self.get_ranges: set[tuple[str, str | None]] = set()
        self.gets: list[tuple[str, str | None]] = []
        """Every GET's (path, Range), in order."""
        self.log: list[tuple[str, str]] = []
        """Every request's (method, path with its query), in order."""
        self.in_flight = self.most_in_flight = 0
        """GETs being answered now, and the most there ever were at once."""
        self.reads_in_flight = self.most_reads_in_flight = 0
        """The same for GETs of objects' bytes (LISTs left out)."""
        self.latency_s, self.bytes_per_s = latency_s, bytes_per_s
        self.denied: set[str] = set()
        lock, proxy = threading.Lock(), self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else a small body waits on the headers' delayed ACK (~40 ms)

            def forward(self):
                if self.command != "GET":
                    return self.answer()
                read = "list-type=" not in self.path
                with lock:
                    proxy.in_flight += 1
                    proxy.most_in_flight = max(proxy.most_in_flight, proxy.in_flight)
                    proxy.reads_in_flight += read
                    proxy.most_reads_in_flight = max(proxy.most_reads_in_flight, proxy.reads_in_flight)
                try:
                    self.answer()
                finally:
                    with lock:
                        proxy.in_flight -= 1
                        proxy.reads_in_flight -= read

            def answer(self):
                if self.command == "GET" and any(part in self.path for part in proxy.denied):
                    return self.deny()
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                conn.request(self.command, self.path, body=body,
                             headers={k: v for k, v in self.headers.items() if k.lower() != "connection"})
                answer = conn.getresponse()
                data = answer.read()
                conn.close()
                with lock:
                    proxy.requests[self.command] += 1
                    proxy.get_bytes += len(data) if self.command == "GET" else 0
                    if self.command == "GET":
                        proxy.get_ranges.add((self.path, self.headers.get("Range")))
                        proxy.gets.append((self.path, self.headers.get("Range")))
                    proxy.log.append((self.command, self.path))
                self.send_response(answer.status)
                for k, v in answer.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", answer.getheader("Content-Length", "0") if self.command == "HEAD"
                                 else str(len(data)))
                latency, rate = (proxy.latency_s, proxy.bytes_per_s) if self.command == "GET" else (0.0, None)
                time.sleep(latency)
                self.end_headers()
                if self.command == "HEAD":
                    return
                piece = max(1, len(data)) if rate is None else 256 * 1024
                for at in range(0, len(data), piece):
                    started = time.monotonic()
                    try:
                        self.wfile.write(data[at:at + piece])
                    except (BrokenPipeError, ConnectionResetError):  # the client is gone (killed)
                        return
                    if rate is not None:
                        time.sleep(max(0.0, len(data[at:at + piece]) / rate - (time.monotonic() - started)))

            def deny(self):
                body = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
                        b"<Message>Access Denied</Message></Error>")
                self.send_response(403)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = forward

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            request_queue_size = 64  # a worker's fetching threads connect at once (socketserver's 5 drops SYNs)

        self.httpd = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True, name="counting-proxy").start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "CountingProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
