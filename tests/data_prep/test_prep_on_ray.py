"""Prep fanned out over a Ray cluster (`ray.cluster_utils.Cluster`: a head and two nodes, 1 CPU
each): the very dataset one machine makes, byte for byte, through a file that kills its worker, a
driver killed mid-run and a node lost mid-run."""

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from audio_fixtures import write_bad_files, write_long_audio, write_manifest_corpus
from data_prep.prep import run_prep
from fault_fixtures import KillWhoeverOpens, sigkill_once_exists
from pipeline.config import PrepConfig

pytestmark = pytest.mark.slow
CFG = PrepConfig(workers=2, shard_max_samples=2)
ARGS = ["prep.workers=2", "prep.shard_max_samples=2"]


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    try:
        yield cluster, nodes
    finally:
        ray.shutdown()
        cluster.shutdown()


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
    """Every file of a finished dataset (index.json less its creation time)."""
    files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
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


def test_a_file_that_kills_its_worker_on_every_node_is_a_reject(cluster, tmp_path):
    src = tmp_path / "src"
    write_manifest_corpus(src, n_files=6, n_speakers=3, seconds=1.5)
    # long (~3 s of decoding): the killer, scanning every Ray process's open files, catches it open however loaded
    poison = write_long_audio(src / "poison.wav", 1800, sr=44100, channels=1, subtype="PCM_16")
    with KillWhoeverOpens(poison, descendants=True) as killer:
        summary = run_prep([str(src)], str(tmp_path / "out"), CFG, progress=False, ray_address=cluster[0].address)
    assert killer.kills >= 2
    assert summary.files_ok == 6
    (reject,) = summary.rejects
    assert reject["path"].endswith("poison.wav") and reject["reason"].startswith("worker died")


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


def test_a_node_lost_mid_run_changes_nothing_and_leaves_nothing(cluster, corpus, tmp_path):
    """Runs last: it takes a node away for good."""
    (c, nodes), (sources, reference) = cluster, corpus
    out = tmp_path / "lost"
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(
        summary=run_prep(sources, str(out), CFG, progress=False, ray_address=c.address)))
    runner.start()
    deadline = time.time() + 180
    while not (out / "_prep" / "train-000001.json").exists():
        assert runner.is_alive() and time.time() < deadline
        time.sleep(0.005)
    c.remove_node(nodes[1], allow_graceful=False)
    assert not (out / "index.json").exists(), "the run ended before the node was lost"
    runner.join(timeout=300)
    assert "summary" in result
    assert dataset_bytes(out) == dataset_bytes(reference)  # nothing lost, nothing twice, no leftovers
