"""Prep and reshard fanned out over a Ray cluster (`ray.cluster_utils.Cluster`: a head and two nodes,
1 CPU each): the very dataset one machine makes, byte for byte, through a file that kills its worker
(prep), a driver killed mid-run and a node lost mid-run. The tests share one cluster and run in file
order: the node-loss tests come last, as each takes a node away for good."""

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from audio_fixtures import tone, write_bad_files, write_long_audio, write_manifest_corpus
from data_prep.prep import run_prep
from data_prep.reshard import ReshardOptions, reshard
from fault_fixtures import KillWhoeverOpens, parquet_with_a_poison_row, sigkill_once_exists
from run_fixtures import wait_for
from pipeline.config import PrepConfig
from pipeline.storage.shards import DatasetIndex, ShardWriter, encode_sample, write_index
from pipeline.storage.store import open_store

pytestmark = pytest.mark.slow
CFG = PrepConfig(workers=2, shard_max_samples=2)
ARGS = ["prep.workers=2", "prep.shard_max_samples=2"]
FAST_FAILURE_DETECTION = {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                          "health_check_initial_delay_ms": 0}
"""A lost node is known dead in ~1.5 s instead of ~15 s."""


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "_system_config": FAST_FAILURE_DETECTION})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    warm_every_node(ray)
    try:
        yield cluster, nodes
    finally:
        ray.shutdown()
        cluster.shutdown()


def ray_nodes() -> list[dict]:
    import ray

    return ray.nodes()


def warm_every_node(ray) -> None:
    """A worker process started on every node: the tests' work is short (a second or two), and nodes
    still starting their first worker would leave it all to the head."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=1)
    def node() -> str:
        return ray.get_runtime_context().get_node_id()

    ids = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    assert ray.get([node.options(scheduling_strategy=NodeAffinitySchedulingStrategy(i, soft=False)).remote()
                    for i in ids]) == ids


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Sources (40 speech files and the usual bad ones) and the dataset one machine makes of them."""
    root = tmp_path_factory.mktemp("corpus")
    manifest = write_manifest_corpus(root / "c", n_files=40, n_speakers=8, seconds=2.0)
    write_bad_files(root / "bad")
    sources = [str(root / "bad"), str(manifest)]
    reference = root / "one-machine"
    run_prep(sources, str(reference), CFG, progress=False)
    return sources, reference


def dataset_bytes(folder: Path) -> dict:
    """Every file of a finished dataset, by its path under `folder`, hidden ones included (index.json
    less its creation time)."""
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    index = json.loads(files.pop("index.json"))
    index.pop("created")
    return files | {"index.json": index}


def test_prep_on_three_nodes_is_the_one_machine_dataset_byte_for_byte(cluster, corpus, tmp_path, capsys):
    sources, reference = corpus
    summary = run_prep(sources, str(tmp_path / "ray"), CFG, progress=True, ray_address=cluster[0].address)
    assert dataset_bytes(tmp_path / "ray") == dataset_bytes(reference)
    assert len(summary.nodes) == 3 and abs(sum(summary.nodes.values()) - 1) < 1e-6  # every node took a share
    out = capsys.readouterr().out
    assert "prep on Ray: 3 node(s), 3 CPUs" in out and "same path on every node" in out


def test_a_file_that_kills_its_worker_on_every_node_is_a_reject(cluster, tmp_path, monkeypatch):
    """Its job (here 2 files: 31 on 3 CPUs) dies on every try, then runs again a file a task: the
    other file is prepped, the poison rejected after its own 2 tries."""
    monkeypatch.setattr("data_prep.prep.JOB_BYTES", 1 << 30)  # the poison is long (160 MB) and would be a job alone
    src = tmp_path / "src"
    write_manifest_corpus(src, n_files=30, n_speakers=3, seconds=1.5)
    # long (~3 s of decoding): the killer, scanning every Ray process's open files, catches it open however loaded
    poison = write_long_audio(src / "poison.wav", 1800, sr=44100, channels=1, subtype="PCM_16")
    with KillWhoeverOpens(poison, descendants=True) as killer:
        summary = run_prep([str(src)], str(tmp_path / "out"), CFG, progress=False, ray_address=cluster[0].address)
    assert killer.kills >= 6  # 4 tries of the job, 2 of the file alone
    assert summary.files_ok == 30
    (reject,) = summary.rejects
    assert reject["path"].endswith("poison.wav") and reject["reason"] == "worker died: WorkerCrashedError on 2 tries"


def test_a_row_that_kills_its_worker_is_found_by_halves_and_rejected_alone(cluster, tmp_path):
    """A row group's job (here 4 rows: 48 rows on 3 CPUs) whose task dies on every try runs again
    in halves until the one row is left: it alone is rejected, after its own 2 tries."""
    path, poison = parquet_with_a_poison_row(tmp_path / "te", rows=48, poison=37)
    cfg = PrepConfig(min_seconds=0.5, val_fraction=0, test_fraction=0)
    with KillWhoeverOpens(poison, descendants=True) as killer:
        summary = run_prep([str(path)], str(tmp_path / "out"), cfg, progress=False, ray_address=cluster[0].address)
    assert killer.kills >= 8  # 4 tries of the job, 2 of its half, 2 of the row
    assert summary.files_ok == 47
    (reject,) = summary.rejects
    assert reject["path"] == f"{path} (row 37)" and reject["reason"] == "worker died: WorkerCrashedError on 2 tries"


def test_a_killed_driver_reruns_to_the_same_dataset_reusing_its_shards(cluster, corpus, tmp_path):
    sources, reference = corpus
    out = tmp_path / "killed"
    driver = subprocess.Popen([sys.executable, "-m", "jobs.cli", "prep", *sources, "--out", str(out), *ARGS,
                               "--ray", cluster[0].address], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sigkill_once_exists(driver, out / "_prep" / "train-000003.json", timeout=180)
    assert not (out / "index.json").exists()
    summary = run_prep(sources, str(out), CFG, progress=False, ray_address=cluster[0].address)
    assert summary.resumed_shards >= 4  # finished work reused, not redone
    assert dataset_bytes(out) == dataset_bytes(reference)


RESHARDS = {"repack": ReshardOptions(shards=6, ranks=3),
            "shuffle": ReshardOptions(samples_per_shard=3, shuffle=True, seed=7),
            "recut": ReshardOptions(samples_per_shard=4, shuffle=True, segment_seconds=0.7, sample_rate=8000)}
"""A plain re-pack, a shuffle and a re-cut with resampling (the latter in ~100 shards: a node lost
after the first is written still has most of the writes ahead, whose inputs it held)."""


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    """A dataset to reshard: 2 splits, 16 shards of 3 samples of 6 s (a route task re-cutting one
    takes ~0.1 s: long enough for the tasks to run side by side, on every node)."""
    url = str(tmp_path_factory.mktemp("source") / "te")
    store, infos = open_store(url), []
    for split, shards in (("train", 12), ("val", 4)):
        for j in range(shards):
            with ShardWriter(store, split, j) as writer:
                for k in range(3):
                    n = len(infos) * 3 + k
                    writer.add(encode_sample(f"utt{n:04d}", tone(20.0, 16000, freq=110 + 7 * n, seed=n), 16000,
                                             {"speaker": f"spk{n % 5}"}))
            infos.append(writer.info)
    write_index(store, DatasetIndex(shards=infos, sample_rate=16000, config={"prep": {"synthetic": True}}))
    return url


@pytest.fixture(scope="module")
def reshards(source, tmp_path_factory):
    """What one machine makes of `source` with each of RESHARDS."""
    root = tmp_path_factory.mktemp("reshards")
    for name, opts in RESHARDS.items():
        reshard(source, str(root / name), opts, progress=False)
    return root


@pytest.mark.parametrize("name", list(RESHARDS))
def test_reshard_on_three_nodes_is_the_one_machine_reshard_byte_for_byte(cluster, source, reshards, name, tmp_path,
                                                                          capsys):
    summary = reshard(source, str(tmp_path / name), RESHARDS[name], ray_address=cluster[0].address)
    assert dataset_bytes(tmp_path / name) == dataset_bytes(reshards / name)
    assert summary.written_shards == len(list((reshards / name).glob("*.tar")))
    assert set(summary.nodes) <= {n["NodeID"] for n in ray_nodes()} and abs(sum(summary.nodes.values()) - 1) < 1e-6
    if name == "recut":  # tasks long enough to be running side by side (a re-pack's take milliseconds)
        assert len(summary.nodes) >= 2, summary.nodes
    assert (summary.copied_ranges > 0) == (name != "recut")  # a re-pack copies byte ranges, on Ray too
    assert "reshard on Ray: 3 node(s), 3 CPUs" in capsys.readouterr().out


def test_a_killed_reshard_driver_reruns_to_the_same_shards_reusing_them(cluster, source, tmp_path):
    out = tmp_path / "killed"
    driver = subprocess.Popen([sys.executable, "-m", "jobs.cli", "reshard", source, str(out),
                               "--samples-per-shard", "1", "--ray", cluster[0].address],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sigkill_once_exists(driver, out / "_reshard" / "done" / "train-000003.tar.json", timeout=180)
    assert not (out / "index.json").exists()
    summary = reshard(source, str(out), ReshardOptions(samples_per_shard=1), progress=False,
                      ray_address=cluster[0].address)
    assert summary.kept_shards >= 4 and summary.written_shards + summary.kept_shards == len(list(out.glob("*.tar")))
    reference = tmp_path / "one-machine"
    reshard(source, str(reference), ReshardOptions(samples_per_shard=1), progress=False)
    assert dataset_bytes(out) == dataset_bytes(reference)


def lose_node_once_recorded(c, node, out: Path, record: str, run, monkeypatch) -> object:
    """Call `run()` (writing dataset `out`) in a thread; once its driver has written the run record
    `record`, hold the driver there, take `node` away (its raylet killed) and let the driver go on;
    return what `run()` returned. However fast the rest of the run, the node is lost mid-run (polling
    for the record instead lost it after the run's end under load: ordered results that wait on a
    slow first task land in one burst)."""
    from data_prep.dataset_job import RunRecords

    put, recorded, lost = RunRecords.put, threading.Event(), threading.Event()

    def put_and_hold(self, name: str, body: dict) -> None:
        put(self, name, body)
        if self.job.records + name == record:
            recorded.set()
            lost.wait(timeout=300)

    monkeypatch.setattr(RunRecords, "put", put_and_hold)
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(summary=run()))
    runner.start()
    assert recorded.wait(timeout=180), "the run wrote no " + record
    c.remove_node(node, allow_graceful=False)
    assert not (out / "index.json").exists()
    lost.set()
    runner.join(timeout=300)
    assert "summary" in result
    return result["summary"]


def test_a_node_lost_mid_prep_changes_nothing_and_leaves_nothing(cluster, corpus, tmp_path, monkeypatch):
    """Takes a node away for good."""
    (c, nodes), (sources, reference) = cluster, corpus
    out = tmp_path / "lost"
    lose_node_once_recorded(c, nodes[1], out, "_prep/train-000001.json",
                            lambda: run_prep(sources, str(out), CFG, progress=False, ray_address=c.address),
                            monkeypatch)
    assert dataset_bytes(out) == dataset_bytes(reference)  # nothing lost, nothing twice, no leftovers


def test_a_node_lost_mid_reshard_changes_nothing_and_leaves_nothing(cluster, source, reshards, tmp_path, monkeypatch):
    """Runs last: takes the second node away (the one before took the third)."""
    import ray

    (c, nodes), out = cluster, tmp_path / "lost"
    # the node the test before took away is known dead (else tasks are sent to it, and wait)
    wait_for(lambda: sum(n["Alive"] for n in ray_nodes()) == 2, timeout=60)
    warm_every_node(ray)
    summary = lose_node_once_recorded(c, nodes[0], out, "_reshard/done/train-000000.tar.json",
                                      lambda: reshard(source, str(out), RESHARDS["recut"], progress=False,
                                                      ray_address=c.address), monkeypatch)
    assert nodes[0].node_id in summary.nodes  # it had routed samples, held for writes to come
    assert dataset_bytes(out) == dataset_bytes(reshards / "recut")  # nothing lost, nothing twice, no leftovers
