"""Real faults for robustness tests: worker processes killed from outside (as the OOM killer does),
jobs that kill their own process, files cut short.

    with KillWhoeverOpens(path) as killer:      # SIGKILL any child process that opens `path`
        run_prep(...)
    assert killer.kills >= 2
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path


def double_or_die(job):
    """An `ordered_map` job: ("die", n) kills its own process with SIGKILL, ("exit", n) exits with
    status 3, (anything else, n) gives 2 * n after a short nap (so several are in flight at once)."""
    kind, n = job
    if kind == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "exit":
        os._exit(3)
    time.sleep(0.02)
    return 2 * n


def sigkill_once_exists(proc, path: Path, timeout: float = 180.0) -> None:
    """SIGKILL `proc` (a Popen) as soon as `path` exists; fails if it ends first or never gets there."""
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"it finished before it could be killed ({path.name} never appeared)"
        assert time.time() < deadline, f"{path} did not appear within {timeout:.0f} s"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def parquet_with_a_poison_row(folder: Path, rows: int, poison: int) -> tuple[Path, Path]:
    """(a hub parquet shard of `rows` rows in one row group, the file its row `poison` names): that
    row holds no audio bytes, only the name of a file beside the parquet, a 400 MB sparse one that a
    worker holds open ~0.1 s reading it, long enough for KillWhoeverOpens to see."""
    from corpus_layouts import indicvoices_row, indicvoices_schema, write_parquet

    cells = [indicvoices_row(i, f"s{i % 4}") for i in range(rows)]
    cells[poison]["audio_filepath"] = {"bytes": None, "path": "poison.flac"}
    path = write_parquet(folder / "train-00000-of-00001.parquet", cells, indicvoices_schema(), rows)
    with open(folder / "poison.flac", "wb") as f:
        f.truncate(400 << 20)
    return path, folder / "poison.flac"


def cut_in_half(path: Path) -> Path:
    """Write the first half of `path`'s bytes beside it as half-NAME; returns the new path."""
    data = path.read_bytes()
    half = path.with_name(f"half-{path.name}")
    half.write_bytes(data[: len(data) // 2])
    return half


class KillWhoeverOpens:
    """A thread that SIGKILLs every child process of this one (every descendant, with `descendants`:
    Ray's workers are its raylets' children) that has `path` open, until the context ends: a file
    that makes its worker die, every time, without any hook in the code under test. `kills` counts
    the processes it killed."""

    def __init__(self, path: Path, every: float = 0.002, descendants: bool = False):
        self.path, self.every, self.descendants = os.path.realpath(path), every, descendants
        self.kills = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> "KillWhoeverOpens":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.is_set():
            for pid in (_descendants if self.descendants else _children)(os.getpid()):
                if self.path in _open_files(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                        self.kills += 1
                    except ProcessLookupError:
                        pass
            time.sleep(self.every)


def _children(parent: int) -> list[int]:
    """The children of `parent` (none once it has gone: Ray's processes come and go as they are read)."""
    pids = []
    try:
        tasks = list(Path(f"/proc/{parent}/task").iterdir())
    except OSError:
        return pids
    for task in tasks:
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return pids


def _descendants(parent: int) -> list[int]:
    found, todo = [], [parent]
    while todo:
        kids = _children(todo.pop())
        found += kids
        todo += kids
    return found


def _open_files(pid: int) -> set[str]:
    files = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return files
    for fd in fds:
        try:
            files.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return files
