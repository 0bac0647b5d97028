"""Where raw audio comes from: folders, manifests, OpenSLR SLR66 and Common Voice layouts.

    scan = scan_sources(["corpus/manifest.tsv", "te_in_female/"], fmt="auto")
    scan.items      # [SourceItem(path, name, text, speaker)], sorted by name
    scan.rejects    # [{"path", "reason"}] for rows pointing nowhere and unsupported files

Layouts (detected, or named with `fmt`):
- folder: every wav/flac/ogg/opus/mp3/aiff below it; no speaker (splits fall back to path hashes).
- manifest: a .tsv/.csv/.jsonl with a `path` column (relative to the manifest) and optional
  `text` and `speaker`.
- openslr: SLR66-style `line_index.tsv` (`ID<TAB>[stray field<TAB>]text`) beside ID.wav files;
  the speaker is the ID's first two fields (`tef_01234`).
- commonvoice: `validated.tsv` (client_id, path, sentence) and `clips/`.

File names need not be UTF-8 (Linux allows any bytes): an item's `path` keeps the name as Python
holds it (undecodable bytes as surrogate escapes) so the file can be opened, while its `name`, and
every path in a reject, spell such bytes as `\xe9` (`printable`), so keys, metadata and
rejects.jsonl stay valid UTF-8.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.storage.audio import AUDIO_EXTENSIONS

UNSUPPORTED_EXTS = {".m4a", ".aac", ".wma", ".amr", ".webm", ".mp4", ".3gp"}
MANIFEST_EXTS = {".tsv", ".csv", ".jsonl"}
FORMATS = ("folder", "manifest", "openslr", "commonvoice")
SAMPLE_BYTES = 1 << 16
"""Bytes hashed at each of the start, middle and end of a file for its identity."""


class SourceError(ValueError):
    """A source that cannot be read at all (missing, unknown layout, manifest without `path`)."""


@dataclass(frozen=True)
class SourceItem:
    path: str
    """Absolute path of the audio file, as the file system spells it (surrogate escapes and all)."""
    name: str
    """Stable id: source folder name + path inside it, `printable`; keys and splits derive from it."""
    text: str = ""
    speaker: str = ""


def printable(text: str) -> str:
    """`text` with the undecodable bytes of a file name (surrogate escapes) spelled `\\xe9`: safe to
    write as UTF-8 (JSON, keys) and to print; a UTF-8 name comes back unchanged."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def file_identity(path: str) -> tuple[int, int, str]:
    """(size, mtime_ns, sha256 of the first, middle and last SAMPLE_BYTES): what tells an edited
    file from the one a dataset was made of, without reading all of a long file. A file that cannot
    be read gives (-1, -1, "unreadable"); its worker will reject it with the reason."""
    try:
        stat = os.stat(path)
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            middle, end = max(0, stat.st_size // 2 - SAMPLE_BYTES // 2), max(0, stat.st_size - SAMPLE_BYTES)
            for offset in sorted({0, middle, end}):
                f.seek(offset)
                digest.update(f.read(SAMPLE_BYTES))
    except OSError:
        return -1, -1, "unreadable"
    return stat.st_size, stat.st_mtime_ns, digest.hexdigest()


@dataclass
class SourceScan:
    items: list[SourceItem] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)


def detect_format(src: Path) -> str:
    if src.is_file():
        if src.suffix.lower() in MANIFEST_EXTS:
            return "manifest"
        raise SourceError(f"{src}: a file source must be a manifest (.tsv, .csv, .jsonl)")
    if not src.is_dir():
        raise SourceError(f"{src}: no such file or folder")
    if (src / "line_index.tsv").is_file():
        return "openslr"
    if (src / "validated.tsv").is_file() and (src / "clips").is_dir():
        return "commonvoice"
    return "folder"


def scan_sources(sources: list[str], fmt: str = "auto", allow_outside: bool = False) -> SourceScan:
    """All items of all sources, sorted by name, plus rejects for rows that point nowhere (or, unless
    `allow_outside`, outside their manifest's folder)."""
    scan = SourceScan()
    for src in sources:
        path = Path(src).expanduser().absolute()
        kind = detect_format(path) if fmt == "auto" else fmt
        if kind not in FORMATS:
            raise SourceError(f"unknown source format {kind!r} (one of {', '.join(FORMATS)})")
        if not path.exists():
            raise SourceError(f"{path}: no such file or folder")
        if kind == "manifest":
            read_manifest(path, scan, allow_outside)
        else:
            READERS[kind](path, scan)
    names = {}
    for item in scan.items:
        if item.name in names:
            raise SourceError(f"{item.name}: listed twice ({names[item.name]} and {item.path})")
        names[item.name] = item.path
    scan.items.sort(key=lambda i: i.name)
    return scan


def _add(scan: SourceScan, path: Path, name: str, text: str = "", speaker: str = "", where: str = "") -> None:
    if not path.is_file():
        scan.rejects.append({"path": printable(str(path)), "reason": f"file not found{printable(where)}"})
    elif path.suffix.lower() in UNSUPPORTED_EXTS:
        scan.rejects.append({"path": printable(str(path)), "reason": f"unsupported format "
                             f"{printable(path.suffix)} (convert to wav, flac, ogg or mp3)"})
    else:
        scan.items.append(SourceItem(str(path), printable(name), text.strip(), speaker.strip()))


def read_folder(root: Path, scan: SourceScan) -> None:
    if not root.is_dir():
        raise SourceError(f"{root}: not a folder")
    for path in sorted(root.rglob("*")):
        ext = path.suffix.lower()
        if path.is_file() and (ext in AUDIO_EXTENSIONS or ext in UNSUPPORTED_EXTS):
            _add(scan, path, f"{root.name}/{path.relative_to(root).as_posix()}")


def read_manifest(path: Path, scan: SourceScan, allow_outside: bool = False) -> None:
    """Rows of a manifest; paths are relative to its folder and must stay inside it unless
    `allow_outside` (a manifest from elsewhere must not make prep read /etc/shadow)."""
    rows = _manifest_rows(path)
    home = path.parent.resolve()
    for n, row in enumerate(rows, start=2 if path.suffix.lower() != ".jsonl" else 1):
        where = printable(f"{path}:{n}")
        if not isinstance(row, dict) or any(not isinstance(row.get(k) or "", str) for k in ("path", "text", "speaker")):
            scan.rejects.append({"path": where, "reason": "manifest row: path, text and speaker must be strings"})
            continue
        rel = (row.get("path") or "").strip()
        if not rel:
            scan.rejects.append({"path": where, "reason": "manifest row has no path"})
            continue
        audio = (home / rel).resolve()  # an absolute rel replaces home; symlinks are followed
        if not allow_outside and not audio.is_relative_to(home):
            scan.rejects.append({"path": where, "reason": f"{rel}: outside the manifest's folder (prep "
                                 "--allow-outside reads it anyway)"})
            continue
        _add(scan, audio, f"{path.stem}/{rel}", row.get("text") or "", row.get("speaker") or "",
             where=f" (manifest {path.name} line {n})")


def _manifest_rows(path: Path) -> list[dict]:
    try:
        return _read_manifest_rows(path)
    except UnicodeDecodeError as e:
        raise SourceError(f"{path}: not UTF-8 text (byte {e.start}); save the manifest as UTF-8") from None


def _read_manifest_rows(path: Path) -> list[dict]:
    if path.suffix.lower() == ".jsonl":
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise SourceError(f"{path}:{n}: not valid JSON") from None
        if rows and (not isinstance(rows[0], dict) or "path" not in rows[0]):
            raise SourceError(f"{path}: manifest rows need a 'path' field")
        return rows
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
        if "path" not in (reader.fieldnames or []):
            raise SourceError(f"{path}: manifest needs a 'path' column (has: {', '.join(reader.fieldnames or [])})")
        return list(reader)


def read_openslr(root: Path, scan: SourceScan) -> None:
    index = root / "line_index.tsv"
    for n, line in enumerate(index.read_text(encoding="utf-8").splitlines(), start=1):
        fields = [f.strip() for f in line.split("\t")]
        if not fields[0]:
            continue
        utt = fields[0]
        text = next((f for f in reversed(fields[1:]) if f), "")  # tolerate the stray middle field
        speaker = "_".join(utt.split("_")[:2])
        _add(scan, root / f"{utt}.wav", f"{root.name}/{utt}", text, speaker,
             where=f" (line_index.tsv line {n})")


def read_commonvoice(root: Path, scan: SourceScan) -> None:
    with open(root / "validated.tsv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        for n, row in enumerate(reader, start=2):
            clip = (row.get("path") or "").strip()
            if not clip:
                continue
            _add(scan, root / "clips" / clip, f"{root.name}/{clip}", row.get("sentence") or "",
                 row.get("client_id") or "", where=f" (validated.tsv line {n})")


READERS = {"folder": read_folder, "manifest": read_manifest, "openslr": read_openslr,
           "commonvoice": read_commonvoice}
