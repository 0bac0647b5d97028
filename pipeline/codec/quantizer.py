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

Every random choice of a step is drawn from `StepDraws` over the global batch's rows, so a step
makes the same choices on any number of ranks (docs/design.md, "Elastic determinism"). Micro-batches:
`start_step` holds the codebook updates, `finish_step` applies them once for all rows.
"""

from __future__ import annotations

import contextlib
import zlib
from dataclasses import dataclass, replace

import numpy as np
import torch
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


@dataclass
class StepDraws:
    """A training step's random draws, the same on every rank: generators seeded by the step and the
    draw's purpose, and where this rank's rows sit in the global batch (rows offset..offset+count of
    total).

    Each purpose ("dropout", "init/level0", "reseed/level2", ...) gets a fresh generator, so its draw
    does not depend on what was drawn before it or how often it is asked: the micro-batches of a
    step ask for the same dropout draw, and a rank's slice of a draw over the global batch is the
    same on any number of ranks."""
    offset: int
    total: int
    seed: int | None = None
    """None: torch's global generator (a module used on its own, outside train_step)."""

    @classmethod
    def for_step(cls, seed: int, step: int, offset: int, total: int) -> "StepDraws":
        return cls(offset, total, (seed * 1_000_003 + step) % 2**63)

    @classmethod
    def local(cls, rows: int) -> "StepDraws":
        """This process's rows are the whole batch, drawn from torch's global generator."""
        return cls(0, rows)

    def generator(self, purpose: str) -> torch.Generator | None:
        if self.seed is None:
            return None
        return torch.Generator().manual_seed((self.seed * 65_537 + zlib.crc32(purpose.encode())) % 2**63)

    def rows(self, n: int) -> slice:
        return slice(self.offset, self.offset + n)

    def shifted(self, start: int) -> "StepDraws":
        """The same draws for a micro-batch that starts `start` rows into this rank's rows."""
        return replace(self, offset=self.offset + start)


def sample_global(flat: torch.Tensor, n: int, rows: int, draws: StepDraws, purpose: str) -> torch.Tensor:
    """n vectors drawn from the global batch's vectors (this rank holds `flat` [rows*F, D], rows
    draws.offset.. of draws.total): without replacement when there are enough. Each rank fills in
    the ones it holds and a sum over ranks completes them, so all ranks get the same n vectors."""
    frames = flat.shape[0] // max(rows, 1)
    total, generator = draws.total * frames, draws.generator(purpose)
    if total >= n:
        index = torch.randperm(total, generator=generator)[:n]
    else:
        index = torch.randint(0, total, (n,), generator=generator)
    local = (index - draws.offset * frames).to(flat.device)
    mine = (local >= 0) & (local < flat.shape[0])
    picked = flat[local.clamp(0, max(flat.shape[0] - 1, 0))] * mine[:, None].to(flat.dtype)
    return all_reduce_sum_(picked)


def sample_vectors(vectors: torch.Tensor, n: int) -> torch.Tensor:
    """`n` rows of `vectors` [N, D], without replacement when there are enough."""
    if vectors.shape[0] >= n:
        index = torch.randperm(vectors.shape[0], device=vectors.device)[:n]
    else:
        index = torch.randint(0, vectors.shape[0], (n,), device=vectors.device)
    return vectors[index]


def kmeans(vectors: torch.Tensor | list[torch.Tensor], k: int, iters: int, rows: int | None = None,
           draws: StepDraws | None = None, purpose: str = "init") -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means from sampled rows: [N, D] (or its micro-batches' parts, in order) ->
    (centroids [K, D], counts [K]).

    With iters=0 the centroids are the sampled vectors; an empty cluster keeps its old centroid.
    Under torch.distributed it runs over all ranks' vectors (`vectors` holds `rows` of the global
    batch that `draws` places): start vectors drawn from the global batch, statistics summed.
    """
    parts = vectors if isinstance(vectors, list) else [vectors]
    flat = torch.cat(parts) if len(parts) > 1 else parts[0]
    if draws is None:
        centroids = sample_vectors(flat, k)
    else:
        centroids = sample_global(flat, k, rows, draws, purpose)

    def stats(centroids):
        return summed_stats([(p, nearest_code(p, centroids), None) for p in parts], k)
    for _ in range(iters):
        counts, sums = stats(centroids)
        all_reduce_sum_(counts)
        all_reduce_sum_(sums)
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centroids)
    counts, _ = stats(centroids)
    return centroids, all_reduce_sum_(counts)


def cluster_stats(vectors: torch.Tensor, codes: torch.Tensor, k: int,
                  weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-code use counts [K] and sums of assigned vectors [K, D]; `weight` [N] (0/1) masks rows."""
    # index_add_, not bincount: bincount sizes its output from the data, a host read on a GPU
    if weight is None:
        weight = torch.ones_like(codes, dtype=vectors.dtype)
    else:
        weight = weight.to(vectors.dtype)
        vectors = vectors * weight[:, None]
    counts = vectors.new_zeros(k).index_add_(0, codes, weight)
    sums = vectors.new_zeros(k, vectors.shape[1]).index_add_(0, codes, vectors)
    return counts, sums


def summed_stats(parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
                 k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cluster_stats of each (vectors, codes, weight) part, added part by part in order.

    The parts are the micro-batches one rank ran; their sums are added as the all-reduce adds
    ranks', so a rank that runs two ranks' rows as two micro-batches gets those two ranks'
    statistics bit for bit (one sum over all the rows would round otherwise)."""
    counts, sums = cluster_stats(*parts[0][:2], k, weight=parts[0][2])
    for vectors, codes, weight in parts[1:]:
        more_counts, more_sums = cluster_stats(vectors, codes, k, weight=weight)
        counts, sums = counts + more_counts, sums + more_sums
    return counts, sums


def clean_vectors(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, D, F] -> (detached vectors [B*F, D] with non-finite ones zeroed, [B*F] which were finite).

    A NaN/Inf batch (which the training loop will skip) must not reach the codebook: its EMA
    statistics and any code drawn from it would stay poisoned for good."""
    flat = x.transpose(1, 2).reshape(-1, x.shape[1]).detach()
    finite = torch.isfinite(flat).all(dim=1)
    return torch.where(finite[:, None], flat, torch.zeros_like(flat)), finite


def perplexity(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """exp(entropy) of the code histogram: 1 = one code used, codebook_size = uniform use."""
    probs = torch.bincount(codes.flatten(), minlength=codebook_size).float()
    probs = probs / probs.sum().clamp(min=1)
    return torch.exp(-(probs * torch.log(probs.clamp(min=1e-10))).sum())


def codebook_perplexity(codes, codebook_size: int) -> torch.Tensor:
    """Code-use perplexity of each level: codes [B, n_q, F] or [n_q, F] -> [n_q]."""
    codes = torch.as_tensor(np.asarray(codes) if not isinstance(codes, torch.Tensor) else codes)
    codes = codes.long().cpu()
    levels = codes.transpose(0, 1) if codes.dim() == 3 else codes
    return torch.stack([perplexity(level, codebook_size) for level in levels])


# ---------------------------------------------------------------------------------------------
# One codebook.

@dataclass
class VQOutput:
    quantized: torch.Tensor
    """[B, D, F] the chosen codebook vectors (no gradient: codebooks move by EMA)."""
    codes: torch.Tensor
    """[B, F] long code indices."""
    commit_loss: torch.Tensor
    """[B] per-clip MSE between the input and its (constant) codebook vectors; its gradient pulls
    the input towards them."""


class VectorQuantizer(nn.Module):
    """One EMA codebook: [B, D, F] -> nearest codebook vectors, codes and commitment loss."""

    def __init__(self, dim: int, codebook_size: int, decay: float = 0.99, dead_code_ratio: float = 0.1,
                 kmeans_init: bool = True, kmeans_iters: int = 10, eps: float = 1e-5, name: str = "vq"):
        super().__init__()
        self.codebook_size, self.decay, self.eps, self.name = codebook_size, decay, eps, name
        self.dead_code_ratio = dead_code_ratio
        self.kmeans_iters = kmeans_iters if kmeans_init else 0
        self.reseeded: torch.Tensor | int = 0
        """Codes re-seeded by the last training call (a metric: a device tensor, read when logged)."""
        self._known_initialized = False
        """Host mirror of the `initialized` buffer, so that training reads it from the device once."""
        self.pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None
        """While a step's updates are held (ResidualVQ.start_step): each training forward's
        (vectors, codes, finite rows), for apply_pending."""
        self.replaying = False
        """Training forwards that neither update nor record (ResidualVQ.replaying)."""
        codebook = torch.randn(codebook_size, dim)
        self.register_buffer("codebook", codebook)
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("embed_sum", codebook.clone())
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x: torch.Tensor, draws: StepDraws | None = None) -> VQOutput:
        """[B, D, F] -> VQOutput; in training mode also updates the codebook from this batch
        (`draws`: the step's draws over the global batch; default: this batch is all of it)."""
        draws = draws or StepDraws.local(x.shape[0])
        with torch.autocast(x.device.type, enabled=False):  # distances and EMA need fp32
            x32 = x.float()
            clean, finite = clean_vectors(x32)
            if self.training and not self.ready:
                self.initialize(clean, x.shape[0], draws)
            codes = nearest_code(clean, self.codebook)
            quantized = self.codebook[codes].view(x.shape[0], x.shape[2], -1).transpose(1, 2)
            if self.training and self.pending is not None and not self.replaying:
                self.pending.append((clean, codes, finite))  # applied with the step's other micro-batches
            elif self.training and not self.replaying:
                self._update_ema([(clean, codes, finite)])
                self.reseeded = self._replace_dead_codes(clean, x.shape[0], draws)
            commit = (x32 - quantized).square().mean(dim=(1, 2))
        return VQOutput(quantized, codes.view(x.shape[0], x.shape[2]), commit)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[B, D, F] -> codes [B, F] (no codebook update)."""
        flat = x.float().transpose(1, 2).reshape(-1, x.shape[1])
        return nearest_code(flat, self.codebook).view(x.shape[0], x.shape[2])

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, F] -> [B, D, F]."""
        return self.codebook[codes].transpose(1, 2)

    @property
    def ready(self) -> bool:
        """Whether the codebook has been initialised (read from the device once, then mirrored)."""
        if not self._known_initialized:
            self._known_initialized = bool(self.initialized)
        return self._known_initialized

    @torch.no_grad()
    def initialize(self, flat: torch.Tensor | list[torch.Tensor], rows: int, draws: StepDraws) -> None:
        """The codebook from k-means over every rank's vectors `flat` [rows*F, D] (clean; or this
        rank's micro-batches' parts of them, in order): the same codebook on each, whatever their number."""
        with torch.autocast(self.codebook.device.type, enabled=False):  # distances need fp32
            centroids, counts = kmeans(flat, self.codebook_size, self.kmeans_iters, rows, draws, f"init/{self.name}")
        self.codebook.copy_(centroids)
        self.cluster_size.copy_(counts)
        self.embed_sum.copy_(centroids * counts[:, None])
        self.initialized.fill_(True)
        self._known_initialized = True

    @torch.no_grad()
    def apply_pending(self, rows: int, draws: StepDraws) -> None:
        """The held forwards' codebook update, as one forward over all their `rows` rows would have
        made it (`draws`: the step's, for this rank's first row)."""
        pending, self.pending = self.pending or [], None
        if not pending:  # the level did not run this step (v1.yaml's per-batch dropout)
            self.reseeded = 0
            return
        self._update_ema(pending)
        self.reseeded = self._replace_dead_codes(torch.cat([clean for clean, _, _ in pending]), rows, draws)

    @torch.no_grad()
    def _update_ema(self, parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        """The EMA update from `parts`, each (vectors, codes, valid rows) of one forward (summed_stats)."""
        counts, sums = summed_stats(parts, self.codebook_size)
        all_reduce_sum_(counts)
        all_reduce_sum_(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        # Laplace smoothing keeps rarely used codes from dividing by ~0.
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n
        self.codebook.copy_(self.embed_sum / smoothed[:, None])

    @torch.no_grad()
    def _replace_dead_codes(self, flat: torch.Tensor, rows: int | None = None,
                            draws: StepDraws | None = None) -> torch.Tensor:
        """Re-seed codes used less than dead_code_ratio x the mean use; returns how many (a tensor).

        No host read: up to `reseed_per_step` fresh vectors are drawn every step from the global
        batch (the same on every rank) and the dead codes take them in index order (any beyond that
        wait a step). cluster_size is identical on every rank (all-reduced), so every rank agrees on
        which codes are dead and applies the same update.
        """
        mean_use = self.cluster_size.sum() / self.codebook_size
        dead = self.cluster_size < self.dead_code_ratio * mean_use
        rows = rows or flat.shape[0]
        fresh = sample_global(flat, self.reseed_per_step, rows, draws or StepDraws.local(rows), f"reseed/{self.name}")
        slot = torch.cumsum(dead, 0) - 1
        take = dead & (slot < self.reseed_per_step)
        chosen = fresh[slot.clamp(0, self.reseed_per_step - 1)]
        self.codebook.copy_(torch.where(take[:, None], chosen, self.codebook))
        # A fresh code starts at the mean use, so it expires only after ~log(1/ratio)/(1-decay)
        # steps unchosen, not at the next step (as a start at the threshold itself would).
        self.cluster_size.copy_(torch.where(take, mean_use, self.cluster_size))
        self.embed_sum.copy_(torch.where(take[:, None], chosen * mean_use, self.embed_sum))
        return take.sum()

    @property
    def reseed_per_step(self) -> int:
        """Fresh vectors drawn (and broadcast) per training step: an eighth of the codebook, at least 4."""
        return min(self.codebook_size, max(4, self.codebook_size // 8))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._known_initialized = False  # read the loaded `initialized` once more
        self.pending = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


# ---------------------------------------------------------------------------------------------
# Residual VQ: each level quantises what the previous levels left over.

@dataclass
class RVQOutput:
    quantized: torch.Tensor
    """[B, D, F] sum of the used levels' vectors; its gradient w.r.t. the latent is the identity."""
    codes: torch.Tensor
    """[B, n_q, F] long codes of the levels that ran."""
    commit_loss: torch.Tensor
    """Scalar mean of commit_losses."""
    commit_losses: torch.Tensor
    """[n_q] each level's commitment, averaged over the clips (those that do not decode the level
    count as 0, as in DAC)."""
    levels_per_clip: torch.Tensor
    """[B] how many levels each clip's sum holds (under per-sample dropout, fewer for some)."""
    n_quantizers: int
    """Levels that ran (fewer than all only under per-batch dropout or when asked)."""


class QuantizerLevel(nn.Module):
    """One residual level: optional 1x1 projection into codebook space, VQ, projection back."""

    def __init__(self, latent_dim: int, codebook_dim: int, cfg: ModelConfig, name: str = "level0"):
        super().__init__()
        project = codebook_dim != latent_dim
        self.project_in = nn.Conv1d(latent_dim, codebook_dim, 1) if project else nn.Identity()
        self.project_out = nn.Conv1d(codebook_dim, latent_dim, 1) if project else nn.Identity()
        self.vq = VectorQuantizer(codebook_dim, cfg.codebook_size, cfg.ema_decay,
                                  cfg.dead_code_ratio, cfg.kmeans_init, cfg.kmeans_iters, name=name)

    def forward(self, residual: torch.Tensor, straight_through: bool,
                draws: StepDraws | None = None) -> tuple[torch.Tensor, VQOutput]:
        """[B, D, F] -> (quantized [B, D, F] in latent space, VQOutput in codebook space).

        Without `straight_through` the result depends on the weights of project_out only, not on
        `residual` (the caller passes the latent's gradient on); with it, the identity passes back
        to `residual` through the codebook space (v1.yaml's chained levels).
        """
        projected = self.project_in(residual)
        out = self.vq(projected, draws)
        vectors = out.quantized
        if straight_through and projected.requires_grad:
            vectors = projected + (vectors - projected).detach()
        return self.project_out(vectors), out

    def encode(self, residual: torch.Tensor) -> torch.Tensor:
        return self.vq.encode(self.project_in(residual))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.project_out(self.vq.decode(codes))


class ResidualVQ(nn.Module):
    """n_codebooks residual levels with quantizer dropout: [B, D, F] -> RVQOutput.

    With model.quantizer_gradient "sum", level k quantises z - (levels 1..k-1, detached), so its
    commitment pulls the latent towards what the levels before it left over, and the decoder's
    gradient reaches the latent through one straight-through step on the sum. With
    model.quantizer_dropout_per "sample", every level runs on every clip and only the sum and the
    commitment are masked per clip.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_codebooks, self.dropout = cfg.n_codebooks, cfg.quantizer_dropout
        self.per_sample = cfg.quantizer_dropout_per == "sample"
        self.chained = cfg.quantizer_gradient == "chained"
        codebook_dim = cfg.codebook_dim or cfg.latent_dim
        self.levels = nn.ModuleList(QuantizerLevel(cfg.latent_dim, codebook_dim, cfg, f"level{i}")
                                    for i in range(cfg.n_codebooks))
        self.draws: StepDraws | None = None
        """The current training step's draws (train_step sets them before each forward); None: the
        batch is the whole global batch and draws come from torch's global generator."""

    def forward(self, z: torch.Tensor, n_quantizers: int | None = None) -> RVQOutput:
        """[B, D, F] -> RVQOutput using `n_quantizers` levels (training: maybe fewer per clip)."""
        z32 = z.float()
        draws = self.draws or StepDraws.local(z.shape[0])
        n_run, per_clip = self.levels_to_run(n_quantizers, z32, draws)
        quantized, residual = torch.zeros_like(z32), z32
        codes, commits = [], []
        for i, level in enumerate(self.levels[:n_run]):
            level_q, out = level(residual, straight_through=self.chained, draws=draws)
            used = (per_clip > i).to(z32.dtype)  # [B]: the clips that decode this level
            quantized = quantized + level_q * used[:, None, None]
            residual = residual - (level_q if self.chained else level_q.detach())
            codes.append(out.codes)
            commits.append((out.commit_loss * used).mean())
        if not self.chained and z32.requires_grad:
            quantized = quantized + (z32 - z32.detach())  # straight through: identity to the latent
        commits = torch.stack(commits)
        return RVQOutput(quantized, torch.stack(codes, 1), commits.mean(), commits, per_clip, n_run)

    @property
    def ready(self) -> bool:
        """Whether every level's codebook has been initialised."""
        return all(level.vq.ready for level in self.levels)

    @torch.no_grad()
    def initialize(self, latents: list[torch.Tensor], draws: StepDraws) -> None:
        """Each level's codebook by k-means over the latents [B, D, F] of this rank's micro-batches
        (all its rows of the step, in order), level by level on what the levels before left: what
        the first training forward over these rows would do, done ahead of the micro-batches."""
        residuals = [z.float() for z in latents]
        rows = sum(z.shape[0] for z in latents)
        for level in self.levels:
            projected = [level.project_in(r) for r in residuals]
            if not level.vq.ready:  # fp32, as in forward
                level.vq.initialize([clean_vectors(p.float())[0] for p in projected], rows, draws)
            residuals = [r - level.decode(level.vq.encode(p)) for r, p in zip(residuals, projected)]

    def start_step(self) -> None:
        """Hold the codebook updates of the training forwards until finish_step: a step's rows
        may then pass through in several micro-batches (each with `draws` shifted to its rows)."""
        for level in self.levels:
            level.vq.pending = []

    def finish_step(self, rows: int, draws: StepDraws) -> torch.Tensor | int:
        """Apply the held updates (this rank's `rows` rows, `draws` the step's); returns the number
        of dead codes re-seeded over all levels."""
        for level in self.levels:
            level.vq.apply_pending(rows, draws)
        return sum(level.vq.reseeded for level in self.levels)

    @contextlib.contextmanager
    def replaying(self):
        """Training-mode forwards that neither update nor record: a micro-batch passed through
        again (for the discriminator's step) after or before the one that counts."""
        for level in self.levels:
            level.vq.replaying = True
        try:
            yield
        finally:
            for level in self.levels:
                level.vq.replaying = False

    def levels_to_run(self, requested: int | None, z: torch.Tensor,
                      draws: StepDraws) -> tuple[int, torch.Tensor]:
        """(levels to run, [B] levels each clip decodes): `requested` if given; in training, under
        quantizer dropout, a random 1..n for a share of the clips (per sample, drawn over the global
        batch: each clip's draw is the same on any number of ranks) or the batch."""
        batch = z.shape[0]
        if requested is not None:
            n = self._checked(requested)
            return n, torch.full((batch,), n, device=z.device)
        full = torch.full((batch,), self.n_codebooks, device=z.device)
        if not self.training or self.dropout == 0:
            return self.n_codebooks, full
        g, mine = draws.generator("dropout"), draws.rows(batch)
        if self.per_sample:  # every level runs; a share of the clips decodes fewer
            dropped = (torch.rand(draws.total, generator=g) < self.dropout)[mine]
            drawn = torch.randint(1, self.n_codebooks + 1, (draws.total,), generator=g)[mine]
            return self.n_codebooks, torch.where(dropped.to(z.device), drawn.to(z.device), full)
        chosen = torch.tensor([self.n_codebooks])
        if torch.rand((), generator=g) < self.dropout:
            chosen = torch.randint(1, self.n_codebooks + 1, (1,), generator=g)
        if g is None:  # torch's own generator differs between ranks: rank 0's choice
            broadcast_from_rank0_(chosen := chosen.to(z.device))
        n = int(chosen.item())  # every rank must run the same levels (their EMA all-reduces)
        return n, torch.full((batch,), n, device=z.device)

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
