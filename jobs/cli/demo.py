"""`telucodec demo`: the whole pipeline on this machine, corpus -> prep -> reshard -> train on a
local Ray through one simulated spot reclaim -> eval beside Opus and Codec2 -> cost."""

from __future__ import annotations

import shutil
from pathlib import Path

from jobs.cli.codec import eval_table, evaluate_with_progress
from jobs.cli.common import FORMATTER, add_config_items, console, load_cli_config
from jobs.cli.data import print_broken_voices, print_prep_summary, shards_table
from jobs.cli.runs import cost_table
from jobs.cli.train import run_training
from pipeline.config import CONFIG_DIR


def register(sub) -> None:
    s = sub.add_parser("demo", help="run the pipeline end to end on this machine",
                       description="Synthesize a small Telugu corpus, prep it into shards in a local "
                       "folder, reshard it for the Ray workers, train the tiny codec on a local Ray "
                       "(the shipped tiny config) through one simulated spot reclaim (a fake EC2 metadata "
                       "service on 127.0.0.1 announces it halfway), evaluate it beside Opus and Codec2, "
                       "and report its cost. Needs no cloud account; key=value words override "
                       "the tiny config.",
                       epilog="examples:\n  telucodec demo\n  telucodec demo --minutes 1 train.steps=50",
                       formatter_class=FORMATTER)
    s.add_argument("--out", default="demo_out", help="folder for everything the demo writes")
    s.add_argument("--minutes", type=float, default=3.0, help="minutes of speech to synthesize")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-preemption", dest="preemption", action="store_false",
                   help="skip the simulated spot reclaim halfway through training")
    add_config_items(s, "key=value overrides (or more configs) layered on tiny")
    s.set_defaults(func=demo)


def demo(args) -> int:
    """corpus -> prep -> reshard for the ranks -> train (Ray, one spot drill) -> eval -> cost, all local."""
    from data_prep.corpus import synthesize_corpus
    from data_prep.prep import run_prep
    from data_prep.reshard import ReshardOptions, reshard
    from pipeline.storage.shards import load_index

    out = Path(args.out).absolute()
    items = [str(CONFIG_DIR / "tiny.yaml"), *args.items]  # the shipped one, whatever the folder holds
    cfg = load_cli_config(items)
    workers = cfg.train.workers
    console.rule("1/6  synthesize a Telugu corpus (espeak-ng / festival)")
    corpus = synthesize_corpus(out / "corpus", minutes=args.minutes, seed=args.seed)
    print_broken_voices(corpus)
    console.print(f"{corpus.files} files, {corpus.seconds / 60:.1f} min from {len(corpus.speakers)} voices, "
                  f"{corpus.over_range} over full scale")
    console.rule("2/6  prep: clip to [-1, 1], trim, segment, split by speaker, write shards")
    prepped = out / "data"
    print_prep_summary(run_prep([str(corpus.manifest)], str(prepped), cfg.prep, overwrite=True))
    console.rule(f"3/6  reshard for {max(workers, 1)} rank(s)")
    dataset = out / f"data-r{max(workers, 1)}"
    # Only train is sharded for the ranks; eval reads the held-out splits from the prepped dataset.
    reshard(str(prepped), str(dataset), ReshardOptions(ranks=max(workers, 1), shuffle=True, overwrite=True,
                                                       splits=("train",)))
    console.print(shards_table(str(dataset), load_index(str(dataset))))
    run_dir = out / "run"
    drill = demo_train(cfg, items, dataset, prepped, run_dir, preempt=args.preemption)
    console.rule("5/6  eval against Opus 6 kbps and Codec2 3.2 kbps (test split)")
    report = evaluate_with_progress(str(run_dir), str(prepped), "test", 8, 4.0, out / "eval", 3)
    console.print(eval_table(report))
    console.rule("6/6  cost (the ledger; local CPU time is priced at $0 unless cost.usd_per_hour is set)")
    from pipeline.runs.cost import summarize_run

    cost = summarize_run(str(run_dir))
    console.print(cost_table([cost], f"cost of {run_dir}"))
    print_demo_summary(cfg, out, dataset, prepped, run_dir, report, cost, drill)
    return 0


def demo_train(cfg, items: list[str], dataset: Path, prepped: Path, run_dir: Path, preempt: bool):
    """Stage 4: train on local Ray, with one simulated spot reclaim halfway (a SpotDrill)."""
    from jobs.launch.spot_drill import SpotDrill

    shutil.rmtree(run_dir, ignore_errors=True)  # the demo starts fresh each time
    at = max(1, cfg.train.steps // 2)
    console.rule(f"4/6  train the tiny codec ({cfg.train.steps} steps, {cfg.train.workers or 'no'} Ray worker(s)"
                 + (f", a simulated spot reclaim at step ~{at})" if preempt else ")"))
    items = items + [f"data.url={dataset}", f"train.eval_url={prepped}", f"run.dir={run_dir}", "train.eval_split=test"]
    if not preempt:
        run_training(load_cli_config(items))
        return None
    with SpotDrill(str(run_dir), at_step=at) as drill:
        run_training(load_cli_config(items + [f"preempt.endpoints.aws={drill.url}", "preempt.poll_seconds=0.5"]))
    return drill


def print_demo_summary(cfg, out: Path, dataset: Path, prepped: Path, run_dir: Path, report, cost, drill) -> None:
    full = report.score(f"telucodec-{cfg.model.n_codebooks}")
    wandb_runs = sorted(run_dir.glob("wandb/offline-run-*"))
    console.rule("summary")
    console.print(f"shards:       {dataset}  (prepped: {prepped}, rejects: {prepped / 'rejects.jsonl'})")
    console.print(f"checkpoints:  {run_dir / 'checkpoints'}")
    console.print(f"metrics:      {run_dir / 'metrics.jsonl'}, events: {run_dir / 'events.jsonl'}")
    console.print(f"cost ledger:  {run_dir / 'ledger.jsonl'}  (${cost.totals.usd:.2f}, "
                  f"{cost.totals.worker_hours:.3f} worker-hours, {cost.totals.restarts} restart(s))")
    console.print(f"W&B offline:  {wandb_runs[-1] if wandb_runs else 'none (tracking.enabled=false)'}"
                  + (f" ({len(wandb_runs)} folders, one per worker group; `telucodec sync {run_dir}` "
                     f"uploads them as one W&B run)"
                     if wandb_runs else ""))
    console.print(f"eval:         {out / 'eval' / 'eval.json'} and {len(report.spectrograms)} spectrogram PNG(s)")
    if drill is not None:
        console.print(f"spot drill:   notice at step {drill.fired_at}, checkpoint and stop at step {drill.stopped_at}, "
                      f"resumed there by a new worker group" if drill.stopped_at is not None
                      else "spot drill:   the run ended before the notice was acted on")
    opus = report.score("opus-6k")
    console.print(f"telucodec-{cfg.model.n_codebooks} at {full.bitrate_kbps:.2f} kbps on held-out clips: "
                  f"PESQ-WB {score_text(full.pesq)}, STOI {score_text(full.stoi, 3)}, SNR {full.snr:.2f} dB, "
                  f"SI-SDR {full.si_sdr:.2f} dB; Opus 6 kbps: PESQ-WB {score_text(opus.pesq)}, STOI "
                  f"{score_text(opus.stoi, 3)} (a CPU toy: minutes of audio, {cfg.train.steps} steps; see README "
                  "for what to expect at scale)")
    console.print("next, on a real cluster: telucodec prep ... --out s3://BUCKET/te; telucodec submit --address "
                  "http://HEAD:8265 --runs s3://BUCKET/runs gpu data.url=s3://BUCKET/te-r8 "
                  "train.workers=8; telucodec jobs status ID")


def score_text(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
