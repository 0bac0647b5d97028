"""The per-file half of `telucodec prep`, run in its worker processes: one source file -> its
encoded segments, or a reject saying why.

    results = process_job(FileJob((item,), cfg, spill_dir))  # in a worker: one ItemResult per item
    for sample in results[0].samples: ...                     # in the parent, in order
    results[0].samples.discard()

A job is a few plain files (their remote ones fetched ahead as the worker goes), or the items one
container holds side by side (a parquet row group, a tar.gz archive): those are read in one pass
(`data_prep.sources.read_items`), not once per item.

Memory stays bounded whatever the file's length. The file is decoded block by block to mono,
resampled as a stream (the same samples as resampling it whole), measured as it passes (length,
energy, a level per 20 ms frame: `LevelMeter`) and parked in a spooled temporary file (memory while
small, disk after). Trimming, loudness and the equal-part cut are then decided from those
measurements exactly as for the whole array, and each segment is read back, scaled, clipped and
FLAC-encoded in turn into a `SampleSpool`, which passes the encoded segments to the parent through
a file in the run's spill folder once they outgrow memory.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from data_prep.sources import PLAIN_FILES, SourceItem, batch_key, printable, read_items
from pipeline.storage.audio import (AudioError, LevelMeter, clip_to_unit_range, loud_span, open_audio, resample_blocks,
                            segment_bounds, silence_frame)
from pipeline.config import PrepConfig
from pipeline.storage.shards import EncodedSample, encode_sample, safe_key

PARK_BYTES = 16 << 20
"""Resampled audio (float32) a worker keeps in memory before parking it on disk (4 min at 16 kHz)."""
SPILL_BYTES = 16 << 20
"""Encoded segments a result carries in memory; beyond this they go to the parent through a file."""


@dataclass(frozen=True)
class FileJob:
    """Source items to prep in one worker (one file, or the rows or members of one container), and
    where their encoded segments may spill."""
    items: tuple[SourceItem, ...]
    cfg: PrepConfig
    spill_dir: str | None = None
    """The run's folder for segments too many to send back in memory; None keeps them in memory."""


class SampleSpool:
    """A file's encoded segments on their way from a worker to the parent: in memory while they
    are small, else in a file under the spill folder, read back one at a time."""

    def __init__(self, spill_dir: str | None = None, limit: int = SPILL_BYTES):
        self.spill_dir, self.limit = spill_dir, limit
        self.held: list[EncodedSample] = []
        self.spilled: list[tuple[str, float, int, int, int]] = []
        """(key, seconds, frames, flac bytes, meta bytes) of each sample in the file, in order."""
        self.path: str | None = None
        self.held_bytes = 0

    def add(self, sample: EncodedSample) -> None:
        self.held.append(sample)
        self.held_bytes += len(sample.flac) + len(sample.meta)
        if self.spill_dir is not None and (self.path or self.held_bytes > self.limit):
            self._spill()

    def _spill(self) -> None:
        if self.path is None:
            fd, self.path = tempfile.mkstemp(suffix=".samples", dir=self.spill_dir)
            os.close(fd)
        with open(self.path, "ab") as f:
            for s in self.held:
                f.write(s.flac + s.meta)
                self.spilled.append((s.key, s.seconds, s.frames, len(s.flac), len(s.meta)))
        self.held, self.held_bytes = [], 0

    def __len__(self) -> int:
        return len(self.spilled) + len(self.held)

    def __iter__(self) -> Iterator[EncodedSample]:
        if self.path is not None:
            with open(self.path, "rb") as f:
                for key, seconds, frames, n_flac, n_meta in self.spilled:
                    yield EncodedSample(key, f.read(n_flac), f.read(n_meta), seconds, frames)
        yield from self.held

    def discard(self) -> None:
        """Delete the spill file, once the parent has written the samples."""
        if self.path is not None:
            Path(self.path).unlink(missing_ok=True)


@dataclass
class ItemResult:
    """What one worker made of one source file."""
    samples: SampleSpool = field(default_factory=SampleSpool)
    reject: dict | None = None
    clipped_samples: int = 0
    source_peak: float = 0.0


@dataclass
class ParkedAudio:
    """A file decoded, resampled and parked: what the segments are then cut from."""
    data: BinaryIO
    """The resampled mono float32 samples, as bytes."""
    meter: LevelMeter
    source_rate: int
    source_peak: float


def rejected(item: SourceItem, reason: str) -> ItemResult:
    return ItemResult(reject={"path": item.where, "reason": printable(reason)})


def worker_died(job: FileJob, how: str) -> list[ItemResult]:
    """The results of a job whose worker process died on it, alone, too (ordered_map's on_death):
    a single item is the culprit; a job of several runs again in parts (`retry_parts`), and a part
    that kills its worker again in parts in turn, so only the item that kills its worker is
    rejected."""
    if len(job.items) == 1:
        return [rejected(job.items[0], f"worker died: {how}")]
    from data_prep.dataset_job import ordered_map

    return [result for results in ordered_map(process_job, retry_parts(job), 1, on_death=worker_died)
            for result in results]


def retry_parts(job: FileJob) -> list[FileJob]:
    """How the item that kills its worker is found among a job's: a container's items in two halves
    (each part reads the container from the start up to its last item: halving reads it ~2 log2(n)
    times over, not once per item), plain files one a job (nothing is read twice)."""
    if batch_key(job.items[0]) == PLAIN_FILES:
        return [FileJob((item,), job.cfg, job.spill_dir) for item in job.items]
    half = len(job.items) // 2
    return [FileJob(items, job.cfg, job.spill_dir) for items in (job.items[:half], job.items[half:])]


def process_job(job: FileJob) -> list[ItemResult]:
    """Each item of the job -> its encoded segments, or a reject with the reason; in the job's
    order. Never raises."""
    results: dict[str, ItemResult] = {}
    held = 0  # what the job sends back in memory stays within SPILL_BYTES: items spill once it is spent
    try:
        for item, audio, name in read_items(list(job.items)):
            result = results[item.name] = (rejected(item, name) if audio is None
                                           else process_item(item, audio, name, job, SPILL_BYTES - held))
            held += result.samples.held_bytes
    except Exception as e:  # the container itself failed mid-way: the rest are rejects, the run goes on
        reason = f"could not process ({type(e).__name__}: {e})"
        for item in job.items:
            results.setdefault(item.name, rejected(item, reason))
    return [results.get(item.name) or rejected(item, "not read") for item in job.items]


def process_item(item: SourceItem, audio: str | BinaryIO, name: str, job: FileJob,
                 spill_limit: int = SPILL_BYTES) -> ItemResult:
    """One item's audio (a local path or an open file, which is closed here) -> its result."""
    try:
        with tempfile.SpooledTemporaryFile(PARK_BYTES) as data:
            return _process(item, job, park(audio, name, job.cfg.sample_rate, data), spill_limit)
    except AudioError as e:
        return rejected(item, str(e))
    except Exception as e:  # a bad file must never stop the run
        return rejected(item, f"could not process ({type(e).__name__}: {e})")
    finally:
        if not isinstance(audio, str):
            audio.close()


def park(audio: str | BinaryIO, name: str, sample_rate: int, data: BinaryIO) -> ParkedAudio:
    """Stream the file through decoding, mono and resampling into `data`, measuring as it goes."""
    meter = LevelMeter(silence_frame(sample_rate))
    with open_audio(audio, name) as stream:
        for block in resample_blocks(stream.blocks(), stream.sample_rate, sample_rate):
            meter.add(block)
            data.write(block.astype(np.float32, copy=False).tobytes())
        return ParkedAudio(data, meter, stream.sample_rate, stream.peak)


def _process(item: SourceItem, job: FileJob, audio: ParkedAudio, spill_limit: int) -> ItemResult:
    """Trim, cut, scale, clip and encode the parked audio, one segment at a time."""
    cfg, sr = job.cfg, job.cfg.sample_rate
    start, end = loud_span(audio.meter, cfg.silence_db) if cfg.trim_silence else (0, audio.meter.length)
    spans = [(start + a, start + b) for a, b in segment_bounds(end - start, sr, cfg.max_seconds, cfg.min_seconds)]
    if not spans:
        return rejected(item, f"no segment of at least {cfg.min_seconds:g} s "
                              f"({(end - start) / sr:.2f} s after trimming silence)")
    gain = 1.0 if cfg.loudness_db is None else audio.meter.gain_to(cfg.loudness_db)
    stem = f"{safe_key(Path(item.name).stem)[:40]}_{hashlib.sha1(item.name.encode()).hexdigest()[:10]}"
    result = ItemResult(samples=SampleSpool(job.spill_dir, spill_limit), source_peak=audio.source_peak)
    for i, (a, b) in enumerate(spans):
        audio.data.seek(4 * a)
        seg = np.frombuffer(audio.data.read(4 * (b - a)), np.float32)
        seg, clipped = clip_to_unit_range(seg if gain == 1.0 else (seg * gain).astype(np.float32))
        result.clipped_samples += clipped
        meta = {"source": item.name, "speaker": item.speaker, "text": item.text, "segment": i,
                "segments": len(spans), "source_peak": round(audio.source_peak, 6), "clipped_samples": clipped,
                "source_sample_rate": audio.source_rate}
        if item.source_split:
            meta["source_split"] = item.source_split
        result.samples.add(encode_sample(f"{stem}_{i:03d}", seg, sr, meta))
    return result
