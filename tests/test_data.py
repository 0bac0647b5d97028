"""Training batches: equal per rank, deterministic, resumable to the exact step."""

import pytest
import torch

from audio_fixtures import make_dataset
from pipeline.data import CropLoader, DataError, eval_clips


def sample_ids(batch: torch.Tensor) -> list[int]:
    return [int(round(float(x) * 1000)) - 1 for x in batch[:, 0, 0]]


def test_equal_batches_per_rank_with_uneven_shards(tmp_path):
    make_dataset(str(tmp_path), [7, 3, 5, 9, 2])  # 26 samples, uneven
    loaders = [CropLoader(str(tmp_path), "train", 3, 1000, seed=1, rank=r, world=2) for r in range(2)]
    assert loaders[0].steps_per_epoch == loaders[1].steps_per_epoch > 0
    seen = []
    for loader in loaders:
        it = loader.batches(0)
        for _ in range(loader.steps_per_epoch):
            step, batch = next(it)
            assert batch.shape == (3, 1, 1000) and batch.dtype == torch.float32
            seen += sample_ids(batch)
    assert len(seen) == len(set(seen))  # within an epoch no sample is used twice across ranks


def test_fewer_shards_than_ranks_still_splits_samples(tmp_path):
    make_dataset(str(tmp_path), [10])
    ids = []
    for r in range(3):
        loader = CropLoader(str(tmp_path), "train", 1, 1000, seed=0, rank=r, world=3)
        assert loader.steps_per_epoch == 3
        it = loader.batches(0)
        ids.append({sample_ids(next(it)[1])[0] for _ in range(3)})
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2])


def test_resume_mid_epoch_gives_identical_batches(tmp_path):
    make_dataset(str(tmp_path), [6, 6, 6, 6], seconds=0.6)
    loader = CropLoader(str(tmp_path), "train", 4, 800, seed=7, rank=1, world=2)
    it = loader.batches(0)
    straight = [next(it) for _ in range(3 * loader.steps_per_epoch + 2)]
    for start in (1, loader.steps_per_epoch, loader.steps_per_epoch + 1):
        resumed = loader.batches(start)
        for step, batch in straight[start:start + 4]:
            s2, b2 = next(resumed)
            assert s2 == step and torch.equal(b2, batch)


def test_seed_and_epoch_change_the_order(tmp_path):
    make_dataset(str(tmp_path), [8, 8, 8])
    def first_epoch(seed, epoch_offset=0):
        loader = CropLoader(str(tmp_path), "train", 2, 1000, seed=seed)
        it = loader.batches(epoch_offset * loader.steps_per_epoch)
        return [i for _ in range(loader.steps_per_epoch) for i in sample_ids(next(it)[1])]
    a, b, a_next = first_epoch(1), first_epoch(2), first_epoch(1, 1)
    assert sorted(a) == sorted(b) == sorted(a_next) == list(range(24))
    assert a != b and a != a_next and a == first_epoch(1)


def test_too_small_split_is_a_clear_error(tmp_path):
    make_dataset(str(tmp_path), [2])
    with pytest.raises(DataError, match="fewer than one batch"):
        CropLoader(str(tmp_path), "train", 4, 1000, seed=0)


def test_short_clips_are_padded_and_eval_clips(tmp_path):
    make_dataset(str(tmp_path), [3], seconds=0.1)
    loader = CropLoader(str(tmp_path), "train", 3, 1600, seed=0)
    _, batch = next(loader.batches(0))
    assert batch.shape == (3, 1, 1600) and float(batch[:, :, 800:].abs().max()) == 0.0
    clips = eval_clips(str(tmp_path), "train", 2, 500)
    assert [k for k, _ in clips] == ["s0000", "s0001"] and all(len(a) == 500 for _, a in clips)


def test_no_rank_runs_dry_in_any_epoch(tmp_path):
    """Shard-to-rank assignment changes every epoch; the step count must hold for all of them."""
    make_dataset(str(tmp_path), [9, 4, 6])
    for r in range(2):
        loader = CropLoader(str(tmp_path), "train", 2, 1000, seed=0, rank=r, world=2)
        it = loader.batches(0)
        for _ in range(6 * loader.steps_per_epoch):  # six epochs, several permutations
            next(it)
