"""A node's local copy of the shards it reads from a remote store, shared by every rank and loader
worker of the node: each shard crosses the network once per node, and epochs after the first read
the local disk when the dataset fits.

    cache = ShardCache("~/.cache/telucodec/shards", gb=200)
    cache.get_range(store, info, start, length)   # bytes of shard `info` (a ShardInfo), from the local copy

Entries are whole shards named by their digest (a shard rewritten in place is a new entry; datasets
that share shards share entries). A shard is fetched with one streamed GET into a part file beside
its entry, hashed on the way in, and renamed into place only when its size and digest are the
index's: an entry is whole or absent, whoever was killed mid-fetch. One process fetches a given
shard at a time (an advisory lock on its lock file, which the kernel drops when the holder dies,
SIGKILL included); the others wait for it and read what it made. A read touches its entry's mtime;
a fetch first evicts the entries used longest ago until the new one fits in the bound.

A split larger than the bound does not cycle through it (every block would fetch a whole shard that
is evicted before its other blocks are read): `admitted` picks the shards, in index order, that fit
in it, the same ones in every process and every epoch; the others are read block by block from the
store.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
from pathlib import Path
from typing import Iterable, Iterator

from pipeline.errors import TelucodecError
from pipeline.storage.shards import ShardInfo, digest_text, new_hasher
from pipeline.storage.store import Store, write_pieces

ENTRY, PART, LOCK = ".tar", ".part", ".lock"
DISK_TROUBLE = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)
CHUNK = 1 << 20


class ShardCache:
    def __init__(self, folder: str | Path, gb: float):
        self.folder = Path(folder).expanduser()
        self.bound = int(gb * 1e9)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fetched = 0
        """Shards this process fetched from the store (the others it read were already here)."""
        self.warned = False
        self._lock = threading.Lock()

    def path(self, info: ShardInfo) -> Path:
        return self.folder / (info.digest.replace(":", "-") + ENTRY)

    def get_range(self, store: Store, info: ShardInfo, start: int, length: int) -> bytes:
        """`length` bytes of shard `info` from byte `start`: read here, the shard fetched whole first
        if the node does not hold it yet."""
        data = self._read(info, start, length)
        if data is None:
            with self._held(self.path(info).with_suffix(LOCK)):
                data = self._read(info, start, length)  # another process may have fetched it meanwhile
                if data is None:
                    try:
                        self._fetch(store, info)
                    except OSError as e:
                        if e.errno not in DISK_TROUBLE:
                            raise
                        self.disk_trouble(e)
                        return store.get_range(info.name, start, length)
                    data = self._read(info, start, length)
        return data

    def disk_trouble(self, e: OSError) -> None:
        """The cache's disk is full or unwritable: said once, and the shard read from the store."""
        if not self.warned:
            self.warned = True
            print(f"WARNING shard cache {self.folder}: {e.strerror}; reading from the store instead (check "
                  "data.cache_dir and data.cache_gb)", flush=True)

    def _read(self, info: ShardInfo, start: int, length: int) -> bytes | None:
        path = self.path(info)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            if os.fstat(fd).st_size != info.bytes:  # not ours to trust (a machine crash after the rename)
                return None
            os.utime(fd)  # the entry was just used: evicted last
            return os.pread(fd, length, start)
        finally:
            os.close(fd)

    def _fetch(self, store: Store, info: ShardInfo) -> None:
        """The shard from the store into its entry (we hold its lock), checked against the index."""
        self.make_room(info.bytes)
        part, hasher, size = self.path(info).with_suffix(PART), new_hasher(info.algorithm), 0
        try:
            with store.open(info.name) as src, open(part, "wb") as out:
                while chunk := src.read(CHUNK):
                    write_pieces(out, chunk, hasher.update)
                    size += len(chunk)
            if size != info.bytes or digest_text(info.algorithm, hasher) != info.digest:
                raise CacheMismatch(f"{store.join(info.name)}: differs from index.json ({size} bytes read, "
                                    f"{info.bytes} indexed; run `telucodec shards verify {store.url}`)")
            os.replace(part, self.path(info))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part)
        with self._lock:
            self.fetched += 1

    def make_room(self, need: int) -> None:
        """Evict the entries used longest ago until `need` more bytes fit in the bound (one process at a time)."""
        with self._held(self.folder / ".evict.lock"):
            entries = sorted(self.entries(), key=lambda e: e[1])
            total = sum(size for _, _, size in entries)
            for path, _, size in entries:
                if total + need <= self.bound:
                    break
                with contextlib.suppress(FileNotFoundError):  # a reader holding it open reads on
                    path.unlink()
                total -= size

    def entries(self) -> Iterator[tuple[Path, float, int]]:
        """(path, last used, bytes) of each entry."""
        for path in self.folder.glob("*" + ENTRY):
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                yield path, st.st_mtime, st.st_size

    def used(self) -> int:
        return sum(size for _, _, size in self.entries())

    @contextlib.contextmanager
    def _held(self, lock: Path):
        """An exclusive advisory lock on `lock`: between processes, and between this process's threads
        (each open is its own lock holder)."""
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock


class CacheMismatch(TelucodecError, RuntimeError):
    """A shard's bytes in the store are not what the index says."""


def admitted(shards: Iterable[ShardInfo], gb: float) -> set[str]:
    """The names of the shards, in index order, that fit in `gb` together."""
    bound, total, names = int(gb * 1e9), 0, set()
    for info in shards:
        if total + info.bytes > bound:
            break
        total += info.bytes
        names.add(info.name)
    return names
