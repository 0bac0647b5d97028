"""What train.micro_batch buys: a step's peak memory and time with its rows in 1, 2 or 4 passes.

    .venv/bin/python benchmarks/micro_batch_bench.py [--config base] [--rows 16] [--seconds 1.0] [--adversarial]

A worker of a shrunk elastic run holds more rows than at full size (4 of 8 workers: twice as many);
train.micro_batch keeps each pass through the model at the full size's rows. Each case runs in a
fresh process (so peak memory is its own): build the config's codec (and discriminator, with
--adversarial, its stage from step 0), take two steps on the same random batch of `rows` crops
(the first initialises the codebooks by k-means), and report the second step's peak memory above
what the process held before it (CPU: peak RSS, reset through /proc/self/clear_refs; GPU: torch's
peak allocation) and its time.
Printed side by side with the ratios to one pass.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def one_case(config: str, rows: int, seconds: float, micro: int, adversarial: bool) -> dict:
    import torch

    from pipeline.config import load_config
    from pipeline.training.state import build_state, make_accelerator
    from pipeline.training.step import train_step

    overrides = ["train.workers=0", f"train.batch_size={rows}", f"train.segment_seconds={seconds}",
                 f"train.micro_batch={micro}", "tracking.enabled=false"]
    if adversarial:
        overrides += ["loss.adversarial=true", "loss.adv_start_step=0"]
    cfg = load_config([config], overrides)
    accel = make_accelerator(cfg)
    state = build_state(cfg, accel)
    gpu = accel.device.type == "cuda"
    batch = 0.1 * torch.randn(rows, 1, int(seconds * cfg.model.sample_rate), generator=torch.Generator().manual_seed(0))
    batch = batch.to(accel.device)
    train_step(state, batch, accel, cfg)  # k-means init and the optimizer's moments: not measured
    state.step += 1
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = reset_peak_rss()
    start = time.perf_counter()
    metrics = train_step(state, batch, accel, cfg)
    loss = float(metrics["loss/total"])
    if gpu:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = status_kb("VmHWM") * 1024 - base
    return {"micro": micro, "passes": -(-rows // micro), "peak_mb": peak / 2**20,
            "step_s": time.perf_counter() - start, "loss": loss, "device": accel.device.type}


def status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> int:
    """Reset this process's peak RSS (VmHWM) to its current RSS; returns that, in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return status_kb("VmRSS") * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="base")
    ap.add_argument("--rows", type=int, default=16, help="rows this worker holds")
    ap.add_argument("--seconds", type=float, default=1.0, help="crop length")
    ap.add_argument("--adversarial", action="store_true", help="with the discriminator's stage")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process: one case, JSON out
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_case(args.config, args.rows, args.seconds, args.one, args.adversarial)))
        return
    micros = sorted({args.rows, max(1, args.rows // 2), max(1, args.rows // 4)}, reverse=True)
    rows = []
    for micro in micros:
        cmd = [sys.executable, __file__, "--config", args.config, "--rows", str(args.rows),
               "--seconds", str(args.seconds), "--one", str(micro)] + (["--adversarial"] if args.adversarial else [])
        # Large blocks from mmap, given back on free: the process's RSS then follows what torch
        # holds, instead of glibc keeping the first step's freed memory for the second.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"machine: {platform.processor() or platform.machine()}, {platform.system()}, device {rows[0]['device']}; "
          f"config {args.config}, {args.rows} rows x {args.seconds:g} s, adversarial {args.adversarial}")
    print("| micro_batch | passes | peak MB above the model | x one pass | step s | x one pass | loss |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    whole = rows[0]
    for r in rows:
        print(f"| {r['micro']} | {r['passes']} | {r['peak_mb']:.0f} | {r['peak_mb'] / whole['peak_mb']:.2f} | "
              f"{r['step_s']:.2f} | {r['step_s'] / whole['step_s']:.2f} | {r['loss']:.4f} |")


if __name__ == "__main__":
    main()
