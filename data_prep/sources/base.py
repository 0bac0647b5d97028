"""What every layout shares: the item a source yields, and the tree it is read from (a local folder
or a prefix of an object store, listed and read the same way)."""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from pipeline.errors import TelucodecError
from pipeline.storage.store import Store, StoreError, is_remote, locked_cache, open_store

SAMPLE_BYTES = 1 << 16
"""Bytes hashed at each of the start, middle and end of a local file for its identity."""


class SourceError(TelucodecError, ValueError):
    """A source that cannot be read at all (missing, unknown layout, manifest without `path`)."""


@dataclass(frozen=True)
class SourceItem:
    path: str
    """Where the audio lives: a local absolute path (surrogate escapes and all) or an s3:// URL; for
    a `member`, the container file (a parquet file, a tar.gz)."""
    name: str
    """Stable id: source folder name + path inside it, `printable`; keys and splits derive from it."""
    text: str = ""
    speaker: str = ""
    member: str = ""
    """Inside `path`: "parquet:ROWGROUP:ROW" (a row of a parquet file), "tar:NAME" (a tar.gz member); ""
    for a plain file."""
    identity: tuple = ()
    """What tells this file from an edited one (remote: size and ETag; a member: its container's);
    empty for a local plain file, whose identity `file_identity` reads when needed."""
    source_split: str = ""
    """The corpus's own split (train, dev, test ...) where its layout says; metadata only, unless
    prep.keep_source_splits."""

    @property
    def where(self) -> str:
        """The item for a person: the file, and the row or member inside it."""
        if self.member.startswith("parquet:"):
            return f"{printable(self.path)} (row {self.name.rsplit('/', 1)[1].lstrip('0') or '0'})"
        if self.member.startswith("tar:"):
            return f"{printable(self.path)} ({printable(self.member[4:])})"
        return printable(self.path)


@dataclass
class SourceScan:
    items: list[SourceItem] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)


def printable(text: str) -> str:
    """`text` with the undecodable bytes of a file name (surrogate escapes) spelled `\\xe9`: safe to
    write as UTF-8 (JSON, keys) and to print; a UTF-8 name comes back unchanged."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def file_identity(path: str) -> tuple[int, int, str]:
    """(size, mtime_ns, sha256 of the first, middle and last SAMPLE_BYTES): what tells an edited
    local file from the one a dataset was made of, without reading all of a long file. A file that
    cannot be read gives (-1, -1, "unreadable"); its worker will reject it with the reason."""
    try:
        stat = os.stat(path)
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            middle, end = max(0, stat.st_size // 2 - SAMPLE_BYTES // 2), max(0, stat.st_size - SAMPLE_BYTES)
            for offset in sorted({0, middle, end}):
                f.seek(offset)
                digest.update(f.read(SAMPLE_BYTES))
    except OSError:
        return -1, -1, "unreadable"
    return stat.st_size, stat.st_mtime_ns, digest.hexdigest()


def item_identity(item: SourceItem) -> tuple:
    return item.identity or file_identity(item.path)


class Tree:
    """A source's folder, read alike wherever it lives. `rel` paths are '/'-separated below it."""

    url: str
    """The folder, for messages and lineage."""
    name: str
    """Its last part: item names start with it."""

    def files(self) -> list[str]:
        """Every file below, recursively, sorted."""
        raise NotImplementedError

    def is_file(self, rel: str) -> bool:
        raise NotImplementedError

    def is_dir(self, rel: str) -> bool:
        raise NotImplementedError

    def open(self, rel: str, buffered: bool = True) -> BinaryIO:
        """A seekable binary file (`buffered`: see Store.open_seekable)."""
        raise NotImplementedError

    def location(self, rel: str) -> str:
        """What a SourceItem's `path` holds for the file."""
        raise NotImplementedError

    def identity(self, rel: str) -> tuple:
        raise NotImplementedError

    def read_text(self, rel: str) -> str:
        with self.open(rel) as f:
            data = f.read()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SourceError(f"{self.location(rel)}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None


class LocalTree(Tree):
    def __init__(self, root: Path):
        self.root = root
        self.url, self.name = str(root), root.name

    def files(self) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())

    def is_file(self, rel: str) -> bool:
        return (self.root / rel).is_file()

    def is_dir(self, rel: str) -> bool:
        return (self.root / rel).is_dir()

    def open(self, rel: str, buffered: bool = True) -> BinaryIO:
        return open(self.root / rel, "rb")

    def location(self, rel: str) -> str:
        return str(self.root / rel)

    def identity(self, rel: str) -> tuple:
        return ()  # read when the fingerprint is made (file_identity), as for any local file


class StoreTree(Tree):
    """A prefix of an object store; listed once (LIST requests, a page per 1,000 objects; separate
    folders' LISTs at once: Store.list_wide)."""

    def __init__(self, store: Store):
        self.store, self.url = store, store.url
        self.name = PurePosixPath(store.url.split("://", 1)[-1]).name

    @functools.cached_property
    def listing(self) -> dict:
        try:
            return {o.key: o for o in self.store.list_wide()}
        except StoreError as e:
            raise SourceError(str(e)) from None

    def files(self) -> list[str]:
        return sorted(self.listing)

    def is_file(self, rel: str) -> bool:
        return rel in self.listing

    def is_dir(self, rel: str) -> bool:
        prefix = rel.rstrip("/") + "/"
        return any(key.startswith(prefix) for key in self.listing)

    def open(self, rel: str, buffered: bool = True) -> BinaryIO:
        return self.store.open_seekable(rel, self.listing[rel].size if rel in self.listing else None, buffered)

    def location(self, rel: str) -> str:
        return self.store.join(rel)

    def identity(self, rel: str) -> tuple:
        info = self.listing[rel]
        return info.size, info.etag


def open_tree(url: str) -> Tree:
    """The tree a source URL or path names (a folder or prefix; for a file, use `split_source`)."""
    if is_remote(url):
        return StoreTree(open_store(url.rstrip("/")))
    return LocalTree(Path(url).expanduser().absolute())


def split_source(src: str) -> tuple[Tree, str]:
    """(the folder, "") for a folder source; (its folder, its name) for a file source."""
    if is_remote(src):
        bucket_path = src.split("://", 1)[1].rstrip("/")
        if "/" in bucket_path and PurePosixPath(bucket_path).suffix:  # ends in a file name
            parent, _, leaf = src.rstrip("/").rpartition("/")
            return open_tree(parent), leaf
        return open_tree(src), ""
    path = Path(src).expanduser().absolute()
    if path.is_file():
        return LocalTree(path.parent), path.name
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    return LocalTree(path), ""


@locked_cache(maxsize=16)
def _bucket(url: str) -> Store:
    """The process's one store (one S3 client, one connection pool) for a bucket, however many
    fetching threads ask for it at once."""
    return open_store(url)


def open_location(path: str, size: int | None = None) -> BinaryIO:
    """A SourceItem's `path`, opened seekable: a local file, or an object read by ranged GETs (`size`,
    when known, saves a HEAD request)."""
    if is_remote(path):
        scheme, rest = path.split("://", 1)
        bucket, _, key = rest.partition("/")
        return _bucket(f"{scheme}://{bucket}").open_seekable(key, size)
    return open(path, "rb")
