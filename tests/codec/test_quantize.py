"""The EMA residual vector quantizer: code round trips, k-means init, EMA updates, dead-code
replacement, gradients through the residual levels, quantizer dropout (per clip and per batch), and
identical codebooks across ranks under torch.distributed.

    .venv/bin/pytest tests/codec/test_quantize.py -q
"""

import copy
import dataclasses

import pytest
import torch
import torch.multiprocessing as mp

from pipeline.config import ModelConfig
from pipeline.codec.quantizer import ResidualVQ, VectorQuantizer, cluster_stats, kmeans, summed_stats

TINY = ModelConfig(channels=4, latent_dim=16, codebook_size=16, n_codebooks=4)


def _latents(batch=4, frames=25, dim=16, seed=0) -> torch.Tensor:
    return torch.randn(batch, dim, frames, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("codebook_dim", [None, 8])
def test_decoding_codes_gives_the_quantized_output(codebook_dim):
    torch.manual_seed(0)
    rvq = ResidualVQ(dataclasses.replace(TINY, codebook_dim=codebook_dim))
    z = _latents()
    rvq.train()(z)  # initialise from data
    rvq.eval()
    with torch.no_grad():
        out = rvq(z)
        assert out.codes.shape == (4, 4, 25) and out.codes.dtype == torch.long
        assert torch.equal(rvq.encode(z), out.codes)
        assert torch.equal(rvq.decode(out.codes), out.quantized)
        # fewer levels decode too (a lower bitrate from the same model)
        assert torch.equal(rvq.decode(out.codes[:, :2]), rvq(z, n_quantizers=2).quantized)


def test_commitment_loss_is_per_clip_and_pulls_the_input_to_its_codes():
    vq = VectorQuantizer(dim=16, codebook_size=16)
    z = _latents().requires_grad_()
    out = vq(z)
    assert out.commit_loss.shape == (4,) and (out.commit_loss > 0).all()
    out.commit_loss.sum().backward()
    expected = 2 * (z - out.quantized) / (16 * 25)  # d/dz of the per-clip mean squared error
    assert torch.allclose(z.grad, expected.detach(), atol=1e-6)
    assert not out.quantized.requires_grad and not any(p.requires_grad for p in vq.buffers())


@pytest.mark.parametrize("codebook_dim", [None, 8])
def test_the_quantized_sum_passes_the_latent_gradient_unchanged(codebook_dim):
    torch.manual_seed(0)
    rvq = ResidualVQ(dataclasses.replace(TINY, codebook_dim=codebook_dim, quantizer_dropout=0.0)).train()
    rvq(_latents())  # k-means init
    z = _latents(seed=1).requires_grad_()
    upstream = torch.randn_like(z)
    (rvq(z).quantized * upstream).sum().backward()
    assert torch.allclose(z.grad, upstream)  # an identity Jacobian, once, for the sum of all levels


def _commitment_gradients(cfg: ModelConfig) -> list[float]:
    """Norm of each level's commitment gradient w.r.t. the latent, after a k-means init."""
    torch.manual_seed(0)
    rvq = ResidualVQ(dataclasses.replace(cfg, quantizer_dropout=0.0)).train()
    rvq(_latents())
    z = _latents(seed=1).requires_grad_()
    out = rvq(z)
    norms = []
    for level_commit in out.commit_losses:
        (grad,) = torch.autograd.grad(level_commit, z, retain_graph=True)
        norms.append(float(grad.norm()))
    return norms


@pytest.mark.parametrize("codebook_dim", [None, 8])
def test_every_level_commitment_reaches_the_latent(codebook_dim):
    norms = _commitment_gradients(dataclasses.replace(TINY, codebook_dim=codebook_dim))
    assert len(norms) == 4 and all(n > 1e-4 for n in norms), norms



def test_chained_levels_reproduce_v1s_lost_commitment_gradients():
    """model.quantizer_gradient=chained (v1, no projection): a residual minus its own straight-through
    output has zero gradient, so only level 1's commitment reaches the encoder."""
    chained = _commitment_gradients(dataclasses.replace(TINY, quantizer_gradient="chained"))
    assert chained[0] > 1e-4 and chained[1:] == [0.0, 0.0, 0.0], chained


def test_kmeans_init_on_first_training_batch():
    torch.manual_seed(0)
    vq = VectorQuantizer(dim=16, codebook_size=16, kmeans_iters=10)
    z = _latents(batch=8)
    before = vq.eval()(z).commit_loss.mean()
    assert not vq.initialized
    after_init = vq.train()(z).commit_loss.mean()  # quantised with the k-means codebook
    assert vq.initialized
    assert after_init < 0.75 * before


def test_ema_updates_codebook_only_in_training_mode():
    torch.manual_seed(0)
    vq = VectorQuantizer(dim=16, codebook_size=16).train()
    vq(_latents(seed=0))
    snapshot = vq.codebook.clone()
    vq.eval()(_latents(seed=1))
    assert torch.equal(vq.codebook, snapshot)
    vq.train()(_latents(seed=1))
    assert not torch.equal(vq.codebook, snapshot)


def test_unused_code_is_replaced_by_a_batch_vector():
    torch.manual_seed(0)
    vq = VectorQuantizer(dim=16, codebook_size=16, dead_code_ratio=0.1).train()
    z = _latents()
    vq(z)
    with torch.no_grad():  # plant a code far from all data: it will never be chosen
        vq.codebook[3] = 1e3
        vq.embed_sum[3] = 0.0
        vq.cluster_size[3] = 0.0
    vq(z)
    batch_vectors = z.transpose(1, 2).reshape(-1, 16)
    assert vq.codebook[3].abs().max() < 100 and vq.reseeded >= 1
    assert (batch_vectors - vq.codebook[3]).abs().amax(1).min() < 1e-6  # it is one of them


def test_a_reseeded_code_is_not_reseeded_again_at_the_next_steps():
    """A fresh code starts at the mean use: left unchosen it takes ~20 steps at decay 0.9 to expire
    again. (v1 started it at the threshold, so one unchosen step re-seeded it again.)"""
    torch.manual_seed(0)
    vq = VectorQuantizer(dim=4, codebook_size=8, decay=0.9, dead_code_ratio=0.1).train()
    vq(torch.randn(2, 4, 32))
    with torch.no_grad():
        vq.cluster_size[3] = 0.0
    assert vq._replace_dead_codes(torch.randn(64, 4)) == 1
    for _ in range(5):  # steps in which nothing picks code 3
        flat = torch.randn(64, 4)
        vq._update_ema([(flat, torch.randint(0, 3, (64,)), torch.ones(64, dtype=torch.bool))])
        code_3 = vq.codebook[3].clone()
        vq._replace_dead_codes(flat)
        assert torch.equal(vq.codebook[3], code_3)


def test_dead_codes_are_judged_relative_to_the_mean_use():
    """The same use profile at 100x the vectors per step (a bigger batch or world) re-seeds the same codes."""
    profile = torch.tensor([0.02, 0.5, 1.0, 3.0] * 4)
    dead = []
    for scale in (1.0, 100.0):
        torch.manual_seed(0)
        vq = VectorQuantizer(dim=4, codebook_size=16, dead_code_ratio=0.1).train()
        vq(torch.randn(2, 4, 16))
        before = vq.codebook.clone()
        with torch.no_grad():
            vq.cluster_size.copy_(profile * scale)
        vq._replace_dead_codes(torch.randn(64, 4))
        dead.append((vq.codebook != before).any(dim=1))
    assert torch.equal(dead[0], dead[1]) and dead[0].tolist() == [True, False, False, False] * 4


def test_per_sample_dropout_masks_clips_and_updates_every_level_every_step():
    torch.manual_seed(0)
    rvq = ResidualVQ(dataclasses.replace(TINY, quantizer_dropout=1.0)).train()
    z = _latents(batch=8, frames=5)
    rvq(z)  # k-means init
    for _ in range(5):
        before = copy.deepcopy(rvq)
        out = rvq(z)
        assert out.n_quantizers == 4 and out.codes.shape == (8, 4, 5)
        for level, old in zip(rvq.levels, before.levels):  # every codebook moved this step
            assert not torch.equal(level.vq.codebook, old.vq.codebook)
        for b, n in enumerate(out.levels_per_clip.tolist()):  # clip b decodes its first n levels
            assert torch.allclose(out.quantized[b:b + 1], before.decode(out.codes[b:b + 1, :n]), atol=1e-6)
    counts = {int(n) for _ in range(10) for n in rvq(z).levels_per_clip}
    assert counts == {1, 2, 3, 4}


def test_per_sample_dropout_gives_every_parameter_a_gradient():
    """With codebook projections, levels a batch skipped had no gradient: DDP (no
    find_unused_parameters) then fails. Per-sample dropout runs and masks them instead."""
    for per, all_have_grads in (("sample", True), ("batch", False)):
        torch.manual_seed(1)
        rvq = ResidualVQ(dataclasses.replace(TINY, codebook_dim=8, quantizer_dropout=1.0,
                                             quantizer_dropout_per=per)).train()
        rvq(_latents())
        missing = set()
        for _ in range(4):
            rvq.zero_grad(set_to_none=True)
            out = rvq(_latents(seed=2).requires_grad_())
            (out.quantized.square().mean() + out.commit_loss).backward()
            missing |= {name for name, p in rvq.named_parameters() if p.grad is None}
        assert (not missing) == all_have_grads, (per, sorted(missing))


def test_quantizer_dropout_per_batch_varies_levels_in_training_and_eval_uses_all():
    torch.manual_seed(0)
    rvq = ResidualVQ(dataclasses.replace(TINY, quantizer_dropout=0.5, quantizer_dropout_per="batch")).train()
    z = _latents(batch=2, frames=5)
    used = set()
    for _ in range(30):
        out = rvq(z)
        assert out.codes.shape[1] == out.n_quantizers
        used.add(out.n_quantizers)
    assert len(used) > 2 and 4 in used
    rvq.eval()
    with torch.no_grad():
        assert {rvq(z).n_quantizers for _ in range(5)} == {4}
    no_dropout = ResidualVQ(dataclasses.replace(TINY, quantizer_dropout=0.0)).train()
    assert {no_dropout(z).n_quantizers for _ in range(5)} == {4}


def _distributed_worker(rank: int, world: int, rdv: str, results: dict) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank,
                                         world_size=world)
    torch.manual_seed(100 + rank)  # ranks draw different random numbers and see different data
    rvq = ResidualVQ(dataclasses.replace(TINY, dead_code_ratio=0.2, quantizer_dropout_per="batch")).train()
    used = [rvq(torch.randn(2, 16, 10) * (1 + rank)).n_quantizers for _ in range(6)]
    results[rank] = (used, {k: v.clone() for k, v in rvq.state_dict().items()})
    torch.distributed.destroy_process_group()


def test_ranks_keep_identical_codebooks_under_distributed(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "rdv"), results), nprocs=2)
    (used0, state0), (used1, state1) = results[0], results[1]
    assert used0 == used1
    for key in state0:
        assert torch.equal(state0[key], state1[key]), key


def test_non_finite_batch_leaves_the_codebook_finite():
    """The training loop skips a NaN step; the quantizer's EMA must not have swallowed it."""
    vq = VectorQuantizer(dim=4, codebook_size=8, kmeans_iters=2)
    vq.train()
    vq(torch.randn(2, 4, 16))
    bad = torch.randn(2, 4, 16)
    bad[0, :, 3] = float("nan")
    bad[1, 2, 5] = float("inf")
    before = vq.codebook.clone()
    vq(bad)
    assert torch.isfinite(vq.codebook).all() and torch.isfinite(vq.embed_sum).all()
    assert torch.isfinite(vq.cluster_size).all()
    assert not torch.equal(before, vq.codebook)  # the finite rows still updated it


def test_micro_batches_statistics_add_as_the_all_reduce_adds_ranks():
    """A rank that runs two ranks' rows as two micro-batches must get those ranks' all-reduced
    codebook statistics bit for bit: each part summed on its own, then the parts added (one sum
    over all the rows rounds otherwise, and the runs drift apart from there)."""
    torch.manual_seed(0)
    parts = [(torch.randn(400, 8) * 10 ** torch.randn(400, 1), torch.randint(0, 4, (400,)), None) for _ in range(2)]
    (c0, s0), (c1, s1) = (cluster_stats(v, c, 4) for v, c, _ in parts)
    counts, sums = summed_stats(parts, 4)
    assert torch.equal(counts, c0 + c1) and torch.equal(sums, s0 + s1)
    _, one_pass = cluster_stats(torch.cat([parts[0][0], parts[1][0]]), torch.cat([parts[0][1], parts[1][1]]), 4)
    assert not torch.equal(one_pass, s0 + s1)  # what the old one-pass sum gave: another rounding
    # k-means over the parts gives the same codebook as over their concatenation, up to rounding
    flat = torch.cat([parts[0][0], parts[1][0]])
    torch.manual_seed(1)
    a, _ = kmeans([parts[0][0], parts[1][0]], 4, 3)
    torch.manual_seed(1)
    b, _ = kmeans(flat, 4, 3)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)
