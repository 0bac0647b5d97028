"""The eval-clip loader: the first clips of a dataset split, cut and resampled, for every evaluation."""

from __future__ import annotations

import numpy as np

from pipeline.storage.audio import resample
from pipeline.storage.shards import DatasetError, iter_tar, load_index, sample_from_parts
from pipeline.storage.store import open_store


def load_eval_clips(url: str, split: str, n_clips: int, seconds: float, sample_rate: int) -> list[tuple[str, np.ndarray]]:
    """The first `n_clips` samples of a split (in shard order), each cut to `seconds`, at `sample_rate`:
    [(key, [T])]. DatasetError when the split has none."""
    store = open_store(url)
    index = load_index(store)
    max_samples = int(round(seconds * index.sample_rate))
    clips = []
    for info in index.split_shards(split):
        with store.open(info.name) as f:
            for key, parts in iter_tar(f):
                clips.append((key, sample_from_parts(key, parts).audio[:max_samples]))
                if len(clips) == n_clips:
                    break
        if len(clips) == n_clips:
            break
    if not clips:
        have = ", ".join(index.splits) or "none"
        raise DatasetError(f"{url}: split {split!r} has no samples to evaluate (splits with samples: {have})")
    return [(key, resample(audio, index.sample_rate, sample_rate)) for key, audio in clips]
