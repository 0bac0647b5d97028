"""The corpus layouts prep reads, each from a local folder or an object-store prefix alike.

- folder: every audio file below it (wav, flac, ogg, opus, mp3, aiff; m4a, aac, mp4, webm through
  FFmpeg); no speaker (splits fall back to path hashes).
- manifest: a .tsv/.csv/.jsonl with a `path` column (relative to the manifest) and optional `text`
  and `speaker`.
- openslr: SLR66-style `line_index.tsv` (`ID<TAB>[stray field<TAB>]text`) beside ID.wav files; the
  speaker is the ID's first two fields (`tef_01234`).
- commonvoice: `validated.tsv` (client_id, path, sentence) and `clips/`.
- kathbath: AI4Bharat's original release, one language folder: `{train,valid,test_known,
  test_unknown}/` each with `transcription_n2w.txt` (`FILE.m4a<TAB>text`) and the m4a files (in the
  split folder or below it, e.g. `audio/`), named `UID-SPEAKER-GENDER.m4a`.
- fleurs: Google's original release, one language folder: `{train,dev,test}.tsv` (no header: id,
  file name, raw transcription, transcription, characters, samples, gender) beside
  `audio/{split}.tar.gz`, whose members (`{split}/FILE.wav`) are streamed, never extracted to disk.
- parquet: see `data_prep.sources.parquet`.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
import re
from pathlib import PurePosixPath

from data_prep.sources.base import LocalTree, SourceError, SourceItem, SourceScan, StoreTree, Tree, printable
from pipeline.storage.audio import AUDIO_EXTENSIONS
from pipeline.storage.store import is_remote, open_store

MANIFEST_EXTS = {".tsv", ".csv", ".jsonl"}
KATHBATH_SPLITS = ("train", "valid", "test_known", "test_unknown")
FLEURS_SPLITS = ("train", "dev", "test")


def add_file(scan: SourceScan, tree: Tree, rel: str, name: str, text: str = "", speaker: str = "",
             where: str = "", split: str = "") -> None:
    """An item for file `rel` of `tree`, or a reject saying why not."""
    if not tree.is_file(rel):
        scan.rejects.append({"path": printable(tree.location(rel)), "reason": f"file not found{printable(where)}"})
    else:
        scan.items.append(SourceItem(tree.location(rel), printable(name), text.strip(), speaker.strip(),
                                     identity=tree.identity(rel), source_split=split))


def read_folder(tree: Tree, scan: SourceScan) -> None:
    for rel in tree.files():
        if PurePosixPath(rel).suffix.lower() in AUDIO_EXTENSIONS:
            add_file(scan, tree, rel, f"{tree.name}/{rel}")


def read_manifest(tree: Tree, rel: str, scan: SourceScan, allow_outside: bool = False) -> None:
    """Rows of a manifest; paths are relative to its folder and must stay inside it unless
    `allow_outside` (a manifest from elsewhere must not make prep read /etc/shadow)."""
    rows = manifest_rows(tree, rel)
    folder = posixpath.dirname(rel)
    stem = PurePosixPath(rel).stem
    for n, row in enumerate(rows, start=2 if not rel.lower().endswith(".jsonl") else 1):
        where = printable(f"{tree.location(rel)}:{n}")
        if not isinstance(row, dict) or any(not isinstance(row.get(k) or "", str) for k in ("path", "text", "speaker")):
            scan.rejects.append({"path": where, "reason": "manifest row: path, text and speaker must be strings"})
            continue
        audio = (row.get("path") or "").strip()
        if not audio:
            scan.rejects.append({"path": where, "reason": "manifest row has no path"})
            continue
        at = f" (manifest {PurePosixPath(rel).name} line {n})"
        target = resolve_in(tree, folder, audio, allow_outside)
        if target is None:
            scan.rejects.append({"path": where, "reason": f"{audio}: outside the manifest's folder (prep "
                                 "--allow-outside reads it anyway)"})
            continue
        owner, key = target
        add_file(scan, owner, key, f"{stem}/{audio}", row.get("text") or "", row.get("speaker") or "", where=at)


def resolve_in(tree: Tree, folder: str, path: str, allow_outside: bool) -> tuple[Tree, str] | None:
    """(tree, key) of a manifest's `path` (relative to `folder` of `tree`, or absolute); None when it
    lies outside the manifest's folder and that is not allowed."""
    if isinstance(tree, LocalTree):
        home = (tree.root / folder).resolve()
        audio = (home / path).resolve()  # an absolute path replaces home; symlinks are followed
        if not allow_outside and not audio.is_relative_to(home):
            return None
        return LocalTree(audio.parent), audio.name
    if is_remote(path):
        url = path
    else:
        url = posixpath.normpath(posixpath.join(tree.url.split("://", 1)[1], folder, path))
        url = f"{tree.url.split('://', 1)[0]}://{url}"
    home = posixpath.join(tree.url, folder).rstrip("/") + "/"
    if not allow_outside and not url.startswith(home):
        return None
    if url.startswith(tree.url.rstrip("/") + "/"):
        return tree, url[len(tree.url.rstrip("/")) + 1:]
    parent, _, leaf = url.rpartition("/")
    return StoreTree(open_store(parent)), leaf


def manifest_rows(tree: Tree, rel: str) -> list[dict]:
    text = tree.read_text(rel)
    where = tree.location(rel)
    if rel.lower().endswith(".jsonl"):
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise SourceError(f"{where}:{n}: not valid JSON") from None
        if rows and (not isinstance(rows[0], dict) or "path" not in rows[0]):
            raise SourceError(f"{where}: manifest rows need a 'path' field")
        return rows
    delimiter = "\t" if rel.lower().endswith(".tsv") else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter,
                            quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
    if "path" not in (reader.fieldnames or []):
        raise SourceError(f"{where}: manifest needs a 'path' column (has: {', '.join(reader.fieldnames or [])})")
    return list(reader)


def read_openslr(tree: Tree, scan: SourceScan) -> None:
    for n, line in enumerate(tree.read_text("line_index.tsv").splitlines(), start=1):
        fields = [f.strip() for f in line.split("\t")]
        if not fields[0]:
            continue
        utt = fields[0]
        text = next((f for f in reversed(fields[1:]) if f), "")  # tolerate the stray middle field
        speaker = "_".join(utt.split("_")[:2])
        add_file(scan, tree, f"{utt}.wav", f"{tree.name}/{utt}", text, speaker, where=f" (line_index.tsv line {n})")


def read_commonvoice(tree: Tree, scan: SourceScan) -> None:
    reader = csv.DictReader(io.StringIO(tree.read_text("validated.tsv"), newline=""), delimiter="\t",
                            quoting=csv.QUOTE_NONE)
    for n, row in enumerate(reader, start=2):
        clip = (row.get("path") or "").strip()
        if clip:
            add_file(scan, tree, f"clips/{clip}", f"{tree.name}/{clip}", row.get("sentence") or "",
                     row.get("client_id") or "", where=f" (validated.tsv line {n})")


def read_kathbath(tree: Tree, scan: SourceScan) -> None:
    files = tree.files()
    for split in KATHBATH_SPLITS:
        index = f"{split}/transcription_n2w.txt"
        if not tree.is_file(index):
            continue
        by_name = {PurePosixPath(f).name: f for f in files if f.startswith(f"{split}/") and f.lower().endswith(".m4a")}
        for n, line in enumerate(tree.read_text(index).splitlines(), start=1):
            name, _, text = line.partition("\t")
            if not name.strip():
                continue
            name = name.strip()
            rel = by_name.get(name, f"{split}/{name}")
            parts = PurePosixPath(name).stem.split("-")
            add_file(scan, tree, rel, f"{tree.name}/{split}/{name}", text, parts[1] if len(parts) >= 3 else "",
                     where=f" ({index} line {n})", split=split)


def read_fleurs(tree: Tree, scan: SourceScan) -> None:
    for split in FLEURS_SPLITS:
        if not tree.is_file(f"{split}.tsv"):
            continue
        archive = f"audio/{split}.tar.gz"
        if not tree.is_file(archive):
            raise SourceError(f"{tree.location(split + '.tsv')}: its audio archive {tree.location(archive)} is missing")
        identity = tree.identity(archive)
        for n, line in enumerate(tree.read_text(f"{split}.tsv").splitlines(), start=1):
            fields = line.split("\t")
            if len(fields) < 4:
                if line.strip():
                    scan.rejects.append({"path": printable(f"{tree.location(split + '.tsv')}:{n}"),
                                         "reason": f"expected 7 tab-separated fields, found {len(fields)}"})
                continue
            file_name = fields[1].strip()
            scan.items.append(SourceItem(tree.location(archive), printable(f"{tree.name}/{split}/{file_name}"),
                                         fields[3].strip() or fields[2].strip(), "", f"tar:{split}/{file_name}",
                                         identity, split))


def detect_format_in(tree: Tree, rel: str = "") -> str:
    """The layout of a source: a file (manifest or parquet) or a folder."""
    if rel:
        suffix = PurePosixPath(rel).suffix.lower()
        if suffix in MANIFEST_EXTS:
            return "manifest"
        if suffix == ".parquet":
            return "parquet"
        raise SourceError(f"{tree.location(rel)}: a file source must be a manifest (.tsv, .csv, .jsonl) or "
                          f"a .parquet file")
    if tree.is_file("line_index.tsv"):
        return "openslr"
    if tree.is_file("validated.tsv") and tree.is_dir("clips"):
        return "commonvoice"
    if any(tree.is_file(f"{s}/transcription_n2w.txt") for s in KATHBATH_SPLITS):
        return "kathbath"
    if any(tree.is_file(f"{s}.tsv") and tree.is_file(f"audio/{s}.tar.gz") for s in FLEURS_SPLITS):
        return "fleurs"
    files = tree.files()
    if not files:
        raise SourceError(f"{tree.url}: no such file or folder, or nothing in it")
    if any(f.lower().endswith(".parquet") for f in files) and not any(
            PurePosixPath(f).suffix.lower() in AUDIO_EXTENSIONS for f in files):
        return "parquet"
    return "folder"


SPLIT_WORD = re.compile(r"(?:^|[-_/.])(train|valid|validation|dev|test(?:_known|_unknown)?)(?=$|[-_/.])")


def split_in_path(rel: str) -> str:
    """The corpus split a file's path names (`data/train-00000-of-00012.parquet`, `te/valid/0.parquet`,
    `fleurs-validation.parquet`), or ""."""
    found = SPLIT_WORD.findall(rel.lower())
    return found[-1] if found else ""

