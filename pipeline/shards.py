"""The shard format, defined once: writer, index and reader of telucodec datasets.

A dataset is a store prefix holding WebDataset tars named `{split}-{000000}.tar` and an `index.json`
written last. Each sample is `KEY.flac` (mono, 16-bit) plus `KEY.json` (source, speaker, text,
seconds, sample_rate, source_peak, clipped_samples, ...). A prefix without `index.json` is not a
dataset, and readers refuse it.

    index = load_index("s3://bucket/te")                       # DatasetIndex
    for sample in read_samples("s3://bucket/te", "train"):     # Sample(key, audio [T], sr, meta)
        ...
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np
import soundfile as sf

from pipeline.errors import TelucodecError
from pipeline.store import Store, StoreError, iter_chunks, open_store

INDEX_NAME = "index.json"
FORMAT = "telucodec-shards/1"
SPLITS = ("train", "val", "test")
_SHARD_RE = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<n>\d{6})\.tar$")


class DatasetError(TelucodecError, RuntimeError):
    """A dataset that is missing, incomplete or does not match its index."""


def shard_name(split: str, n: int) -> str:
    return f"{split}-{n:06d}.tar"


def parse_shard_name(name: str) -> tuple[str, int] | None:
    m = _SHARD_RE.match(name)
    return (m["split"], int(m["n"])) if m else None


def safe_key(text: str) -> str:
    """A WebDataset-safe key part: no dots or slashes (WebDataset splits keys at the first dot)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "x"


@dataclass
class Sample:
    key: str
    audio: np.ndarray
    """Mono float32 samples in [-1, 1], shape [T]."""
    sample_rate: int
    meta: dict = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate


@dataclass(frozen=True)
class EncodedSample:
    """A sample as it goes into a tar: bytes per extension."""
    key: str
    flac: bytes
    meta: bytes
    seconds: float

    @property
    def nbytes(self) -> int:
        return len(self.flac) + len(self.meta) + 1024  # two tar headers


def encode_sample(key: str, audio: np.ndarray, sample_rate: int, meta: dict) -> EncodedSample:
    """FLAC-encode mono audio [T] (already in [-1, 1]) and its metadata."""
    buf = io.BytesIO()
    sf.write(buf, np.asarray(audio, dtype=np.float32), sample_rate, format="FLAC", subtype="PCM_16")
    seconds = len(audio) / sample_rate
    meta = {**meta, "seconds": round(seconds, 6), "sample_rate": sample_rate}
    return EncodedSample(key, buf.getvalue(), json.dumps(meta, ensure_ascii=False, sort_keys=True).encode(), seconds)


def encoded_from_parts(key: str, parts: dict[str, bytes]) -> EncodedSample:
    """A sample read from a tar (`iter_tar`), ready to write again byte for byte: no FLAC decode."""
    if "flac" not in parts:
        raise DatasetError(f"{key}: sample has no .flac member")
    meta = parts.get("json", b"{}")
    seconds = json.loads(meta).get("seconds")
    if seconds is None:  # older metadata: read the length from the FLAC header
        seconds = sf.info(io.BytesIO(parts["flac"])).duration
    return EncodedSample(key, parts["flac"], meta, float(seconds))


def decode_flac(data: bytes) -> tuple[np.ndarray, int]:
    """FLAC bytes -> (mono float32 [T], sample rate)."""
    audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    return audio, sr


@dataclass
class ShardInfo:
    name: str
    split: str
    samples: int
    seconds: float
    bytes: int
    sha256: str


@dataclass
class DatasetIndex:
    shards: list[ShardInfo]
    sample_rate: int
    config: dict = field(default_factory=dict)
    """The config that made the dataset (prep or reshard options)."""
    lineage: dict = field(default_factory=dict)
    """Where the data came from (for a reshard: source URL, source index sha256)."""
    version: str = ""
    created: str = ""
    format: str = FORMAT

    def split_shards(self, split: str) -> list[ShardInfo]:
        return [s for s in self.shards if s.split == split]

    @property
    def splits(self) -> dict[str, dict]:
        """Totals per split: shards, samples, seconds, bytes."""
        out: dict[str, dict] = {}
        for s in self.shards:
            t = out.setdefault(s.split, {"shards": 0, "samples": 0, "seconds": 0.0, "bytes": 0})
            t["shards"] += 1
            t["samples"] += s.samples
            t["seconds"] = round(t["seconds"] + s.seconds, 6)
            t["bytes"] += s.bytes
        return out

    def to_json(self) -> str:
        data = {"format": self.format, "version": self.version, "created": self.created,
                "sample_rate": self.sample_rate, "splits": self.splits,
                "shards": [asdict(s) for s in self.shards], "config": self.config, "lineage": self.lineage}
        return json.dumps(data, indent=1, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str, where: str = "index.json") -> "DatasetIndex":
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise DatasetError(f"{where}: unknown format {data.get('format')!r} (expected {FORMAT})")
            return cls(shards=[ShardInfo(**s) for s in data["shards"]], sample_rate=data["sample_rate"],
                       config=data.get("config", {}), lineage=data.get("lineage", {}),
                       version=data.get("version", ""), created=data.get("created", ""))
        except (ValueError, KeyError, TypeError) as e:
            raise DatasetError(f"{where}: not a valid telucodec index ({e})") from None


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("telucodec")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0+unknown"


def write_index(store: Store, index: DatasetIndex) -> None:
    """Write index.json; call it last, once every shard it names is in place."""
    index.version = index.version or package_version()
    index.created = index.created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    store.put_text(INDEX_NAME, index.to_json())


def load_index(url_or_store: str | Store) -> DatasetIndex:
    """The index of a dataset; DatasetError if the prefix holds no finished dataset."""
    store = open_store(url_or_store) if isinstance(url_or_store, str) else url_or_store
    try:
        text = store.get_text(INDEX_NAME)
    except StoreError:
        raise DatasetError(f"{store.url}: not a dataset (no {INDEX_NAME}; an unfinished prep or a "
                           "wrong URL)") from None
    return DatasetIndex.from_json(text, store.join(INDEX_NAME))


def index_sha256(store: Store) -> str:
    return hashlib.sha256(store.get(INDEX_NAME)).hexdigest()


class ShardWriter:
    """Builds one tar in a temporary file, then puts it to the store whole.

        with ShardWriter(store, "train", 0) as w:
            w.add(encoded); ...
        info = w.info      # ShardInfo, after the tar is in the store
    """

    def __init__(self, store: Store, split: str, n: int):
        self.store, self.split, self.name = store, split, shard_name(split, n)
        self.tmp = tempfile.TemporaryFile()
        self.tar = tarfile.open(fileobj=self.tmp, mode="w", format=tarfile.USTAR_FORMAT, copybufsize=1 << 20)
        self.samples, self.seconds, self.keys = 0, 0.0, []
        self.info: ShardInfo | None = None

    @property
    def nbytes(self) -> int:
        return self.tmp.tell()

    def add(self, sample: EncodedSample) -> None:
        for ext, data in (("flac", sample.flac), ("json", sample.meta)):
            member = tarfile.TarInfo(f"{sample.key}.{ext}")
            member.size, member.mtime, member.mode = len(data), 0, 0o444  # fixed: same input, same sha256
            self.tar.addfile(member, io.BytesIO(data))
        self.samples += 1
        self.seconds += sample.seconds
        self.keys.append(sample.key)

    def close(self) -> ShardInfo:
        """Finish the tar and put it to the store; returns its ShardInfo."""
        self.tar.close()
        size = self.tmp.tell()
        self.tmp.seek(0)
        digest = hashlib.sha256()
        while chunk := self.tmp.read(1 << 20):
            digest.update(chunk)
        self.tmp.seek(0)
        self.store.put_fileobj(self.name, self.tmp)
        self.tmp.close()
        self.info = ShardInfo(self.name, self.split, self.samples, round(self.seconds, 6), size,
                              digest.hexdigest())
        return self.info

    def abort(self) -> None:
        self.tmp.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def iter_tar(stream) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) for each sample of a tar stream, in order."""
    current, parts = None, {}
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            if key != current and current is not None:
                yield current, parts
                parts = {}
            current = key
            parts[ext] = tar.extractfile(member).read()
    if current is not None:
        yield current, parts


def sample_from_parts(key: str, parts: dict[str, bytes]) -> Sample:
    audio, sr = decode_flac(parts["flac"])
    meta = json.loads(parts["json"]) if "json" in parts else {}
    return Sample(key, audio, sr, meta)


def _gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **_):
    """webdataset opener for s3:// URLs: boto3 in-process (no `pipe:aws s3 cp`)."""
    if mode[0] != "r":
        raise ValueError(f"{url}: telucodec opens s3 shards for reading only")
    store = open_store(url.rsplit("/", 1)[0])
    return store.open(url.rsplit("/", 1)[1])


def register_webdataset_s3() -> None:
    import webdataset

    webdataset.gopen_schemes["s3"] = _gopen_s3


def shard_urls(url: str, split: str, index: DatasetIndex | None = None) -> list[str]:
    store = open_store(url)
    index = index or load_index(store)
    names = [s.name for s in index.split_shards(split)]
    if not names:
        raise DatasetError(f"{store.url}: split {split!r} has no shards "
                           f"(splits: {', '.join(index.splits) or 'none'})")
    return [store.join(n) for n in names]


def webdataset_samples(urls: list[str], *, nodesplitter: Callable | None = None,
                       workersplitter: Callable | None = None, shardshuffle: int | bool = False,
                       seed: int = 0):
    """A stock `webdataset.WebDataset` over `urls` that yields `Sample`s (FLAC decoded by soundfile)."""
    import webdataset as wds

    register_webdataset_s3()
    ds = wds.WebDataset(urls, shardshuffle=shardshuffle, seed=seed, empty_check=False,
                        nodesplitter=nodesplitter or wds.single_node_only,
                        workersplitter=workersplitter or wds.split_by_worker)
    return ds.map(_sample_from_wds)


def _sample_from_wds(item: dict) -> Sample:
    return sample_from_parts(item["__key__"], {"flac": item["flac"], "json": item.get("json", b"{}")})


def read_samples(url: str, split: str) -> Iterable[Sample]:
    """Every sample of one split, in shard order, through webdataset."""
    return webdataset_samples(shard_urls(url, split))


def shard_mismatches(info: ShardInfo, chunks: Iterable[bytes]) -> list[str]:
    """How a shard's bytes differ from its entry in the index (size, sha256); empty when they match."""
    digest, size = hashlib.sha256(), 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    problems = [f"size {size} != index {info.bytes}"] if size != info.bytes else []
    if digest.hexdigest() != info.sha256:
        problems.append("sha256 differs from the index")
    return problems


def shard_matches(store: Store, info: ShardInfo) -> bool:
    """Whether `store` still holds shard `info` as the index names it (streamed, never held whole)."""
    try:
        with store.open(info.name) as f:
            return not shard_mismatches(info, iter_chunks(f))
    except StoreError:
        return False


def verify_dataset(url: str, on_shard: Callable[[ShardInfo], None] | None = None) -> list[str]:
    """Re-hash every shard against the index and decode every sample; returns the problems found."""
    store = open_store(url)
    index = load_index(store)
    problems = []
    for info in index.shards:
        problems += [f"{info.name}: {p}" for p in _verify_shard(store, info)]
        if on_shard:
            on_shard(info)
    return problems


def _verify_shard(store: Store, info: ShardInfo) -> list[str]:
    try:
        data = store.get(info.name)
    except StoreError:
        return ["missing"]
    problems = shard_mismatches(info, [data])
    count = 0
    try:
        for key, parts in iter_tar(io.BytesIO(data)):
            sample = sample_from_parts(key, parts)
            count += 1
            if sample.audio.size and (not np.isfinite(sample.audio).all() or np.abs(sample.audio).max() > 1.0):
                problems.append(f"{key}: samples outside [-1, 1]")
    except Exception as e:  # any decode failure is a finding, not a crash
        problems.append(f"unreadable ({type(e).__name__}: {e})")
    if count != info.samples and not problems:
        problems.append(f"{count} samples != index {info.samples}")
    return problems
