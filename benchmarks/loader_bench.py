"""Training-loader throughput per CPU core, beside its decode ceiling and a GPU's demand, in one run.

    .venv/bin/python benchmarks/loader_bench.py [--samples 1200] [--seconds 20] [--json]

Builds prep-shaped data in a temporary folder (10-second 16 kHz FLAC segments: speech-like tones
in noise, 40 a shard), then measures
  1. the bare FLAC-decode ceiling: one process reads every sample's bytes and decodes them
     (soundfile), as one-second crops per second if every decoded second became a crop (best of 2);
  2. CropLoader as training uses it (global batch 32, one-second crops, one rank) with 1 and 2
     worker processes, over --seconds after the first batch (worker start-up excluded): crops per
     core = crops over the CPU seconds of every process involved (workers, the process merging
     their rows, the forkserver), so a machine with more cores than workers does not flatter it;
     the best of three windows;
  3. what a GPU consumes: audio-seconds per second of the base model at 30% MFU of an H100's dense
     bf16 peak, from FlopCounterMode's count of one base train step (generator, forward + backward).
  4. block reads: on the index of a 150-hour corpus (sizes only, no audio), one epoch's deal at
     batch 32 with one-second crops, with a ranged read per sample (before) and per block of
     data.block_samples (after): distinct shards and speakers per batch, GETs per audio-hour and
     their dollars per epoch at S3's list price.
`--json` prints {"crops_per_s_per_core", "decode_ceiling_per_core", "gpu_demand_audio_s_per_s",
"requests_per_audio_hour_before"/"_after", "usd_requests_per_epoch_150h_before"/"_after",
"shards_per_batch_...", "speakers_per_batch_...", ...}; crops_per_s_per_core is the lower of the 1-
and 2-worker figures.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from audio_fixtures import tone  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.training.loader import CropLoader, CropRecipe  # noqa: E402
from pipeline.storage.shards import DatasetIndex, ShardWriter, encode_sample, load_index, write_index  # noqa: E402
from pipeline.storage.store import open_store  # noqa: E402

RATE, SECONDS, PER_SHARD, BATCH = 16000, 10.0, 40, 32
H100_BF16_PEAK, MFU = 989e12, 0.30
REPO = Path(__file__).resolve().parent.parent


def build_dataset(url: str, samples: int) -> None:
    """Prep-shaped segments: tones in enough noise that FLAC keeps most of the bytes."""
    store, rng, infos = open_store(url), np.random.default_rng(0), []
    for first in range(0, samples, PER_SHARD):
        with ShardWriter(store, "train", len(infos)) as w:
            for n in range(first, min(first + PER_SHARD, samples)):
                audio = tone(SECONDS, RATE, freq=rng.uniform(90, 260), peak=0.5, seed=n)
                audio = np.clip(audio + 0.05 * rng.standard_normal(len(audio)), -1, 1)
                w.add(encode_sample(f"utt{n:06d}", audio, RATE, {"speaker": f"spk{n % 20}"}))
        infos.append(w.info)
    write_index(store, DatasetIndex(shards=infos, sample_rate=RATE))


def decode_ceiling(url: str, passes: int = 2) -> float:
    """One-second crops per second one process gets by reading and decoding every sample (the best
    of `passes` passes, as the loader's figure is the best of its windows)."""
    store = open_store(url)
    best = 0.0
    for _ in range(passes):
        frames, started = 0, time.perf_counter()
        for info in load_index(store).shards:
            for r in info.sample_ranges:
                audio, _ = sf.read(io.BytesIO(store.get_range(info.name, r.flac_offset, r.flac_size)),
                                   dtype="float32")
                frames += len(audio)
        best = max(best, frames / RATE / (time.perf_counter() - started))
    return best


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and every process below it (the loader's workers
    are children of the forkserver, itself a child of this process)."""
    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def loader_rate(url: str, workers: int, seconds: float, windows: int = 3) -> tuple[float, float]:
    """(crops per second, crops per CPU-second of all processes involved) of CropLoader with
    `workers` processes after its first batch: the best of `windows` consecutive windows (on a
    small shared machine one window can lose a core to other work)."""
    loader = CropLoader(url, "train", CropRecipe(BATCH, RATE, seed=0), workers=workers)
    it = loader.batches(0)
    next(it)
    best = (0.0, 0.0)
    for _ in range(windows):
        steps, cpu, started = 0, cpu_seconds(), time.perf_counter()
        while time.perf_counter() - started < seconds / windows:
            next(it)
            steps += 1
        elapsed, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        best = max(best, (steps * BATCH / elapsed, steps * BATCH / cpu), key=lambda r: r[1])
    it.close()
    return best


S3_GET_USD = 0.0004 / 1000
"""S3 Standard's list price of a GET (us-east-1)."""


def corpus_table(hours: float = 150.0, per_shard: int = 1000, speaker_run: int = 50, seed: int = 0):
    """The index of a prep-shaped corpus (no audio: the deal needs only sizes): 1-10 s samples, 1000 a
    shard (prep's default), speakers in runs of `speaker_run` consecutive samples (a speaker's files sit
    together in a corpus's listing); (table, speaker of each sample)."""
    from pipeline.storage.shards import SampleRange, ShardInfo
    from pipeline.training.loader import SplitTable

    rng = np.random.default_rng(seed)
    frames = (rng.uniform(1.0, 10.0, size=int(hours * 3600 / 5.5)) * RATE).astype(np.int64)
    shards = []
    for first in range(0, len(frames), per_shard):
        ranges, at = [], 0
        for f in frames[first:first + per_shard].tolist():
            size = f * 2 // 3  # ~FLAC's size of speech: 2/3 of 16-bit
            ranges.append(SampleRange(at, at + 512, size, at + 512 + size + 1536, f))
            at = ranges[-1].end
        shards.append(ShardInfo(f"train-{len(shards):06d}.tar", "train", len(ranges), 0.0, at, "xxh3_128:0", ranges))
    return SplitTable(DatasetIndex(shards=shards, sample_rate=RATE), "train", "corpus"), np.arange(len(frames)) // speaker_run


def epoch_rows(table, recipe: CropRecipe, epoch: int = 0) -> tuple[np.ndarray, int]:
    """([steps, streams] the sample each row of each batch of `epoch` comes from, the ranged reads the
    epoch makes): the loader's deal and its shuffles inside each group, without reading audio."""
    from types import SimpleNamespace

    from pipeline.training.loader import StreamCrops, StreamSet, steps_per_epoch

    steps = steps_per_epoch(table, recipe)
    streams = StreamSet("", table, recipe, list(range(recipe.batch_size)), steps)
    reader = SimpleNamespace(bounds=streams.bounds)  # what StreamCrops reads of a reader before any read
    rows, reads = np.empty((steps, recipe.batch_size), np.int64), 0
    for v, blocks in enumerate(streams.epoch_streams(epoch)):
        stream, crops = StreamCrops(reader, recipe, epoch, v, blocks, streams.counts), []
        for g, group in enumerate(stream.groups):
            group = np.repeat(group, streams.counts[group])
            crops.append(group[stream.group_rng(g).permutation(len(group))])  # as group_crops orders them
            if sum(len(c) for c in crops) >= steps:
                break
        used = np.concatenate(crops)[:steps]
        rows[:, v] = used
        reads += len({stream.block_of[j] for j in used.tolist()})  # each block it reached, once
    return rows, reads


def mixing_and_requests(block_samples: int) -> dict:
    """A 150-hour corpus's epoch at batch 32 with one-second crops: distinct shards and speakers per
    batch, ranged GETs per audio-hour and their list-price dollars per epoch."""
    table, speakers = corpus_table()
    recipe = CropRecipe(BATCH, RATE, seed=0, block_samples=block_samples)
    rows, reads = epoch_rows(table, recipe)
    hours = rows.size / 3600  # one-second crops
    return {"shards_per_batch": round(float(np.mean([len(set(r)) for r in table.shard[rows].tolist()])), 2),
            "speakers_per_batch": round(float(np.mean([len(set(r)) for r in speakers[rows].tolist()])), 2),
            "requests_per_audio_hour": round(reads / hours, 1),
            "usd_requests_per_epoch_150h": round(reads * S3_GET_USD, 4)}


def gpu_demand() -> tuple[float, float]:
    """(GFLOP per audio-second of the base model's train step, audio-s/s an H100 at 30% MFU eats)."""
    from pipeline.codec.losses import generator_loss
    from pipeline.codec.model import Codec
    from pipeline.training.flops import count_flops

    cfg = load_config([REPO / "configs" / "base.yaml"], [])
    model = Codec(cfg.model)
    audio = torch.randn(2, 1, RATE) * 0.1
    flops, _ = count_flops(lambda: generator_loss(model(audio), audio, cfg).total.backward())
    per_second = flops / 2
    return per_second / 1e9, MFU * H100_BF16_PEAK / per_second


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=1200, help="10-second segments to build (40 a shard); "
                   "fewer make short epochs, where the crops left over at each epoch's end weigh more")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds each loader is timed")
    p.add_argument("--json", action="store_true", help="print the figures as JSON only")
    args = p.parse_args()
    say = (lambda *a: None) if args.json else print
    say(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        url = str(Path(tmp) / "data")
        build_dataset(url, args.samples)
        size = sum(s.bytes for s in load_index(url).shards) / 1e6
        say(f"data: {args.samples} x {SECONDS:.0f} s FLAC segments at {RATE} Hz, {size:.1f} MB")
        ceiling = decode_ceiling(url)
        say(f"bare FLAC decode (1 process):   {ceiling:8.0f} one-second crops/s")
        rates = {}
        for workers in (1, 2):
            total, rates[workers] = loader_rate(url, workers, args.seconds)
            say(f"CropLoader, {workers} worker(s):       {rates[workers]:8.0f} crops/s per core "
                f"({rates[workers] / ceiling:.2f} of the decode ceiling; {total:.0f} crops/s in all)")
    blocks = {"before": mixing_and_requests(1), "after": mixing_and_requests(CropRecipe(1, 1, 0).block_samples)}
    for when, m in blocks.items():
        say(f"150 h corpus, batch 32, 1 s crops, {when:6} (block_samples {1 if when == 'before' else 32:2}): "
            f"{m['shards_per_batch']:.1f} shards and {m['speakers_per_batch']:.1f} speakers a batch, "
            f"{m['requests_per_audio_hour']:,.0f} GETs per audio-hour, ${m['usd_requests_per_epoch_150h']:.3f} of GETs an epoch")
    gflop, demand = gpu_demand()
    per_core = min(rates.values())
    say(f"base model: {gflop:.1f} GFLOP per audio-second (train step, generator); an H100 at "
        f"{MFU:.0%} MFU eats {demand:,.0f} audio-s/s = {demand / per_core:.1f} cores of this loader")
    result = {"crops_per_s_per_core": round(per_core, 1), "decode_ceiling_per_core": round(ceiling, 1),
              "gpu_demand_audio_s_per_s": round(demand, 1), "crops_per_s_per_core_1_worker": round(rates[1], 1),
              "crops_per_s_per_core_2_workers": round(rates[2], 1), "gflop_per_audio_s": round(gflop, 2),
              "cores_per_gpu": round(demand / per_core, 1),
              **{f"{key}_{when}": value for when, m in blocks.items() for key, value in m.items()}}
    print(json.dumps(result) if args.json else f"targets: >= 1000 crops/s per core "
          f"({'met' if per_core >= 1000 else 'NOT met'}), >= 0.5 of the decode ceiling "
          f"({'met' if per_core >= 0.5 * ceiling else 'NOT met'})")


if __name__ == "__main__":
    main()
