"""Object storage for datasets and runs: plain paths, file:// and s3://bucket/prefix behind one API.

    store = open_store("s3://bucket/datasets/te")      # or "/data/te", "file:///data/te"
    store.put("index.json", data); store.get("index.json"); store.list("train-")

S3 goes through boto3, so the endpoint and credentials come from the standard AWS variables and
profiles (AWS_ENDPOINT_URL points it at MinIO, R2, GCS interop or a local test server). Requests
retry with backoff on throttling, 5xx and dropped connections; a streaming read that drops mid-body
resumes with a ranged GET; a seekable read (`open_seekable`) read front to back fetches parts ahead.
A local object is written in its folder without a name (or under a hidden temporary one) and renamed
into place when whole, so a reader never sees half an object and a killed writer leaves nothing
behind; S3 puts are atomic by nature. `store.stage(key)` hands out that file to write a large object
into directly (a shard), so nothing is copied twice.
"""

from __future__ import annotations

import functools
import io
import logging
import mmap
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator
from urllib.parse import urlparse

import numpy as np

from pipeline.errors import TelucodecError

_TMP_MARK = ".tmp-"


class StoreError(TelucodecError, RuntimeError):
    """A storage URL or object that cannot be used; the message says which."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    """Key relative to the store's root, '/'-separated."""
    size: int
    """Size in bytes."""
    etag: str = ""
    """The store's version tag (S3's ETag); empty where the store has none (a local folder)."""


PURPOSES = ("loader", "checkpoints", "logs", "other")
"""What a store is opened for (Store.purpose): a run's requests are counted by it."""
KINDS = ("GET", "PUT", "LIST", "DELETE")
"""Requests by how object stores bill them: GET (GET, HEAD), PUT (PUT, POST, COPY, multipart
parts), LIST, DELETE (free)."""
_KIND_OF = {"GetObject": "GET", "HeadObject": "GET", "HeadBucket": "GET", "ListObjectsV2": "LIST",
            "ListObjects": "LIST", "ListBuckets": "LIST", "DeleteObject": "DELETE", "DeleteObjects": "DELETE",
            "AbortMultipartUpload": "DELETE"}


class RequestTally:
    """The requests this process sent to remote stores (every attempt, as billed) and the bytes
    they carried, by purpose and kind: an array [purpose, kind, (requests, bytes)].

        before = REQUESTS.snapshot(); ...; spent = REQUESTS.snapshot() - before
    """

    def __init__(self):
        self.counts = no_requests()
        self.lock = threading.Lock()

    def add(self, purpose: str, kind: str, nbytes: int = 0, requests: int = 1) -> None:
        with self.lock:
            self.counts[PURPOSES.index(purpose), KINDS.index(kind)] += (requests, nbytes)

    def snapshot(self) -> np.ndarray:
        with self.lock:
            return self.counts.copy()


def no_requests() -> np.ndarray:
    """A tally array of nothing: [purpose, kind, (requests, bytes)] zeros."""
    return np.zeros((len(PURPOSES), len(KINDS), 2), dtype=np.int64)


REQUESTS = RequestTally()


def requests_by_kind(counts: np.ndarray) -> dict[str, int]:
    """{"GET": n, "PUT": n, "LIST": n} of a tally array (DELETEs are free and left out)."""
    return {kind: int(counts[:, k, 0].sum()) for k, kind in enumerate(KINDS) if kind != "DELETE"}


def requests_by_purpose(counts: np.ndarray) -> dict[str, dict[str, int]]:
    """{purpose: {"GET": n, ..., "GET_bytes": n, ...}} of a tally array, purposes with any requests only."""
    return {purpose: {**{kind: int(counts[p, k, 0]) for k, kind in enumerate(KINDS)},
                      **{f"{kind}_bytes": int(counts[p, k, 1]) for k, kind in enumerate(KINDS)}}
            for p, purpose in enumerate(PURPOSES) if counts[p, :, 0].any()}


def tally_from(by_purpose: dict | None) -> np.ndarray:
    """A tally array back from requests_by_purpose's dict (a ledger line's)."""
    counts = no_requests()
    for purpose, row in (by_purpose or {}).items():
        if purpose in PURPOSES:
            for k, kind in enumerate(KINDS):
                counts[PURPOSES.index(purpose), k] = (row.get(kind, 0), row.get(f"{kind}_bytes", 0))
    return counts


class Store:
    """Common interface; `open_store` picks the implementation from the URL."""

    url: str
    purpose: str = "other"
    """What the store is used for (a key of PURPOSES): its requests are counted under it in REQUESTS."""

    def join(self, key: str) -> str:
        """Full URL of `key`."""
        return self.url.rstrip("/") + "/" + key

    def sub(self, prefix: str) -> "Store":
        """A store rooted at `prefix` below this one."""
        return open_store(self.join(contained(prefix, self.url)), self.purpose)

    def get(self, key: str) -> bytes:
        with self.open(key) as f:
            return f.read()

    def get_text(self, key: str) -> str:
        return self.get(key).decode("utf-8")

    def put_text(self, key: str, text: str) -> None:
        self.put(key, text.encode("utf-8"))

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        raise NotImplementedError

    def list_wide(self, prefix: str = "", threads: int = 16) -> list[ObjectInfo]:
        """What `list(prefix)` returns, sorted by key; a remote store sends the LISTs of separate
        folders at once (a local folder is walked as it is)."""
        return sorted(self.list(prefix), key=lambda o: o.key)

    def open(self, key: str) -> BinaryIO:
        raise NotImplementedError

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """`length` bytes of `key` from byte `start` (fewer only at the end of the object)."""
        raise NotImplementedError

    def open_seekable(self, key: str, size: int | None = None, buffered: bool = True) -> BinaryIO:
        """The object as a seekable binary file (`size`, if known, saves a request; `buffered=False`:
        a remote object's reads are not rounded up to a buffer's size)."""
        return self.open(key)

    def head(self, key: str) -> ObjectInfo:
        """Size (and version tag) of one object; StoreError if there is none."""
        raise NotImplementedError

    def put(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def put_fileobj(self, key: str, fileobj: BinaryIO) -> None:
        """Upload from a readable binary file object positioned at the start."""
        raise NotImplementedError

    def stage(self, key: str) -> "Staged":
        """A file to write object `key` into; it appears whole under `key` on `commit()`, never before."""
        return Staged(self, key)

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix`; returns how many."""
        items = self.list(prefix)
        for item in items:
            self.delete(item.key)
        return len(items)


class Staged:
    """An object being written: its bytes go to `file` (readable too); `commit()` puts them under
    the key whole, `discard()` drops them. This one spools to a local temporary file and uploads it
    on commit; LocalStore's writes in place.

        with store.stage("train-000000.tar") as staged:   # committed if the block ends without error
            staged.file.write(data)
    """

    def __init__(self, store: Store, key: str):
        self.store, self.key = store, key
        self.file: BinaryIO = tempfile.TemporaryFile()

    def commit(self) -> None:
        self.file.seek(0)
        self.store.put_fileobj(self.key, self.file)
        self.file.close()

    def discard(self) -> None:
        self.file.close()

    def __enter__(self) -> "Staged":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


WRITE_PIECE = 256 * 1024
"""The most one write() hands the kernel at a time: one large write into new page-cache pages can
be 10-30x slower on some VMs (BENCHMARKS.md, Reshard: "Large writes"); the pieces also keep what is hashed on
its way out in cache for the write that follows."""


def write_pieces(f: BinaryIO, data: bytes | memoryview, before: Callable[[memoryview], object] | None = None
                 ) -> None:
    """Write `data` to `f` WRITE_PIECE bytes at a time, handing each piece to `before` first (a hash)."""
    view = memoryview(data)
    for at in range(0, len(view), WRITE_PIECE):
        piece = view[at:at + WRITE_PIECE]
        if before is not None:
            before(piece)
        f.write(piece)


def mapped(f: BinaryIO) -> memoryview:
    """The whole of local file `f`, mapped read-only: no copy; the mapping lasts while a view of it does.
    A file replaced by rename (as every writer here does) stays whole under the mapping; one cut short
    in place while mapped would end the process with SIGBUS."""
    f.flush()
    if os.fstat(f.fileno()).st_size == 0:
        return memoryview(b"")  # an empty file cannot be mapped
    return memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))


def contained(key: str, root: str) -> str:
    """`key` when it names an object below the store's root: relative, '/'-separated, no '.' or '..'
    part, no scheme; a StoreError otherwise (a crafted index or manifest must not reach outside)."""
    parts = key.split("/")
    if (not key or key.startswith("/") or "\\" in key or "\0" in key or "://" in key
            or any(p in (".", "..") for p in parts)):
        raise StoreError(f"{root}: {key!r} is not a key inside this store (keys are relative paths "
                         "without '..')")
    return key


def locked_cache(maxsize: int | None = None) -> Callable:
    """functools.lru_cache for what is costly to make and shared by threads (an S3 client, a pool):
    threads that miss together wait for the first one's value, where lru_cache alone lets each
    make its own (a worker's fetching threads on its first job: one boto3 client each)."""
    def wrap(fn: Callable) -> Callable:
        cached, lock = functools.lru_cache(maxsize)(fn), threading.Lock()

        @functools.wraps(fn)
        def call(*args):
            with lock:
                return cached(*args)

        call.cache_clear = cached.cache_clear
        return call

    return wrap


def open_store(url: str | Path, purpose: str = "other") -> Store:
    """A Store for a plain path, file:// URL or s3://bucket/prefix; its requests counted under `purpose`."""
    store = _open_store(str(url))
    store.purpose = purpose
    return store


def _open_store(url: str) -> Store:
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StoreError(f"{url}: an s3 URL needs a bucket (s3://bucket/prefix)")
        return S3Store(parsed.netloc, parsed.path.strip("/"))
    if parsed.scheme == "file":
        return LocalStore(Path(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:
        raise StoreError(f"{url}: unsupported storage scheme {parsed.scheme!r} (use a path, file:// or s3://)")
    return LocalStore(Path(url))


def is_remote(url: str) -> bool:
    return urlparse(str(url)).scheme == "s3"


class LocalStore(Store):
    def __init__(self, root: Path):
        self.root = Path(root).expanduser().absolute()
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / contained(key, self.url)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        out = []
        for key, entry in self._files(prefix):
            if temp_target(key) is None:
                try:
                    out.append(ObjectInfo(key, entry.stat().st_size))
                except FileNotFoundError:
                    continue  # deleted while listed
        return sorted(out, key=lambda o: o.key)

    def _files(self, prefix: str) -> Iterator[tuple[str, os.DirEntry]]:
        """(key, entry) of every file whose key starts with `prefix`, walking only the folder the prefix
        names; a hidden temporary of a write (hidden_name) counts under the key it is written for."""
        folder = prefix.rpartition("/")[0]
        top = self._path(folder) if folder else self.root
        for key, entry in _walk(top, f"{folder}/" if folder else ""):
            if (temp_target(key) or key).startswith(prefix):
                yield key, entry

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise StoreError(f"{self.join(key)}: no such object") from None

    def head(self, key: str) -> ObjectInfo:
        try:
            return ObjectInfo(key, self._path(key).stat().st_size)
        except FileNotFoundError:
            raise StoreError(f"{self.join(key)}: no such object") from None

    def get_range(self, key: str, start: int, length: int) -> bytes:
        with self.open(key) as f:
            f.seek(start)
            return f.read(length)

    def put(self, key: str, data: bytes) -> None:
        with self.stage(key) as staged:
            write_pieces(staged.file, data)

    def put_fileobj(self, key: str, fileobj: BinaryIO) -> None:
        with self.stage(key) as staged:
            shutil.copyfileobj(fileobj, staged.file, WRITE_PIECE)

    def stage(self, key: str) -> Staged:
        return _LocalStaged(self, key)

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        self._prune([path.parent])

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix`, and what writes to keys under it left when killed (hidden
        temporaries, which would keep a cleared folder alive: a finished job's records, say)."""
        files = list(self._files(prefix))
        for _, entry in files:
            Path(entry.path).unlink(missing_ok=True)
        self._prune({Path(entry.path).parent for _, entry in files})
        return sum(temp_target(key) is None for key, _ in files)

    def _prune(self, folders) -> None:
        """Remove `folders` and their parents below the root where empty (S3 has no empty folders either)."""
        for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
            for parent in (folder, *folder.parents):
                if parent == self.root or not parent.is_relative_to(self.root):
                    break
                try:
                    parent.rmdir()
                except FileNotFoundError:
                    continue  # removed already, as a parent of a deeper folder
                except OSError:  # not empty
                    break


def _walk(folder: Path, key_prefix: str) -> Iterator[tuple[str, os.DirEntry]]:
    """(key, entry) of every file below `folder`, hidden temporaries included."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path), f"{key_prefix}{entry.name}/")
        elif entry.is_file():
            yield f"{key_prefix}{entry.name}", entry


def temp_target(key: str) -> str | None:
    """The key a hidden temporary (hidden_name) at `key` is written for; None if it is not one."""
    folder, _, name = key.rpartition("/")
    if not (name.startswith(".") and _TMP_MARK in name):
        return None
    target = name[1:name.rindex(_TMP_MARK)]
    return f"{folder}/{target}" if folder else target


class _LocalStaged(Staged):
    """A local object written in place: an unnamed file in the object's folder (O_TMPFILE), given a
    hidden temporary name and renamed over the key on commit; where the file system cannot make
    unnamed files, a hidden temporary name from the start (left behind only if the writer is
    killed). Files are created 0666 less the umask, as any other program's are."""

    def __init__(self, store: LocalStore, key: str):
        self.store, self.key = store, key
        self.final = store._path(key)
        self.tmp: Path | None = None
        try:
            fd = self._create()
        except FileNotFoundError:  # no folder yet: made here, not before every write (a reshard writes many)
            self.final.parent.mkdir(parents=True, exist_ok=True)
            fd = self._create()
        self.file = os.fdopen(fd, "w+b")

    def _create(self) -> int:
        try:
            return os.open(self.final.parent, os.O_TMPFILE | os.O_RDWR, 0o666)
        except FileNotFoundError:
            raise
        except (AttributeError, OSError):  # not Linux, or NFS and the like
            fd, self.tmp = hidden_file(self.final)
            return fd

    def commit(self) -> None:
        self.file.flush()
        if self.tmp is None:
            self.tmp = self.named()
        self.file.close()
        os.replace(self.tmp, self.final)

    def named(self) -> Path:
        """The unnamed file linked under a hidden temporary name (linkat through /proc, the documented
        way to name an O_TMPFILE), or copied out to one where there is no /proc."""
        folder = os.open(self.final.parent, os.O_RDONLY)
        try:
            name = hidden_name(self.final)
            os.link(f"/proc/self/fd/{self.file.fileno()}", name.name, dst_dir_fd=folder)
            return name
        except OSError:
            fd, name = hidden_file(self.final)
            with os.fdopen(fd, "wb") as out:
                self.file.seek(0)
                shutil.copyfileobj(self.file, out, WRITE_PIECE)
            return name
        finally:
            os.close(folder)

    def discard(self) -> None:
        self.file.close()
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)


def hidden_name(final: Path) -> Path:
    """A fresh hidden temporary name beside `final`, one that listings skip."""
    return final.with_name(f".{final.name}{_TMP_MARK}{os.urandom(6).hex()}")


def hidden_file(final: Path) -> tuple[int, Path]:
    """A new file beside `final` under a hidden temporary name: (fd, path)."""
    while True:
        name = hidden_name(final)
        try:
            return os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666), name
        except FileExistsError:
            continue


class S3Store(Store):
    multipart_threshold = 64 * 1024 * 1024
    """Objects at least this large go up as a multipart upload (parts of `multipart_chunksize`)."""
    multipart_chunksize = 16 * 1024 * 1024

    def __init__(self, bucket: str, prefix: str):
        self.bucket, self.prefix = bucket, prefix
        self.url = f"s3://{bucket}/{prefix}".rstrip("/")
        self.client = s3_client()
        self.client.meta.events.register("before-send.s3", self._count_sent)
        self.client.meta.events.register("after-call.s3.GetObject", self._count_got)

    def _count_sent(self, request, event_name: str, **_) -> None:
        """Every request as it is sent (retries and multipart parts included), with what it uploads.
        Returns None: a value would stand in for the response."""
        operation = event_name.rsplit(".", 1)[-1]
        kind = _KIND_OF.get(operation, "PUT")
        nbytes = int(request.headers.get("Content-Length") or 0) if kind == "PUT" else 0
        REQUESTS.add(self.purpose, kind, nbytes)

    def _count_got(self, parsed: dict, **_) -> None:
        """The bytes a GET answered with."""
        REQUESTS.add(self.purpose, "GET", int(parsed.get("ContentLength") or 0), requests=0)

    def _key(self, key: str) -> str:
        key = contained(key, self.url)
        return f"{self.prefix}/{key}" if self.prefix else key

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        return self._list_pages(prefix)[0]

    def _list_pages(self, prefix: str, **delimiter) -> tuple[list[ObjectInfo], list[str]]:
        """(the objects under `prefix`, the folder prefixes found when a Delimiter is given)."""
        from botocore.exceptions import ClientError

        root = f"{self.prefix}/" if self.prefix else ""
        objects, folders = [], []
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=root + prefix,
                                                                       **delimiter)
        try:
            for page in pages:
                objects += [ObjectInfo(o["Key"][len(root):], o["Size"], o.get("ETag", "").strip('"'))
                            for o in page.get("Contents", [])]
                folders += [p["Prefix"][len(root):] for p in page.get("CommonPrefixes", [])]
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") == "NoSuchBucket":
                raise StoreError(f"{self.url}: no such bucket") from None
            raise
        return objects, folders

    def list_wide(self, prefix: str = "", threads: int = 16) -> list[ObjectInfo]:
        """`list(prefix)` with the LISTs of separate folders sent at once: folders are opened level by
        level (a LIST with a delimiter each, up to 3 levels) until there are `threads` of them, then
        each is listed whole, `threads` at a time. A corpus of millions of files in folders (by
        speaker, split or date) lists in a fraction of one paginated pass (a page is 1,000 keys)."""
        from concurrent.futures import ThreadPoolExecutor

        out, folders = [], [prefix]
        with ThreadPoolExecutor(threads, thread_name_prefix="list") as pool:
            for _ in range(3):
                if not folders or len(folders) >= threads:
                    break
                levels, folders = list(pool.map(self._list_level, folders)), []
                for objects, subfolders in levels:
                    out += objects
                    folders += subfolders
            for objects in pool.map(self.list, folders):
                out += objects
        return sorted(out, key=lambda o: o.key)

    def _list_level(self, folder: str) -> tuple[list[ObjectInfo], list[str]]:
        """(the objects right under `folder`, its sub-folders' prefixes): a LIST with a delimiter."""
        return self._list_pages(folder, Delimiter="/")

    def open_seekable(self, key: str, size: int | None = None, buffered: bool = True) -> BinaryIO:
        """The object as a seekable file: each buffer refill is one ranged GET (for decoders and
        parquet readers that jump about; `open` streams front to back in one GET). `buffered=False`
        for a reader that asks for exactly the ranges it needs (pyarrow's pre_buffer): a read after
        a seek is then one GET of just its bytes, not of RANGED_BUFFER."""
        if size is None:
            size = self.head(key).size
        reader = _RangedReader(self, key, size)
        return io.BufferedReader(reader, buffer_size=RANGED_BUFFER) if buffered else reader

    def head(self, key: str) -> ObjectInfo:
        from botocore.exceptions import ClientError

        try:
            meta = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise StoreError(f"{self.join(key)}: no such object") from None
            raise
        return ObjectInfo(key, meta["ContentLength"], meta.get("ETag", "").strip('"'))

    def open(self, key: str) -> BinaryIO:
        return io.BufferedReader(_ResumingS3Reader(self.client, self.bucket, self._key(key), self.join(key)),
                                 buffer_size=1024 * 1024)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        from botocore.exceptions import ClientError

        if length <= 0:
            return b""
        for attempt in range(_ResumingS3Reader.max_resumes + 1):
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self._key(key),
                                              Range=f"bytes={start}-{start + length - 1}")["Body"].read()
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                    raise StoreError(f"{self.join(key)}: no such object") from None
                raise
            except dropped_connection():
                if attempt == _ResumingS3Reader.max_resumes:
                    raise
                time.sleep(min(0.2 * 2 ** attempt, 5.0))
        raise AssertionError("unreachable")

    def put(self, key: str, data: bytes) -> None:
        if len(data) >= self.multipart_threshold:
            self.put_fileobj(key, io.BytesIO(data))
        else:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_fileobj(self, key: str, fileobj: BinaryIO) -> None:
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(multipart_threshold=self.multipart_threshold,
                                multipart_chunksize=self.multipart_chunksize, use_threads=True)
        self.client.upload_fileobj(fileobj, self.bucket, self._key(key), Config=config)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    delete_batch = 1000
    """Keys per DeleteObjects request (S3's most)."""

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix` in batches (one request per 1000 keys, not one per key:
        clearing a run's records or an overwritten dataset's shards); one key at a time where the
        store has no batch delete (GCS's S3 interop)."""
        from botocore.exceptions import ClientError

        keys = [self._key(item.key) for item in self.list(prefix)]
        for start in range(0, len(keys), self.delete_batch):
            batch = keys[start:start + self.delete_batch]
            try:
                response = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") not in ("NotImplemented", "MethodNotAllowed"):
                    raise
                for key in keys[start:]:
                    self.client.delete_object(Bucket=self.bucket, Key=key)
                break
            if response.get("Errors"):
                error = response["Errors"][0]
                raise StoreError(f"s3://{self.bucket}/{error.get('Key')}: not deleted ({error.get('Code')}: "
                                 f"{error.get('Message')}); {len(response['Errors'])} of this batch failed")
        return len(keys)


S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
          "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE")
"""The variables an S3 client takes its endpoint, credentials and region from."""


def s3_environment() -> dict[str, str | None]:
    """This process's S3 variables (None: unset), for a process that must reach the same store:
    a forkserver's child has the environment the forkserver started with, not this one's now."""
    return {name: os.environ.get(name) for name in S3_ENV}


def take_s3_environment(env: dict[str, str | None]) -> None:
    """Make this process's S3 variables `env` (s3_environment() of another)."""
    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def s3_client():
    """A boto3 S3 client with standard AWS configuration and patient retries."""
    import boto3
    from botocore.config import Config

    # "Found credentials in environment variables" at INFO, from every process that makes a client:
    # a job log would carry it once per worker.
    logging.getLogger("botocore.credentials").setLevel(logging.WARNING)
    # Checksums only when required: boto3's newer default (trailing CRC checksums on every PUT)
    # is refused by several S3-compatible stores (R2, GCS interop, older MinIO).
    config = Config(retries={"mode": "standard", "max_attempts": 8},
                    connect_timeout=10, read_timeout=60, max_pool_connections=32,
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required")
    return boto3.session.Session().client("s3", config=config)


@functools.lru_cache(maxsize=None)
def dropped_connection() -> tuple[type[BaseException], ...]:
    """Errors of a read that broke off mid-body: worth another GET (imported on first use: botocore
    is slow to import and a local run never needs it)."""
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import ReadTimeoutError, ResponseStreamingError
        from urllib3.exceptions import ProtocolError
    except ImportError:  # no boto3: no S3 either
        return (OSError,)
    return (BotoConnectionError, ReadTimeoutError, ResponseStreamingError, ProtocolError, OSError)


class _ResumingS3Reader(io.RawIOBase):
    """A streaming GET that reopens with a Range header when the connection drops mid-body."""

    max_resumes = 5

    def __init__(self, client, bucket: str, key: str, url: str):
        from botocore.exceptions import ClientError

        self.client, self.bucket, self.key, self.url = client, bucket, key, url
        self.pos = 0
        try:
            self.body = self._get()
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise StoreError(f"{url}: no such object") from None
            if code == "NoSuchBucket":
                raise StoreError(f"{url}: no such bucket") from None
            raise

    def _get(self):
        extra = {"Range": f"bytes={self.pos}-"} if self.pos else {}
        return self.client.get_object(Bucket=self.bucket, Key=self.key, **extra)["Body"]

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        for attempt in range(self.max_resumes + 1):
            try:
                data = self.body.read(len(buffer))
                break
            except dropped_connection():
                if attempt == self.max_resumes:
                    raise
                time.sleep(min(0.2 * 2 ** attempt, 5.0))
                self.body = self._get()
        n = len(data)
        buffer[:n] = data
        self.pos += n
        return n

    def close(self) -> None:
        if not self.closed and hasattr(self, "body"):
            self.body.close()
        super().close()


RANGED_BUFFER = 1 << 20
"""Bytes one ranged GET of a seekable remote file fetches (a refill of its buffer)."""
READ_PART, READ_AHEAD = 8 << 20, 3
"""A remote file read front to back (a parquet column, a tar.gz), or in one long read, is fetched
READ_PART bytes a GET with READ_AHEAD GETs in flight ahead of the reader: one GET at a time leaves
a worker waiting out S3's ~30 ms a request and one connection's bandwidth (S3's advice: byte-range
parts of 8-16 MB, fetched side by side). It holds at most (READ_AHEAD + 1) * READ_PART bytes a file
(benchmarks/remote_read_bench.py); READ_AHEAD 0: off, every read one GET of what it asks."""


@locked_cache()
def _read_ahead_pool():
    """The process's one pool of part-fetching threads."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(16, thread_name_prefix="read-ahead")


class _RangedReader(io.RawIOBase):
    """A remote object read through ranged GETs at any offset: what `open_seekable` buffers. A read
    that goes on where the last one ended, or a long one, is served from READ_PART parts fetched on
    threads, READ_AHEAD of them ahead of the reader; any other read (a parquet footer, the first
    read after a seek) is one GET of what it asks, and drops the parts."""

    def __init__(self, store: Store, key: str, size: int):
        self.store, self.key, self.size, self.pos = store, key, size, 0
        self.last_end = -1
        """Where the last read ended (-1: none yet)."""
        self.parts: dict[int, tuple[int, Future]] = {}
        """Start offset -> (length, future of the bytes) of the parts fetched from `pos` on, in order."""
        self.next_part = 0
        """Where the next part to fetch starts."""
        self.ahead_to = size
        """Parts are fetched ahead up to here (what the reader will want), and past it only when read."""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = max(0, {0: 0, 1: self.pos, 2: self.size}[whence] + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readall(self) -> bytes:  # the rest as one read (one GET, or the parts), not one per 8 KiB
        n = self.size - self.pos
        if n <= 0:
            return b""
        if not self._in_parts(n):
            return self._one_get(n)
        buffer = bytearray(n)
        del buffer[self.readinto(buffer):]
        return bytes(buffer)

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.size - self.pos)
        if n <= 0:
            return 0
        view = memoryview(buffer).cast("B")
        if not self._in_parts(n):
            data = self._one_get(n)
            view[:len(data)] = data
            return len(data)
        got = self._from_parts(view, n)
        self.pos += got
        self.last_end = self.pos
        return got

    def _in_parts(self, n: int) -> bool:
        """Whether a read of `n` bytes from `pos` goes on from the last one, or is long."""
        return READ_AHEAD > 0 and (self.pos == self.last_end or n > READ_PART)

    def _one_get(self, n: int) -> bytes:
        self._drop_parts()
        data = self.store.get_range(self.key, self.pos, n)
        self.pos += len(data)
        self.last_end = self.pos
        return data

    def _from_parts(self, view: memoryview, n: int) -> int:
        """Copy [pos, pos + n) out of the parts in order, keeping READ_AHEAD more in flight."""
        first = next(iter(self.parts.items()), None)
        if first is None or not first[0] <= self.pos < first[0] + first[1][0]:
            self._drop_parts()
            self.next_part = self.pos
        done = 0
        while done < n:
            self._fetch_ahead(self.pos + n)
            start, (length, future) = next(iter(self.parts.items()))
            data = future.result()
            at = self.pos + done - start
            take = min(n - done, len(data) - at)
            if take <= 0:  # the object is shorter than listed: what there was
                self._drop_parts()
                break
            view[done:done + take] = memoryview(data)[at:at + take]
            done += take
            if at + take == length:  # used up
                del self.parts[start]
        return done

    def _fetch_ahead(self, wanted_to: int) -> None:
        pool = _read_ahead_pool()
        while (self.next_part < min(self.size, max(wanted_to, self.ahead_to))
               and len(self.parts) <= READ_AHEAD):
            limit = self.ahead_to if self.next_part < self.ahead_to else min(self.size, wanted_to)  # past it: as read
            length = min(READ_PART, limit - self.next_part)
            self.parts[self.next_part] = length, pool.submit(self.store.get_range, self.key, self.next_part, length)
            self.next_part += length

    def _drop_parts(self) -> None:
        for _, future in self.parts.values():
            future.cancel()
        self.parts.clear()

    def close(self) -> None:
        self._drop_parts()
        super().close()


def read_ahead_to(f: BinaryIO, end: int) -> None:
    """Tell a file from `open_seekable` that reading on will stop at `end` (a parquet row group's
    last column chunk): parts are not fetched ahead past it. Nothing for other files."""
    raw = getattr(f, "raw", None)
    if isinstance(raw, _RangedReader):
        raw.ahead_to = end


def iter_chunks(stream: BinaryIO, size: int = 1024 * 1024) -> Iterator[bytes]:
    while chunk := stream.read(size):
        yield chunk
