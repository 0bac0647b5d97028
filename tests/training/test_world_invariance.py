"""The same training on any number of ranks: what elastic training builds on.

Real multi-process DDP (torch.distributed over gloo, one process per rank, as Ray Train sets it up),
not Ray: each rank runs `pipeline.training.loop.train` with RANK/WORLD_SIZE in its environment. With a
global batch of 8, 3 ranks hold 3, 3 and 2 rows: the uneven case. Every random choice of a step
(quantizer dropout, k-means start vectors, re-seeded dead codes) is drawn over the global batch and
the logged losses are the global batch's, so 1 and 3 ranks must log the same losses, and a run
checkpointed on 2 ranks must resume on 3 exactly where it would have gone on 1. One rank that runs
two ranks' rows as two micro-batches takes their steps bit for bit.
"""

import json
import os

import numpy as np
import pytest
import torch.multiprocessing as mp

from audio_fixtures import make_dataset
from run_fixtures import TINY_MEL, TINY_RUN

BASE = [*TINY_RUN, *TINY_MEL, "loss.weights={mel: 1.0, stft: 0.0}", "train.batch_size=8", "train.eval_every=1000",
        "tracking.enabled=false", "data.workers=0", "model.codebook_size=32", "model.n_codebooks=3",
        "model.quantizer_dropout=0.5"]
"""Tiny, with per-clip quantizer dropout on and codebooks big enough that dead codes get re-seeded."""


def _rank(rank: int, world: int, port: int, args: list[str]) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch

    torch.set_num_threads(1)
    from pipeline.config import load_config
    from pipeline.training.loop import train

    train(load_config(["base"], args))


def run_on(world: int, args: list[str]) -> None:
    """`telucodec train` on `world` ranks of real processes; returns when all have finished."""
    from jobs.launch.submit import free_port

    mp.start_processes(_rank, args=(world, free_port(), args), nprocs=world, start_method="spawn")


def step_rows(run_dir) -> list[dict]:
    """metrics.jsonl's step records (not the evals'), in the order they were logged."""
    return [r for r in map(json.loads, open(run_dir / "metrics.jsonl")) if "loss/total" in r]


def losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss/total"] for r in step_rows(run_dir)}


def events(run_dir) -> list[dict]:
    return [json.loads(line) for line in open(run_dir / "events.jsonl")]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    url = tmp_path_factory.mktemp("ds")
    make_dataset(str(url), [6, 6], sr=16000, seconds=0.5)
    return str(url)


@pytest.fixture(scope="module")
def one_rank_run(dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("one") / "run"
    run_on(1, [*BASE, f"data.url={dataset}", f"run.dir={run}", "train.steps=6"])
    return run


@pytest.fixture(scope="module")
def one_rank(one_rank_run):
    return losses(one_rank_run)


def close(a: dict, b: dict, steps) -> bool:
    x, y = np.array([a[s] for s in steps]), np.array([b[s] for s in steps])
    return bool(np.all(np.abs(x - y) <= 1e-3 * np.abs(x)))


@pytest.mark.slow
def test_three_ranks_with_uneven_rows_log_the_losses_of_one(dataset, one_rank, tmp_path):
    run = tmp_path / "three"
    run_on(3, [*BASE, f"data.url={dataset}", f"run.dir={run}", "train.steps=6"])
    three = losses(run)
    assert sorted(three) == sorted(one_rank) == [1, 2, 3, 4, 5, 6]
    assert close(one_rank, three, range(1, 7)), (one_rank, three)
    assert len(set(np.round(list(one_rank.values()), 4))) > 3  # it trained: the losses move


@pytest.mark.slow
def test_a_run_checkpointed_on_two_ranks_resumes_on_three_as_if_on_one(dataset, one_rank_run, tmp_path):
    """Exact: the resume itself (a `resumed` event at step 3, no step run twice or skipped) and the
    batch at every step (its mean square, the same samples in the same order). Close: the losses,
    to float precision, as sums reduced over another number of ranks are."""
    run = tmp_path / "resized"
    args = [*BASE, f"data.url={dataset}", f"run.dir={run}", "train.checkpoint_every=3"]
    run_on(2, [*args, "train.steps=3"])
    run_on(3, [*args, "train.steps=6"])
    starts = [(e["event"], e["step"]) for e in events(run) if e["event"] in ("start", "resumed")]
    assert starts == [("start", 0), ("resumed", 3)]
    assert [r["step"] for r in step_rows(run)] == [1, 2, 3, 4, 5, 6]  # each step logged once
    square = {r["step"]: r["data/mean_square"] for r in step_rows(run)}
    expected = {r["step"]: r["data/mean_square"] for r in step_rows(one_rank_run)}
    assert square == pytest.approx(expected, rel=1e-6) and len(set(expected.values())) == 6
    one, resized = losses(one_rank_run), losses(run)
    assert resized[4] == pytest.approx(one[4], rel=1e-5)  # the first step after the resize
    assert close(one, resized, range(1, 7)), (one, resized)


@pytest.mark.slow
def test_three_ranks_passing_uneven_micro_batches_log_the_losses_of_one(dataset, one_rank, tmp_path):
    """Ranks holding 3/3/2 rows in micro-batches of 2 make 2/2/1 passes: DDP all-reduces once per
    step all the same, and the step is the one-pass step."""
    run = tmp_path / "micro"
    run_on(3, [*BASE, f"data.url={dataset}", f"run.dir={run}", "train.steps=6", "train.micro_batch=2"])
    micro = losses(run)
    assert sorted(micro) == [1, 2, 3, 4, 5, 6]
    assert close(one_rank, micro, range(1, 7)), (one_rank, micro)


@pytest.mark.slow
def test_one_rank_running_two_ranks_rows_as_micro_batches_takes_their_steps_bit_for_bit(dataset, tmp_path):
    """What a shrunk elastic run does (2 workers -> 1): its gradients are the two micro-batches'
    added as the all-reduce adds the two ranks', and so are its codebook statistics (k-means at
    init, EMA), with the same thread count: every logged loss of 20 steps equal, not just close."""
    two, one = tmp_path / "two", tmp_path / "one"
    args = [*BASE, f"data.url={dataset}", "train.steps=20"]
    run_on(2, [*args, f"run.dir={two}"])
    run_on(1, [*args, f"run.dir={one}", "train.micro_batch=4"])
    assert sorted(losses(one)) == list(range(1, 21))
    assert losses(one) == losses(two)
    assert len(set(losses(one).values())) > 10  # it trained: the losses move
