"""The telucodec configuration: nested frozen dataclasses, YAML layering and dotted overrides.

    cfg = load_config(["configs/base.yaml", "configs/tiny.yaml"], ["prep.sample_rate=24000"])
    cfg = load_config(["base", "tiny"], ["prep.sample_rate=24000"])      # the same, by name

The named configs (base, tiny, gpu) and the price table ship inside the package (pipeline/configs/,
which the checkout's configs/ links to), so a name works from any folder and from a wheel install.
Files layer left to right, then `key.sub=value` overrides. Unknown keys and values of the wrong type
raise `ConfigError` naming the full dotted key. Each section is one dataclass; the string under a
field is its documentation (shown by `telucodec config show --docs`).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import TelucodecError


class ConfigError(TelucodecError, ValueError):
    """A config file or override that cannot be used; the message names the dotted key."""


CONFIG_DIR = Path(__file__).resolve().parent / "configs"
"""The configs that ship with telucodec: base.yaml, tiny.yaml, gpu.yaml and prices.yaml."""


def config_names() -> list[str]:
    """Names of the shipped training configs (`tiny` for pipeline/configs/tiny.yaml), prices excluded."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem != "prices")


def config_path(name_or_path: str | Path) -> Path:
    """A YAML file's path: an existing file as given, else a shipped config by name (`tiny`,
    `tiny.yaml`, or the checkout's `configs/tiny.yaml` from another folder); ConfigError naming the
    shipped ones when it is neither."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    if path.parent in (Path("."), Path("configs")) and shipped.is_file():
        return shipped
    raise ConfigError(f"config file not found: {name_or_path} (a path to a .yaml file, or one of the "
                      f"shipped names: {', '.join(config_names())})")


@dataclass(frozen=True)
class DataConfig:
    url: str = ""
    """Dataset URL (a folder, file:// or s3://bucket/prefix) holding shards and index.json."""
    workers: int = -1
    """Loader processes per rank that read and decode; -1 means train.cpus_per_worker - 1 (the rank's
    own process trains), 0 decodes on a thread of the training process."""
    shuffle_samples: int = 4
    """A stream shuffles the crops of this many consecutive samples together (each sample is cut into
    non-overlapping crops; a batch already mixes samples from all over the dataset)."""
    loudness_db: typing.Optional[float] = None
    """If set, scale each training sample to this RMS level in dBFS (peak-limited to 1.0)."""
    gain_db: tuple[float, ...] = (0.0, 0.0)
    """A random gain per crop, uniform in [low, high] dB (peak-limited to 1.0); (0, 0) is off."""
    block_samples: int = 32
    """Each epoch deals blocks of up to this many consecutive samples of one shard to the batch's
    streams, each block read with one ranged request (1: a request per sample, ~30x the requests)."""
    cache_dir: str = "~/.cache/telucodec/shards"
    """Where a node keeps the shards it reads from a remote store (s3://), shared by its ranks and
    loader workers: each shard is fetched once per node and checked against index.json's digest.
    Put it on the node's local disk (an instance's NVMe, not a network volume)."""
    cache_gb: float = 50.0
    """The most the cache holds; the least recently used shards go first. A dataset larger than this
    has as many of its shards cached as fit (the same ones every epoch) and the rest read block by
    block from the store. 0 turns the cache off."""

    def __post_init__(self):
        _check(self.workers >= -1, "data.workers", "must be >= 0, or -1 for train.cpus_per_worker - 1")
        _check(self.shuffle_samples >= 1, "data.shuffle_samples", "must be >= 1")
        _check(self.block_samples >= 1, "data.block_samples", "must be >= 1")
        _check(self.cache_gb >= 0, "data.cache_gb", "must be >= 0 (0 turns the cache off)")
        _check(len(self.gain_db) == 2 and self.gain_db[0] <= self.gain_db[1], "data.gain_db",
               "must be [low, high] with low <= high")


@dataclass(frozen=True)
class PrepConfig:
    sample_rate: int = 16000
    """Output sample rate in Hz; every source is resampled to it with soxr."""
    max_seconds: float = 10.0
    """Longest segment; longer recordings are cut into equal parts no longer than this."""
    min_seconds: float = 1.0
    """Segments shorter than this are dropped."""
    trim_silence: bool = True
    """Trim leading and trailing silence before segmenting."""
    silence_db: float = -40.0
    """Frames quieter than this (dB relative to the file's peak) count as silence when trimming."""
    loudness_db: typing.Optional[float] = None
    """If set, scale each file to this RMS level in dBFS before clipping (off by default)."""
    val_fraction: float = 0.05
    """Share of speakers held out for the val split."""
    test_fraction: float = 0.05
    """Share of speakers held out for the test split."""
    shard_max_samples: int = 1000
    """A shard is closed once it holds this many samples."""
    shard_max_mb: float = 256.0
    """A shard is closed once it holds this many megabytes (10^6 bytes)."""
    workers: int = 0
    """Decode/encode processes; 0 means one per CPU core."""
    keep_source_splits: bool = False
    """Keep the corpus's own train/dev/test split where its layout names one (parquet file names,
    Kathbath and FLEURS folders), instead of splitting by speaker; the split is kept as metadata
    (`source_split`) either way."""

    def __post_init__(self):
        _check(self.sample_rate >= 1000, "prep.sample_rate", "must be at least 1000 Hz")
        _check(self.max_seconds > 0, "prep.max_seconds", "must be > 0")
        _check(0 < self.min_seconds <= self.max_seconds, "prep.min_seconds",
               "must be > 0 and <= prep.max_seconds")
        _check(0 <= self.val_fraction, "prep.val_fraction", "must be >= 0")
        _check(0 <= self.test_fraction, "prep.test_fraction", "must be >= 0")
        _check(self.val_fraction + self.test_fraction < 1, "prep.val_fraction",
               "prep.val_fraction + prep.test_fraction must be less than 1")
        _check(self.shard_max_samples >= 1, "prep.shard_max_samples", "must be >= 1")
        _check(self.shard_max_mb > 0, "prep.shard_max_mb", "must be > 0")
        _check(self.workers >= 0, "prep.workers", "must be >= 0")


@dataclass(frozen=True)
class ModelConfig:
    sample_rate: int = 16000
    """Audio sample rate in Hz the codec works at; must match prep.sample_rate of its data."""
    channels: int = 32
    """Channels after the first encoder conv; each encoder block doubles them."""
    decoder_channels: typing.Optional[int] = None
    """Channels of the decoder's last block (at the audio end); each block towards the latent doubles
    them, so its widest conv has decoder_channels x 2^len(strides). null = channels (a mirror of the
    encoder). Decoding is the harder half: DAC 16 kHz pairs a 64-wide encoder with a decoder 1536
    wide at the top (96 here)."""
    activation: str = "snake"
    """Nonlinearity of the encoder and decoder: snake (x + sin^2(a x)/a with a learned per channel;
    a periodic bias that suits pitched audio, as in BigVGAN and DAC) or elu (v1.yaml)."""
    latent_dim: int = 128
    """Channels of the encoder output (the vectors that are quantised)."""
    strides: tuple[int, ...] = (2, 4, 5, 8)
    """Encoder downsampling per block; their product is the hop (320 -> 50 frames/s at 16 kHz)."""
    dilations: tuple[int, ...] = (1, 3, 9)
    """Dilations of the residual units inside every encoder and decoder block."""
    kernel_size: int = 7
    """Kernel size of the residual-unit and input/output convs (odd)."""
    final_tanh: bool = False
    """Squash the decoder output with tanh. Off: a tanh hides level errors and saturates on loud
    input; kept for experiments."""
    n_codebooks: int = 8
    """Residual VQ levels; bitrate = frames/s x n_codebooks x log2(codebook_size)."""
    codebook_size: int = 1024
    """Entries per codebook; a power of two so each code packs into exactly log2(size) bits."""
    codebook_dim: typing.Optional[int] = None
    """Dimension codes live in; None means latent_dim (no projection), smaller adds a 1x1
    projection in and out of each level."""
    quantizer_dropout: float = 0.5
    """Share of training clips decoded from a random number of levels (1..n_codebooks), so one
    model serves several bitrates."""
    quantizer_dropout_per: str = "sample"
    """sample: that share of each batch's clips draws its own level count; every level still runs
    and updates its codebook every step, and the dropped levels are masked out of those clips'
    sum and commitment (DAC). batch: one draw for the whole batch on all ranks, so the full stack
    trains on only part of the steps and skipped levels miss their EMA updates (v1.yaml)."""
    quantizer_gradient: str = "sum"
    """How the encoder's gradient passes the residual VQ. sum: every level quantises a detached
    residual and one straight-through step carries the sum of levels back to the latent, so each
    level's commitment reaches the encoder (audiocraft's fix of EnCodec issue 25). chained (v1.yaml):
    levels chain straight-through outputs, which leaves every residual after the first with no
    gradient: only level 1's commitment trains the encoder."""
    ema_decay: float = 0.99
    """Decay of the EMA codebook statistics (codebooks get no gradient)."""
    dead_code_ratio: float = 0.1
    """A code whose EMA use falls below this fraction of the mean use per code is re-seeded from the
    current batch and starts again at the mean use, so it has time to be chosen before it could
    expire again. Relative, so it means the same at any batch size and world size (as in moshi)."""
    kmeans_init: bool = True
    """Initialise codebooks by k-means on the first training batch (else sampled batch vectors)."""
    kmeans_iters: int = 10
    """K-means iterations for that initialisation."""
    disc_channels: int = 32
    """Base channels of the discriminators (multi-period layers grow to 32x this)."""
    disc_periods: tuple[int, ...] = (2, 3, 5, 7, 11)
    """Periods of the multi-period discriminator."""
    disc_stft_windows: tuple[int, ...] = (2048, 1024, 512)
    """FFT sizes of the multi-scale STFT discriminator (hop is a quarter of each)."""
    disc_stft_bands: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
    """Band edges, as fractions of the STFT's bins, that split each STFT discriminator into one
    conv stack per band (multi-band, as in DAC: high bands are judged on their own instead of under
    the loud low ones); (0, 1) is one stack over all bins (v1.yaml)."""

    def __post_init__(self):
        _check(self.sample_rate >= 1000, "model.sample_rate", "must be at least 1000 Hz")
        _check(self.channels >= 1, "model.channels", "must be >= 1")
        _check(self.decoder_channels is None or self.decoder_channels >= 1, "model.decoder_channels",
               "must be >= 1 or null (= model.channels)")
        _check(self.latent_dim >= 1, "model.latent_dim", "must be >= 1")
        _check(len(self.strides) >= 1 and all(s >= 1 for s in self.strides), "model.strides",
               "must be a non-empty list of positive integers")
        _check(self.sample_rate % self.hop_length == 0, "model.strides",
               f"their product ({self.hop_length}) must divide model.sample_rate "
               f"({self.sample_rate}) so frames/s is a whole number")
        _check(len(self.dilations) >= 1 and all(d >= 1 for d in self.dilations), "model.dilations",
               "must be a non-empty list of positive integers")
        _check(self.kernel_size >= 1 and self.kernel_size % 2 == 1, "model.kernel_size",
               "must be a positive odd number")
        _check(self.n_codebooks >= 1, "model.n_codebooks", "must be >= 1")
        _check(self.codebook_size >= 2 and self.codebook_size & (self.codebook_size - 1) == 0
               and self.codebook_size <= 2 ** 16, "model.codebook_size",
               "must be a power of two between 2 and 65536")
        _check(self.codebook_dim is None or self.codebook_dim >= 1, "model.codebook_dim",
               "must be >= 1 or null")
        _check(0.0 <= self.quantizer_dropout <= 1.0, "model.quantizer_dropout",
               "must be in [0, 1]")
        _check(0.0 < self.ema_decay < 1.0, "model.ema_decay", "must be in (0, 1)")
        _check(0 <= self.dead_code_ratio < 1, "model.dead_code_ratio", "must be in [0, 1)")
        _check(self.kmeans_iters >= 0, "model.kmeans_iters", "must be >= 0")
        _check(self.disc_channels >= 1, "model.disc_channels", "must be >= 1")
        _check(all(p >= 2 for p in self.disc_periods), "model.disc_periods", "must all be >= 2")
        _check(all(w >= 16 for w in self.disc_stft_windows), "model.disc_stft_windows",
               "must all be >= 16")
        bands = self.disc_stft_bands
        _check(len(bands) >= 2 and bands[0] == 0 and bands[-1] == 1
               and all(a < b for a, b in zip(bands, bands[1:])), "model.disc_stft_bands",
               "must rise from 0 to 1, e.g. [0, 0.25, 0.5, 1] (or [0, 1] for one band)")

    @property
    def hop_length(self) -> int:
        """Samples per code frame: the product of the strides."""
        hop = 1
        for s in self.strides:
            hop *= s
        return hop

    @property
    def frame_rate(self) -> float:
        """Code frames per second."""
        return self.sample_rate / self.hop_length

    @property
    def codebook_bits(self) -> int:
        """Bits per code: log2(codebook_size)."""
        return self.codebook_size.bit_length() - 1

    def bitrate(self, n_codebooks: typing.Optional[int] = None) -> float:
        """Bits per second with `n_codebooks` levels (all by default): 50 x 8 x 10 = 4000."""
        n = self.n_codebooks if n_codebooks is None else n_codebooks
        return self.frame_rate * n * self.codebook_bits


LOSS_TERMS = ("l1", "mse", "snr", "level", "stft", "mel", "vq/commit", "adv", "feat")
"""Every generator loss term by name; LossConfig.weights may only name these."""

DEFAULT_LOSS_WEIGHTS = {"l1": 1.0, "mse": 0.0, "snr": 0.0, "level": 0.0, "stft": 1.0, "mel": 15.0,
                        "vq/commit": 1.0, "adv": 1.0, "feat": 2.0}


@dataclass(frozen=True)
class LossConfig:
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LOSS_WEIGHTS))
    """Weight per loss term (l1, mse, snr, level, stft, mel, vq/commit, adv, feat). A name left
    out keeps its default; 0 means computed and logged but not back-propagated."""
    adversarial: bool = False
    """Train against the discriminator (adds the adv and feat terms from adv_start_step on)."""
    adv_start_step: int = 2000
    """First step at which the adversarial terms are used, so reconstruction settles first."""
    adv_kind: str = "lsgan"
    """GAN objective: lsgan (least squares, as in DAC) or hinge (discriminator hinge, generator -D
    as in EnCodec/audiocraft)."""
    adv_reduction: str = "sum"
    """How adv and feat combine their parts: sum over sub-discriminators (adv) and over every
    feature map (feat), like mel over its scales, so the weights mean what DAC's mean; mean (v1.yaml)
    makes both 5-25x weaker than those weights intend."""
    stft_windows: tuple[int, ...] = (512, 1024, 2048)
    """FFT sizes of the multi-resolution STFT loss (hop is a quarter of each)."""
    mel_windows: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048)
    """FFT sizes of the multi-scale mel loss (hop is a quarter of each). The short ones (2-8 ms at
    16 kHz) see transients that long windows smear (DAC 16 kHz's choice; v1.yaml has 256-2048)."""
    mel_bins: tuple[int, ...] = (5, 10, 20, 40, 80, 160, 320)
    """Mel bands at each of mel_windows."""
    mel_floor: float = 1e-5
    """Floor under mel magnitudes before the log, so silence gives a finite loss."""

    def __post_init__(self):
        unknown = sorted(set(self.weights) - set(LOSS_TERMS))
        _check(not unknown, "loss.weights",
               f"unknown term(s) {', '.join(unknown)} (known: {', '.join(LOSS_TERMS)})")
        for name, w in self.weights.items():
            _check(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0,
                   f"loss.weights.{name}", f"must be a number >= 0, got {w!r}")
        # Merge over the defaults so `loss.weights.mel=10` changes one term, not all of them.
        weights = {k: float(v) for k, v in self.weights.items()}
        object.__setattr__(self, "weights", {**DEFAULT_LOSS_WEIGHTS, **weights})
        _check(self.adv_start_step >= 0, "loss.adv_start_step", "must be >= 0")
        _check(self.adv_kind in ("hinge", "lsgan"), "loss.adv_kind", "must be hinge or lsgan")
        _check(self.adv_reduction in ("sum", "mean"), "loss.adv_reduction", "must be sum or mean")
        _check(len(self.stft_windows) >= 1 and all(w >= 16 for w in self.stft_windows),
               "loss.stft_windows", "must be a non-empty list of sizes >= 16")
        _check(len(self.mel_windows) >= 1 and all(w >= 16 for w in self.mel_windows),
               "loss.mel_windows", "must be a non-empty list of sizes >= 16")
        _check(len(self.mel_bins) == len(self.mel_windows) and all(b >= 1 for b in self.mel_bins),
               "loss.mel_bins", "needs one positive entry per loss.mel_windows entry")
        _check(self.mel_floor > 0, "loss.mel_floor", "must be > 0")


BEST_METRICS = {"pesq": True, "stoi": True, "mel_distance": False, "si_sdr": True, "snr": True}
"""Val metrics train.best_metric may name, and whether higher is better."""


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 20000
    """Optimisation steps to train for."""
    batch_size: int = 32
    """Crops per optimisation step, all ranks together (each rank takes a block of the rows), so a run
    sees the same batches on any number of workers."""
    segment_seconds: float = 1.0
    """Length of the random crops trained on."""
    lr: float = 3e-4
    """Peak learning rate (AdamW) after warm-up."""
    betas: tuple[float, ...] = (0.8, 0.99)
    """AdamW betas."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 500
    """Linear warm-up steps; health checks start after them."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at this fraction of the peak learning rate."""
    grad_clip: float = 1000.0
    """Codec gradient norm clip: a guard against spikes, not a normaliser (the codec's gradient norm
    is ~1e4 at the start; v1.yaml's 1.0 rescaled every step). DAC clips at 1e3."""
    disc_grad_clip: float = 10.0
    """Discriminator gradient norm clip (DAC: 10)."""
    grad_accum: int = 1
    """Batches accumulated per optimizer update (accelerator.accumulate); each batch counts as a step
    (schedule, codebook updates). To fit a step's rows in memory, use train.micro_batch instead."""
    micro_batch: int = 0
    """Most rows a worker passes through the model at once: a worker holding more accumulates
    gradients over micro-batches (the discriminator's and the codebooks' updates too), which makes
    the same step as one pass would. 0: the rows a worker holds at train.workers, so an elastic run
    that shrinks keeps each worker's memory at the full size's instead of giving it more rows, and
    (on CPU, same threads) a run shrunk from 2 workers to 1 takes the 2-worker steps bit for bit."""
    mixed_precision: str = "auto"
    """auto (bf16 on GPU, fp32 on CPU), no, bf16 or fp16."""
    seed: int = 0
    """Seed for weights, data order, crops and quantizer dropout."""
    log_every: int = 10
    """Append a line to metrics.jsonl (and W&B) and print a progress line every this many steps."""
    progress_seconds: float = 60.0
    """Rank 0 also prints the progress line at the next step once this long has passed without one,
    so a job log is never silent for more than about this long while training (metrics.jsonl and
    W&B keep the log_every cadence)."""
    eval_every: int = 500
    """Evaluate on eval_split every this many steps (and at the end)."""
    eval_split: str = "val"
    """Split evaluated during training."""
    eval_url: str = ""
    """Dataset to evaluate on (default: data.url), e.g. the prepped dataset when training on a
    reshard of its train split only."""
    eval_clips: int = 8
    """Clips evaluated (the first of the split, always the same)."""
    eval_seconds: float = 4.0
    """Each eval clip is cut to at most this long."""
    checkpoint_every: int = 1000
    """Checkpoint every this many steps..."""
    checkpoint_minutes: float = 30.0
    """...and at least this often in wall time."""
    keep_checkpoints: int = 3
    """Keep the newest this many checkpoints (plus the best by train.best_metric)."""
    best_metric: str = "pesq"
    """Val metric that picks the `best` checkpoint: pesq (PESQ-WB), stoi, mel_distance (lower is
    better), si_sdr or snr (v1.yaml; adversarial training trades SNR away on purpose, so it would keep an
    early, muffled checkpoint)."""
    health_alarm_step: int = 1000
    """Health problems at evals (collapsing output range, negative SNR) are warnings, W&B alerts and
    ledger lines from this step on; before it they are notes in the log and events.jsonl (a young
    codec passes through those states)."""
    max_nonfinite: int = 5
    """This many non-finite steps in a row roll back to the last checkpoint."""
    rollback_lr_factor: float = 0.5
    """Each rollback multiplies the learning rate by this."""
    workers: int = 2
    """Ray Train workers (DDP ranks); 0 trains in this process without Ray."""
    min_workers: int = 0
    """Elastic training: below train.workers, the run goes on with as few as this many workers when
    nodes vanish (restarting from the newest checkpoint) and grows back when capacity returns. The
    global batch (train.batch_size) and every step's samples and random draws stay the same at any
    size, so the optimisation is the one a fixed-size run would do; each worker holds more rows and
    passes them in micro-batches (train.micro_batch). 0: a fixed size of train.workers (a lost node
    waits for a replacement)."""
    resize_check_s: float = 60.0
    """Elastic training: how often the driver looks for room to grow a shrunk worker group back (it
    then asks the run to checkpoint at its next step and restarts it larger; Ray Train's own check,
    which redoes the steps since the newest checkpoint, runs every 10x this as a fallback)."""
    cpus_per_worker: int = 1
    """CPUs reserved per Ray worker (also torch's thread count there)."""
    max_failures: int = 3
    """Real worker errors Ray recovers from (preemptions are retried without limit)."""
    use_gpu: bool = False
    """One GPU per worker (and bf16 by default)."""
    compile: bool = False
    """torch.compile the encoder, decoder and each discriminator (the quantizer stays eager); only on
    a GPU, ignored on CPU (compiling there costs minutes for little)."""
    debug_rank_digests: bool = False
    """Debug: every rank stores a sha256 of all its weights in its checkpoint part (rankN), to check
    from outside that DDP keeps the ranks identical; off by default because it hashes every weight
    on every rank at every checkpoint."""
    debug_worker_records: bool = False
    """Debug: every Ray worker writes workers/rankN.json in the run dir (its rank, pid, host, start
    and, on a clean exit, end time), so a check from outside can signal a rank or time it."""

    def __post_init__(self):
        _check(self.steps >= 1, "train.steps", "must be >= 1")
        _check(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        _check(self.segment_seconds > 0, "train.segment_seconds", "must be > 0")
        _check(self.mixed_precision in ("auto", "no", "bf16", "fp16"), "train.mixed_precision",
               "must be auto, no, bf16 or fp16")
        for key in ("log_every", "eval_every", "checkpoint_every", "eval_clips", "keep_checkpoints", "cpus_per_worker"):
            _check(getattr(self, key) >= 1, f"train.{key}", "must be >= 1")
        _check(self.lr > 0, "train.lr", "must be > 0")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "train.betas",
               "must be two numbers in [0, 1), e.g. [0.8, 0.99]")
        _check(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _check(self.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
        _check(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]")
        _check(self.eval_seconds > 0, "train.eval_seconds", "must be > 0")
        _check(self.checkpoint_minutes > 0, "train.checkpoint_minutes", "must be > 0")
        _check(0 < self.rollback_lr_factor <= 1, "train.rollback_lr_factor", "must be in (0, 1]")
        _check(self.max_failures >= 0, "train.max_failures", "must be >= 0")
        _check(self.health_alarm_step >= 0, "train.health_alarm_step", "must be >= 0")
        _check(self.seed >= 0, "train.seed", "must be >= 0")
        _check(self.progress_seconds >= 0, "train.progress_seconds", "must be >= 0")
        _check(self.grad_accum >= 1, "train.grad_accum", "must be >= 1")
        _check(self.micro_batch >= 0, "train.micro_batch", "must be >= 0 (0: the rows of a worker at train.workers)")
        _check(self.grad_clip > 0, "train.grad_clip", "must be > 0")
        _check(self.disc_grad_clip > 0, "train.disc_grad_clip", "must be > 0")
        _check(self.best_metric in BEST_METRICS, "train.best_metric",
               f"must be one of {', '.join(BEST_METRICS)}")
        _check(self.max_nonfinite >= 1, "train.max_nonfinite", "must be >= 1")
        _check(self.workers >= 0, "train.workers", "must be >= 0")
        _check(0 <= self.min_workers <= self.workers, "train.min_workers", "must be 0 (fixed size) or 1..train.workers")
        _check(self.resize_check_s > 0, "train.resize_check_s", "must be > 0")


DEFAULT_ENDPOINTS = {"aws": "auto", "gcp": "auto", "azure": "auto"}
"""The clouds pipeline/cloud/ knows (its PROVIDERS), each metadata endpoint auto by default."""


@dataclass(frozen=True)
class PreemptConfig:
    enabled: bool = True
    """Watch for spot preemption notices and SIGTERM on every worker."""
    endpoints: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ENDPOINTS))
    """Metadata URL per cloud (aws, gcp, azure: pipeline/cloud/): auto = the cloud's own metadata address,
    only when this machine's DMI data says it runs there; '' = off; a URL = that one (a fake in tests).
    A cloud left out stays auto."""
    poll_seconds: float = 5.0
    """How often the metadata endpoints are polled."""
    rebalance_is_notice: bool = True
    """Treat an AWS rebalance recommendation as a notice (save early)."""
    drain_node: bool = True
    """On a notice, mark this Ray node as draining (`ray drain-node`)."""
    ray_notice_every: int = 10
    """Every this many steps, ask Ray Train whether a node of the run is being drained for
    preemption (`ray.train.get_preemption_info`: KubeRay, autoscaler v2, `ray drain-node`, or this
    watcher's own drain on another node); a notice there is handled like a cloud's. A barrier
    across the workers, hence not every step. 0 = off."""

    def __post_init__(self):
        _check(self.ray_notice_every >= 0, "preempt.ray_notice_every", "must be >= 0 (0 = off)")
        _check(self.poll_seconds > 0, "preempt.poll_seconds", "must be > 0")
        unknown = sorted(set(self.endpoints) - set(DEFAULT_ENDPOINTS))
        _check(not unknown, "preempt.endpoints", f"unknown cloud {', '.join(unknown)} (one of {', '.join(DEFAULT_ENDPOINTS)})")
        for name, url in self.endpoints.items():
            _check(isinstance(url, str), f"preempt.endpoints.{name}", f"must be auto, '' or a URL, got {url!r}")
        object.__setattr__(self, "endpoints", {**DEFAULT_ENDPOINTS, **self.endpoints})


@dataclass(frozen=True)
class RunConfig:
    dir: str = "runs/default"
    """Run directory or store URL (s3://...): checkpoints, metrics.jsonl, events.jsonl, ledger."""
    name: str = ""
    """Run name (defaults to the last part of run.dir)."""


@dataclass(frozen=True)
class CostConfig:
    instance_type: str = ""
    """Instance type the workers run on (e.g. g5.xlarge), priced from cost.prices; '' = read it from
    the cloud's metadata (preempt.endpoints) when running on AWS, GCP or Azure, else a
    local machine that costs $0 unless cost.usd_per_hour is set."""
    region: str = ""
    """Region of the price; '' = from the metadata, else the first region the table lists."""
    spot: typing.Optional[bool] = None
    """Spot (preemptible) prices; null = from the metadata, else on-demand."""
    usd_per_hour: typing.Optional[float] = None
    """Dollars per worker-hour, overriding the table (a worker has one GPU on GPU runs: 8 workers on
    an 8-GPU instance at $32/h is 4.0 each); null = from the table."""
    prices: str = ""
    """Price table (YAML); '' = the prices.yaml shipped with telucodec (approximate list prices)."""
    heartbeat_seconds: float = 60.0
    """Rank 0 appends the running totals to ledger.jsonl this often, so a node that dies without a
    goodbye is billed up to its last heartbeat."""
    max_gap_minutes: float = 30.0
    """The gap between a lost worker group's last ledger line and its replacement is billed (as
    wasted) up to this long; a longer gap means the run was down, not waiting."""
    store: str = ""
    """Whose request prices (prices.yaml `storage:`) bill the run's object-store requests: s3, gcs,
    r2, ...; '' = from AWS_ENDPOINT_URL (storage.googleapis.com is gcs, *.r2.cloudflarestorage.com
    r2, anything else s3). Only remote stores' requests are counted; a local folder's cost nothing."""
    egress: bool = False
    """The nodes read the bucket from outside its region or cloud: the bytes GETs bring are billed at
    the store's egress_per_gb too (reads inside the region are free)."""

    def __post_init__(self):
        _check(self.usd_per_hour is None or self.usd_per_hour >= 0, "cost.usd_per_hour", "must be >= 0 or null")
        _check(self.heartbeat_seconds > 0, "cost.heartbeat_seconds", "must be > 0")
        _check(self.max_gap_minutes >= 0, "cost.max_gap_minutes", "must be >= 0")


@dataclass(frozen=True)
class BudgetConfig:
    max_usd: float = 0.0
    """Stop the run (final checkpoint, status budget) once it has cost this many dollars; 0 = no limit."""
    max_gpu_hours: float = 0.0
    """Stop the run once its workers have used this many GPU-hours; 0 = no limit."""

    def __post_init__(self):
        _check(self.max_usd >= 0, "budget.max_usd", "must be >= 0 (0 = no limit)")
        _check(self.max_gpu_hours >= 0, "budget.max_gpu_hours", "must be >= 0 (0 = no limit)")


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = True
    """Log to Weights & Biases from rank 0; offline (no network) when WANDB_API_KEY is not set."""
    project: str = "telucodec"
    """W&B project."""
    entity: str = ""
    """W&B entity (user or team); '' = the API key's default."""
    dir: str = ""
    """Folder W&B puts its wandb/ folder in; '' = the run dir when it is local, else
    ~/.cache/telucodec/wandb/<run>."""
    audio_samples: int = 2
    """Eval clips logged as input-vs-decoded audio and spectrograms at each eval; 0 = none."""
    run_id: str = ""
    """W&B run id of a new run (`telucodec submit` sets it, so it can print the run's URL up front);
    '' = random. A resumed run keeps the id in its checkpoint."""

    def __post_init__(self):
        _check(self.audio_samples >= 0, "tracking.audio_samples", "must be >= 0")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    """Where the training data lives."""
    prep: PrepConfig = field(default_factory=PrepConfig)
    """How raw audio becomes shards."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The codec network: encoder/decoder shape, residual VQ and discriminators."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Loss terms, their weights and resolutions, and when adversarial training starts."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The optimisation: steps, batches, schedule, eval and checkpoint cadence, workers."""
    run: RunConfig = field(default_factory=RunConfig)
    """Where this run keeps its state."""
    preempt: PreemptConfig = field(default_factory=PreemptConfig)
    """Spot preemption notices."""
    cost: CostConfig = field(default_factory=CostConfig)
    """What the run costs: instance type, prices, ledger heartbeats."""
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    """Spending limits that stop a run."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Weights & Biases."""


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def load_config(files: typing.Sequence[str | Path] = (), overrides: typing.Sequence[str] = ()) -> Config:
    """Layer YAML files left to right, then apply `dotted.key=value` overrides."""
    merged: dict = {}
    for name_or_path in files:
        path = config_path(name_or_path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        _deep_merge(merged, data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        node = merged
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {part} is a value, not a section")
        node[leaf] = yaml.safe_load(raw) if raw.strip() else ""
    return from_dict(Config, merged)


def _deep_merge(into: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _deep_merge(into[k], v)
        else:
            into[k] = v


RENAMED_KEYS = {"preempt.aws_endpoint": "preempt.endpoints.aws", "preempt.gcp_endpoint": "preempt.endpoints.gcp"}
"""Keys of older configs (checkpoints, YAML files) and where their values live now."""


def renamed(data: dict, prefix: str = "") -> dict:
    """`data` (the section at `prefix`) with RENAMED_KEYS moved to their new places."""
    moved = {old[len(prefix):]: new[len(prefix):] for old, new in RENAMED_KEYS.items() if old.startswith(prefix)}
    if not any(key in data for key in moved):
        return data
    data = dict(data)
    for old, new in moved.items():
        if old in data:
            section, _, leaf = new.rpartition(".")
            data[section] = {**(data.get(section) or {}), leaf: data.pop(old)}
    return data


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from plain data, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    data = renamed(data, prefix)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"{prefix}{key}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(hints[k], v, f"{prefix}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - all fields have defaults
        raise ConfigError(f"{prefix or 'config'}: {e}") from None


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, key)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (inner, *_) = typing.get_args(hint) or (Any,)
        return tuple(_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a field type this loader does not know is a programming error
        raise TypeError(f"{key}: unsupported config type {hint}")
    raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r}")


def to_dict(cfg: Any) -> dict:
    """The config as plain data (what goes to YAML, W&B and checkpoints)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def to_yaml(cfg: Any, docs: bool = False) -> str:
    """The resolved config as YAML; with `docs`, each field's documentation as a comment above it."""
    if not docs:
        return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)
    lines: list[str] = []
    _yaml_with_docs(cfg, 0, lines)
    return "\n".join(lines) + "\n"


def _yaml_with_docs(obj: Any, indent: int, lines: list[str]) -> None:
    pad = "  " * indent
    docs = field_docs(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        for doc_line in textwrap.wrap(docs.get(f.name, ""), 96 - len(pad)):
            lines.append(f"{pad}# {doc_line}")
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:")
            _yaml_with_docs(value, indent + 1, lines)
        else:
            dumped = yaml.safe_dump({f.name: to_dict_value(value)}, allow_unicode=True,
                                    default_flow_style=True, width=10_000).strip()
            lines.append(f"{pad}{dumped[1:-1] if dumped.startswith('{') else dumped}")


def to_dict_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the string literal written under it in the class body."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def with_absolute_paths(cfg: Config) -> Config:
    """Local paths made absolute: a submitted job, and each Ray worker, runs in another working directory."""
    def absolute(url: str) -> str:
        return url if not url or "://" in url else str(Path(url).absolute())
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, url=absolute(cfg.data.url)),
                               run=dataclasses.replace(cfg.run, dir=absolute(cfg.run.dir)))
