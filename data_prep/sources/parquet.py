"""Parquet sources: the Hugging Face hub's audio datasets (IndicVoices, Kathbath, FLEURS, Shrutilipi,
IndicTTS), one item per row.

    telucodec prep s3://bucket/indicvoices-te/ --out s3://bucket/te         # a folder of shards
    telucodec prep data/train-00000-of-00012.parquet --columns text=sentence ...

The audio column holds what the `datasets` library writes for its Audio feature: a struct of
`bytes` (the encoded file) and `path` (its original name, or, with no bytes, a file beside the
parquet); a plain binary column and a decoded struct of `array` + `sampling_rate` are read too.
Text and speaker come from named columns (`--columns audio=...,text=...,speaker=...`), defaulting to
the first of COLUMN_DEFAULTS present. A row's name is the file's path and row number; the corpus's
split comes from the file's path (`train-00000-of-...`, `valid/`). Scanning reads only the small
columns; the audio is read by the prep workers a few rows at a time (`read_rows`), so memory stays
bounded whatever a row group's size.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO, Callable, Iterator

from data_prep.sources.base import SourceError, SourceItem, SourceScan, Tree, open_location, printable
from pipeline.storage.store import StoreError, read_ahead_to

COLUMN_DEFAULTS = {
    "audio": ("audio", "audio_filepath", "audio_file"),
    "text": ("text", "transcription", "sentence", "raw_transcription", "transcript"),
    "speaker": ("speaker_id", "speaker", "client_id", "spk_id"),
}
"""The first present wins. audio: FLEURS, IndicTTS (`audio`), IndicVoices, Kathbath, Shrutilipi
(`audio_filepath`); text: most (`text`), FLEURS (`transcription`); speaker: IndicVoices
(`speaker_id`); FLEURS, Shrutilipi and IndicTTS name none (splits then go by row)."""
READ_ROWS = 4
"""Rows a worker decodes from parquet at a time: its memory is a few rows, not a row group."""
SCAN_AT_ONCE = 16
"""Parquet files whose small columns a scan reads at once (on threads): on S3 each file takes a GET
for its footer and one or two a row group, 20-50 ms each, so a corpus of 2,000 shards read one at
a time would keep prep waiting half an hour before its first row."""


def parse_columns(spec: str) -> dict[str, str]:
    """"audio=a,text=t,speaker=s" -> {"audio": "a", ...}; a one-line SourceError for anything else."""
    columns = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        role, eq, name = part.partition("=")
        if not eq or role.strip() not in COLUMN_DEFAULTS or not name.strip():
            raise SourceError(f"--columns {spec!r}: expected ROLE=COLUMN pairs, ROLE one of "
                              f"{', '.join(COLUMN_DEFAULTS)} (e.g. audio=audio_filepath,text=sentence)")
        columns[role.strip()] = name.strip()
    return columns


def pick_columns(schema_names: list[str], chosen: dict[str, str], where: str) -> dict[str, str | None]:
    """Column per role: the one named, else the first default present (audio must exist)."""
    out: dict[str, str | None] = {}
    for role, defaults in COLUMN_DEFAULTS.items():
        if role in chosen:
            if chosen[role] not in schema_names:
                raise SourceError(f"{where}: no column {chosen[role]!r} (for {role}); it has: {', '.join(schema_names)}")
            out[role] = chosen[role]
        else:
            out[role] = next((c for c in defaults if c in schema_names), None)
    if out["audio"] is None:
        raise SourceError(f"{where}: no audio column (looked for {', '.join(COLUMN_DEFAULTS['audio'])}; it has: "
                          f"{', '.join(schema_names)}); name it with --columns audio=COLUMN")
    return out


def open_parquet(f: BinaryIO, where: str, pre_buffer: bool = False):
    """`pre_buffer`: pyarrow reads the column chunks a read needs as whole ranges, those of a row
    group that lie close together as one (a scan's small columns: one GET a row group rather than
    one a column); without it, 1 MB at a time, as a worker streams a row group's audio."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(f, buffer_size=1 << 20, pre_buffer=pre_buffer)
    except (pa.ArrowException, OSError) as e:
        raise SourceError(f"{where}: not a readable parquet file ({str(e).splitlines()[0]})") from None


def scan_parquet_files(tree: Tree, files: list[str], scan: SourceScan, columns: dict[str, str],
                       split_of: Callable[[str], str]) -> None:
    """`read_parquet` over `files`, SCAN_AT_ONCE at a time, their items and rejects added in the
    files' order; the first file (in order) that fails stops the scan with its error."""
    def one(rel: str) -> SourceScan:
        part = SourceScan()
        read_parquet(tree, rel, part, columns, split_of(rel))
        return part

    pool = ThreadPoolExecutor(min(SCAN_AT_ONCE, len(files)), thread_name_prefix="scan")
    try:
        for part in pool.map(one, files):
            scan.items += part.items
            scan.rejects += part.rejects
    finally:
        pool.shutdown(cancel_futures=True)


def read_parquet(tree: Tree, rel: str, scan: SourceScan, columns: dict[str, str], split: str = "") -> None:
    """One item per row of `rel`; a file that cannot be read at all is one reject."""
    import pyarrow as pa

    where = printable(tree.location(rel))
    with tree.open(rel, buffered=False) as f:  # pre_buffer asks for the ranges it needs: a GET of each, no more
        try:
            pf = open_parquet(f, where, pre_buffer=True)
        except SourceError as e:
            scan.rejects.append({"path": where, "reason": str(e).split(": ", 1)[1]})
            return
        chosen = pick_columns(pf.schema_arrow.names, columns, where)
        small = [c for c in (chosen["text"], chosen["speaker"]) if c]
        try:
            table = pf.read(columns=small, use_threads=False) if small else None
        except (pa.ArrowException, OSError) as e:
            scan.rejects.append({"path": where, "reason": f"cannot read its rows ({str(e).splitlines()[0]})"})
            return
    texts = _strings(table, chosen["text"]) if table is not None else None
    speakers = _strings(table, chosen["speaker"]) if table is not None else None
    identity = tree.identity(rel)
    row = 0
    for group in range(pf.metadata.num_row_groups):
        for i in range(pf.metadata.row_group(group).num_rows):
            scan.items.append(SourceItem(
                tree.location(rel), printable(f"{tree.name}/{rel}/{row:06d}"),
                (texts[row] if texts else "").strip(), (speakers[row] if speakers else "").strip(),
                f"parquet:{group}:{i}:{chosen['audio']}", identity, split))
            row += 1


def _strings(table, column: str | None) -> list[str] | None:
    if column is None:
        return None
    return ["" if v is None else str(v) for v in table.column(column).to_pylist()]


def read_rows(path: str, items: list[SourceItem]) -> Iterator[tuple[SourceItem, bytes | None, str]]:
    """(item, the encoded audio, its file name) for rows of one row group of parquet `path`, in
    order, READ_ROWS at a time; bytes None with the reason in place of the name for a row whose
    audio cannot be had."""
    import pyarrow as pa

    group = int(items[0].member.split(":")[1])
    column = items[0].member.split(":", 3)[3]
    wanted = {int(item.member.split(":")[2]): item for item in items}
    last = max(wanted)
    with open_location(path, items[0].identity[0] if items[0].identity else None) as f:
        pf = open_parquet(f, printable(path))
        read_ahead_to(f, _chunks_end(pf.metadata.row_group(group), column))
        row = 0
        try:
            for batch in pf.iter_batches(batch_size=READ_ROWS, row_groups=[group], columns=[column],
                                         use_threads=False):
                values = batch.column(0)
                for j in range(batch.num_rows):
                    if row + j in wanted:
                        yield (wanted[row + j], *audio_value(values[j].as_py(), path))
                row += batch.num_rows
                if row > last:
                    return
        except (pa.ArrowException, OSError) as e:
            reason = f"cannot read the row group ({str(e).splitlines()[0]})"
            for n in sorted(wanted):
                if n >= row:
                    yield wanted[n], None, reason


def _chunks_end(group, column: str) -> int:
    """Where the row group's chunks of `column` (all its leaves: an Audio struct's bytes and path)
    end in the file: what reading its rows needs, and where a remote read need not look ahead past."""
    end = 0
    for i in range(group.num_columns):
        chunk = group.column(i)
        if chunk.path_in_schema == column or chunk.path_in_schema.startswith(column + "."):
            start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
            end = max(end, start + chunk.total_compressed_size)
    return end


def audio_value(value, parquet_path: str) -> tuple[bytes | None, str]:
    """(encoded bytes, file name) from an audio cell in any of the encodings `datasets` writes."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), ""
    if not isinstance(value, dict):
        return None, f"the audio cell is {type(value).__name__}, not bytes or an Audio struct"
    if value.get("bytes"):
        return value["bytes"], value.get("path") or ""
    if value.get("array") is not None:
        import numpy as np
        import soundfile as sf

        out = io.BytesIO()
        sf.write(out, np.asarray(value["array"], np.float32), int(value.get("sampling_rate") or 16000),
                 format="WAV", subtype="FLOAT")
        return out.getvalue(), "array.wav"
    if value.get("path"):  # not embedded: a file beside the parquet
        target = f"{parquet_path.rsplit('/', 1)[0]}/{value['path']}"
        try:
            with open_location(target) as f:
                return f.read(), value["path"]
        except (OSError, StoreError):
            return None, f"no audio bytes in the row, and its path {value['path']} is not beside the parquet"
    return None, "the row's audio is empty"
