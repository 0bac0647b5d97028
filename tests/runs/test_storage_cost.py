"""A run's requests to object storage in its cost ledger: counted by kind and purpose in every process
that makes them (a loader worker process included), equal to what a counting proxy in front of the
S3 server saw, priced from prices.yaml, and shown by `telucodec cost`."""

import json
import os
import subprocess
import sys
from collections import Counter
from urllib.parse import parse_qs, urlsplit

import pytest

from audio_fixtures import make_dataset
from jobs.cli import main
from pipeline.config import ConfigError, load_config
from pipeline.runs.cost import LEDGER, storage_price, store_kind
from pipeline.runs.rundir import RunDir
from pipeline.storage.shards import load_index
from pipeline.storage.store import KINDS, no_requests
from pipeline.training.loop import train
from run_fixtures import TINY_RUN, CountingProxy


def seen_at_proxy(log: list[tuple[str, str]], bucket: str, prefix: str) -> Counter:
    """The requests for keys under `prefix` (a LIST: its prefix parameter) by how stores bill them."""
    kinds = Counter()
    for method, path in log:
        url = urlsplit(path)
        query = parse_qs(url.query, keep_blank_values=True)
        key = url.path[len(f"/{bucket}/"):] if url.path.startswith(f"/{bucket}/") else query.get("prefix", [""])[0]
        if key.startswith(prefix):
            kinds["LIST" if "list-type" in query else "GET"] += method in ("GET", "HEAD")
            kinds["DELETE" if method == "DELETE" or "delete" in query else "PUT"] += method not in ("GET", "HEAD")
    return +kinds


def test_the_ledger_counts_every_request_the_store_saw_by_kind_and_purpose(s3_bucket, monkeypatch, tmp_path, capsys):
    data, run = f"{s3_bucket}/data", f"{s3_bucket}/runs/r1"
    make_dataset(data, [8, 8, 8], sr=16000, seconds=0.3)
    bucket = s3_bucket[5:]
    cfg = load_config(["configs/base.yaml"], [f"data.url={data}", f"run.dir={run}", *TINY_RUN,
                                              "train.steps=12", "train.checkpoint_every=5", "data.workers=1",
                                              f"data.cache_dir={tmp_path / 'cache'}", "train.eval_every=1000",
                                              f"tracking.dir={tmp_path / 'wb'}"])
    with CountingProxy(os.environ["AWS_ENDPOINT_URL"]) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        assert train(cfg).status == "finished"
        log = list(proxy.log)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.upstream)
    last = RunDir(run).log(LEDGER).read()[-1]
    by_purpose = last["storage"]
    loader, ckpts = seen_at_proxy(log, bucket, "data/"), seen_at_proxy(log, bucket, "runs/r1/checkpoints/")
    # the loader's worker process fetched each shard once (whole, into the cache) and the index and eval clips
    assert loader["GET"] >= 3 and {k: by_purpose["loader"][k] for k in loader} == dict(loader), (by_purpose, loader)
    # three checkpoints (steps 5, 10, 12): every request of theirs, the last one's included
    assert ckpts["PUT"] >= 6 and {k: by_purpose["checkpoints"][k] for k in ckpts} == dict(ckpts), (by_purpose, ckpts)
    # the run's logs (ledger, metrics, events): all but the upload of the ledger's last line itself
    logs = seen_at_proxy(log, bucket, "runs/r1/")
    logs.subtract(ckpts)
    assert by_purpose["logs"]["GET"] == logs["GET"] and 0 <= logs["PUT"] - by_purpose["logs"]["PUT"] <= 1, (by_purpose, logs)
    assert by_purpose["loader"]["GET_bytes"] >= sum(s.bytes for s in load_index(data).shards)
    requests = last["storage_requests"]
    assert requests == {k: sum(p.get(k, 0) for p in by_purpose.values()) for k in ("GET", "PUT", "LIST")}
    assert last["storage_usd"] == pytest.approx(requests["GET"] * 0.0004 / 1000 + (requests["PUT"] + requests["LIST"])
                                                * 0.005 / 1000)

    (wandb_file,) = (tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb")
    dump = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(wandb_file)],
                          capture_output=True, text=True, check=True).stdout
    logged = [r["history"]["item"] for r in map(json.loads, dump.splitlines()) if r["type"] == "history"]
    final = [h for h in logged if "cost/storage_get" in h][-1]  # the run's last W&B line: the ledger's last
    assert (final["cost/storage_get"], final["cost/storage_put"], final["cost/storage_list"]) == \
        (requests["GET"], requests["PUT"], requests["LIST"])
    assert final["cost/storage_usd"] == pytest.approx(last["storage_usd"])

    capsys.readouterr()
    assert main(["cost", run, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["storage_requests"] == requests and shown["storage_usd"] == pytest.approx(last["storage_usd"])


def test_request_prices_follow_the_endpoint_or_cost_store(monkeypatch):
    assert [store_kind(e) for e in ("", "https://storage.googleapis.com", "https://acct.r2.cloudflarestorage.com",
                                    "http://127.0.0.1:9000")] == ["s3", "gcs", "r2", "s3"]
    counts = no_requests()
    counts[0, KINDS.index("GET")] = (1000, 10 ** 9)
    counts[1, KINDS.index("PUT")] = (1000, 0)
    cfg = load_config(["configs/base.yaml"], ["cost.store=gcs", "cost.egress=true"])
    assert storage_price(cfg).usd(counts) == pytest.approx(0.0004 + 0.005 + 0.12)  # 1 GB out at GCS's egress
    with pytest.raises(ConfigError, match=r"cost.store: azure has no request prices .*known: gcs, r2, s3"):
        storage_price(load_config(["configs/base.yaml"], ["cost.store=azure"]))
