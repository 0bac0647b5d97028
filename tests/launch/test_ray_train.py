"""Ray Train on a real local Ray: DDP in sync, SIGKILLed worker, preemption notice, driver restart.

Slow (each fit starts a worker group, ~12 s): marked `slow`, run in CI.
"""

import json
import os
import signal
import threading

import pytest

from audio_fixtures import make_dataset
from jobs.launch.trainer import train_on_ray
from jobs.launch.spot_drill import SpotDrill
from pipeline.runs.checkpoints import Checkpoints
from pipeline.config import load_config
from pipeline.runs.rundir import RunDir
from run_fixtures import TINY, losses_by_step, wait_for

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=3, include_dashboard=True, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("ds"))
    make_dataset(url, [9, 4, 6], sr=16000, seconds=0.3)  # three uneven shards over two ranks
    return url


def config(dataset, run_dir, *more):
    return load_config(["configs/base.yaml"], [f"data.url={dataset}", f"run.dir={run_dir}", *TINY, *more])


def test_two_workers_stay_in_sync_with_uneven_shards(ray_local, dataset, tmp_path):
    run = tmp_path / "sync"
    result = train_on_ray(config(dataset, run, "train.steps=6", "train.checkpoint_every=3",
                                 "train.debug_rank_digests=true"))
    assert result.status == "finished" and result.step == 6
    ck = Checkpoints(str(run))
    for step in (3, 6):
        digests = {ck.load(step, f"rank{r}")["params_sha256"] for r in range(2)}
        assert len(digests) == 1  # DDP kept parameters (and codebooks) identical on both ranks
    assert sorted(losses_by_step(run)) == list(range(1, 7))


def test_sigkilled_worker_resumes_with_identical_losses(ray_local, dataset, tmp_path):
    steps = ["train.steps=14", "train.checkpoint_every=4"]
    reference = tmp_path / "ref"
    train_on_ray(config(dataset, reference, *steps))
    run = tmp_path / "killed"
    killed = {}

    def killer():
        wait_for(lambda: max(losses_by_step(run), default=0) >= 6)
        info = json.loads((run / "workers" / "rank1.json").read_text())
        os.kill(info["pid"], signal.SIGKILL)
        killed["pid"] = info["pid"]

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    result = train_on_ray(config(dataset, run, *steps, "train.debug_worker_records=true"))  # rank 1's pid
    thread.join(timeout=5)
    assert killed, "the worker was never killed"
    assert result.step == 14
    events = RunDir(str(run)).events.read()
    resumed = [e["step"] for e in events if e["event"] == "resumed"]
    assert resumed and resumed[0] in (4, 8)  # restarted from a whole checkpoint, not from scratch
    steps_logged = [r["step"] for r in RunDir(str(run)).metrics.read() if "loss/total" in r]
    assert len(steps_logged) > len(set(steps_logged))  # the restart shows: some steps were replayed
    ref, got = losses_by_step(reference), losses_by_step(run)
    assert sorted(got) == sorted(ref) == list(range(1, 15))
    for step in range(resumed[0] + 1, 15):
        assert got[step] == ref[step], f"step {step}: {got[step]} != {ref[step]}"


def test_spot_notice_checkpoints_at_next_step_and_resumes_there(ray_local, dataset, tmp_path):
    run = tmp_path / "spot"
    with SpotDrill(str(run), at_step=5, poll_seconds=0.05) as drill:  # a fake IMDSv2 on 127.0.0.1
        result = train_on_ray(config(dataset, run, "train.steps=40", "train.checkpoint_every=1000",
                                     f"preempt.endpoints.aws={drill.url}", "preempt.poll_seconds=0.1"))
    assert result.status == "finished" and result.step == 40
    log = RunDir(str(run)).events.read()
    stop = next(e for e in log if e["event"] == "preempted")["step"]
    assert drill.fired_at is not None and drill.stopped_at == stop
    assert drill.fired_at <= stop <= drill.fired_at + 20  # the notice was acted on at a step boundary soon after
    kinds = [e["event"] for e in log]
    assert kinds.count("preempted") == 1  # the replacement group got no notice
    assert kinds.index("preempted") < kinds.index("restarted") < kinds.index("resumed")
    resumed = next(e for e in log if e["event"] == "resumed")["step"]
    assert resumed == stop and stop % 1000 != 0  # a just-in-time checkpoint, nothing lost
    assert drill.server.requests > 0


def test_sigterm_to_a_worker_is_a_notice_checkpointed_at_the_next_step(ray_local, dataset, tmp_path):
    run = tmp_path / "sigterm"
    sent = {}

    def scheduler():  # what a node shutdown or a batch scheduler does to the worker process
        wait_for(lambda: max(losses_by_step(run), default=0) >= 4 and (run / "workers" / "rank1.json").exists())
        sent["at"] = max(losses_by_step(run))
        os.kill(json.loads((run / "workers" / "rank1.json").read_text())["pid"], signal.SIGTERM)

    thread = threading.Thread(target=scheduler, daemon=True)
    thread.start()
    result = train_on_ray(config(dataset, run, "train.steps=30", "train.checkpoint_every=1000",
                                 "train.debug_worker_records=true"))
    thread.join(timeout=5)
    assert sent and result.status == "finished" and result.step == 30
    log = RunDir(str(run)).events.read()
    stop = next(e for e in log if e["event"] == "preempted")["step"]
    assert sent["at"] <= stop <= sent["at"] + 20  # saved at a step boundary soon after, not killed
    resumed = next(e for e in log if e["event"] == "resumed")["step"]
    assert resumed == stop  # nothing replayed: the worker saved before it left


def test_driver_rerun_resumes_and_new_name_starts_fresh(ray_local, dataset, tmp_path):
    run = tmp_path / "again"
    train_on_ray(config(dataset, run, "train.steps=3", "train.checkpoint_every=3"))
    result = train_on_ray(config(dataset, run, "train.steps=5", "train.checkpoint_every=5"))
    assert result.step == 5
    assert [e["event"] for e in RunDir(str(run)).events.read()].count("resumed") == 1
    fresh = tmp_path / "other"
    train_on_ray(config(dataset, fresh, "train.steps=2", "train.checkpoint_every=2"))
    assert [e["event"] for e in RunDir(str(fresh)).events.read()][0] == "start"
    assert Checkpoints(str(fresh)).steps() == [2]


def test_the_same_error_twice_fails_the_run_in_one_line_after_one_restart(ray_local, tmp_path):
    """Every sample's FLAC bytes damaged after the index was written: every worker group fails at
    the same step with the same DataError. Ray restarts the group once; the second identical crash
    ends the run with that error in one line, instead of using up train.max_failures."""
    from jobs.launch.trainer import TrainingFailed
    from pipeline.storage.shards import load_index

    url = str(tmp_path / "ds")
    make_dataset(url, [6, 6], sr=16000, seconds=0.3)
    for shard in load_index(url).shards:
        with open(tmp_path / "ds" / shard.name, "r+b") as f:
            for r in shard.sample_ranges:
                f.seek(r.flac_offset)
                f.write(b"XXXX")
    run = tmp_path / "run"
    with pytest.raises(TrainingFailed, match=r"same error in two worker groups in a row .*DataError: .*no FLAC sample"):
        train_on_ray(config(url, run, "train.steps=6", "train.max_failures=5"))
    events = RunDir(str(run)).events.read()
    assert [e["event"] for e in events].count("failed") == 1
    groups = max(len(list(rank.glob("*.json"))) for rank in (run / "control" / "crashes").iterdir())
    assert groups == 2  # the first group and its one restart crashed: max_failures (5) was not used up
