"""The EMA residual vector quantizer: code round trips, k-means init, EMA updates, dead-code
replacement, quantizer dropout, and identical codebooks across ranks under torch.distributed.

    .venv/bin/pytest tests/test_quantize.py -q
"""

import dataclasses

import pytest
import torch
import torch.multiprocessing as mp

from pipeline.config import ModelConfig
from pipeline.quantize import ResidualVQ, VectorQuantizer

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


def test_straight_through_gradient_and_commitment_loss():
    vq = VectorQuantizer(dim=16, codebook_size=16)
    z = _latents().requires_grad_()
    out = vq(z)
    out.quantized.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))  # identity backward through the quantizer
    assert out.commit_loss.item() > 0 and not any(p.requires_grad for p in vq.buffers())


def test_kmeans_init_on_first_training_batch():
    torch.manual_seed(0)
    vq = VectorQuantizer(dim=16, codebook_size=16, kmeans_iters=10)
    z = _latents(batch=8)
    before = vq.eval()(z).commit_loss
    assert not vq.initialized
    after_init = vq.train()(z).commit_loss  # quantised with the k-means codebook
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
    vq = VectorQuantizer(dim=16, codebook_size=16, dead_code_threshold=0.5).train()
    z = _latents()
    vq(z)
    with torch.no_grad():  # plant a code far from all data: it will never be chosen
        vq.codebook[3] = 1e3
        vq.embed_sum[3] = 0.0
        vq.cluster_size[3] = 0.0
    vq(z)
    batch_vectors = z.transpose(1, 2).reshape(-1, 16)
    assert vq.codebook[3].abs().max() < 100
    assert (batch_vectors - vq.codebook[3]).abs().amax(1).min() < 1e-6  # it is one of them


def test_quantizer_dropout_varies_levels_in_training_and_eval_uses_all():
    torch.manual_seed(0)
    rvq = ResidualVQ(dataclasses.replace(TINY, quantizer_dropout=0.5)).train()
    z = _latents(batch=2, frames=5)
    used = set()
    for _ in range(30):
        out = rvq(z)
        assert out.codes.shape[1] == out.n_quantizers == len(out.perplexity)
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
    rvq = ResidualVQ(dataclasses.replace(TINY, dead_code_threshold=1.0)).train()
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
