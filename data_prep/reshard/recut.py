"""What happens to one source sample when a reshard re-cuts or resamples: decode, resample (soxr),
cut into equal parts, encode; and how many parts it makes, read from its FLAC header alone.

`recut_sample` runs in the reshard's worker processes (it is pickled by name, so it lives at module
level); `scan_counts` runs in its I/O threads while planning a re-cut.
"""

from __future__ import annotations

import io
import json

import numpy as np
import soundfile as sf

from data_prep.reshard.plan import ReshardError, derived_keys, resampled_length, segment_count, segment_starts
from pipeline.storage.audio import resample
from pipeline.storage.shards import EncodedSample, decode_flac, encode_sample


def resample_to_length(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Mono [T] -> [resampled_length(T)] (pipeline.storage.audio.resample), clipped to [-1, 1]."""
    n = resampled_length(len(audio), rate_in, rate_out)
    out = resample(audio, rate_in, rate_out) if len(audio) else np.zeros(0, np.float32)
    out = out[:n] if len(out) >= n else np.pad(out, (0, n - len(out)))
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def recut_sample(key: str, parts: dict[str, bytes], rate_out: int, segment_seconds: float | None,
                 count: int, wanted: list[int]) -> list[EncodedSample]:
    """Decode one sample, resample it, cut it into `count` equal parts; encode the `wanted` ones."""
    audio, rate_in = decode_flac(parts["flac"])
    if rate_in != rate_out:
        audio = resample_to_length(audio, rate_in, rate_out)
    if segment_count(len(audio), rate_out, segment_seconds) != count:
        raise ReshardError(f"{key}: length differs from the scan (the source changed during the reshard?)")
    meta = {**json.loads(parts.get("json", b"{}")), "source_key": key}
    keys, starts = derived_keys(key, count, segment_seconds is not None), segment_starts(len(audio), count)
    out = []
    for i in wanted:
        a, b = starts[i], starts[i + 1]
        extra = {"segment": i, "source_start": round(a / rate_out, 6)} if segment_seconds is not None else {}
        out.append(encode_sample(keys[i], audio[a:b], rate_out, {**meta, **extra}))
    return out


def scan_counts(parts: dict[str, bytes], rate_out: int, segment_seconds: float | None) -> int:
    """Output items of one source sample, from its FLAC header alone."""
    info = sf.info(io.BytesIO(parts["flac"]))
    return segment_count(resampled_length(info.frames, info.samplerate, rate_out), rate_out, segment_seconds)
