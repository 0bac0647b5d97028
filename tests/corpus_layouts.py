"""Real Telugu corpora's layouts in miniature, built with the schemas their publishers use (real
parquet, tar.gz, m4a bytes), for prep's source tests.

- IndicVoices (hub): `telugu/{train-0000k-of-00002,valid-00000-of-00001}.parquet`, Audio column
  `audio_filepath` ({bytes, path}: FLAC), `text`, `speaker_id`, `lang`, `duration`, `samples`,
  `scenario`, `task_name`.
- FLEURS (hub parquet): `te_in/fleurs-{train,validation}.parquet`: `id`, `num_samples`, `path`,
  `audio` ({bytes, path}: WAV), `transcription`, `raw_transcription`, `gender`, `lang_id`,
  `language`, `lang_group_id`; no speaker.
- FLEURS (original): `te_in/{train,dev,test}.tsv` (7 fields, no header) + `te_in/audio/{split}.tar.gz`
  holding `{split}/FILE.wav`.
- Kathbath (original): `telugu/{train,valid,test_known}/transcription_n2w.txt` (`FILE.m4a<TAB>text`)
  and `UID-SPEAKER-GENDER.m4a` files (in the split folder or its `audio/`).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import soundfile as sf

from audio_fixtures import tone

SR = 16000


def encoded(x: np.ndarray, fmt: str, sr: int = SR) -> bytes:
    if fmt == "m4a":
        return m4a_bytes(x, sr)
    out = io.BytesIO()
    sf.write(out, x, sr, format=fmt.upper())
    return out.getvalue()


def m4a_bytes(x: np.ndarray, sr: int = SR) -> bytes:
    """AAC in an MP4 container, as Kathbath ships it (encoded by PyAV's bundled FFmpeg)."""
    import av

    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=sr)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(x[None, :].astype(np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = sr, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return out.getvalue()


def clip(i: int, seconds: float = 1.3) -> np.ndarray:
    return tone(seconds + 0.1 * (i % 3), SR, 150 + 17 * i, peak=0.6, seed=i)


def write_parquet(path: Path, rows: list[dict], schema, row_group_size: int | None = None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=row_group_size)
    return path


def indicvoices_schema():
    import pyarrow as pa

    return pa.schema([("audio_filepath", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                      ("text", pa.string()), ("duration", pa.float64()), ("lang", pa.string()),
                      ("samples", pa.int64()), ("verbatim", pa.string()), ("scenario", pa.string()),
                      ("task_name", pa.string()), ("speaker_id", pa.string())])


def indicvoices_row(i: int, speaker: str, x: np.ndarray | None = None, data: bytes | None = None) -> dict:
    """Row `i`: `x` (default: a short tone) as FLAC; or `data`, the audio cell's bytes as they are
    (nothing encoded: for scans and job plans, which read only the small columns)."""
    if data is None:
        x = clip(i) if x is None else x
        data = encoded(x, "flac")
    samples = 0 if x is None else len(x)
    return {"audio_filepath": {"bytes": data, "path": f"{1000 + i}_chunk_{i % 3}.flac"},
            "text": f"వాక్యం {i}", "duration": samples / SR, "lang": "te", "samples": samples,
            "verbatim": f"వాక్యం {i}", "scenario": "Read", "task_name": "read", "speaker_id": speaker}


def write_indicvoices(root: Path, rows_per_shard=(5, 4), valid_rows: int = 3, speakers: int = 4,
                      row_group_size: int | None = 2) -> Path:
    """`root/telugu/`: train shards and one valid shard; returns the language folder."""
    lang, n = root / "telugu", 0
    for k, count in enumerate(rows_per_shard):
        rows = [indicvoices_row(n + j, f"spk{(n + j) % speakers}") for j in range(count)]
        write_parquet(lang / f"train-{k:05d}-of-{len(rows_per_shard):05d}.parquet", rows, indicvoices_schema(),
                      row_group_size)
        n += count
    rows = [indicvoices_row(n + j, f"val{j}") for j in range(valid_rows)]
    write_parquet(lang / "valid-00000-of-00001.parquet", rows, indicvoices_schema(), row_group_size)
    return lang


def write_fleurs_parquet(root: Path) -> Path:
    import pyarrow as pa

    schema = pa.schema([("id", pa.int32()), ("num_samples", pa.int32()), ("path", pa.string()),
                        ("audio", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("transcription", pa.string()), ("raw_transcription", pa.string()),
                        ("gender", pa.int64()), ("lang_id", pa.int32()), ("language", pa.string()),
                        ("lang_group_id", pa.int32())])
    folder = root / "te_in"
    for split, ids in (("train", range(4)), ("validation", range(4, 6))):
        rows = [{"id": 1500 + i, "num_samples": len(clip(i)), "path": f"{split}/{9000 + i}.wav",
                 "audio": {"bytes": encoded(clip(i), "wav"), "path": f"{split}/{9000 + i}.wav"},
                 "transcription": f"fleurs {i}", "raw_transcription": f"Fleurs {i}.", "gender": i % 2,
                 "lang_id": 89, "language": "Telugu", "lang_group_id": 4} for i in ids]
        write_parquet(folder / f"fleurs-{split}.parquet", rows, schema)
    return folder


def write_fleurs(root: Path, splits=(("train", 4), ("dev", 2), ("test", 2)), audio=None) -> Path:
    """The original release for one language: `root/te_in/`; `audio(n)`: the n-th file's samples
    (default: short tones)."""
    folder, n = root / "te_in", 0
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    for split, count in splits:
        lines = []
        with tarfile.open(folder / "audio" / f"{split}.tar.gz", "w:gz") as tar:
            for j in range(count):
                x = audio(n) if audio else clip(n)
                name, data = f"{10_000 + n}.wav", encoded(x, "wav")
                info = tarfile.TarInfo(f"{split}/{name}")
                info.size, info.mtime = len(data), 0
                tar.addfile(info, io.BytesIO(data))
                lines.append(f"{1700 + n}\t{name}\tRaw {n}.\tనమూనా {n}\tన మ ూ న ా |\t{len(x)}\t"
                             f"{'MALE' if n % 2 else 'FEMALE'}")
                n += 1
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def write_kathbath(root: Path, splits=(("train", 4), ("valid", 2), ("test_known", 2))) -> Path:
    """The original m4a release for one language: `root/telugu/`."""
    folder, n = root / "telugu", 0
    for split, count in splits:
        lines = []
        for j in range(count):
            name = f"{844424931537866 + n}-{590 + n % 3}-{'mf'[n % 2]}.m4a"
            where = folder / split / ("audio" if j % 2 else "") / name  # both places the release has used
            where.parent.mkdir(parents=True, exist_ok=True)
            where.write_bytes(m4a_bytes(clip(n)))
            lines.append(f"{name}\tకథ {n}")
            n += 1
        (folder / split / "transcription_n2w.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def upload(folder: Path, url: str) -> str:
    """Copy a local folder to `url` (s3://bucket/prefix) as is; returns the URL of its copy."""
    from pipeline.storage.store import open_store

    store = open_store(url)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            store.put(path.relative_to(folder).as_posix(), path.read_bytes())
    return url
