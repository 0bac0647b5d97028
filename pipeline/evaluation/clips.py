"""The eval-clip loader: the first clips of a dataset split, cut and resampled, for every evaluation."""

from __future__ import annotations

import numpy as np

from pipeline.storage.audio import resample
from pipeline.storage.shards import DatasetError, iter_tar, load_index, sample_from_parts
from pipeline.storage.store import open_store


def require_split(index, url: str, split: str) -> None:
    """DatasetError naming the splits there are when `split` has no samples at `url`."""
    if not index.split_shards(split):
        raise DatasetError(f"{url}: no {split!r} split to evaluate on (it has: {', '.join(index.splits) or 'none'}); "
                           f"set train.eval_split to one of those, or train.eval_url to a dataset with a {split} split")


def load_eval_clips(url: str, split: str, n_clips: int, seconds: float, sample_rate: int) -> list[tuple[str, np.ndarray]]:
    """The first `n_clips` samples of a split (in shard order), each cut to `seconds`, at `sample_rate`:
    [(key, [T])]. DatasetError when the split has none (require_split)."""
    store = open_store(url, "loader")
    index = load_index(store)
    require_split(index, url, split)
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
    return [(key, resample(audio, index.sample_rate, sample_rate)) for key, audio in clips]
