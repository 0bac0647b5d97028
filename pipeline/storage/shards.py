"""The shard format, defined once: writer, index and reader of telucodec datasets.

A dataset is a store prefix holding WebDataset tars named `{split}-{000000}.tar` and an `index.json`
written last. Each sample is `KEY.flac` (mono, 16-bit) plus `KEY.json` (source, speaker, text,
seconds, sample_rate, source_peak, clipped_samples, ...). A prefix without `index.json` is not a
dataset, and readers refuse it. The index records where each sample lies in its tar
(`ShardInfo.sample_ranges`), so training reads one sample with one ranged GET and reshard copies
samples as byte ranges; an index written before those ranges existed is upgraded by one scan
(`upgrade_index`, `telucodec shards upgrade URL`).

    index = load_index("s3://bucket/te")                       # DatasetIndex
    for sample in read_samples("s3://bucket/te", "train"):     # Sample(key, audio [T], sr, meta)
        ...
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import re
import tarfile
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np
import soundfile as sf
import xxhash

from pipeline.errors import TelucodecError
from pipeline.storage.store import Store, StoreError, iter_chunks, open_store, write_pieces

INDEX_NAME = "index.json"
FORMAT = "telucodec-shards/1"
SPLITS = ("train", "val", "test")
_SHARD_RE = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<n>\d{6})\.tar$")


class DatasetError(TelucodecError, RuntimeError):
    """A dataset that is missing, incomplete or does not match its index."""


def shard_name(split: str, n: int) -> str:
    return f"{split}-{n:06d}.tar"


def parse_shard_name(name: str) -> tuple[str, int] | None:
    m = _SHARD_RE.fullmatch(name)
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
    frames: int
    """Audio length in samples (from the FLAC header when read back)."""

    @property
    def nbytes(self) -> int:
        return len(self.flac) + len(self.meta) + 1024  # two tar headers


def encode_sample(key: str, audio: np.ndarray, sample_rate: int, meta: dict) -> EncodedSample:
    """FLAC-encode mono audio [T] (already in [-1, 1]) and its metadata."""
    buf = io.BytesIO()
    sf.write(buf, np.asarray(audio, dtype=np.float32), sample_rate, format="FLAC", subtype="PCM_16")
    seconds = len(audio) / sample_rate
    meta = {**meta, "seconds": round(seconds, 6), "sample_rate": sample_rate}
    return EncodedSample(key, buf.getvalue(), json.dumps(meta, ensure_ascii=False, sort_keys=True).encode(),
                         seconds, len(audio))


def encoded_from_parts(key: str, parts: dict[str, bytes]) -> EncodedSample:
    """A sample read from a tar (`iter_tar`), ready to write again byte for byte: no FLAC decode."""
    if "flac" not in parts:
        raise DatasetError(f"{key}: sample has no .flac member")
    meta = parts.get("json", b"{}")
    frames, rate = flac_length(parts["flac"])
    seconds = json.loads(meta).get("seconds")
    if seconds is None:  # older metadata: the length from the FLAC header
        seconds = frames / rate
    return EncodedSample(key, parts["flac"], meta, float(seconds), frames)


def flac_length(data: bytes) -> tuple[int, int]:
    """(frames, sample rate) from a FLAC stream's STREAMINFO block, without decoding."""
    if data[:4] != b"fLaC" or len(data) < 42:
        raise DatasetError("not a FLAC stream")
    packed = int.from_bytes(data[18:26], "big")  # 20 bits rate, 3 channels, 5 bits/sample, 36 frames
    frames, rate = packed & ((1 << 36) - 1), packed >> 44
    if frames == 0 or rate == 0:  # a writer that could not seek back leaves them unset
        info = sf.info(io.BytesIO(data))
        frames, rate = info.frames, info.samplerate
    return frames, rate


def decode_flac(data: bytes) -> tuple[np.ndarray, int]:
    """FLAC bytes -> (mono float32 [T], sample rate)."""
    audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    return audio, sr


class SampleRange(NamedTuple):
    """Where one sample lies in its tar: its members from the first header to the end of the last
    member's padding (`start`, `end`), the FLAC data inside them, and its length in frames."""
    start: int
    flac_offset: int
    flac_size: int
    end: int
    frames: int


DIGEST = "xxh3_128"
"""The digest new shards are indexed with: xxHash's XXH3 at 128 bits. It tells a shard cut short,
corrupted or swapped from the one indexed, at ~25 GB/s a core where sha256 runs ~1.5 GB/s here (a
plain reshard hashes every byte twice: the source against its index, the destination for its own).
It is not a defence against a crafted shard, and neither was sha256 here: whoever can replace a
shard can rewrite the index.json beside it. Indexes written with sha256 are still read and checked
with it."""
DIGESTS = {"xxh3_128": xxhash.xxh3_128, "sha256": hashlib.sha256}
"""Digest algorithms an index may name, by their index.json key."""
_DIGEST_HEX = {"xxh3_128": 32, "sha256": 64}


def new_hasher(algorithm: str = DIGEST):
    """A fresh hash object (update/hexdigest) of `algorithm`, a key of DIGESTS."""
    return DIGESTS[algorithm]()


def digest_text(algorithm: str, hasher) -> str:
    """A shard digest as ShardInfo keeps it: "ALGORITHM:HEX"."""
    return f"{algorithm}:{hasher.hexdigest()}"


@dataclass
class ShardInfo:
    name: str
    split: str
    samples: int
    seconds: float
    bytes: int
    digest: str
    """"ALGORITHM:HEX" of the whole tar (ALGORITHM a key of DIGESTS; in index.json the algorithm is the
    field's name: `"xxh3_128": HEX`)."""
    sample_ranges: list[SampleRange] | None = None
    """One entry per sample, in tar order; None in an index written before they were recorded."""

    def __post_init__(self):
        if self.sample_ranges and not isinstance(self.sample_ranges[0], SampleRange):  # from a record
            self.sample_ranges = [SampleRange(*r) for r in self.sample_ranges]

    @property
    def algorithm(self) -> str:
        return self.digest.partition(":")[0]

    @classmethod
    def from_record(cls, record: dict) -> "ShardInfo":
        """A ShardInfo from a run record (its fields by name); a record written before digests named
        their algorithm holds "sha256"."""
        record = dict(record)
        if "sha256" in record:
            record["digest"] = f"sha256:{record.pop('sha256')}"
        return cls(**record)


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
        """The index as text: one line per shard (a large dataset's index holds ~10^5 sample ranges;
        the shards are encoded by json's C encoder, which an indented dump does not use)."""
        def members(obj: dict) -> str:  # an indented object's lines, without its braces
            return json.dumps(obj, indent=1, ensure_ascii=False)[1:-1].strip("\n")

        head = {"format": self.format, "version": self.version, "created": self.created,
                "sample_rate": self.sample_rate, "splits": self.splits}
        shards = "".join(f"{',' if i else ''}\n  {json.dumps(_shard_json(s), ensure_ascii=False)}"
                         for i, s in enumerate(self.shards))
        return (f"{{\n{members(head)},\n \"shards\": [{shards}\n ],\n"
                f"{members({'config': self.config, 'lineage': self.lineage})}\n}}\n")

    @classmethod
    def from_json(cls, text: str, where: str = "index.json") -> "DatasetIndex":
        """The index in `text`, checked field by field (a crafted or damaged index is refused in one
        line before anything reads a shard it names)."""
        try:
            data = json.loads(text)
        except ValueError as e:
            raise DatasetError(f"{where}: not a valid telucodec index (not JSON: {e})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else None
            raise DatasetError(f"{where}: unknown format {found!r} (expected {FORMAT})")
        rate, shards = data.get("sample_rate"), data.get("shards")
        if not _is_int(rate) or not 1000 <= rate <= 384000:
            raise DatasetError(f"{where}: sample_rate {rate!r} is not a rate in Hz (1000-384000)")
        if not isinstance(shards, list):
            raise DatasetError(f"{where}: 'shards' is not a list")
        extra = {k: data.get(k, d) for k, d in (("config", {}), ("lineage", {}), ("version", ""), ("created", ""))}
        if not all(isinstance(extra[k], dict) for k in ("config", "lineage")) or \
                not all(isinstance(extra[k], str) for k in ("version", "created")):
            raise DatasetError(f"{where}: config/lineage must be objects, version/created strings")
        names = set()
        infos = [shard_from_json(s, f"{where}: shard {i}") for i, s in enumerate(shards)]
        for info in infos:
            if info.name in names:
                raise DatasetError(f"{where}: shard {info.name} is listed twice")
            names.add(info.name)
        return cls(shards=infos, sample_rate=rate, **extra)


_SPLIT_RE = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_HEX_RE = re.compile(r"^[0-9a-f]+$")
_MIN_SAMPLE_BYTES = 3 * tarfile.BLOCKSIZE  # two member headers and at least one block of FLAC


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def shard_from_json(s, where: str) -> ShardInfo:
    """One shard entry of index.json, checked: a plain split name, a `{split}-NNNNNN.tar` name (so no
    path can reach outside the dataset), sizes and counts that fit each other, sample ranges inside
    the shard and in order."""
    if not isinstance(s, dict):
        raise DatasetError(f"{where}: not an object")
    split, name = s.get("split"), s.get("name")
    if not isinstance(split, str) or not _SPLIT_RE.fullmatch(split):
        raise DatasetError(f"{where}: split {split!r} is not a plain name (letters, digits, _)")
    if not isinstance(name, str) or parse_shard_name(name) is None or parse_shard_name(name)[0] != split:
        raise DatasetError(f"{where}: name {name!r} is not {split}-NNNNNN.tar")
    samples, size, seconds = s.get("samples"), s.get("bytes"), s.get("seconds")
    if not (_is_int(samples) and _is_int(size) and 0 <= samples and 0 <= size < 1 << 50):
        raise DatasetError(f"{where} ({name}): samples and bytes must be non-negative integers")
    if samples * _MIN_SAMPLE_BYTES > size:
        raise DatasetError(f"{where} ({name}): {samples} samples cannot fit in {size} bytes")
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 <= seconds < 1e9:
        raise DatasetError(f"{where} ({name}): seconds {seconds!r} is not a duration")
    named = [a for a in DIGESTS if a in s]
    if len(named) != 1:
        raise DatasetError(f"{where} ({name}): needs one digest ({' or '.join(DIGESTS)}), found {len(named)}")
    algorithm, value = named[0], s[named[0]]
    if not isinstance(value, str) or len(value) != _DIGEST_HEX[algorithm] or not _HEX_RE.fullmatch(value):
        raise DatasetError(f"{where} ({name}): {algorithm} is not {_DIGEST_HEX[algorithm]} lowercase hex digits")
    ranges = s.get("sample_ranges")
    if ranges is not None:
        ranges = _ranges_from_json(ranges, samples, size, f"{where} ({name})")
    return ShardInfo(name, split, samples, float(seconds), size, f"{algorithm}:{value}", ranges)


def _ranges_from_json(ranges, samples: int, size: int, where: str) -> list[SampleRange]:
    if not isinstance(ranges, list) or len(ranges) != samples:
        raise DatasetError(f"{where}: sample_ranges must list one entry per sample ({samples})")
    out, last_end = [], 0
    for r in ranges:  # per sample of a whole dataset when it loads: plain type checks, not isinstance
        if not (type(r) is list and len(r) == 5
                and type(r[0]) is type(r[1]) is type(r[2]) is type(r[3]) is type(r[4]) is int and r[4] >= 0):
            raise DatasetError(f"{where}: a sample range is not 5 non-negative integers: {r!r}")
        start, flac_offset, flac_size, end, _ = r
        if not last_end <= start < flac_offset <= flac_offset + flac_size <= end <= size:
            raise DatasetError(f"{where}: sample range {r} is out of order or outside the shard")
        out.append(SampleRange._make(r))
        last_end = end
    return out


def _shard_json(info: ShardInfo) -> dict:
    algorithm, _, value = info.digest.partition(":")
    data = {"name": info.name, "split": info.split, "samples": info.samples, "seconds": info.seconds,
            "bytes": info.bytes, algorithm: value}
    if info.sample_ranges is not None:  # named tuples encode as lists
        data["sample_ranges"] = info.sample_ranges
    return data


@functools.cache
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
    """Builds one tar in place (Store.stage: in its folder for a local store, else in a temporary file)
    and makes it appear in the store whole on close.

        with ShardWriter(store, "train", 0) as w:
            w.add(encoded); ...
        info = w.info      # ShardInfo, after the tar is in the store
    """

    def __init__(self, store: Store, split: str, n: int):
        self.store, self.split, self.name = store, split, shard_name(split, n)
        self.staged = store.stage(self.name)
        self.tmp = HashingWriter(self.staged.file)
        self.tar = tarfile.open(fileobj=self.tmp, mode="w", format=tarfile.USTAR_FORMAT, copybufsize=1 << 20)
        self.samples, self.seconds, self.keys = 0, 0.0, []
        self.ranges: list[SampleRange] = []
        self.info: ShardInfo | None = None

    @property
    def nbytes(self) -> int:
        return self.tmp.tell()

    def add(self, sample: EncodedSample) -> None:
        start = self.tar.offset
        for ext, data in (("flac", sample.flac), ("json", sample.meta)):
            member = tarfile.TarInfo(f"{sample.key}.{ext}")
            member.size, member.mtime, member.mode = len(data), 0, 0o444  # fixed: same input, same digest
            self.tar.addfile(member, io.BytesIO(data))
            if ext == "flac":
                flac_offset = self.tar.offset - _padded(len(data))
        self._added(sample.key, SampleRange(start, flac_offset, len(sample.flac), self.tar.offset, sample.frames),
                    sample.seconds)

    def add_raw(self, data: bytes | memoryview, samples: list[tuple[str, SampleRange, float]]) -> None:
        """Append samples copied byte for byte from another shard: `data` is their bytes there, back to
        back from the first one's start to the last one's end (tar headers included, so nothing is
        parsed or rebuilt); `samples`: (key, range there, seconds) of each."""
        start = self.tar.offset
        self.tmp.write(data)
        self.tar.offset += len(data)
        shift = start - samples[0][1].start
        for key, source, seconds in samples:
            self._added(key, source._replace(start=source.start + shift, flac_offset=source.flac_offset + shift,
                                             end=source.end + shift), seconds)

    def _added(self, key: str, where: SampleRange, seconds: float) -> None:
        self.ranges.append(where)
        self.samples += 1
        self.seconds += seconds
        self.keys.append(key)

    def close(self) -> ShardInfo:
        """Finish the tar and put it to the store; returns its ShardInfo."""
        self.tar.close()
        size, digest = self.tmp.tell(), digest_text(DIGEST, self.tmp.digest)
        self.staged.commit()
        self.info = ShardInfo(self.name, self.split, self.samples, round(self.seconds, 6), size, digest,
                              self.ranges)
        return self.info

    def abort(self) -> None:
        self.staged.discard()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:
            self.abort()


class HashingWriter:
    """A file being written, its digest (DIGEST) kept up as the bytes go through (no second pass over
    them): each piece hashed just before it is written (store.write_pieces), while it is in cache."""

    def __init__(self, file):
        self.file, self.digest = file, new_hasher()

    def write(self, data) -> int:
        write_pieces(self.file, data, self.digest.update)
        return len(data)

    def tell(self) -> int:
        return self.file.tell()


def _padded(size: int) -> int:
    return -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


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


def read_samples(url: str, split: str) -> Iterator[Sample]:
    """Every sample of one split, in shard order (each shard streamed once)."""
    store = open_store(url)
    index = load_index(store)
    if not index.split_shards(split):
        raise DatasetError(f"{store.url}: split {split!r} has no shards "
                           f"(splits: {', '.join(index.splits) or 'none'})")
    for info in index.split_shards(split):
        with store.open(info.name) as f:
            for key, parts in iter_tar(f):
                yield sample_from_parts(key, parts)


def scan_sample_ranges(stream, algorithm: str) -> tuple[list[SampleRange], str, int]:
    """(sample ranges, digest as ShardInfo keeps it, size) of a tar stream read once: the scan that
    upgrades an index written before sample ranges were recorded."""
    digest, size = new_hasher(algorithm), 0

    class Hashing(io.RawIOBase):
        def readable(self):
            return True

        def readinto(self, buffer):
            nonlocal size
            data = stream.read(len(buffer))
            digest.update(data)
            size += len(data)
            buffer[:len(data)] = data
            return len(data)

    ranges, current, start, flac, frames, end = [], None, 0, (0, 0), 0, 0
    with tarfile.open(fileobj=io.BufferedReader(Hashing(), 1 << 20), mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            if key != current:
                if current is not None:
                    ranges.append(SampleRange(start, *flac, end, frames))
                current, start, flac, frames = key, member.offset, (0, 0), 0
            data = tar.extractfile(member).read()
            if ext == "flac":
                flac, frames = (member.offset_data, member.size), flac_length(data)[0]
            end = member.offset_data + _padded(member.size)
        if current is not None:
            ranges.append(SampleRange(start, *flac, end, frames))
        while stream.read(1 << 20):  # the end-of-archive blocks count for the hash too
            pass
    return ranges, digest_text(algorithm, digest), size


def upgrade_index(url: str, on_shard: Callable[[ShardInfo], None] | None = None,
                  index: DatasetIndex | None = None) -> int:
    """Record sample ranges in an index written without them (one read of every shard, checked
    against the index's digest first); returns how many shards were scanned. `index`: the one at
    `url`, when the caller has it already."""
    store = open_store(url)
    index = index or load_index(store)
    scanned = 0
    for info in index.shards:
        if info.sample_ranges is None:
            with store.open(info.name) as f:
                ranges, digest, size = scan_sample_ranges(f, info.algorithm)
            if digest != info.digest or size != info.bytes or len(ranges) != info.samples:
                raise DatasetError(f"{store.join(info.name)}: does not match the index (run "
                                   f"`telucodec shards verify {store.url}`); not upgraded")
            info.sample_ranges = ranges
            scanned += 1
        if on_shard:
            on_shard(info)
    if scanned:
        index.lineage = {**index.lineage, "sample_ranges_added": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        store.put_text(INDEX_NAME, index.to_json())
    return scanned


def shard_mismatches(info: ShardInfo, chunks: Iterable[bytes]) -> list[str]:
    """How a shard's bytes differ from its entry in the index (size, digest); empty when they match."""
    digest, size = new_hasher(info.algorithm), 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return digest_mismatches(info, digest_text(info.algorithm, digest), size)


def digest_mismatches(info: ShardInfo, digest: str, size: int) -> list[str]:
    """`digest` as ShardInfo keeps it ("ALGORITHM:HEX")."""
    problems = [f"size {size} != index {info.bytes}"] if size != info.bytes else []
    if digest != info.digest:
        problems.append(f"{info.algorithm} differs from the index")
    return problems


def shard_matches(store: Store, info: ShardInfo) -> bool:
    """Whether `store` still holds shard `info` as the index names it (streamed, never held whole)."""
    try:
        with store.open(info.name) as f:
            return not shard_mismatches(info, iter_chunks(f))
    except StoreError:
        return False


def verify_dataset(url: str, on_shard: Callable[[ShardInfo], None] | None = None,
                   index: DatasetIndex | None = None) -> list[str]:
    """Re-hash every shard against the index and decode every sample; returns the problems found.
    `index`: the one at `url`, when the caller has it already."""
    store = open_store(url)
    index = index or load_index(store)
    problems = []
    for info in index.shards:
        problems += [f"{info.name}: {p}" for p in _verify_shard(store, info, index.sample_rate)]
        if on_shard:
            on_shard(info)
    return problems


def _verify_shard(store: Store, info: ShardInfo, sample_rate: int) -> list[str]:
    try:
        data = store.get(info.name)
    except StoreError:
        return ["missing"]
    ranges = None
    if info.sample_ranges is None:
        problems = shard_mismatches(info, [data])
    else:  # one pass hashes the shard and finds its sample ranges
        try:
            ranges, digest, size = scan_sample_ranges(io.BytesIO(data), info.algorithm)
            problems = digest_mismatches(info, digest, size)
        except Exception:  # not a readable tar: the hash says so, and decoding below says why
            problems = shard_mismatches(info, [data])
    count = 0
    try:
        for key, parts in iter_tar(io.BytesIO(data)):
            sample = sample_from_parts(key, parts)
            count += 1
            if sample.sample_rate != sample_rate:
                problems.append(f"{key}: {sample.sample_rate} Hz, the index says {sample_rate} Hz")
            if sample.audio.size and (not np.isfinite(sample.audio).all() or np.abs(sample.audio).max() > 1.0):
                problems.append(f"{key}: samples outside [-1, 1]")
    except Exception as e:  # any decode failure is a finding, not a crash
        problems.append(f"unreadable ({type(e).__name__}: {e})")
    if count != info.samples and not problems:
        problems.append(f"{count} samples != index {info.samples}")
    if ranges is not None and not problems and ranges != info.sample_ranges:
        problems.append("sample byte ranges differ from the index (training would misread them)")
    return problems
