"""A step's rows in several micro-batches make the step one pass makes (train.micro_batch).

A worker of a shrunk elastic run holds more rows than at full size; instead of needing more memory it
passes them through the model in micro-batches of at most the full size's rows. Gradients
accumulate, and the discriminator's step, the codebooks' EMA update, k-means initialisation and
dead-code re-seeding are each made once over all of the rows, so the losses, the codebooks and the
weights follow the one-pass step up to float rounding.
"""

import pytest
import torch

from pipeline.config import load_config
from pipeline.training.state import build_state, make_accelerator
from pipeline.training.step import micro_batches, train_step
from run_fixtures import TINY_MEL, TINY_RUN

ARGS = [*TINY_RUN, *TINY_MEL, "train.workers=0", "train.batch_size=4", "model.quantizer_dropout=0.5",
        "loss.adversarial=true", "loss.adv_start_step=1", "loss.weights={mel: 1.0, stft: 0.0}",
        "model.disc_channels=2", "model.disc_periods=[2, 3]", "model.disc_stft_windows=[256]"]
"""Tiny, per-clip quantizer dropout, a small discriminator's stage from the second step."""


def batches(steps: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    t = torch.arange(1600) / 16000
    tone = torch.sin(2 * torch.pi * 220 * t)
    return [0.3 * tone * torch.rand(4, 1, 1, generator=g) + 0.05 * torch.randn(4, 1, 1600, generator=g)
            for _ in range(steps)]


def run(micro: int, data: list[torch.Tensor]):
    """The steps' metrics, the rows of each pass through the encoder, and the final state."""
    cfg = load_config(["base"], [*ARGS, f"train.micro_batch={micro}"])
    accel = make_accelerator(cfg)
    state = build_state(cfg, accel)
    passes: list[int] = []
    state.model.encoder.register_forward_pre_hook(lambda _, args: passes.append(args[0].shape[0]))
    metrics = []
    for batch in data:
        metrics.append({k: float(v) for k, v in train_step(state, batch, accel, cfg).items()
                        if isinstance(v, torch.Tensor)})
        state.step += 1
    return metrics, passes, state


def buffers(state) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.model.state_dict().items() if "vq." in k}


@pytest.mark.parametrize("micro", [1, 3])
def test_micro_batches_make_the_step_of_one_pass(micro):
    data = batches(4)
    whole, whole_passes, whole_state = run(4, data)
    parts, part_passes, part_state = run(micro, data)

    assert set(whole_passes) == {4} and max(part_passes) <= micro and len(part_passes) > len(whole_passes)
    assert "disc" in whole[-1] and "loss/adv" in whole[-1]  # the discriminator's steps are covered
    for one, many in zip(whole, parts):
        assert one.keys() == many.keys()
        for key in one:
            assert abs(one[key] - many[key]) <= 1e-4 * max(abs(one[key]), 1e-3), (key, one[key], many[key])
    assert sum(m["vq/reseeded"] for m in whole) > 0  # re-seeding happened, the same in both
    for key, value in buffers(whole_state).items():  # EMA codebooks: one update per step, not one per pass
        assert torch.allclose(value.float(), buffers(part_state)[key].float(), rtol=1e-4, atol=1e-5), key
    for (name, a), b in zip(whole_state.model.named_parameters(), part_state.model.parameters()):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5), name
    for a, b in zip(whole_state.disc.parameters(), part_state.disc.parameters()):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)


def test_a_non_finite_micro_batch_skips_the_whole_step_and_spares_the_codebooks():
    data = batches(2)
    data[1][3, 0, 100] = float("nan")  # the second step's last row: its own micro-batch
    metrics, _, state = run(1, data)
    reference, _, before = run(1, data[:1])
    assert metrics[1]["skipped"] == 1.0 and metrics[0]["skipped"] == 0.0
    for (name, a), b in zip(state.model.named_parameters(), before.model.parameters()):
        assert torch.equal(a, b), name  # the update was skipped
    assert all(torch.isfinite(v.float()).all() for v in buffers(state).values())


def test_micro_batches_are_contiguous_even_and_no_larger_than_asked():
    assert micro_batches(4, 4) == [slice(0, 4)]
    assert micro_batches(3, 2) == [slice(0, 2), slice(2, 3)]
    assert micro_batches(7, 3) == [slice(0, 2), slice(2, 5), slice(5, 7)]
    for rows in range(1, 20):
        for most in range(1, 8):
            parts = micro_batches(rows, most)
            assert parts[0].start == 0 and parts[-1].stop == rows and len(parts) == -(-rows // most)
            assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
            sizes = [p.stop - p.start for p in parts]
            assert max(sizes) <= most and max(sizes) - min(sizes) <= 1
