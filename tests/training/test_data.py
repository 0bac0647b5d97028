"""Training batches: the same global batch on any number of ranks and workers, equal per rank,
resumable to the exact step, mixed across shards, each rank reading only what it decodes."""

import json
import os
from collections import Counter

import numpy as np
import pytest
import torch

from run_fixtures import CountingProxy
from audio_fixtures import make_dataset
from pipeline.evaluation.clips import load_eval_clips
from pipeline.training.loader import CropLoader, CropRecipe, DataError, block_size, rank_rows
from jobs.cli import main
from pipeline.storage.shards import INDEX_NAME, load_index, upgrade_index, verify_dataset
from pipeline.storage.store import open_store


def sample_ids(batch: torch.Tensor) -> list[int]:
    return [int(round(float(x) * 1000)) - 1 for x in batch[:, 0, 0]]


def global_batches(url, recipe, world, steps, start=0, workers=0) -> list[torch.Tensor]:
    """The global batch at each step, put together from every rank's rows."""
    per_rank = []
    for r in range(world):
        it = CropLoader(url, "train", recipe, rank=r, world=world, workers=workers).batches(start)
        per_rank.append([b for _, (_, b) in zip(range(steps), it)])
    return [torch.cat([rank[i] for rank in per_rank]) for i in range(steps)]


def test_global_batch_is_the_same_on_1_2_and_3_ranks(tmp_path):
    make_dataset(str(tmp_path), [7, 3, 5, 9, 2])  # 26 samples of 4 crops, uneven shards
    recipe = CropRecipe(batch_size=8, crop=1000, seed=1)
    one = global_batches(str(tmp_path), recipe, 1, 20)  # past the end of the first epoch
    assert one[0].shape == (8, 1, 1000) and one[0].dtype == torch.float32
    for world, workers in ((2, 2), (3, 0)):  # worker processes or a thread: the same rows
        assert all(torch.equal(a, b) for a, b in zip(one, global_batches(str(tmp_path), recipe, world, 20, workers=workers)))
    # and a run on 2 ranks resumed at step 7 on 3 (or 1) ranks sees what it would have seen
    resumed = global_batches(str(tmp_path), recipe, 3, 5, start=7)
    assert all(torch.equal(a, b) for a, b in zip(one[7:12], resumed))


def test_rows_per_rank_differ_by_at_most_one_and_steps_are_equal(tmp_path):
    make_dataset(str(tmp_path), [7, 3, 5, 9, 2])
    recipe = CropRecipe(batch_size=8, crop=1000, seed=1)
    loaders = [CropLoader(str(tmp_path), "train", recipe, rank=r, world=3) for r in range(3)]
    assert [len(l.rows) for l in loaders] == [3, 2, 3]
    assert len({l.steps_per_epoch for l in loaders}) == 1
    assert [list(rank_rows(8, 3, r)) for r in range(3)] == [[0, 1, 2], [3, 4], [5, 6, 7]]


def test_an_epoch_uses_each_crop_once_and_batches_mix_shards(tmp_path):
    make_dataset(str(tmp_path), [8, 8, 8, 8])  # shard i holds samples 8i..8i+7
    recipe = CropRecipe(batch_size=4, crop=1000, seed=3)
    loader = CropLoader(str(tmp_path), "train", recipe)
    it = loader.batches(0)
    epoch = [sample_ids(next(it)[1]) for _ in range(loader.steps_per_epoch)]
    uses = Counter(i for ids in epoch for i in ids)
    assert max(uses.values()) <= 4  # a sample of 4 crops is used at most 4 times an epoch
    assert sum(uses.values()) >= 0.8 * 32 * 4  # and dealing wastes little
    shards_per_batch = [len({i // 8 for i in ids}) for ids in epoch]
    assert np.mean(shards_per_batch) > 2  # a one-shard-at-a-time reader would give 1
    next_epoch = [sample_ids(next(it)[1]) for _ in range(loader.steps_per_epoch)]
    assert next_epoch != epoch


def test_resume_with_worker_processes_is_bit_exact(tmp_path):
    make_dataset(str(tmp_path), [6, 6, 6, 6], seconds=0.6)
    recipe = CropRecipe(batch_size=6, crop=800, seed=7, shuffle_samples=2)
    loader = CropLoader(str(tmp_path), "train", recipe, rank=1, world=2, workers=2)
    assert loader.workers == 2
    straight = [b for _, (_, b) in zip(range(2 * loader.steps_per_epoch + 3), loader.batches(0))]
    in_thread = CropLoader(str(tmp_path), "train", recipe, rank=1, world=2, workers=0)
    assert all(torch.equal(a, b) for a, b in zip(straight, (b for _, b in in_thread.batches(0))))
    for start in (1, loader.steps_per_epoch, loader.steps_per_epoch + 1):
        resumed = loader.batches(start)
        for expected in straight[start:start + 3]:
            step, batch = next(resumed)
            assert torch.equal(batch, expected)
        resumed.close()


def test_each_rank_reads_from_the_store_about_what_it_decodes(s3_bucket, monkeypatch):
    """Bytes counted where they cross the wire (a proxy in front of the S3 server), not in the
    loader's own buffers: a store that fetched whole shards for each sample would fail here."""
    url = f"{s3_bucket}/ds"
    make_dataset(url, [10, 10, 10, 10], seconds=1.0)
    index = load_index(url)
    flac_total = sum(r.flac_size for s in index.shards for r in s.sample_ranges)
    recipe = CropRecipe(batch_size=4, crop=2000, seed=0, shuffle_samples=1)
    reads = []
    with CountingProxy(os.environ["AWS_ENDPOINT_URL"]) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        for r in range(2):
            loader = CropLoader(url, "train", recipe, rank=r, world=2)
            before, ranges = proxy.get_bytes, len(proxy.get_ranges)
            it = loader.batches(0)
            for _ in range(loader.steps_per_epoch):
                next(it)
            it.close()
            read = proxy.get_bytes - before
            assert 0 < read <= 1.25 * loader.bytes_decoded
            # one ranged read a sample of this rank's half (a retried read, under load, is the same one)
            assert len(proxy.get_ranges) - ranges <= 20
            reads.append(read)
    # the two ranks split the dataset: neither reads much more than half of it in an epoch
    assert max(reads) < 0.7 * flac_total and sum(reads) <= 1.1 * flac_total


BLOCK_SHARDS = [40] * 7  # 280 samples of 4 crops: blocks of 4 for a batch of 4 (16 blocks a stream)


def shard_of(sample: int, sizes: list[int] = BLOCK_SHARDS) -> int:
    return int(np.searchsorted(np.cumsum(sizes), sample, side="right"))


def test_blocks_give_the_same_global_batch_on_1_2_and_3_ranks_and_resume_exactly(tmp_path):
    make_dataset(str(tmp_path), BLOCK_SHARDS)
    recipe = CropRecipe(batch_size=4, crop=1000, seed=5, block_samples=4)
    assert block_size(280, recipe) == 4 and block_size(279, recipe) == 4 and block_size(100, recipe) == 1
    steps = CropLoader(str(tmp_path), "train", recipe).steps_per_epoch + 5  # into the second epoch's deal
    one = global_batches(str(tmp_path), recipe, 1, steps)
    for world, workers in ((2, 2), (3, 0)):
        assert all(torch.equal(a, b) for a, b in zip(one, global_batches(str(tmp_path), recipe, world, steps, workers=workers)))
    resumed = global_batches(str(tmp_path), recipe, 3, 6, start=steps - 8)
    assert all(torch.equal(a, b) for a, b in zip(one[steps - 8:], resumed))
    # a stream's first 16 crops are its first block's: 4 consecutive samples of one shard, shuffled
    for row in range(4):
        first = sorted({sample_ids(b)[row] for b in one[:16]})
        assert first == list(range(first[0], first[0] + 4)) and len({shard_of(i) for i in first}) == 1, first


def test_block_reads_cut_requests_and_keep_batches_mixed(s3_bucket, monkeypatch):
    """One ranged GET a block, counted at a proxy in front of the S3 server; a batch still draws
    its rows from about as many shards as with a read per sample."""
    url = f"{s3_bucket}/blocks"
    make_dataset(url, BLOCK_SHARDS)
    mixing, gets = {}, {}
    with CountingProxy(os.environ["AWS_ENDPOINT_URL"]) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        for block in (1, 4):
            loader = CropLoader(url, "train", CropRecipe(batch_size=4, crop=1000, seed=0, block_samples=block))
            ranges, it = len(proxy.get_ranges), loader.batches(0)
            epoch = [sample_ids(next(it)[1]) for _ in range(loader.steps_per_epoch)]
            it.close()
            mixing[block] = np.mean([len({shard_of(i) for i in ids}) for ids in epoch])
            samples = len({i for ids in epoch for i in ids})
            # a block's read spans the tar's bytes between its samples' FLAC too (headers and metadata,
            # ~1.5 KB a sample: ~1% of a real 10 s sample, most of these constant ones)
            assert loader.bytes_read <= 1.25 * loader.bytes_decoded + 2048 * samples
            gets[block] = len(proxy.get_ranges) - ranges
        # a far store (20 ms to the first byte): streams read further ahead, the same crops
        proxy.latency_s, before = 0.02, proxy.requests["GET"]
        loader = CropLoader(url, "train", CropRecipe(batch_size=4, crop=1000, seed=0, block_samples=4))
        it = loader.batches(0)
        assert [sample_ids(next(it)[1]) for _ in range(loader.steps_per_epoch)] == epoch
        it.close()
        gets["far"] = proxy.requests["GET"] - before
    print("GETs an epoch:", gets, "shards per batch:", mixing)
    assert gets[1] >= samples and gets[4] <= gets[1] / 3.5, gets  # a GET a block of 4, not a sample
    # reading further ahead reads no block twice: only a few more of the next epoch's, a stream
    assert gets["far"] <= gets[4] + 4 * 4, gets
    assert mixing[4] >= 0.9 * mixing[1], mixing


def test_index_without_sample_ranges_is_refused_until_upgraded(tmp_path, capsys):
    make_dataset(str(tmp_path), [5, 5])
    store = open_store(str(tmp_path))
    fresh = json.loads(store.get_text(INDEX_NAME))
    old = json.loads(store.get_text(INDEX_NAME))
    for shard in old["shards"]:
        del shard["sample_ranges"]
    store.put_text(INDEX_NAME, json.dumps(old))
    recipe = CropRecipe(batch_size=2, crop=1000, seed=0)
    with pytest.raises(DataError, match="telucodec shards upgrade"):
        CropLoader(str(tmp_path), "train", recipe)
    assert main(["shards", "upgrade", str(tmp_path)]) == 0
    assert "sample byte ranges of 2 shard(s) added" in capsys.readouterr().out
    upgraded = json.loads(store.get_text(INDEX_NAME))
    assert [s["sample_ranges"] for s in upgraded["shards"]] == [s["sample_ranges"] for s in fresh["shards"]]
    assert "sample_ranges_added" in upgraded["lineage"]
    assert upgrade_index(str(tmp_path)) == 0  # nothing left to do
    next(CropLoader(str(tmp_path), "train", recipe).batches(0))


def test_a_sample_that_is_not_where_the_index_says_is_an_error(tmp_path):
    make_dataset(str(tmp_path), [4])
    store = open_store(str(tmp_path))
    index = json.loads(store.get_text(INDEX_NAME))
    for entry in index["shards"][0]["sample_ranges"]:
        entry[1] += 512  # every FLAC offset one tar block off
    store.put_text(INDEX_NAME, json.dumps(index))
    for workers in (0, 1):  # raised in the trainer as it is, from a worker process too
        with pytest.raises(DataError, match="^[^\n]*no FLAC sample where index.json says[^\n]*$"):
            next(CropLoader(str(tmp_path), "train", CropRecipe(batch_size=1, crop=1000, seed=0),
                            workers=workers).batches(0))
    assert verify_dataset(str(tmp_path)) == ["train-000000.tar: sample byte ranges differ from the index "
                                             "(training would misread them)"]


def test_loudness_and_gain_stay_in_range(tmp_path):
    make_dataset(str(tmp_path), [8, 8])  # constant levels 0.001 .. 0.016
    recipe = CropRecipe(batch_size=4, crop=1000, seed=0, loudness_db=-20.0)
    _, batch = next(CropLoader(str(tmp_path), "train", recipe).batches(0))
    rms = batch.square().mean(dim=-1).sqrt()
    assert torch.allclose(rms, torch.full_like(rms, 0.1), rtol=1e-3)  # -20 dBFS
    recipe = CropRecipe(batch_size=4, crop=1000, seed=0, loudness_db=-20.0, gain_db=(-12.0, 0.0))
    it = CropLoader(str(tmp_path), "train", recipe).batches(0)
    levels = torch.cat([next(it)[1].abs().amax(dim=-1).flatten() for _ in range(5)])
    assert float(levels.max()) <= 0.1 * 1.001 and float(levels.min()) >= 0.1 * 10 ** (-12 / 20) * 0.999
    assert len(set(levels.tolist())) > 10  # a gain per crop, not one per run


def test_too_small_split_is_a_clear_error(tmp_path):
    make_dataset(str(tmp_path), [2])
    with pytest.raises(DataError, match="too few for a global batch"):
        CropLoader(str(tmp_path), "train", CropRecipe(batch_size=4, crop=1000, seed=0))


def test_short_clips_are_padded_and_eval_clips(tmp_path):
    make_dataset(str(tmp_path), [8], seconds=0.1)
    loader = CropLoader(str(tmp_path), "train", CropRecipe(batch_size=3, crop=1600, seed=0))
    _, batch = next(loader.batches(0))
    assert batch.shape == (3, 1, 1600) and float(batch[:, :, 800:].abs().max()) == 0.0
    clips = load_eval_clips(str(tmp_path), "train", 2, 500 / 8000, 8000)
    assert [k for k, _ in clips] == ["s0000", "s0001"] and all(len(a) == 500 for _, a in clips)


def test_no_stream_runs_dry_in_any_epoch(tmp_path):
    """Dealing changes every epoch; the step count must hold for all of them, on every rank."""
    make_dataset(str(tmp_path), [9, 4, 6], seconds=0.37)
    recipe = CropRecipe(batch_size=5, crop=1000, seed=0)
    for r in range(2):
        loader = CropLoader(str(tmp_path), "train", recipe, rank=r, world=2)
        it = loader.batches(0)
        for _ in range(6 * loader.steps_per_epoch):  # six epochs, six deals
            next(it)


def test_samples_of_mixed_lengths_lose_no_more_than_the_deal_must(tmp_path):
    """A few long samples among short ones: dealing longest first leaves every stream within a
    crop or two of the mean, where dealing in shuffled order could leave one a whole long sample
    short (70 crops over 6 streams: 1 step an epoch instead of 11)."""
    # 20 samples of 10, 1, 1 and 2 one-second crops in turn, over uneven shards
    make_dataset(str(tmp_path), [7, 6, 7], seconds=[10.0, 1.0, 1.0, 2.0])
    recipe = CropRecipe(batch_size=6, crop=8000, seed=2)
    one = CropLoader(str(tmp_path), "train", recipe)
    assert one.steps_per_epoch == 11  # 70 crops: streams of 12, 12, 12, 12, 11, 11
    steps = 3 * one.steps_per_epoch + 2  # three deals, into a fourth
    batches = global_batches(str(tmp_path), recipe, 1, steps)
    assert all(torch.equal(a, b) for a, b in zip(batches, global_batches(str(tmp_path), recipe, 2, steps, workers=2)))
    for e in range(3):
        epoch = batches[e * 11:(e + 1) * 11]
        uses = Counter(i for b in epoch for i in sample_ids(b))
        long_ones = set(range(0, 20, 4))
        assert all(uses[i] <= (10 if i in long_ones else 2) for i in uses)  # no crop twice in an epoch
        assert sum(uses.values()) == 66 and len(uses) >= 18  # 66 of 70 crops used
    assert [sample_ids(b) for b in batches[:11]] != [sample_ids(b) for b in batches[11:22]]  # a new deal
