"""The `telucodec` command line: one module per command group, each parser beside its handler.

    telucodec demo                       # corpus -> prep -> reshard -> train -> eval, all local
    telucodec corpus OUT_DIR --minutes 5                         jobs/cli/data.py
    telucodec prep SRC... --out URL [CONFIG...] [key=value...]   jobs/cli/data.py
    telucodec shards ls URL | verify URL | upgrade URL           jobs/cli/data.py
    telucodec reshard SRC_URL DST_URL --ranks 8 --shard-mb 500   jobs/cli/data.py
    telucodec config show [CONFIG...] [key=value...]             jobs/cli/config.py
    telucodec train tiny data.url=DATA run.dir=RUN               jobs/cli/train.py
    telucodec encode | decode | eval                             jobs/cli/codec.py
    telucodec export RUN OUT_DIR                                 jobs/cli/export.py
    telucodec cost RUN | runs STORE | sync RUN                   jobs/cli/runs.py
    telucodec submit | jobs ls|status|logs|stop | cluster        jobs/cli/cluster.py
    telucodec demo                                               jobs/cli/demo.py

CONFIG is a .yaml file or a shipped config's name (base, tiny, gpu). Errors in user input print one
line (`telucodec: error: ...`) and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from jobs.cli import cluster, codec, config, data, demo, export, runs, train
from jobs.cli.common import FORMATTER, err_console
from pipeline.errors import TelucodecError, environment_problem

EPILOG = """\
examples:
  telucodec demo
  telucodec corpus corpus/ --minutes 5
  telucodec prep corpus/ --out s3://my-bucket/te-v1
  telucodec shards ls s3://my-bucket/te-v1
  telucodec reshard s3://my-bucket/te-v1 s3://my-bucket/te-v1-r24 --ranks 24 --shuffle
  telucodec train tiny data.url=demo_out/data run.dir=runs/tiny
  telucodec eval --checkpoint runs/tiny --data demo_out/data
  telucodec export runs/tiny models/tiny
  telucodec encode speech.wav speech.tcq --model models/tiny
  telucodec cost runs/tiny
  telucodec cluster up --local
  telucodec submit --local tiny data.url=demo_out/data-r2 train.eval_url=demo_out/data train.eval_split=test train.steps=50
  telucodec jobs status te-20261124-101500-1a2b-3c4d5e
  telucodec config show gpu prep.sample_rate=24000

configs: a .yaml file, or a shipped name (base, tiny, gpu: `telucodec config show NAME` prints one).
Run `telucodec COMMAND --help` for each command's options.
"""


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version as installed

    try:
        return installed("telucodec")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="telucodec", description="Train a neural speech codec on Telugu "
                                "speech: data prep, training on Ray + Accelerate, cost tracking.",
                                epilog=EPILOG, formatter_class=FORMATTER)
    p.add_argument("--version", action="version", version=f"telucodec {version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in (config, data, train, codec, export, runs, cluster, demo):
        group.register(sub)
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    """The command line's words -> the command's arguments (argparse's own errors exit 2)."""
    parser = build_parser()
    argv, stage, stage_words = cluster.split_stage(argv)  # `submit ... prep|reshard WORDS`
    args, extra = parser.parse_known_args(argv)
    if extra:  # positional words after options (argparse stops at the first option): collect them
        target = next((t for t in ("items", "words") if hasattr(args, t)), None)
        bad = [e for e in extra if e.startswith("-")]
        if bad or target is None:
            parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
        setattr(args, target, list(getattr(args, target)) + extra)
    if stage:
        args.stage, args.stage_args = stage, parse([stage, *stage_words])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(list(sys.argv[1:] if argv is None else argv))
    try:
        return args.func(args)
    except TelucodecError as e:  # a user's mistake: one line, no traceback
        err_console.print(f"telucodec: error: {e}", markup=False, highlight=False)
        return 2
    except KeyboardInterrupt:
        err_console.print("telucodec: interrupted")
        return 130
    except BrokenPipeError:  # `telucodec ... | head`: the reader left; stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except Exception as e:  # not ours: the environment's (S3, the file system) gets one line, a bug its traceback
        line = environment_problem(e)
        if line is None:
            raise
        err_console.print(f"telucodec: error: {line}", markup=False, highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
