"""Where raw audio comes from: folders, manifests, OpenSLR, Common Voice, Kathbath, FLEURS and parquet
layouts, on local disk or an object store (s3://), and how a prep worker reads each item's bytes.

    scan = scan_sources(["s3://bucket/indicvoices-te/", "corpus/manifest.tsv"], fmt="auto")
    scan.items      # [SourceItem(path, name, text, speaker, member, identity, source_split)], by name
    scan.rejects    # [{"path", "reason"}] for rows pointing nowhere and unsupported files
    for item, audio, name in read_items(batch): ...   # in a worker: a seekable file per item

Layouts: `layouts` (and `parquet` for the hub's parquet shards). A remote source is listed through
the store and read by ranged GETs (`Store.open_seekable`, which reads ahead in parts when read front
to back): nothing is copied to local disk but one tar.gz member or one decoded file's parked samples
at a time per worker (spooled past 16 MB).

File names need not be UTF-8 (Linux allows any bytes): an item's `path` keeps the name as Python
holds it (undecodable bytes as surrogate escapes) so the file can be opened, while its `name`, and
every path in a reject, spell such bytes as `\\xe9` (`printable`), so keys, metadata and
rejects.jsonl stay valid UTF-8.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath
from typing import BinaryIO, Iterator

from data_prep.sources import layouts, parquet
from data_prep.sources.base import (SourceError, SourceItem, SourceScan, file_identity, item_identity, open_location,
                                    printable, split_source)
from data_prep.sources.layouts import detect_format_in, split_in_path
from pipeline.storage.store import StoreError, is_remote

FORMATS = ("folder", "manifest", "openslr", "commonvoice", "kathbath", "fleurs", "parquet")
SPOOL_BYTES = 16 << 20
"""A tar.gz member or parquet row is held in memory up to this size, on local disk past it."""
WHOLE_GET_BYTES = 16 << 20
"""A remote file up to this size is fetched in one GET; a larger one is read by ranged GETs."""
FETCH_AHEAD, FETCH_AHEAD_BYTES = 16, 64 << 20
"""Remote files a worker fetches ahead of the one it is on: at most this many, and this many bytes.
A worker preps an 8-second file in ~4 ms of CPU and S3 answers a GET after 20-50 ms, so ~10 GETs
must be in flight to keep it busy (at 30 ms a GET: 4 at once 10 ms a file, 16 at once 5; the
threads cost no CPU to speak of, benchmarks/remote_read_bench.py)."""
PLAIN_FILES: tuple = ()
"""`batch_key` of a plain file (not an item of a container): such files share jobs too."""

__all__ = ["FORMATS", "PLAIN_FILES", "SourceError", "SourceItem", "SourceScan", "batch_key", "detect_format",
           "file_identity", "item_bytes", "item_identity", "printable", "read_items", "scan_sources",
           "unlisted_paths"]


def scan_sources(sources: list[str], fmt: str = "auto", allow_outside: bool = False,
                 columns: dict[str, str] | None = None) -> SourceScan:
    """All items of all sources, sorted by name, plus rejects for rows that point nowhere (or, unless
    `allow_outside`, outside their manifest's folder)."""
    if fmt != "auto" and fmt not in FORMATS:
        raise SourceError(f"unknown source format {fmt!r} (one of {', '.join(FORMATS)})")
    scan = SourceScan()
    for src in sources:
        try:
            scan_one(src, fmt, allow_outside, columns or {}, scan)
        except StoreError as e:
            raise SourceError(str(e)) from None
    names = {}
    for item in scan.items:
        if item.name in names:
            raise SourceError(f"{item.name}: listed twice ({names[item.name]} and {item.where})")
        names[item.name] = item.where
    scan.items.sort(key=lambda i: i.name)
    return scan


def scan_one(src: str, fmt: str, allow_outside: bool, columns: dict[str, str], scan: SourceScan) -> None:
    tree, rel = split_source(src)
    kind = detect_format_in(tree, rel) if fmt == "auto" else fmt
    if rel and kind not in ("manifest", "parquet"):
        raise SourceError(f"{tree.location(rel)}: a {kind} source is a folder, not a file")
    if rel and not tree.is_file(rel):
        raise SourceError(f"{tree.location(rel)}: no such file")
    if kind == "manifest":
        if not rel:
            raise SourceError(f"{tree.url}: a manifest source is a .tsv, .csv or .jsonl file")
        layouts.read_manifest(tree, rel, scan, allow_outside)
    elif kind == "parquet":
        files = [rel] if rel else [f for f in tree.files() if f.lower().endswith(".parquet")]
        if not files:
            raise SourceError(f"{tree.url}: no .parquet files in it")
        parquet.scan_parquet_files(tree, files, scan, columns, split_in_path)
    else:
        if not tree.files():
            raise SourceError(f"{tree.url}: no such folder, or nothing in it")
        READERS[kind](tree, scan)


def detect_format(src: str | os.PathLike) -> str:
    """The layout a source path or URL has (what `--format auto` picks)."""
    return detect_format_in(*split_source(str(src)))


READERS = {"folder": layouts.read_folder, "openslr": layouts.read_openslr, "commonvoice": layouts.read_commonvoice,
           "kathbath": layouts.read_kathbath, "fleurs": layouts.read_fleurs}


# ------------------------------------------------------------------------------------- in a worker
def batch_key(item: SourceItem) -> tuple:
    """Items with the same key are best read by one worker in one job: a container's (a parquet row
    group, a tar.gz archive) in one pass; plain files (PLAIN_FILES) a few to a job, for a job has a
    cost of its own and a job's remote files are fetched ahead of the one being prepped."""
    if item.member.startswith("parquet:"):
        return item.path, item.member.split(":")[1]
    if item.member.startswith("tar:"):
        return (item.path,)
    return PLAIN_FILES


def unlisted_paths(items: list[SourceItem]) -> list[str]:
    """The files among `items` whose identity no listing gave (local plain files), each once: what
    `file_identity` must read, once a file, before a run (its fingerprint, its job plan)."""
    return sorted({item.path for item in items if not item.identity})


def item_bytes(item: SourceItem, identities: dict) -> int:
    """A plain file's size as known without reading it: a remote one's from its listing, a local
    one's from `identities` (path -> `file_identity` of `unlisted_paths`); 0 where unknown."""
    return max(0, item.identity[0] if item.identity else identities.get(item.path, (0,))[0])


def read_items(items: list[SourceItem]) -> Iterator[tuple[SourceItem, str | BinaryIO | None, str]]:
    """(item, its audio, its file name) for each item of one batch (same `batch_key`), in the order
    found: the audio a local path or a seekable binary file the caller closes; None with the
    reason in place of the name where there is none to be had."""
    first = items[0]
    if first.member.startswith("parquet:"):
        for item, data, name in parquet.read_rows(first.path, items):
            yield (item, None, name) if data is None else (item, _spooled(data), name or "row")
    elif first.member.startswith("tar:"):
        yield from _tar_members(first.path, items)
    else:
        yield from _files(items)


def _files(items: list[SourceItem]) -> Iterator[tuple[SourceItem, str | BinaryIO | None, str]]:
    """Plain files in order; remote ones fetched on threads up to FETCH_AHEAD files (and
    FETCH_AHEAD_BYTES) ahead of the one the worker is on, so that each GET's latency (20-50 ms on
    S3, more than decoding and encoding a short file takes) overlaps the others' and the work."""
    ahead: deque = deque()
    todo = iter(items)
    with ThreadPoolExecutor(FETCH_AHEAD, thread_name_prefix="fetch") as pool:
        while True:
            while len(ahead) < FETCH_AHEAD and sum(size for _, _, size in ahead) < FETCH_AHEAD_BYTES:
                item = next(todo, None)
                if item is None:
                    break
                remote = is_remote(item.path)
                ahead.append((item, pool.submit(_remote_file, item) if remote else None,
                              (item.identity[0] if item.identity else WHOLE_GET_BYTES) if remote else 0))
            if not ahead:
                return
            item, fetched, _ = ahead.popleft()
            if fetched is None:
                yield item, item.path, PurePosixPath(item.name).name
                continue
            try:
                got = fetched.result()
            except Exception as e:  # this file's reject (AccessDenied, a lost object); the job's other files go on
                yield item, None, f"cannot read ({e})"
            else:
                yield item, got, PurePosixPath(item.path).name


def _remote_file(item: SourceItem) -> BinaryIO:
    """A remote file, seekable: fetched whole in one GET when small (most speech files: a decoder's
    seeks would each cost a request), else read by ranged GETs."""
    size = item.identity[0] if item.identity else None
    if size is not None and size <= WHOLE_GET_BYTES:
        with open_location(item.path, size) as f:
            return _spooled(f.read())
    return open_location(item.path, size)


def _spooled(data: bytes) -> BinaryIO:
    f = tempfile.SpooledTemporaryFile(SPOOL_BYTES)
    f.write(data)
    f.seek(0)
    return f


def _tar_members(path: str, items: list[SourceItem]) -> Iterator[tuple[SourceItem, BinaryIO | None, str]]:
    """Stream the archive (never extracted to disk) and hand out the wanted members as met."""
    wanted = {item.member[4:]: item for item in items}
    reason = "not in the archive"
    try:
        size = items[0].identity[0] if items[0].identity else None  # the archive's, from the listing: no HEAD
        with open_location(path, size) as f, tarfile.open(fileobj=f, mode="r|gz") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if name not in wanted or not member.isfile():
                    continue
                spool = tempfile.SpooledTemporaryFile(SPOOL_BYTES)
                source = tar.extractfile(member)
                while chunk := source.read(1 << 20):
                    spool.write(chunk)
                spool.seek(0)
                yield wanted.pop(name), spool, PurePosixPath(name).name
                if not wanted:
                    return
    except (tarfile.TarError, EOFError, zlib.error, OSError, StoreError) as e:
        reason = f"the archive cannot be read this far ({str(e).splitlines()[0] or type(e).__name__}): truncated?"
    for item in wanted.values():
        yield item, None, reason
