"""`telucodec demo`, reduced: every stage runs for real (the spot drill too) and the summary says
where things are."""

import json

import pytest

from jobs.cli import main

pytestmark = pytest.mark.slow


def test_demo_end_to_end_reduced(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--minutes", "0.6", "train.steps=6", "train.eval_every=3", "train.batch_size=2",
                 "train.checkpoint_every=3", "train.log_every=1"]) == 0
    captured = capsys.readouterr()
    text = captured.out
    # rank 0's prints are not buried under Ray Train's dump of every report
    assert "Reporting training result" not in captured.out + captured.err
    for stage in ("1/6", "2/6", "3/6", "4/6", "5/6", "6/6", "summary"):
        assert stage in text
    assert (out / "data" / "index.json").is_file() and (out / "data-r2" / "index.json").is_file()
    assert (out / "run" / "checkpoints" / "latest.json").is_file()
    report = json.loads((out / "eval" / "eval.json").read_text())
    names = [s["name"] for s in report["scores"]]
    assert names[-2:] == ["opus-6k", "codec2-3200"] and "telucodec-8" in names
    assert list(out.glob("eval/*.png"))
    assert f"checkpoints:  {out / 'run' / 'checkpoints'}" in text
    assert "SNR" in text and "PESQ-WB" in text and "STOI" in text and "next, on a real cluster" in text
    events = [json.loads(line)["event"] for line in (out / "run" / "events.jsonl").read_text().splitlines()]
    assert events.count("preempted") == 1 and events[-1] == "finished"  # one simulated reclaim, then done
    assert events.index("preempted") < events.index("restarted") < events.index("resumed")
    assert "spot drill:   notice at step" in text and "resumed there by a new worker group" in text
    ledger = [json.loads(line) for line in (out / "run" / "ledger.jsonl").read_text().splitlines()]
    assert ledger[-1]["event"] == "finished" and ledger[-1]["restarts"] == 1  # the reclaim is billed as a restart
    assert f"cost ledger:  {out / 'run' / 'ledger.jsonl'}" in text
    assert list((out / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
