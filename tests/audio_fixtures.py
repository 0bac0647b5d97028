"""Small real audio files for tests: tones with a speech-like envelope, broken files, and a tiny
sharded dataset."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline.storage.shards import DatasetIndex, ShardWriter, encode_sample, write_index
from pipeline.storage.store import open_store


def tone(seconds: float, sr: int, freq: float = 220.0, peak: float = 0.5, seed: int = 0) -> np.ndarray:
    """A harmonic tone with a syllable-rate envelope and a little noise, peak-normalised."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, 5))
    x = x * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)) + 0.02 * rng.standard_normal(len(t))
    return (x / np.abs(x).max() * peak).astype(np.float32)


def write_long_audio(path: Path, seconds: float, sr: int = 44100, channels: int = 2, block_seconds: float = 60.0,
                     **format) -> Path:
    """A long recording written block by block (tone plus noise, different per channel; each block
    the first one at another level), so an hour of it takes seconds and little memory. `format`
    goes to soundfile, e.g. subtype="PCM_16"."""
    rng = np.random.default_rng(0)
    n = int(block_seconds * sr)
    t = np.arange(n) / sr
    block = np.stack([0.3 * np.sin(2 * np.pi * (220 + 110 * c) * t) for c in range(channels)], axis=1)
    block = (block + 0.05 * rng.standard_normal((n, channels))).astype(np.float32)
    with sf.SoundFile(path, "w", sr, channels, **format) as f:
        for start in range(0, int(seconds * sr), n):
            f.write(block[: min(n, int(seconds * sr) - start)] * np.float32(0.6 + 0.4 * rng.random()))
    return path


def write_manifest_corpus(root: Path, n_files: int = 12, n_speakers: int = 6, sr: int = 22050,
                          seconds: float = 3.0, over_range_every: int = 4) -> Path:
    """`n_files` wavs from `n_speakers` speakers plus manifest.tsv; every `over_range_every`-th file
    is float WAV peaking above 1. Returns the manifest path."""
    rows = []
    for i in range(n_files):
        spk = f"spk{i % n_speakers}"
        over = over_range_every and i % over_range_every == 0
        x = tone(seconds + 0.37 * (i % 5), sr, 150 + 20 * i, peak=1.2 if over else 0.6, seed=i)
        path = root / "wavs" / spk / f"utt{i:03d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, x, sr, subtype="FLOAT" if over else "PCM_16")
        rows.append({"path": path.relative_to(root).as_posix(), "text": f"వాక్యం {i}", "speaker": spk})
    manifest = root / "manifest.tsv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["path", "text", "speaker"], delimiter="\t")
        w.writeheader()
        w.writerows(rows)
    return manifest


def write_bad_files(folder: Path, sr: int = 16000) -> dict[str, str]:
    """Corrupt, truncated, empty, NaN files and an m4a cut after its first box; returns name -> expected reason word."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "corrupt.flac").write_bytes(b"fLaC" + bytes(range(256)) * 8)
    good = folder / "_tmp_full.wav"
    sf.write(good, tone(2.0, sr), sr, subtype="PCM_16")
    data = good.read_bytes()
    good.unlink()
    (folder / "truncated.wav").write_bytes(data[: len(data) // 2])
    x = tone(2.0, sr)
    x[1000] = np.nan
    sf.write(folder / "nan.wav", x, sr, subtype="FLOAT")
    sf.write(folder / "zero_frames.wav", np.zeros(0, np.float32), sr)
    (folder / "voice.m4a").write_bytes(b"\x00\x00\x00\x18ftypM4A ")
    return {"empty.wav": "zero-length", "corrupt.flac": "cannot decode", "truncated.wav": "truncated",
            "nan.wav": "NaN", "zero_frames.wav": "empty", "voice.m4a": "cannot decode"}


def make_dataset(url: str, shard_sizes: list[int], sr: int = 8000, seconds: float | list[float] = 0.5) -> None:
    """A train split with shards of the given sample counts; sample j of shard i is a constant
    level, so every crop tells which sample it came from. `seconds`: every sample's length, or a
    list the samples take their lengths from in turn."""
    store = open_store(url)
    lengths = seconds if isinstance(seconds, list) else [seconds]
    infos, n = [], 0
    for i, count in enumerate(shard_sizes):
        with ShardWriter(store, "train", i) as w:
            for _ in range(count):
                level = (n + 1) / 1000
                frames = int(round(sr * lengths[n % len(lengths)]))
                w.add(encode_sample(f"s{n:04d}", np.full(frames, level, np.float32), sr, {}))
                n += 1
        infos.append(w.info)
    write_index(store, DatasetIndex(shards=infos, sample_rate=sr))
