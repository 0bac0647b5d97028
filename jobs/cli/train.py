"""`telucodec train`: train the codec on a dataset, on a local or joined Ray cluster, or in-process."""

from __future__ import annotations

from jobs.cli.common import FORMATTER, add_config_items, console, load_cli_config


def register(sub) -> None:
    s = sub.add_parser("train", help="train the codec (Ray Train + Accelerate; resumes automatically)",
                       description="Train the codec on a dataset made by `telucodec prep`. Layers the "
                       "shipped base config, the given configs and key=value overrides. Rank 0 prints a "
                       "progress line every train.log_every steps (and at least once a minute); metrics go "
                       "to run.dir/metrics.jsonl.\n\nResume: a run.dir that holds a checkpoint is "
                       "continued. Changes to steps, cadence, budget or tracking are accepted and printed; "
                       "a changed model, loss, data format or batch shape is refused with the keys named "
                       "(use a new run.dir, or --resume force for the keys that can change safely).",
                       epilog="examples:\n"
                       "  telucodec train tiny data.url=demo_out/data run.dir=runs/tiny\n"
                       "  telucodec train gpu data.url=s3://bucket/te run.dir=s3://bucket/runs/r1 "
                       "train.workers=8 train.use_gpu=true\n"
                       "  telucodec train tiny data.url=demo_out/data train.workers=0   # no Ray\n"
                       "  telucodec train tiny data.url=demo_out/data run.dir=runs/tiny train.steps=2000  # go on",
                       formatter_class=FORMATTER)
    s.add_argument("--resume", choices=("auto", "never", "force"), default="auto",
                   help="auto (default): continue the run in run.dir if it has a checkpoint, refusing "
                   "unsafe config changes; never: refuse to start when it has one; force: also accept "
                   "changes that are safe to make mid-run (learning rate, loss weights, data, batch)")
    add_config_items(s)
    s.set_defaults(func=train)


def train(args) -> int:
    cfg = load_cli_config(args.items)
    return run_training(cfg, args.resume)


def run_training(cfg, resume: str = "auto") -> int:
    """Train here (Ray or in-process), saying what runs and how it ended."""
    from jobs.launch.trainer import train_job

    train_job(cfg, resume, say=lambda line: console.print(line, highlight=False, markup=False))
    return 0
