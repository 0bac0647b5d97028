"""How a reshard moves bytes: a source shard fetched to local disk and checked against its index entry,
its samples read as the byte ranges the index records (a plain re-pack copies them as they are), a
destination shard filled (straight into its tar; shuffled, in position slots: a local source's ranges
held as they are, anything else through the wave's spill file), and uploads kept to a bounded number
in flight. None of it knows about the run; run.py drives it.

    with fetch_shard(src, info, tmp_dir) as fetched: ...     # ReshardError if the size or digest differs
        for sample in ranged_samples(fetched, info, rate):   # RawSample: key, tar bytes, range, seconds
    shard = DestShard(dst, plan, j, spill); shard.add(position, sample); info = shard.finish()
"""

from __future__ import annotations

import os
import tarfile
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import BinaryIO, Callable, Iterable, Iterator

from data_prep.reshard.plan import ReshardError, SplitPlan, keys_digest
from pipeline.storage.shards import EncodedSample, SampleRange, ShardInfo, ShardWriter, shard_mismatches
from pipeline.storage.store import LocalStore, Store, iter_chunks, mapped, write_pieces


class Fetched:
    """A source shard on local disk, checked against its index entry: its file (at offset 0) and its
    bytes, mapped once: a local shard's check hashes the mapping its byte ranges are then views of.
    `in_place`: the file is the store's own (a local source), not a temporary copy."""

    def __init__(self, file: BinaryIO, in_place: bool = False):
        self.file, self.in_place, self._view = file, in_place, None

    @property
    def view(self) -> memoryview:
        """The shard's bytes, mapped (once); the ranges taken from it keep the mapping while they last."""
        if self._view is None:
            self._view = mapped(self.file)
        return self._view

    def close(self) -> None:
        self.file.close()  # the ranges taken keep the mapping they need

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()


def fetch_shard(store: Store, info: ShardInfo, tmp_dir: str | None) -> Fetched:
    """Source shard `info` on local disk, checked against the index's size and digest."""
    if isinstance(store, LocalStore):
        fetched = Fetched(store.open(info.name), in_place=True)
        mismatches = shard_mismatches(info, [fetched.view])
    else:
        fetched = Fetched(tempfile.TemporaryFile(dir=tmp_dir))
        with store.open(info.name) as src:
            mismatches = shard_mismatches(info, copied(iter_chunks(src), fetched.file))
    fetched.file.seek(0)
    if mismatches:
        fetched.close()
        raise ReshardError(f"{store.join(info.name)}: size or {info.algorithm} differs from the source index "
                           "(the source changed or is corrupt)")
    return fetched


def copied(chunks: Iterable[bytes], f: BinaryIO) -> Iterator[bytes]:
    """`chunks`, each written to `f` on its way through."""
    for chunk in chunks:
        f.write(chunk)
        yield chunk


@dataclass(frozen=True)
class RawSample:
    """A source sample as its tar bytes (`source.start..source.end`, member headers included): a plain
    re-pack writes these again as they are, so nothing is parsed or rebuilt."""
    key: str
    data: bytes | memoryview
    source: SampleRange
    seconds: float
    origin: memoryview | None = None
    """The mapping of the source shard `data` is a view of (None once spilled)."""
    in_place: bool = False
    """`origin` maps a local source shard's own file: a shuffle holds the view rather than spill its
    bytes (a temporary copy of a remote shard is spilled instead: holding it would keep every fetched
    shard of the wave on local disk, past the spill budget)."""


def ranged_samples(fetched: Fetched, info: ShardInfo, sample_rate: int) -> Iterator[RawSample]:
    """The samples of fetched source shard `info` (checked), as views of the index's sample ranges in
    its mapping (nothing copied); the key comes from the .flac member's header, the seconds from the
    range's frames."""
    view = fetched.view
    for source in info.sample_ranges:
        data = view[source.start:source.end]
        if len(data) != source.end - source.start:
            raise ReshardError(f"{info.name}: sample range {source.start}..{source.end} runs past the shard "
                               "(index.json sample_ranges are wrong)")
        yield RawSample(range_key(data, info.name, source.start), data, source, source.frames / sample_rate, view,
                        fetched.in_place)


def range_key(data: bytes | memoryview, name: str, start: int) -> str:
    """The key named by the tar header a sample range starts with (its .flac member): the ustar
    header's name (and prefix) fields, its type a regular file and its checksum right, read without
    building a TarInfo (this runs once per sample on the router thread)."""
    header = bytes(data[:tarfile.BLOCKSIZE])
    if (len(header) == tarfile.BLOCKSIZE and header[257:262] == b"ustar" and header[156:157] in (b"0", b"\0")
            and header_checksum_ok(header)):
        member = "/".join(field.split(b"\0", 1)[0].decode(tarfile.ENCODING, "surrogateescape")
                          for field in (header[345:500], header[:100]) if field[:1] != b"\0")
        if member.endswith(".flac"):
            return member.partition(".")[0]
    raise ReshardError(f"{name}: no .flac member header at byte {start} (index.json sample_ranges are wrong)")


def header_checksum_ok(header: bytes) -> bool:
    """Whether a tar header's checksum field (octal) matches its bytes, the field read as spaces."""
    try:
        stored = int(header[148:156].strip(b" \0") or b"0", 8)
    except ValueError:
        return False
    return stored == sum(header[:148]) + 8 * 32 + sum(header[156:])


def back_to_back(a: RawSample, b: RawSample) -> bool:
    """Whether `b`'s bytes follow `a`'s in the same source shard."""
    return a.origin is not None and a.origin is b.origin and a.source.end == b.source.start


HELD_MAPPINGS_MAX = 20_000
"""A shuffled wave holds a local source's ranges in place only when the split has at most this many
source shards: it keeps every one of them mapped until its shards are written, and Linux allows a
process 65,530 mappings by default (vm.max_map_count)."""


class Spill:
    """One local file a shuffled wave appends its items to; each destination shard reads its own back.
    `hold`: ranges of a local source shard are held as views of it, not appended."""

    def __init__(self, tmp_dir: str | None, hold: bool = True):
        self.file = tempfile.TemporaryFile(dir=tmp_dir)
        self.size, self.hold = 0, hold

    def append(self, data: bytes) -> int:
        """Offset of `data` in the spill (called by the router thread only)."""
        offset = self.size
        write_pieces(self.file, data)
        self.size += len(data)
        return offset

    def flush(self) -> None:
        self.file.flush()

    def read(self, offset: int, n: int) -> bytes:
        """Bytes already flushed; safe from any thread."""
        return os.pread(self.file.fileno(), n, offset)

    def keep(self, sample: EncodedSample | RawSample) -> tuple:
        """A slot for `sample`: its bytes appended here, the rest of it (emptied) held by the caller; a
        range of a local source shard is held as it is (a view of its mapping: nothing to copy)."""
        if isinstance(sample, RawSample):
            if sample.in_place and self.hold:
                return sample, None, ()
            return replace(sample, data=b"", origin=None), self.append(sample.data), (len(sample.data),)
        return (replace(sample, flac=b"", meta=b""), self.append(sample.flac + sample.meta),
                (len(sample.flac), len(sample.meta)))

    def take(self, slot: tuple) -> EncodedSample | RawSample:
        """The sample kept in `slot`, its bytes read back."""
        empty, offset, sizes = slot
        if offset is None:
            return empty  # held as it is
        data = self.read(offset, sum(sizes))
        if isinstance(empty, RawSample):
            return replace(empty, data=data)
        return replace(empty, flac=data[:sizes[0]], meta=data[sizes[0]:])

    def close(self) -> None:
        self.file.close()


class DestShard:
    """One destination shard being filled: straight into its tar when items come in position order,
    else into the wave's spill, and then into the tar in position order once the last item is in.
    Byte ranges in order are only held (views of the mapped source shards) until `finish`, which
    writes them in an upload thread: the shards of a wave are written side by side, not by the
    router thread one after another."""

    def __init__(self, store: Store, plan: SplitPlan, j: int, spill: Spill | None):
        self.store, self.split, self.j, self.spill = store, plan.split, j, spill
        self.first, self.count = int(plan.bounds[j]), plan.shard_samples(j)
        self.received, self.digest = 0, 0
        self.writer: ShardWriter | None = None
        """The tar, begun at the first write (a plain re-pack's: in `finish`, off the router thread)."""
        self.slots: list[tuple | None] = [] if spill is None else [None] * self.count
        self.held: list[RawSample] = []
        """Byte ranges put in order and not yet written (views of mapped source shards: origin set)."""

    @property
    def complete(self) -> bool:
        return self.received == self.count

    def add(self, position: int, sample: EncodedSample | RawSample) -> None:
        slot = position - self.first
        if self.spill is None:
            if slot != self.received:
                raise ReshardError(f"{self.split} shard {self.j}: item {slot} came out of order")
            self.put(sample)
        else:
            if self.slots[slot] is not None:
                raise ReshardError(f"{self.split} shard {self.j}: position {position} filled twice")
            self.slots[slot] = self.spill.keep(sample)
        self.received += 1

    def put(self, sample: EncodedSample | RawSample) -> None:
        """Append `sample`, the next in position order: a range of a mapped source shard is held, to be
        written with the ranges back to back with it; anything else is written now."""
        if isinstance(sample, RawSample) and sample.origin is not None:
            self.held.append(sample)
        else:
            self.write_held()
            self.write(sample)

    def write(self, sample: EncodedSample | RawSample) -> None:
        """Append `sample` to the tar: a raw range as it is (headers included), else as new members."""
        self.begin()
        if isinstance(sample, RawSample):
            self.writer.add_raw(sample.data, [(sample.key, sample.source, sample.seconds)])
        else:
            self.writer.add(sample)

    def write_held(self) -> None:
        """Write the held ranges: those back to back in one source shard as one run of its mapped bytes
        (a plain re-pack's shard is a few long runs of its sources, not a write per sample)."""
        if self.held:
            self.begin()
        run: list[RawSample] = []
        for sample in self.held + [None]:
            if run and (sample is None or not back_to_back(run[-1], sample)):
                first, last, origin = run[0].source, run[-1].source, run[0].origin  # held: from ranged_samples
                self.writer.add_raw(origin[first.start:last.end], [(s.key, s.source, s.seconds) for s in run])
                run = []
            if sample is not None:
                run.append(sample)
        self.held = []

    def begin(self) -> None:
        if self.writer is None:
            self.writer = ShardWriter(self.store, self.split, self.j)

    def finish(self) -> ShardInfo:
        """Write the tar (the held ranges, or the spill in position order) and put it to the store."""
        self.begin()
        for slot in self.slots:
            self.put(self.spill.take(slot))
        self.write_held()
        info = self.writer.close()
        self.digest = keys_digest(self.writer.keys)  # of the keys in the tar (off the router thread)
        return info

    def abort(self) -> None:
        self.held = []
        if self.writer is not None:
            self.writer.abort()


class Uploads:
    """Shard uploads in a thread pool, at most `limit` in flight (each holds a tar on local disk)."""

    def __init__(self, pool: ThreadPoolExecutor, limit: int):
        self.pool, self.slots, self.futures = pool, threading.Semaphore(limit), []

    def submit(self, fn: Callable[[], None]) -> None:
        self.raise_failures()
        self.slots.acquire()
        fut = self.pool.submit(fn)
        fut.add_done_callback(lambda _: self.slots.release())
        self.futures.append(fut)

    def raise_failures(self) -> None:
        for fut in self.futures:
            if fut.done() and fut.exception() is not None:
                raise fut.exception()
        self.futures = [f for f in self.futures if not f.done()]

    def wait(self, check: bool = True) -> None:
        """Wait for every upload in flight; raise the first failure if `check`."""
        futures, self.futures = self.futures, []
        wait(futures)
        for fut in futures if check else ():
            fut.result()
