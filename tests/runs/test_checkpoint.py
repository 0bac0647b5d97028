"""Checkpoints: whole or invisible, pruned, loaded with weights_only."""

import pytest
import torch

from pipeline.runs.checkpoints import CheckpointError, Checkpoints, step_dir


@pytest.fixture(params=["local", "s3"])
def run_url(request, tmp_path):
    return str(tmp_path / "run") if request.param == "local" else request.getfixturevalue("s3_bucket") + "/run"


def test_save_latest_load(run_url):
    ck = Checkpoints(run_url)
    assert ck.latest_step() is None
    ck.save(10, {"model": {"w": torch.ones(3)}, "meta": {"step": 10, "rng": [1, 2, 3]}})
    ck.save(20, {"model": {"w": torch.full((3,), 2.0)}})
    assert ck.latest_step() == 20
    assert torch.equal(ck.load(20, "model")["w"], torch.full((3,), 2.0))
    assert ck.load(10, "meta") == {"step": 10, "rng": [1, 2, 3]}


def test_half_written_checkpoint_is_never_latest(run_url):
    ck = Checkpoints(run_url)
    ck.save(10, {"model": {"w": torch.ones(3)}})
    # a save that died after its part but before the manifest
    ck.save_part(20, "model", {"w": torch.zeros(3)})
    assert ck.latest_step() == 10
    # a manifest whose part was then cut short (and a stale latest.json pointing at it)
    ck.save(30, {"model": {"w": torch.zeros(1000)}})
    ck.store.put(f"{step_dir(30)}/model.pt", b"trunc")
    assert ck.latest_step() == 10
    with pytest.raises(CheckpointError, match="does not match"):
        ck.load(30, "model")


def test_prune_keeps_last_and_best(tmp_path):
    ck = Checkpoints(str(tmp_path))
    for s in (1, 2, 3, 4, 5):
        ck.save(s, {"m": {"x": torch.tensor([s])}})
    assert ck.mark_best(2, "val/snr", 3.0)
    assert not ck.mark_best(4, "val/snr", 1.0)
    assert ck.prune(keep_last=2) == [1, 3]
    assert ck.steps() == [2, 4, 5] and ck.latest_step() == 5


def test_arbitrary_pickle_is_refused(tmp_path):
    ck = Checkpoints(str(tmp_path))

    import fractions  # any class outside torch's allow-list stands in for a malicious object

    ck.save(1, {"x": {"obj": fractions.Fraction(1, 3)}})
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        ck.load(1, "x")
