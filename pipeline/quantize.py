"""Residual vector quantisation with EMA codebooks: the bottleneck of the telucodec codec.

    rvq = ResidualVQ(cfg.model)                 # cfg.model: ModelConfig
    out = rvq(latent)                           # latent [B, D, F] -> RVQOutput
    out.quantized, out.codes                    # [B, D, F], [B, n_q, F] (long)
    rvq.decode(out.codes)                       # == out.quantized (in eval mode)

Codebooks are buffers, not parameters: they move by exponential moving averages of the vectors
assigned to them (no gradient), start from k-means on the first training batch, and codes that
fall out of use are re-seeded from the current batch. The encoder learns through a straight-through
estimator plus a commitment loss. Under torch.distributed the EMA statistics are summed over ranks
and every random choice is taken from rank 0, so all ranks keep identical codebooks. Every rank
must therefore run the quantizer's training-mode forward the same number of times; evaluate in
eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ModelConfig


# ---------------------------------------------------------------------------------------------
# Distributed helpers: no-ops unless torch.distributed is initialised.

def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks in place (no-op on one process)."""
    if _distributed():
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor


def broadcast_from_rank0_(*tensors: torch.Tensor) -> None:
    """Overwrite `tensors` with rank 0's values (no-op on one process)."""
    if _distributed():
        for t in tensors:
            torch.distributed.broadcast(t, src=0)


# ---------------------------------------------------------------------------------------------
# Plain functions on flat vectors [N, D] and codebooks [K, D].

def nearest_code(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the closest codebook row for each vector: [N, D], [K, D] -> [N] (long)."""
    distances = (vectors.pow(2).sum(1, keepdim=True) - 2 * vectors @ codebook.t()
                 + codebook.pow(2).sum(1)[None, :])
    return distances.argmin(dim=1)


def sample_vectors(vectors: torch.Tensor, n: int) -> torch.Tensor:
    """`n` rows of `vectors` [N, D], without replacement when there are enough."""
    if vectors.shape[0] >= n:
        index = torch.randperm(vectors.shape[0], device=vectors.device)[:n]
    else:
        index = torch.randint(0, vectors.shape[0], (n,), device=vectors.device)
    return vectors[index]


def kmeans(vectors: torch.Tensor, k: int, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means from sampled rows: [N, D] -> (centroids [K, D], counts [K]).

    With iters=0 the centroids are the sampled vectors; an empty cluster keeps its old centroid.
    """
    centroids = sample_vectors(vectors, k)
    for _ in range(iters):
        counts, sums = cluster_stats(vectors, nearest_code(vectors, centroids), k)
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centroids)
    counts, _ = cluster_stats(vectors, nearest_code(vectors, centroids), k)
    return centroids, counts


def cluster_stats(vectors: torch.Tensor, codes: torch.Tensor, k: int,
                  weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-code use counts [K] and sums of assigned vectors [K, D]; `weight` [N] (0/1) masks rows."""
    if weight is None:
        counts = torch.bincount(codes, minlength=k).to(vectors.dtype)
    else:
        counts = torch.bincount(codes, weights=weight.to(vectors.dtype), minlength=k).to(vectors.dtype)
        vectors = vectors * weight.to(vectors.dtype)[:, None]
    sums = vectors.new_zeros(k, vectors.shape[1]).index_add_(0, codes, vectors)
    return counts, sums


def perplexity(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """exp(entropy) of the code histogram: 1 = one code used, codebook_size = uniform use."""
    probs = torch.bincount(codes.flatten(), minlength=codebook_size).float()
    probs = probs / probs.sum().clamp(min=1)
    return torch.exp(-(probs * torch.log(probs.clamp(min=1e-10))).sum())


# ---------------------------------------------------------------------------------------------
# One codebook.

@dataclass
class VQOutput:
    quantized: torch.Tensor
    """[B, D, F] quantised vectors (straight-through gradient to the input)."""
    codes: torch.Tensor
    """[B, F] long code indices."""
    commit_loss: torch.Tensor
    """Scalar MSE between input and (detached) quantised vectors."""
    perplexity: torch.Tensor
    """Scalar exp(entropy) of this batch's code use."""


class VectorQuantizer(nn.Module):
    """One EMA codebook: [B, D, F] -> nearest codebook vectors, codes and commitment loss."""

    def __init__(self, dim: int, codebook_size: int, decay: float = 0.99,
                 dead_code_threshold: float = 0.5, kmeans_init: bool = True, kmeans_iters: int = 10,
                 eps: float = 1e-5):
        super().__init__()
        self.codebook_size, self.decay, self.eps = codebook_size, decay, eps
        self.dead_code_threshold = dead_code_threshold
        self.kmeans_iters = kmeans_iters if kmeans_init else 0
        codebook = torch.randn(codebook_size, dim)
        self.register_buffer("codebook", codebook)
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("embed_sum", codebook.clone())
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> VQOutput:
        """[B, D, F] -> VQOutput; in training mode also updates the codebook from this batch."""
        with torch.autocast(x.device.type, enabled=False):  # distances and EMA need fp32
            x32 = x.float()
            flat = x32.transpose(1, 2).reshape(-1, x.shape[1]).detach()
            # A NaN/Inf batch (which the training loop will skip) must not reach the codebook:
            # its EMA statistics and any code drawn from it would stay poisoned for good.
            finite = torch.isfinite(flat).all(dim=1)
            clean = torch.where(finite[:, None], flat, torch.zeros_like(flat))
            if self.training and not bool(self.initialized):
                self._init_codebook(clean)
            codes = nearest_code(clean, self.codebook)
            quantized = self.codebook[codes].view(x.shape[0], x.shape[2], -1).transpose(1, 2)
            if self.training:
                self._update_ema(clean, codes, finite)
                self._replace_dead_codes(clean)
            commit = F.mse_loss(x32, quantized)
            if x.requires_grad:  # straight-through: forward the code, backward the identity
                quantized = x32 + (quantized - x32).detach()
        return VQOutput(quantized, codes.view(x.shape[0], x.shape[2]), commit,
                        perplexity(codes, self.codebook_size))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[B, D, F] -> codes [B, F] (no codebook update)."""
        flat = x.float().transpose(1, 2).reshape(-1, x.shape[1])
        return nearest_code(flat, self.codebook).view(x.shape[0], x.shape[2])

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, F] -> [B, D, F]."""
        return self.codebook[codes].transpose(1, 2)

    @torch.no_grad()
    def _init_codebook(self, flat: torch.Tensor) -> None:
        centroids, counts = kmeans(flat, self.codebook_size, self.kmeans_iters)
        self.codebook.copy_(centroids)
        self.cluster_size.copy_(counts)
        self.embed_sum.copy_(centroids * counts[:, None])
        self.initialized.fill_(True)
        broadcast_from_rank0_(self.codebook, self.cluster_size, self.embed_sum)

    @torch.no_grad()
    def _update_ema(self, flat: torch.Tensor, codes: torch.Tensor, valid: torch.Tensor) -> None:
        counts, sums = cluster_stats(flat, codes, self.codebook_size, weight=valid)
        all_reduce_sum_(counts)
        all_reduce_sum_(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        # Laplace smoothing keeps rarely used codes from dividing by ~0.
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n
        self.codebook.copy_(self.embed_sum / smoothed[:, None])

    @torch.no_grad()
    def _replace_dead_codes(self, flat: torch.Tensor) -> None:
        # cluster_size is identical on every rank (all-reduced), so all ranks agree on `dead`
        # and make the same broadcast calls.
        dead = self.cluster_size < self.dead_code_threshold
        if not bool(dead.any()):
            return
        fresh = sample_vectors(flat, int(dead.sum()))
        self.codebook[dead] = fresh
        # Give the new code a consistent EMA history, so the next update does not undo it.
        self.cluster_size[dead] = self.dead_code_threshold
        self.embed_sum[dead] = fresh * self.dead_code_threshold
        broadcast_from_rank0_(self.codebook, self.cluster_size, self.embed_sum)


# ---------------------------------------------------------------------------------------------
# Residual VQ: each level quantises what the previous levels left over.

@dataclass
class RVQOutput:
    quantized: torch.Tensor
    """[B, D, F] sum of the used levels' quantised vectors."""
    codes: torch.Tensor
    """[B, n_q, F] long codes of the used levels."""
    commit_loss: torch.Tensor
    """Scalar mean of the used levels' commitment losses."""
    n_quantizers: int
    """Levels used for this call (fewer than all under quantizer dropout)."""
    perplexity: torch.Tensor
    """[n_q] code-use perplexity of each used level."""


class QuantizerLevel(nn.Module):
    """One residual level: optional 1x1 projection into codebook space, VQ, projection back."""

    def __init__(self, latent_dim: int, codebook_dim: int, cfg: ModelConfig):
        super().__init__()
        project = codebook_dim != latent_dim
        self.project_in = nn.Conv1d(latent_dim, codebook_dim, 1) if project else nn.Identity()
        self.project_out = nn.Conv1d(codebook_dim, latent_dim, 1) if project else nn.Identity()
        self.vq = VectorQuantizer(codebook_dim, cfg.codebook_size, cfg.ema_decay,
                                  cfg.dead_code_threshold, cfg.kmeans_init, cfg.kmeans_iters)

    def forward(self, residual: torch.Tensor) -> tuple[torch.Tensor, VQOutput]:
        """[B, D, F] -> (quantized [B, D, F] in latent space, VQOutput in codebook space)."""
        out = self.vq(self.project_in(residual))
        return self.project_out(out.quantized), out

    def encode(self, residual: torch.Tensor) -> torch.Tensor:
        return self.vq.encode(self.project_in(residual))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.project_out(self.vq.decode(codes))


class ResidualVQ(nn.Module):
    """n_codebooks residual levels with quantizer dropout: [B, D, F] -> RVQOutput."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_codebooks, self.dropout = cfg.n_codebooks, cfg.quantizer_dropout
        codebook_dim = cfg.codebook_dim or cfg.latent_dim
        self.levels = nn.ModuleList(QuantizerLevel(cfg.latent_dim, codebook_dim, cfg)
                                    for _ in range(cfg.n_codebooks))

    def forward(self, z: torch.Tensor, n_quantizers: int | None = None) -> RVQOutput:
        """[B, D, F] -> RVQOutput using `n_quantizers` levels (training: maybe a random number)."""
        n_q = self.choose_n_quantizers(n_quantizers, z.device)
        quantized, residual = torch.zeros_like(z, dtype=torch.float32), z
        codes, commits, perplexities = [], [], []
        for level in self.levels[:n_q]:
            level_q, out = level(residual)
            quantized = quantized + level_q
            residual = residual - level_q
            codes.append(out.codes)
            commits.append(out.commit_loss)
            perplexities.append(out.perplexity)
        return RVQOutput(quantized, torch.stack(codes, 1), torch.stack(commits).mean(), n_q,
                         torch.stack(perplexities))

    def choose_n_quantizers(self, requested: int | None, device: torch.device) -> int:
        """Levels to use: `requested` if given; in training with prob. `dropout` a random 1..n."""
        if requested is not None:
            return self._checked(requested)
        if not self.training or self.dropout == 0:
            return self.n_codebooks
        chosen = torch.tensor([self.n_codebooks])
        if torch.rand(()) < self.dropout:
            chosen = torch.randint(1, self.n_codebooks + 1, (1,))
        chosen = chosen.to(device)
        broadcast_from_rank0_(chosen)  # every rank must use the same levels (their EMA all-reduces)
        return int(chosen.item())

    def _checked(self, n_quantizers: int) -> int:
        if not 1 <= n_quantizers <= self.n_codebooks:
            raise ValueError(f"n_quantizers must be in 1..{self.n_codebooks}, got {n_quantizers}")
        return n_quantizers

    def encode(self, z: torch.Tensor, n_quantizers: int | None = None) -> torch.Tensor:
        """[B, D, F] -> codes [B, n_q, F] (all levels by default; no codebook update)."""
        n_q = self._checked(self.n_codebooks if n_quantizers is None else n_quantizers)
        codes, residual = [], z.float()
        for level in self.levels[:n_q]:
            codes.append(level.encode(residual))
            residual = residual - level.decode(codes[-1])
        return torch.stack(codes, 1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, n_q, F] -> [B, D, F]; n_q may be fewer than n_codebooks."""
        if codes.shape[1] > self.n_codebooks:
            raise ValueError(f"codes have {codes.shape[1]} levels; the model has {self.n_codebooks}")
        levels = self.levels[:codes.shape[1]]
        return sum(level.decode(codes[:, i]) for i, level in enumerate(levels))
