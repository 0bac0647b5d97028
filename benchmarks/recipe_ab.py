"""Codec recipe v1 against v2, side by side: same data, same wall-clock budget, same machine.

    .venv/bin/python benchmarks/recipe_ab.py [--minutes 8] [--corpus-minutes 6] [--out recipe_ab_out]
        [--data PREPPED] [--recipe NAME=CONFIG[,CONFIG...][,key=value...] ...] [--json]

Synthesizes a Telugu corpus (espeak-ng / festival voices), preps it (speakers split into train /
val / test), then trains each recipe in this process (train.workers=0, torch on every core) for the
same wall-clock budget. The budget becomes a step count: each recipe first times a few steps on the
real batches, and its cosine schedule is stretched to the steps that fit (so every recipe ends its
schedule; budget.max_usd at $1 per worker-hour stops any that runs long). A recipe with
loss.adversarial=true is timed in both stages (before and after loss.adv_start_step) and gets
adv_start_step reconstruction steps plus the adversarial steps that fit in the rest of the budget.
The estimate can miss by 10-20%, so the table shows each recipe's actual training minutes. Each
final checkpoint is then scored on the held-out test speakers with `pipeline.evaluation.report.evaluate_checkpoint`, beside
Opus 6 kbps and Codec2 3.2 kbps on the same clips: PESQ-WB, STOI, mel distance, SI-SDR, SNR and the
measured bitrate.

The default recipes: v1 = tiny with configs v1.yaml (today's recipe before issue #15, and tiny's old
train.grad_clip of 20), v2 = tiny as shipped. Adversarial training is off in tiny, so this compares
the quantizer, the mel scales, the activation, the clip and the dropout, not the GAN terms; to
compare those too, add e.g. loss.adversarial=true,loss.adv_start_step=1200,model.disc_channels=8 to
both recipes (BENCHMARKS.md has the command).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_prep.corpus import synthesize_corpus  # noqa: E402
from data_prep.prep import run_prep  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.training.loader import crop_loader  # noqa: E402
from pipeline.evaluation.report import evaluate_checkpoint  # noqa: E402
from pipeline.training.loop import train  # noqa: E402
from pipeline.training.state import build_state, make_accelerator  # noqa: E402
from pipeline.training.step import train_step  # noqa: E402

DEFAULT_RECIPES = {"v1": ["tiny", "v1", "train.grad_clip=20"], "v2": ["tiny"]}
EVAL_CLIPS = 24
"""Test clips scored (up to 4 s each), the same for every recipe."""
TIMED_STEPS = 10
"""Steps timed (after 2 untimed: k-means init, allocator growth) to turn the budget into steps; their
median, so one slow step does not shift it."""


def parse_recipe(text: str) -> tuple[str, list[str]]:
    name, _, items = text.partition("=")
    return name, [i for i in items.split(",") if i]


def recipe_config(items: list[str], data: str, run_dir: Path, steps: int = 1000, minutes: float = 0.0):
    configs = ["base"] + [i for i in items if "=" not in i]
    overrides = [i for i in items if "=" in i]
    # batch 8: one process trains the rows one of the demo's two workers would (tiny's batch is global)
    return load_config(configs, ["train.batch_size=8"] + overrides + [
        f"data.url={data}", f"run.dir={run_dir}", "train.workers=0", "tracking.enabled=false",
        "train.eval_split=val", f"train.steps={steps}", f"train.eval_every={steps}",
        f"train.checkpoint_every={steps}", "cost.usd_per_hour=1.0", f"budget.max_usd={minutes / 60 * 1.5}",
        "preempt.endpoints.aws=''", "preempt.endpoints.gcp=''", "preempt.endpoints.azure=''", "train.progress_seconds=120"])


def seconds_per_step(cfg, at_steps: list[int]) -> list[float]:
    """Wall seconds of one train_step on this recipe's real batches from each of `at_steps` (past
    loss.adv_start_step a step also trains the discriminators): one model, one loader."""
    accel = make_accelerator(cfg)
    state = build_state(cfg, accel)
    batches = crop_loader(cfg).batches(0)
    medians = []
    for at_step in at_steps:
        state.step, times = at_step, []
        for i, (_, batch) in zip(range(TIMED_STEPS + 2), batches):
            started = time.perf_counter()
            train_step(state, batch, accel, cfg)
            state.step += 1
            if i >= 2:
                times.append(time.perf_counter() - started)
        medians.append(statistics.median(times))
    return medians


def run_recipe(name: str, items: list[str], data: str, out: Path, minutes: float) -> dict:
    """Time, train for the budget, score on the test split; the recipe's row."""
    probe = recipe_config(items, data, out / "probe")
    start = probe.loss.adv_start_step if probe.loss.adversarial else None
    per_step, *per_adv_step = seconds_per_step(probe, [0] if start is None else [0, start])
    steps = max(10, int(minutes * 60 / per_step))
    plan = f"{per_step * 1000:.0f} ms/step"
    if per_adv_step and start < steps:
        # two stages: reconstruction steps up to adv_start_step, then slower steps with the discriminators
        steps = start + max(10, int((minutes * 60 - start * per_step) / per_adv_step[0]))
        plan += f" to step {start}, then {per_adv_step[0] * 1000:.0f} ms/step with the discriminators"
    run_dir = out / f"run-{name}"
    cfg = recipe_config(items, data, run_dir, steps, minutes)
    print(f"{name}: {plan} -> {steps} steps in {minutes:g} min", flush=True)
    started = time.perf_counter()
    result = train(cfg)
    trained = time.perf_counter() - started
    report = evaluate_checkpoint(str(run_dir), data, "test", EVAL_CLIPS, 4.0, out / f"eval-{name}", n_spectrograms=2)
    return {"name": name, "items": items, "ms_per_step": per_step * 1000, "steps": result.step,
            "train_minutes": trained / 60, "status": result.status, "bitrate": cfg.model.bitrate() / 1000,
            "scores": [vars(s) for s in report.scores], "clips": len(report.clips)}


def table(rows: list[dict]) -> str:
    """Markdown: each recipe at all its levels, then Opus and Codec2 (from the first recipe's eval)."""
    lines = ["| codec | steps | train min | kbps | PESQ-WB | STOI | mel dist | SI-SDR dB | SNR dB |",
             "|---|---|---|---|---|---|---|---|---|"]

    def cell(v, digits=2):
        return "n/a" if v is None else f"{v:.{digits}f}"

    def line(label, steps, s, minutes=None):
        lines.append(f"| {label} | {steps} | {cell(minutes, 1) if minutes else ''} | {cell(s['bitrate_kbps'])} "
                     f"| {cell(s['pesq'])} | {cell(s['stoi'], 3)} | {cell(s['mel_distance'], 3)} | {cell(s['si_sdr'])} "
                     f"| {cell(s['snr'])} |")
    for row in rows:
        levels = [s for s in row["scores"] if s["name"].startswith("telucodec")]
        line(f"{row['name']} ({levels[-1]['name']})", row["steps"], levels[-1], row["train_minutes"])  # all levels
    for s in rows[0]["scores"]:
        if not s["name"].startswith("telucodec"):
            line(s["name"], "", s)
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=8.0, help="training wall-clock budget per recipe")
    ap.add_argument("--corpus-minutes", type=float, default=6.0, help="minutes of speech to synthesize")
    ap.add_argument("--out", default="recipe_ab_out")
    ap.add_argument("--data", help="an already prepped dataset (from an earlier run's OUT/data) instead of "
                    "synthesizing and prepping a corpus")
    ap.add_argument("--recipe", action="append", default=[],
                    help="NAME=CONFIG[,CONFIG..][,key=value..] (default: v1 and v2)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = ap.parse_args(argv)
    recipes = dict(parse_recipe(r) for r in args.recipe) or DEFAULT_RECIPES
    out = Path(args.out).absolute()
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}", flush=True)
    started = time.perf_counter()
    data = args.data or str(out / "data")
    if not args.data:
        corpus = synthesize_corpus(out / "corpus", minutes=args.corpus_minutes, seed=0)
        # More held-out voices than the default 5% + 5% (which leaves one or two of the corpus's voices
        # for test): the scores are a mean over several unseen speakers, not one.
        prep = load_config(["base"], ["prep.val_fraction=0.15", "prep.test_fraction=0.2"]).prep
        run_prep([str(corpus.manifest)], data, prep, overwrite=True, progress=False)
    from pipeline.storage.shards import load_index

    splits = {}
    for shard in load_index(data).shards:
        splits[shard.split] = splits.get(shard.split, 0) + shard.samples
    made = "" if args.data else f"{corpus.seconds / 60:.1f} min of speech, {len(corpus.speakers)} voices, "
    print(f"data {data}: {made}samples per split {splits}, {time.perf_counter() - started:.0f} s", flush=True)
    rows = [run_recipe(name, items, data, out, args.minutes) for name, items in recipes.items()]
    print(f"\nheld-out test speakers, {rows[0]['clips']} clips of up to 4 s; equal budget of {args.minutes:g} "
          "min per recipe:\n")
    print(table(rows))
    (out / "recipe_ab.json").write_text(json.dumps(rows, indent=1))
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
