"""Training throughput of the tiny and base configs, measured side by side in one run.

    .venv/bin/python benchmarks/train_bench.py [--steps 3] [--warmup 1] [--max-minutes 3] [--threads N]

CPU: both configs train in this process (train.workers=0) through `build_state` + `train_step`
under `make_accelerator`, on one synthetic 16 kHz dataset written to a temporary folder, with
batches from `CropLoader` as `train` reads them (its workers from train.cpus_per_worker, 1 here: a
decode thread). Steps alternate between the two configs so that load from other work on the
machine falls on both alike; warm-up steps (k-means codebook init, allocator growth) are not timed.
Prints steps/s, audio-seconds/s and the share of step time spent waiting for the next batch per
config, and base/tiny.

GPU (only when torch sees one): configs/gpu.yaml in bf16, before and after the adversarial stage
starts: audio-seconds per GPU-second, peak memory and an MFU estimate (FLOPs of one step counted by
FlopCounterMode, over step time, over the GPU's dense bf16 peak). Batches are moved to the GPU
before timing, so a slow loader cannot hide in these figures.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import Config, load_config  # noqa: E402
from pipeline.training.loader import crop_loader  # noqa: E402
from pipeline.storage.shards import DatasetIndex, ShardWriter, encode_sample, write_index  # noqa: E402
from pipeline.storage.store import open_store  # noqa: E402
from pipeline.training.flops import count_flops  # noqa: E402
from pipeline.training.state import build_state, make_accelerator, State, unwrap  # noqa: E402
from pipeline.training.step import train_step  # noqa: E402

SAMPLE_RATE = 16000
CONFIGS = {"tiny": ["configs/base.yaml", "configs/tiny.yaml"], "base": ["configs/base.yaml"]}
GPU_CONFIG = ["configs/base.yaml", "configs/gpu.yaml"]

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, matched on the name
# torch reports; the first match wins, so the more specific names come first.
BF16_PEAK_FLOPS = [("H100 NVL", 835e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12),
                   ("GH200", 989e12), ("B200", 2250e12), ("A100", 312e12), ("L40S", 362e12),
                   ("L4", 121e12), ("A10G", 70e12), ("A10", 125e12), ("RTX 4090", 165e12),
                   ("RTX 3090", 71e12)]


def write_dataset(url: str, n_samples: int, seconds: float, shard_size: int = 16) -> None:
    """A train split of harmonic tones in noise (speech-like level), `shard_size` samples a shard."""
    store, rng = open_store(url), np.random.default_rng(0)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    infos = []
    for shard, start in enumerate(range(0, n_samples, shard_size)):
        with ShardWriter(store, "train", shard) as w:
            for n in range(start, min(start + shard_size, n_samples)):
                f0 = rng.uniform(90, 260)
                tone = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3)) / k for k in range(1, 8))
                audio = 0.1 * tone * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(len(t))
                w.add(encode_sample(f"s{n:04d}", audio.astype(np.float32), SAMPLE_RATE, {}))
        infos.append(w.info)
    write_index(store, DatasetIndex(shards=infos, sample_rate=SAMPLE_RATE))


@dataclass
class Bench:
    """One config being timed: its state, its batch stream and its step times."""
    name: str
    cfg: Config
    accel: object
    state: State
    batches: object
    times: list[float] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)
    """Seconds of each timed step spent waiting for the next batch."""

    @property
    def params(self) -> int:
        return sum(p.numel() for p in unwrap(self.accel, self.state.model).parameters())

    @property
    def audio_s_per_step(self) -> float:
        return self.cfg.train.batch_size * self.cfg.train.segment_seconds

    def step(self, sync=lambda: None) -> float:
        """One loop iteration as `train` runs it (next batch, to device, train_step); its seconds."""
        t = time.perf_counter()
        _, batch = next(self.batches)
        self.waits.append(time.perf_counter() - t)
        train_step(self.state, batch.to(self.accel.device), self.accel, self.cfg)
        self.state.step += 1
        sync()
        return time.perf_counter() - t


def open_bench(name: str, files: list[str], url: str) -> Bench:
    cfg = load_config(files, [f"data.url={url}", "train.workers=0"])
    accel = make_accelerator(cfg)
    state = build_state(cfg, accel)
    loader = crop_loader(cfg)
    return Bench(name, cfg, accel, state, iter(loader.batches(0)))


def machine_report() -> None:
    load, threads = os.getloadavg(), torch.get_num_threads()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} with {threads} CPU thread(s), python {platform.python_version()}")
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if load[0] > 1.5:
        print(f"NOTE: figures are from a loaded {os.cpu_count()}-core machine (load > 1.5 at start): other work "
              "shared the cores, so absolute figures are low")
        if threads > 1:
            print("      and, with more than one torch thread, each op waits for descheduled threads: step "
                  "times vary several-fold\n      between runs (small ops most, so base/tiny too); --threads 1 "
                  "gives steadier figures")


def run_cpu(url: str, args) -> None:
    benches = [open_bench(name, files, url) for name, files in CONFIGS.items()]
    started = time.monotonic()
    for _ in range(args.warmup):
        for b in benches:
            b.step()
    for b in benches:
        b.waits = []
    for i in range(args.steps):  # alternate, so both see the same background load
        if i > 0 and time.monotonic() - started > args.max_minutes * 60:
            print(f"(stopped after {i} timed steps per config: --max-minutes {args.max_minutes} reached)")
            break
        for b in benches:
            b.times.append(b.step())
    print(f"CPU, fp32, in-process (train.workers=0); {args.warmup} warm-up step(s) not timed, "
          f"{len(benches[0].times)} timed per config, interleaved; median step time")
    print(f"{'config':8} {'params':>8} {'batch':>6} {'segment s':>10} {'s/step':>8} {'min-max':>11} "
          f"{'steps/s':>9} {'audio s/s':>10} {'data wait':>10}")
    rates = {}
    for b in benches:
        dt = statistics.median(b.times)
        rates[b.name] = (1 / dt, b.audio_s_per_step / dt)
        print(f"{b.name:8} {b.params / 1e6:7.2f}M {b.cfg.train.batch_size:6d} {b.cfg.train.segment_seconds:10.2f} "
              f"{dt:8.2f} {f'{min(b.times):.2f}-{max(b.times):.2f}':>11} {1 / dt:9.3f} "
              f"{b.audio_s_per_step / dt:10.2f} {sum(b.waits) / sum(b.times):10.1%}")
    (tiny_steps, tiny_audio), (base_steps, base_audio) = rates["tiny"], rates["base"]
    print(f"{'base/tiny':8} {benches[1].params / benches[0].params:7.1f}x {'':6} {'':10} {'':8} {'':11} "
          f"{base_steps / tiny_steps:8.3f}x {base_audio / tiny_audio:9.3f}x")


def bf16_peak(name: str) -> float | None:
    return next((peak for key, peak in BF16_PEAK_FLOPS if key in name), None)


def run_gpu(url: str, args) -> None:
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # the CPU runs set it up for cpu=True
    name = torch.cuda.get_device_name()
    peak = bf16_peak(name)
    b = open_bench("gpu", GPU_CONFIG, url)
    # A few batches kept on the GPU and cycled: the figure is the GPU's, not the FLAC decoder's.
    b.batches = itertools.cycle([(i, next(b.batches)[1].to(b.accel.device)) for i in range(4)])
    print(f"\nGPU: {name}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB; "
          f"dense bf16 peak {'%.0f TFLOP/s' % (peak / 1e12) if peak else 'unknown (no MFU)'}")
    print(f"configs/gpu.yaml: batch {b.cfg.train.batch_size} x {b.cfg.train.segment_seconds} s, "
          f"mixed precision {b.accel.mixed_precision}, {b.params / 1e6:.2f}M generator params; "
          f"{args.gpu_warmup} warm-up + {args.gpu_steps} timed steps per phase, batches already on the GPU")
    print(f"{'phase':28} {'steps/s':>8} {'audio s/GPU s':>14} {'peak GiB':>9} {'GFLOP/step':>11} "
          f"{'TFLOP/s':>8} {'MFU':>6}")
    phases = [("reconstruction (< adv start)", 0)]
    if b.cfg.loss.adversarial:
        phases.append(("adversarial (>= adv start)", b.cfg.loss.adv_start_step))
    for label, first_step in phases:
        b.state.step, b.times = first_step, []
        for _ in range(args.gpu_warmup):
            b.step(torch.cuda.synchronize)
        torch.cuda.reset_peak_memory_stats()
        b.times = [b.step(torch.cuda.synchronize) for _ in range(args.gpu_steps)]  # (waits: none, batches cycled)
        peak_mem = torch.cuda.max_memory_allocated() / 2**30
        # a separate step (the counter slows it down), eager (count_flops: gpu.yaml compiles its parts)
        flops, _ = count_flops(lambda: b.step(torch.cuda.synchronize))
        dt = statistics.median(b.times)
        achieved = flops / dt
        mfu = f"{100 * achieved / peak:5.1f}%" if peak else "   n/a"
        print(f"{label:28} {1 / dt:8.2f} {b.audio_s_per_step / dt:14.1f} {peak_mem:9.2f} "
              f"{flops / 1e9:11.1f} {achieved / 1e12:8.1f} {mfu:>6}")
    print("FLOPs: matmul/conv ops as FlopCounterMode counts them (FFTs of the spectral losses and the "
          "STFT discriminator are not counted), forward + backward of one step")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3, help="timed CPU steps per config")
    ap.add_argument("--warmup", type=int, default=1, help="untimed CPU steps per config first")
    ap.add_argument("--max-minutes", type=float, default=3.0, help="stop timing CPU steps after this")
    ap.add_argument("--gpu-steps", type=int, default=20)
    ap.add_argument("--gpu-warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--skip-cpu", action="store_true", help="GPU part only")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.chdir(Path(__file__).resolve().parent.parent)  # config paths are relative to the repo
    machine_report()
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(tmp, n_samples=256, seconds=1.25)  # longer than every config's segment
        if not args.skip_cpu:
            run_cpu(tmp, args)
        if torch.cuda.is_available():
            run_gpu(tmp, args)
        else:
            print("no GPU: GPU throughput, peak memory and MFU for configs/gpu.yaml skipped")


if __name__ == "__main__":
    main()
