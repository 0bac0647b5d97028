"""The command examples the README and every `--help` show, read from the text itself: each one parses
with today's command line, its configs and overrides resolve, and the light ones (`config show`)
run as written. An example that names a renamed option or an unknown key fails here."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from jobs.cli import build_parser, main, parse
from jobs.cli.common import load_cli_config

ROOT = Path(__file__).resolve().parents[2]


def joined(lines: list[str]) -> list[str]:
    """Lines with backslash continuations joined."""
    out, pending = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
        else:
            out.append(pending + line)
            pending = ""
    return out


def readme_examples() -> list[str]:
    """`telucodec ...` lines of the bash blocks in README.md and docs/*.md."""
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S):
            found += [line.strip() for line in joined(block.splitlines()) if line.strip().startswith("telucodec ")]
    return found


def help_examples() -> list[str]:
    """The example lines of the top-level epilog and every command's `--help`."""
    parser = build_parser()
    texts = [parser.epilog or ""]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            texts += [sub.epilog or "" for sub in action.choices.values()]
    return [line.strip() for text in texts for line in joined(text.splitlines()) if line.strip().startswith("telucodec ")]


def words_of(example: str) -> list[str]:
    """The example's arguments, without its trailing comment (and without a shell redirection)."""
    words = shlex.split(example, comments=True)
    for i, w in enumerate(words):
        if w in ("<", ">", "|"):
            return words[1:i]
    return words[1:]


EXAMPLES = sorted(set(readme_examples()) | set(help_examples()))


def test_the_docs_show_examples_of_every_command():
    commands = {words_of(e)[0] for e in EXAMPLES}
    assert {"prep", "reshard", "train", "submit", "export", "encode", "decode", "eval", "cost", "config"} <= commands


@pytest.mark.parametrize("example", EXAMPLES)
def test_each_example_parses_and_its_config_resolves(example):
    words = words_of(example)
    try:
        args = parse(words)  # the command line's own parsing: an unknown option exits 2
    except SystemExit as e:
        pytest.fail(f"{example}: does not parse (exit {e.code})")
    items = list(getattr(args, "items", []) or [])
    if getattr(args, "stage", None) == "prep":
        items = [*args.stage_args.words, *args.stage_args.config_items]
    if items and args.command in ("train", "submit", "config", "demo", "prep"):
        load_cli_config([w for w in items if "=" in w or w.endswith(".yaml") or w in ("base", "tiny", "gpu", "v1")])


@pytest.mark.parametrize("example", [e for e in EXAMPLES if e.startswith("telucodec config show")])
def test_config_show_examples_run_as_written(example, capsys):
    assert main(words_of(example)) == 0
    assert capsys.readouterr().out.strip()
