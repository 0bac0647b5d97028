"""What every command shares: the consoles, the one-line user error, and the command-line grammar
`[CONFIG.yaml|NAME ...] [key=value ...]` turned into a checked Config."""

from __future__ import annotations

import argparse
import re
import time
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from pipeline.errors import TelucodecError

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)
FORMATTER = argparse.RawDescriptionHelpFormatter
"""Every parser keeps its description's and examples' line breaks."""


class UsageError(TelucodecError, RuntimeError):
    """Bad command-line input; printed as one line."""


_OVERRIDE = re.compile(r"([A-Za-z_]\w*)\.[^=\s]+=")


def is_override(word: str) -> bool:
    """`section.key=value` for a section of the config (`train.lr=3e-4`, `loss.weights.vq/commit=1`)."""
    from pipeline.config import Config

    m = _OVERRIDE.match(word)
    return bool(m) and m[1] in Config.__dataclass_fields__


def is_config_word(word: str) -> bool:
    """A YAML file that exists, or the name of a shipped config (`tiny`, `gpu`)."""
    from pipeline.config import config_names

    path = Path(word)
    if word.endswith((".yaml", ".yml")):
        return True
    return not path.exists() and word in config_names()


def split_config_args(items: list[str]) -> tuple[list[str], list[str]]:
    """Split positional words into config files/names and dotted key=value overrides."""
    from pipeline.config import config_names

    files, overrides = [], []
    for word in items:
        if is_override(word):
            overrides.append(word)
        elif "=" in word:
            raise UsageError(f"{word}: not a key=value override (keys start with a config section, "
                             f"e.g. train.lr=3e-4; `telucodec config show --docs` lists them)")
        elif is_config_word(word):
            files.append(word)
        else:
            raise UsageError(f"{word}: expected a config (a .yaml file, or one of: {', '.join(config_names())}) "
                             f"or a key=value override")
    return files, overrides


def load_cli_config(items: list[str]):
    """The shipped base config, then the given configs, then the overrides."""
    from pipeline.config import CONFIG_DIR, load_config

    files, overrides = split_config_args(items)
    return load_config([CONFIG_DIR / "base.yaml", *files], overrides)


def cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def amount(value: float) -> str:
    """Hours or dollars: cents for big numbers, four decimals for the small ones of short runs."""
    return f"{value:,.2f}" if value >= 1 else f"{value:.4f}"


def when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def add_config_items(parser, help_text: str = "configs (a .yaml file or a shipped name: base, tiny, gpu) "
                     "and key=value overrides, layered left to right on base") -> None:
    parser.add_argument("items", nargs="*", metavar="CONFIG|key=value", help=help_text)


@contextmanager
def progress_bar(description: str, total: int | None = None):
    """A transient bar on stderr; yields update(done, total=None). Gone when the block ends, so
    the table or summary that follows stands alone."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda done, total=None: bar.update(task, completed=done, **({"total": total} if total else {}))
