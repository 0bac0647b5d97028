"""One GPU check under a hard time budget: data prep, bf16 training rates, MFU, memory, checkpoints, val.

    .venv/bin/python benchmarks/gpu_check.py [--minutes 6] [--config gpu] [key=value ...] [--out DIR] [--json]
                                             [--speech-minutes 10] [--adv-at 0.5] [--threads N]

1. Data: a synthetic Telugu TTS corpus (data_prep.corpus: espeak-ng / festival) prepped into shards
   (data_prep.prep.run_prep), each timed. With no working Telugu voice it says so loudly and falls
   back to train_bench's harmonic tones (train split only, evaluated on train).
2. Training in this process (train.workers=0, no tracking) with build_state + train_step under
   make_accelerator, batches from CropLoader as `train` reads them, until the budget less a reserve
   for steps 3-4 (sized from the step-0 val time and the checkpoint's size). Per step: seconds
   waiting for the loader's next batch (and its copy to the device) vs seconds in train_step, with
   the GPU synchronized before each clock read. Per phase (reconstruction, adversarial): steps/s,
   audio-s/s, peak memory (torch.cuda.max_memory_allocated; process max RSS on CPU) and MFU = the
   FLOPs of one step counted once by torch.utils.flop_counter.FlopCounterMode, over the mean
   train_step time, over the GPU's dense bf16 peak (train_bench.BF16_PEAK_FLOPS). The first
   WARMUP_STEPS steps of each phase (k-means init, cuDNN autotuning, allocator growth) and the
   counted step are not timed.
   Adversarial stage: gpu.yaml trains adversarially from step 0 (as DAC does), so a GPU check
   measures that phase only. A config that starts it later (say at step 2000, which a few minutes
   may not reach) gets it switched on at the step reached after --adv-at (0.5) of the training
   time, so both phases are measured; loss.adv_start_step=N on the command line (or --adv-at 1) keeps the
   config's step, and the report says whether it was reached.
3. Checkpoint save then restore seconds (save_checkpoint / load_checkpoint into the live state, as
   a resume does) to run/ under the output folder.
4. Val metrics (pipeline.training.loop.evaluate; PESQ-WB and STOI from pipeline.codec.metrics where evaluate
   does not give them) at step 0 and at the end.

The budget counts from the script's start and is enforced: at --minutes a timer stops whatever is
running and the report printed says so, with what was measured (exit status 1). The default (6
minutes on a GPU) keeps the whole run under 8 minutes on one H100/H200.
Without CUDA it is a CPU DRY RUN: configs base + tiny, fp32, adversarial on (so both phases run)
with model.disc_channels=8 (base's discriminator is 41M parameters, too slow for a CPU), 1.5
minutes, MFU n/a; it checks the script, not a GPU.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()  # the budget counts from here, before the slow imports

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import dataclass, field, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_bench puts the repo root on the path

from train_bench import bf16_peak, machine_report, write_dataset  # noqa: E402

from data_prep.corpus import CorpusError, synthesize_corpus  # noqa: E402
from data_prep.prep import run_prep  # noqa: E402
from pipeline.runs.checkpoints import Checkpoints  # noqa: E402
from pipeline.config import Config, load_config  # noqa: E402
from pipeline.training.loader import crop_loader  # noqa: E402
from pipeline.evaluation.clips import load_eval_clips  # noqa: E402
from pipeline.evaluation.scorer import evaluate_model  # noqa: E402
from pipeline.codec.losses import adversarial_active  # noqa: E402
from pipeline.codec.metrics import mean_score, pesq_wb, stoi  # noqa: E402
from pipeline.storage.shards import load_index  # noqa: E402
from pipeline.training.flops import count_flops  # noqa: E402
from pipeline.training.state import State, build_state, load_checkpoint, make_accelerator, save_checkpoint, unwrap  # noqa: E402
from pipeline.training.step import train_step  # noqa: E402

CUDA = torch.cuda.is_available()
MODE = "gpu" if CUDA else "cpu"
DEFAULT_MINUTES = {"gpu": 6.0, "cpu": 1.5}
DEFAULT_CONFIG = {"gpu": "gpu", "cpu": "tiny"}
SPEECH_MINUTES = {"gpu": 10.0, "cpu": 2.0}
"""Speech synthesized for the dataset (espeak-ng makes a minute in about a second)."""
WARMUP_STEPS = 3
"""Untimed steps at the start of each phase."""
CHECKPOINT_MB_PER_S = 100.0
"""A pessimistic write (and read) rate, to size the checkpoint's share of the reserve."""
VAL_KEYS = ("val/snr", "val/si_sdr", "val/mel_distance", "val/pesq", "val/stoi", "val/range_ratio",
            "val/bitrate", "val/clips")


class BudgetExceeded(Exception):
    """The hard time budget ran out."""


def seconds_left(budget_s: float) -> float:
    return budget_s - (time.monotonic() - STARTED)


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------ 1. data
def prepare_data(out: Path, speech_minutes: float, cfg: Config) -> dict:
    """A synthetic-corpus dataset under `out` (tones if no TTS voice works); what was made and how long."""
    t = time.perf_counter()
    try:
        corpus = synthesize_corpus(out / "corpus", minutes=speech_minutes, seed=cfg.train.seed)
    except CorpusError as error:
        print(f"\n!!! NO TELUGU TTS VOICE WORKS ({error}).\n!!! FALLING BACK to train_bench's synthetic "
              "harmonic tones: not speech, train split only, evaluated on train; val PESQ means little.\n")
        url = str(out / "tones")
        seconds = max(cfg.train.eval_seconds, 2 * cfg.train.segment_seconds)
        write_dataset(url, n_samples=max(64, 4 * cfg.train.batch_size), seconds=seconds)
        return {"source": "harmonic tones (fallback: no TTS voice)", "url": url, "eval_split": "train",
                "synth_s": time.perf_counter() - t, "prep_s": 0.0, "splits": load_index(url).splits}
    synth_s = time.perf_counter() - t
    for line in corpus.broken:
        print(f"warning: {line}")
    url = str(out / "data")
    t = time.perf_counter()
    summary = run_prep([str(corpus.manifest)], url, cfg.prep, overwrite=True, progress=False)
    prep_s = time.perf_counter() - t
    # A speaker never straddles splits, so a small corpus may leave val empty: evaluate on what exists.
    eval_split = next(s for s in ("val", "test", "train") if summary.splits.get(s, {}).get("samples"))
    return {"source": f"synthetic Telugu TTS corpus: {corpus.files} files, {corpus.seconds / 60:.1f} min "
                      f"from {len(corpus.speakers)} voices", "url": url, "eval_split": eval_split,
            "synth_s": synth_s, "prep_s": prep_s, "splits": summary.splits}


def existing_data(url: str) -> dict:
    """A dataset prepped elsewhere (--data), as prepare_data describes what it made."""
    splits = load_index(url).splits
    eval_split = next(s for s in ("val", "test", "train") if splits.get(s, {}).get("samples"))
    return {"source": f"prepped elsewhere ({url})", "url": url, "eval_split": eval_split,
            "synth_s": 0.0, "prep_s": 0.0, "splits": splits}


def print_data(data: dict) -> None:
    splits = ", ".join(f"{split} {t['samples']} ({t['seconds'] / 60:.1f} min)" for split, t in data["splits"].items())
    print(f"data: {data['source']}; synthesized in {data['synth_s']:.1f} s, prepped in {data['prep_s']:.1f} s; "
          f"samples: {splits}; evaluated on {data['eval_split']}"
          + (f"; loader: {data['loader_workers']} worker processes, {data['steps_per_epoch']} steps an epoch"
             if "steps_per_epoch" in data else ""))


# ------------------------------------------------------------------------------ 2. training
@dataclass
class Phase:
    """One training phase's per-step clocks; the first WARMUP_STEPS and the FLOP-counted step untimed."""
    name: str
    first_step: int
    waits: list[float] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)
    seen: int = 0
    first_s: float | None = None
    """The phase's first step: where torch.compile compiles and cuDNN autotunes."""
    flops: float | None = None
    peak_gib: float | None = None
    losses: list[float] = field(default_factory=list)

    def summary(self, audio_s_per_step: float, peak_flops: float | None) -> dict:
        n, wait, busy = len(self.steps), sum(self.waits), sum(self.steps)
        row = {"phase": self.name, "first_step": self.first_step, "steps_run": self.seen, "steps_timed": n,
               "first_step_s": self.first_s,
               "peak_mem_gib": self.peak_gib, "gflop_per_step": self.flops / 1e9 if self.flops else None,
               "loss_first": self.losses[0] if self.losses else None,
               "loss_last": statistics.mean(self.losses[-10:]) if self.losses else None}
        if n == 0:
            return row
        step_s = busy / n
        achieved = self.flops / step_s if self.flops else None
        row.update({"steps_per_s": n / (wait + busy), "audio_s_per_s": n * audio_s_per_step / (wait + busy),
                    "step_ms_mean": 1e3 * step_s, "step_ms_median": 1e3 * statistics.median(self.steps),
                    "loader_wait_ms_mean": 1e3 * wait / n, "loader_share": wait / (wait + busy),
                    "steps_per_s_without_loader": 1 / step_s,
                    "tflops_achieved": achieved / 1e12 if achieved else None,
                    "mfu": achieved / peak_flops if achieved and peak_flops else None})
        return row


def peak_memory_gib(reset: bool = False) -> float:
    """GPU: max allocated since the last reset; CPU: the process's max RSS (never resets)."""
    if not CUDA:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    peak = torch.cuda.max_memory_allocated() / 2**30
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return peak


def with_adv_start(cfg: Config, step: int) -> Config:
    return dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, adv_start_step=step))


def train_until(state: State, accel, cfg: Config, batches, deadline: float, switch_at: float | None,
                phases: list[Phase]) -> Config:
    """Train until `deadline` (monotonic), appending to `phases` as it goes; the adversarial stage
    from `switch_at` on if it has not started by then. Returns the config as it ended (its
    adv_start_step moved if the switch came first)."""
    while time.monotonic() < deadline:
        adv = state.disc is not None and adversarial_active(cfg.loss, state.step)
        if not adv and switch_at is not None and time.monotonic() >= switch_at:
            cfg, switch_at = with_adv_start(cfg, state.step), None
            print(f"step {state.step}: adversarial stage switched on here (loss.adv_start_step={state.step})")
            continue
        name = "adversarial" if adv else "reconstruction"
        if not phases or phases[-1].name != name:
            if phases:
                phases[-1].peak_gib = peak_memory_gib(reset=True)
            phases.append(Phase(name, state.step))
        phase = phases[-1]
        count = phase.seen == WARMUP_STEPS and phase.flops is None
        t0 = time.perf_counter()
        _, batch = next(batches)
        batch = batch.to(accel.device)
        sync()
        t1 = time.perf_counter()
        if count:  # run eager under the counter (count_flops: a compiled part must stay compiled)
            phase.flops, metrics = count_flops(lambda: train_step(state, batch, accel, cfg))
        else:
            metrics = train_step(state, batch, accel, cfg)
        sync()
        t2 = time.perf_counter()
        state.step += 1
        phase.seen += 1
        if phase.seen == 1:
            phase.first_s = t2 - t1
        phase.losses.append(float(metrics["loss/total"]))
        if not count and phase.seen > WARMUP_STEPS:
            phase.waits.append(t1 - t0)
            phase.steps.append(t2 - t1)
    return cfg


# ------------------------------------------------------------------------------ 3. checkpoint
def checkpoint_bytes_estimate(state: State) -> float:
    """Weights plus two AdamW moments of the codec and the discriminator, in fp32."""
    return sum(12 * p.numel() for m in (state.model, state.disc) if m is not None for p in m.parameters())


def checkpoint_round_trip(state: State, accel, cfg: Config, run_dir: Path) -> dict:
    """Seconds to save the full training state and to load it back into the live state."""
    ckpts = Checkpoints(str(run_dir))
    sync()
    t = time.perf_counter()
    save_checkpoint(state, accel, cfg, ckpts, {})
    save_s = time.perf_counter() - t
    step = state.step
    t = time.perf_counter()
    load_checkpoint(state, accel, ckpts, step)
    sync()
    restore_s = time.perf_counter() - t
    if state.step != step:
        raise RuntimeError(f"restored step {state.step}, saved {step}")
    parts = ckpts.manifest(step)["parts"]
    return {"step": step, "save_s": save_s, "restore_s": restore_s,
            "mb": sum(p["bytes"] for p in parts.values()) / 1e6, "parts": sorted(parts)}


# ------------------------------------------------------------------------------ 4. val
def validate(model, clips: list, cfg: Config, device) -> dict:
    """evaluate_model()'s val metrics, plus PESQ-WB and STOI over the same clips where it gives none."""
    t = time.perf_counter()
    ev = dict(evaluate_model(model, clips, cfg.model.sample_rate))
    if "val/pesq" not in ev or "val/stoi" not in ev:
        refs, ests = [], []
        with torch.no_grad():
            for _, audio in clips:
                refs.append(audio)
                ests.append(model.reconstruct(audio).audio.float().cpu().numpy().reshape(-1)[:len(audio)])
        for key, metric in (("val/pesq", pesq_wb), ("val/stoi", stoi)):
            if key not in ev:
                scores = [s for r, e in zip(refs, ests) for s in metric(r, e, cfg.model.sample_rate)]
                ev[key] = mean_score(scores)
                ev[key + "/scored"] = sum(s.value is not None for s in scores)
                reasons = sorted({s.reason for s in scores if s.value is None})
                if reasons:
                    ev[key + "/why_not"] = reasons[0]
    ev["seconds"] = time.perf_counter() - t
    return ev


def val_line(label: str, ev: dict) -> str:
    shown = [k for k in VAL_KEYS if k in ev] + sorted(k for k in ev if k not in VAL_KEYS and k != "seconds"
                                                      and not k.startswith("val/perplexity/"))
    text = ", ".join(f"{k.removeprefix('val/')} {fmt(ev[k], '.4g') if not isinstance(ev[k], str) else ev[k]}"
                     for k in shown)
    return f"{label}: {text} ({ev['seconds']:.1f} s)"


# ------------------------------------------------------------------------------ the run
def load_check_config(args, run_dir: Path) -> tuple[list[str], Config]:
    """base + --config, then this script's settings, then the command line's key=value words."""
    files = ["base"] + ([args.config] if args.config != "base" else [])
    # Two of the corpus's 13 voices held out for val (0.05 holds out one: a handful of clips).
    ours = ["train.workers=0", "tracking.enabled=false", f"run.dir={run_dir}", f"train.use_gpu={CUDA}",
            "prep.val_fraction=0.15"]
    if not CUDA:  # the dry run walks both phases as the GPU run does, in fp32, with a CPU-sized discriminator
        ours += ["train.mixed_precision='no'", "loss.adversarial=true", "model.disc_channels=8"]
    return files, load_config(files, ours + args.overrides)


def adv_switch_time(args, cfg: Config, now: float, deadline: float) -> float | None:
    """When the adversarial stage is switched on (monotonic), or None to keep the config's step."""
    chosen = any(o.startswith("loss.adv_start_step=") for o in args.overrides)
    if not cfg.loss.adversarial or args.adv_at >= 1 or chosen:
        return None
    return now + args.adv_at * (deadline - now)


def run_check(args, out: Path, report: dict) -> None:
    """Steps 1-4, filling `report` as they go (so a budget stop can still print what was measured)."""
    files, cfg = load_check_config(args, out / "run")
    report["config"] = {"files": files,
                        "overrides": args.overrides, "batch_size": cfg.train.batch_size,
                        "segment_seconds": cfg.train.segment_seconds, "adv_start_step": cfg.loss.adv_start_step,
                        "adversarial": cfg.loss.adversarial}
    report["stage"] = "data prep"
    data = report["data"] = existing_data(args.data) if args.data else prepare_data(out, args.speech_minutes, cfg)
    print_data(data)
    if args.prepare_only:
        report["stage"] = "done"
        return
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, url=data["url"]))

    report["stage"] = "model build and step-0 val"
    accel = make_accelerator(cfg)
    state = build_state(cfg, accel)
    report["config"]["mixed_precision"] = accel.mixed_precision
    report["config"]["params_m"] = {name: sum(p.numel() for p in m.parameters()) / 1e6
                                    for name, m in (("codec", state.model), ("disc", state.disc)) if m is not None}
    print_config(report["config"])
    clips = load_eval_clips(data["url"], data["eval_split"], cfg.train.eval_clips, cfg.train.eval_seconds,
                            cfg.model.sample_rate)
    report["val_start"] = validate(unwrap(accel, state.model), clips, cfg, accel.device)
    print(val_line("val at step 0", report["val_start"]))

    report["stage"] = "training"
    cfg = timed_training(args, cfg, state, accel, data["url"], report)

    report["stage"] = "checkpoint"
    report["checkpoint"] = checkpoint_round_trip(state, accel, cfg, out / "run")
    report["stage"] = "final val"
    report["val_end"] = validate(unwrap(accel, state.model), clips, cfg, accel.device)
    report["val_end"]["step"] = state.step
    report["stage"] = "done"


def timed_training(args, cfg: Config, state: State, accel, url: str, report: dict) -> Config:
    """Step 2: train until the budget less a reserve for checkpoint and val; the phases' figures
    and the adversarial stage's story into `report`. Returns the config as training ended."""
    reserve = (1.5 * report["val_start"]["seconds"] + 2 * checkpoint_bytes_estimate(state) / 1e6 / CHECKPOINT_MB_PER_S
               + 5 + 0.05 * args.minutes * 60)
    now = time.monotonic()
    deadline = STARTED + args.minutes * 60 - reserve
    switch_at = adv_switch_time(args, cfg, now, deadline)
    print(f"training for {max(deadline - now, 0):.0f} s (keeping {reserve:.0f} s for checkpoint and val)"
          + (f"; adversarial stage from {args.adv_at:.0%} of that" if switch_at else ""), flush=True)
    if deadline - now < 30:
        print(f"!!! only {max(deadline - now, 0):.0f} s left to train: raise --minutes for figures worth reading")
    loader = crop_loader(replace(cfg, data=replace(cfg.data, url=url)), pin_memory=CUDA)
    report["data"]["steps_per_epoch"], report["data"]["loader_workers"] = loader.steps_per_epoch, loader.workers
    print(f"loader: {loader.workers} worker processes, {loader.steps_per_epoch} steps an epoch", flush=True)
    batches = loader.batches(0)
    peak_memory_gib(reset=True)
    peak = bf16_peak(torch.cuda.get_device_name()) if CUDA else None
    phases: list[Phase] = []
    try:
        cfg = train_until(state, accel, cfg, batches, deadline, switch_at, phases)
    finally:  # a budget stop still reports the steps it timed
        batches.close()  # stops the loader's thread
        if phases and phases[-1].peak_gib is None:
            phases[-1].peak_gib = peak_memory_gib()
        report["phases"] = [p.summary(cfg.train.batch_size * cfg.train.segment_seconds, peak) for p in phases]
    report["adversarial"] = adversarial_note(report["config"]["adv_start_step"], cfg, state, phases)
    return cfg


def adversarial_note(config_step: int, cfg: Config, state: State, phases: list[Phase]) -> str:
    """Whether the adversarial stage ran, from which step, and who chose it."""
    if not phases:
        return "no training step ran: the budget left no time for it (raise --minutes)"
    if not cfg.loss.adversarial:
        return "off (loss.adversarial=false)"
    if not any(p.name == "adversarial" for p in phases):
        return f"NOT REACHED: loss.adv_start_step={config_step}, training ended at step {state.step}"
    if cfg.loss.adv_start_step != config_step:
        return (f"switched on by this check at step {cfg.loss.adv_start_step} (--adv-at; the config's "
                f"loss.adv_start_step is {config_step})")
    return f"on from step {config_step} (the config's loss.adv_start_step)"


# ------------------------------------------------------------------------------ the report
def print_machine(report: dict) -> None:
    machine_report()
    if not CUDA:
        print("\n" + "!" * 100 + "\n!!! CPU DRY RUN: torch sees no CUDA device. Config base + tiny in fp32, "
              "adversarial on, disc_channels 8; MFU n/a.\n!!! These figures check that the script runs; they "
              "say nothing about a GPU.\n" + "!" * 100)
        return
    name = torch.cuda.get_device_name()
    peak = bf16_peak(name)
    report["machine"].update({"gpu": name, "gpu_gib": torch.cuda.get_device_properties(0).total_memory / 2**30,
                              "bf16_peak_tflops": peak / 1e12 if peak else None, "cuda": torch.version.cuda})
    print(f"GPU: {name}, {report['machine']['gpu_gib']:.0f} GiB, CUDA {torch.version.cuda}; dense bf16 peak "
          f"{'%.0f TFLOP/s' % (peak / 1e12) if peak else 'unknown (not in train_bench.BF16_PEAK_FLOPS: no MFU)'}")


def print_config(c: dict) -> None:
    params = ", ".join(f"{k} {v:.2f}M" for k, v in c.get("params_m", {}).items())
    print(f"config: {' + '.join(c['files'])} {' '.join(c['overrides'])}; batch {c['batch_size']} x "
          f"{c['segment_seconds']} s, mixed precision {c.get('mixed_precision', 'n/a')}, params {params}", flush=True)


def fmt(value, spec: str, missing: str = "n/a") -> str:
    return missing if value is None else format(value, spec)


def print_phases(phases: list[dict]) -> None:
    print(f"{'phase':15} {'from':>6} {'timed':>6} {'steps/s':>8} {'audio s/s':>10} {'step ms':>8} "
          f"{'loader ms':>10} {'loader':>9} {'peak GiB':>9} {'GFLOP/step':>11} {'TFLOP/s':>8} {'MFU':>6} {'1st step s':>10}")
    for p in phases:
        print(f"{p['phase']:15} {p['first_step']:6d} {p['steps_timed']:6d} {fmt(p.get('steps_per_s'), '8.2f'):>8} "
              f"{fmt(p.get('audio_s_per_s'), '10.1f'):>10} {fmt(p.get('step_ms_mean'), '8.1f'):>8} "
              f"{fmt(p.get('loader_wait_ms_mean'), '10.1f'):>10} "
              f"{fmt(p.get('loader_share'), '.1%'):>9} {fmt(p['peak_mem_gib'], '9.2f'):>9} "
              f"{fmt(p['gflop_per_step'], '11.1f'):>11} {fmt(p.get('tflops_achieved'), '8.2f'):>8} "
              f"{fmt(p.get('mfu'), '.1%'):>6} {fmt(p.get('first_step_s'), '10.1f'):>10}")
    memory = "torch.cuda.max_memory_allocated per phase" if CUDA else "process max RSS"
    print(f"steps/s and audio s/s include the loader wait; 'step ms' is train_step alone"
          f"{' (the GPU synchronized before each clock read)' if CUDA else ''}. "
          f"The first {WARMUP_STEPS} steps of a phase and its FLOP-counted step are not timed; '1st step s' is "
          "the phase's first train_step (compiling, with train.compile, and autotuning). FLOPs: "
          "FlopCounterMode's matmul/conv count of one step, forward + backward (FFTs of the spectral losses "
          f"and STFT discriminator not counted). Peak memory: {memory}.")


def print_report(report: dict) -> None:
    print("\n" + "=" * 40 + f" telucodec GPU check ({'GPU' if CUDA else 'CPU DRY RUN'}) " + "=" * 40)
    m = report["machine"]
    print(f"machine: {m.get('gpu', 'no GPU')}, {m['cpus']} CPU cores; torch {m['torch']}")
    if "config" in report:
        print_config(report["config"])
    if "data" in report:
        print_data(report["data"])
    if "val_start" in report:
        print(val_line("val at step 0", report["val_start"]))
    if report.get("phases"):
        print_phases(report["phases"])
    if "adversarial" in report:
        print(f"adversarial stage: {report['adversarial']}")
    if "checkpoint" in report:
        c = report["checkpoint"]
        print(f"checkpoint at step {c['step']}: {c['mb']:.1f} MB ({', '.join(c['parts'])}), save {c['save_s']:.2f} s, "
              f"restore {c['restore_s']:.2f} s")
    if "val_end" in report:
        print(val_line(f"val at step {report['val_end']['step']}", report["val_end"]))
    if report["stage"] != "done":
        print(f"!!! STOPPED during {report['stage']}: {report.get('stopped', 'error')}")
    print(f"total wall {report['wall_s']:.1f} s of a {report['budget_s']:.0f} s budget"
          + ("  (CPU DRY RUN: MFU n/a, rates are not a GPU's)" if not CUDA else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, applied last")
    ap.add_argument("--minutes", type=float, default=DEFAULT_MINUTES[MODE],
                    help=f"hard budget for the whole script (default {DEFAULT_MINUTES[MODE]} here)")
    ap.add_argument("--config", default=DEFAULT_CONFIG[MODE], help="shipped config layered on base "
                    f"(default {DEFAULT_CONFIG[MODE]} here)")
    ap.add_argument("--out", type=Path, help="keep corpus, shards, checkpoint and report.json here "
                    "(default: a temporary folder, removed after)")
    ap.add_argument("--speech-minutes", type=float, default=SPEECH_MINUTES[MODE], help="speech to synthesize")
    ap.add_argument("--data", help="train on this prepped dataset instead of synthesizing one (a "
                    "machine without espeak-ng/festival: see benchmarks/device_kit.sh)")
    ap.add_argument("--prepare-only", action="store_true", help="synthesize and prep the dataset under "
                    "--out, then stop")
    ap.add_argument("--adv-at", type=float, default=0.5, help="switch the adversarial stage on after this "
                    "fraction of the training time unless the config's step comes first (>= 1: never)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default; 1 is "
                    "steadier on a loaded CPU)")
    ap.add_argument("--json", action="store_true", help="also print the report as one JSON line, last")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.chdir(Path(__file__).resolve().parent.parent)
    report = {"mode": "gpu" if CUDA else "cpu dry run", "stage": "start", "budget_s": args.minutes * 60,
              "machine": {"cpus": os.cpu_count(), "torch": torch.__version__}}

    def out_of_time(*_):
        raise BudgetExceeded(f"the {args.minutes:g}-minute budget ran out")

    signal.signal(signal.SIGALRM, out_of_time)
    signal.setitimer(signal.ITIMER_REAL, max(seconds_left(args.minutes * 60), 0.01))
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    status = 0
    try:
        print_machine(report)
        run_check(args, out, report)
    except BudgetExceeded as stop:
        report["stopped"], status = str(stop), 1
    except BaseException as error:  # the partial report first, then the traceback
        report["stopped"] = f"{type(error).__name__}: {error}"
        report["wall_s"] = time.monotonic() - STARTED
        print_report(report)
        raise
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        report["wall_s"] = time.monotonic() - STARTED
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    print_report(report)
    if args.out is not None:
        (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    if args.json:
        print(json.dumps(report, default=str))
    return status


if __name__ == "__main__":
    sys.exit(main())
