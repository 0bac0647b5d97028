"""What a person reads in a run's records: every JSONL line has its moment as local ISO time (`at`)
beside the epoch seconds tools use (`time`); S3 clients keep botocore's credential INFO line out of
job logs."""

import datetime
import logging

from pipeline.runs.rundir import RunDir
from pipeline.storage.store import s3_client


def test_every_record_carries_a_local_iso_time_beside_its_epoch_seconds(tmp_path):
    run = RunDir(str(tmp_path))
    run.events.append({"event": "start", "step": 0})
    run.log("ledger.jsonl").append({"time": 1796519869.5, "event": "heartbeat"})
    for record in (run.events.read()[0], run.log("ledger.jsonl").read()[0]):
        at = datetime.datetime.fromisoformat(record["at"])
        assert at.tzinfo is not None and abs(at.timestamp() - record["time"]) < 1
        assert list(record)[:2] == ["time", "at"]


def test_an_s3_client_keeps_the_credentials_info_line_out_of_logs():
    logging.getLogger("botocore.credentials").setLevel(logging.INFO)
    s3_client()
    assert not logging.getLogger("botocore.credentials").isEnabledFor(logging.INFO)
