"""One W&B run across a preemption, offline too, checked with W&B's own tools. A tiny run in this
process gets a preemption notice after step 2 and is resumed to step 4: two worker groups, so two
offline W&B folders. `wandb leet inspect` reads what each folder recorded; `wandb sync` (through
sync_run, as `telucodec sync`) uploads both to a stand-in W&B server on 127.0.0.1 that only records what it is sent:
W&B's sync, not our code, decides that they are one run and where the second one's history goes.
"""

import gzip
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from audio_fixtures import make_dataset
from pipeline.runs.checkpoints import Checkpoints
from pipeline.config import load_config
from jobs.cli import main
from pipeline.training.tracking import PREEMPTED_EXIT_CODE
from pipeline.training.loop import RunContext, train
from run_fixtures import TINY_RUN

SMALL = [*TINY_RUN, "train.steps=4", "train.eval_every=2", "train.checkpoint_every=2", "train.workers=0",
         "tracking.audio_samples=0"]


class NoticeAfter(RunContext):
    """A preemption notice after `steps` steps (the loop asks once per step), as a spot node gets one."""

    def __init__(self, steps: int):
        super().__init__()
        self.steps, self.asked = steps, 0

    def stop_requested(self) -> bool:
        self.asked += 1
        return self.asked >= self.steps


@pytest.fixture(scope="module")
def preempted_run(tmp_path_factory):
    """A run preempted after step 2 and resumed to step 4; returns (run dir, its W&B run id)."""
    data = str(tmp_path_factory.mktemp("ds"))
    make_dataset(data, [6, 6], sr=16000, seconds=0.3)
    run = tmp_path_factory.mktemp("run")
    cfg = load_config(["configs/tiny.yaml"], [f"data.url={data}", f"run.dir={run}", *SMALL])
    first = train(cfg, NoticeAfter(2))
    assert (first.status, first.step) == ("stopped", 2)
    second = train(cfg)
    assert (second.status, second.step) == ("finished", 4)
    return run, Checkpoints(str(run)).load(4, "train")["extra"]["wandb_run_id"]


def records(wandb_file: Path) -> list[dict]:
    """The records of one .wandb file, read by W&B's own `wandb leet inspect --json`."""
    dump = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(wandb_file)],
                          capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in dump.splitlines() if line.strip()]


def segment_records(run: Path) -> list[list[dict]]:
    return [records(f) for f in sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))]


def test_the_preempted_segment_is_recorded_preempting_with_exit_143_not_finished(preempted_run):
    run, run_id = preempted_run
    first, second = segment_records(run)
    assert {r["run"]["run_id"] for r in first + second if r["type"] == "run"} == {run_id}
    assert [r["type"] for r in first if r["type"] in ("preempting", "exit")] == ["preempting", "exit"]
    assert [r["exit"].get("exit_code", 0) for r in first if r["type"] == "exit"] == [PREEMPTED_EXIT_CODE]
    assert not [r for r in second if r["type"] == "preempting"]
    assert [r["exit"].get("exit_code", 0) for r in second if r["type"] == "exit"] == [0]


class WandbServer(ThreadingHTTPServer):
    """Just enough of W&B's API for `wandb sync`: runs by name, with each run's history lines by
    offset and its file-stream posts (flags and exit codes) in order of arrival."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), WandbHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.runs: dict[str, dict] = {}


class WandbHandler(BaseHTTPRequestHandler):
    server: WandbServer

    def log_message(self, *args):
        pass

    def reply(self, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def read_json(self) -> dict:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        return json.loads(gzip.decompress(body) if self.headers.get("Content-Encoding") == "gzip" else body)

    def do_PUT(self):  # file uploads to the URLs CreateRunFiles handed out
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.reply({})

    def do_POST(self):
        if self.path == "/graphql":
            query = self.read_json()
            return self.reply({"data": self.graphql(query["operationName"], query["variables"])})
        if self.path.endswith("/file_stream"):  # /files/[ENTITY/]PROJECT/RUN/file_stream
            run, post = self.server.runs[self.path.split("/")[-2]], self.read_json()
            for line_no, line in enumerate(post.get("files", {}).get("wandb-history.jsonl", {}).get("content", [])):
                run["history"][post["files"]["wandb-history.jsonl"]["offset"] + line_no] = json.loads(line)
            run["posts"].append({k: v for k, v in post.items() if k != "files"})
        else:  # W&B's own telemetry: not ours to record
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.reply({})

    def graphql(self, operation: str, v: dict) -> dict:
        project = {"id": "p1", "name": v.get("project"), "entity": {"id": "e1", "name": v.get("entity")}}
        if operation == "RunResumeStatus":
            run = self.server.runs.get(v["name"])
            history = [run["history"][i] for i in sorted(run["history"])] if run else []
            bucket = None if run is None else {
                "id": "r1", "name": v["name"], "displayName": v["name"], "config": "{}", "summaryMetrics": "{}",
                "wandbConfig": "{}", "tags": [], "eventsLineCount": 0, "eventsTail": "[]", "logLineCount": 0,
                "historyLineCount": len(history), "historyTail": json.dumps([json.dumps(h) for h in history[-1:]])}
            return {"model": {**project, "bucket": bucket}}
        if operation == "UpsertBucket":
            inserted = v["name"] not in self.server.runs
            run = self.server.runs.setdefault(v["name"], {"history": {}, "posts": []})
            return {"upsertBucket": {"inserted": inserted, "bucket": {
                "id": "r1", "name": v["name"], "displayName": v["name"], "config": "{}", "project": project,
                "historyLineCount": len(run["history"])}}}
        if operation == "CreateRunFiles":
            return {"createRunFiles": {"runID": "r1", "uploadHeaders": [], "files": [
                {"name": f, "uploadUrl": f"{self.server.url}/upload/{f}"} for f in v["files"]]}}
        return {}


@pytest.fixture
def wandb_server(monkeypatch):
    server = WandbServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("WANDB_BASE_URL", server.url)
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)  # any 40 characters: the server is ours
    yield server
    server.shutdown()


def test_wandb_sync_uploads_both_segments_as_one_run_whose_history_goes_on(preempted_run, wandb_server):
    run, run_id = preempted_run
    local = [[r["history"]["item"] for r in recs if r["type"] == "history"] for recs in segment_records(run)]
    assert main(["sync", str(run), "--entity", "team"]) == 0  # `telucodec sync RUN`: sync_run
    assert list(wandb_server.runs) == [run_id]  # one run
    uploaded = wandb_server.runs[run_id]
    history = [uploaded["history"][i] for i in sorted(uploaded["history"])]
    assert sorted(uploaded["history"]) == list(range(len(history)))  # contiguous lines
    rows = [(h["step"], h["_timestamp"]) for h in history]
    assert rows == [(h["step"], h["_timestamp"]) for h in local[0] + local[1]]  # the first segment's, then the second's
    assert [h["step"] for h in history if "cost/usd" in h][-1] == 4
    ends = [p for p in uploaded["posts"] if p.get("complete")]
    assert [p.get("exitcode") for p in ends] == [PREEMPTED_EXIT_CODE, 0]  # preempted, then finished
    preempting = [i for i, p in enumerate(uploaded["posts"]) if p.get("preempting")]
    assert preempting and preempting[0] < uploaded["posts"].index(ends[0])
