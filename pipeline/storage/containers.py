"""Is the whole file there? Cheap structural checks for containers libsndfile reads too kindly.

    reason = truncation(f)         # "truncated ..." for a cut-off WAV, AIFF or Ogg file, else None
                                   # (f: the file, open for binary reading and seekable)

libsndfile quietly decodes whatever a cut-off file still holds, so a half-finished download would
pass as shorter audio. What each format lets us check, and where it is checked:
- WAV, AIFF: the data chunk's size in the header against the bytes in the file (here).
- Ogg (Vorbis, Opus): libsndfile takes the length from the last page it finds, so the header
  cannot tell; instead the file must end exactly at the end of a page that closes the stream (here).
- FLAC, MP3 with a Xing/Info header: the header states the frame count; `pipeline.storage.audio` compares
  it with the frames decoded. An MP3 without that header has no stated length (libsndfile counts
  what is there), so a cut one passes as shorter audio: nothing in the file can tell.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

OGG_TAIL_BYTES = 1 << 16
"""How far back from the end to look for the last Ogg page (a page is at most 65,307 bytes)."""


def truncation(f: BinaryIO) -> str | None:
    """Why the file's container shows it was cut off, in a few words; None if it looks whole (or
    is of a format checked elsewhere). Leaves `f` at its start."""
    size = f.seek(0, 2)
    f.seek(0)
    head = f.read(12)
    try:
        if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
            return _data_chunk_truncation(f, size, "<4sI", b"data")
        if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
            return _data_chunk_truncation(f, size, ">4sI", b"SSND")
        if head[:4] == b"OggS":
            return _ogg_truncation(f, size)
        return None
    finally:
        f.seek(0)


def _data_chunk_truncation(f: BinaryIO, size: int, layout: str, data_id: bytes) -> str | None:
    """Walk the chunks of a RIFF (little-endian) or IFF (big-endian) file to its audio chunk and
    check the file holds all the bytes that chunk's header promises."""
    pos = 12
    while pos + 8 <= size:
        f.seek(pos)
        chunk_id, chunk_size = struct.unpack(layout, f.read(8))
        if chunk_id == data_id:
            if chunk_size != 0xFFFFFFFF and pos + 8 + chunk_size > size:
                return (f"truncated (header promises {chunk_size} bytes of audio, "
                        f"file holds {size - pos - 8})")
            return None
        pos += 8 + chunk_size + (chunk_size & 1)
    return None


def _ogg_truncation(f: BinaryIO, size: int) -> str | None:
    """The file's last bytes must be one whole Ogg page with the end-of-stream flag.

    The last "OggS" in the tail may be a chance match inside the last page's data, so every
    match is tried from the end until one parses as a page ending exactly at the end of the file.
    """
    f.seek(max(0, size - OGG_TAIL_BYTES))
    tail = f.read()
    at = tail.rfind(b"OggS")
    while at >= 0:
        end = _ogg_page_end(tail, at)
        if end == len(tail):
            if not tail[at + 5] & 0x04:
                return "truncated: the Ogg stream stops without its end-of-stream page"
            return None
        at = tail.rfind(b"OggS", 0, at)
    return "truncated: the file ends inside an Ogg page"


def _ogg_page_end(data: bytes, at: int) -> int | None:
    """Offset just past the Ogg page starting at `at` (header, segment table, body); None if the
    header itself is cut."""
    if at + 27 > len(data):
        return None
    n_segments = data[at + 26]
    table = data[at + 27: at + 27 + n_segments]
    if len(table) < n_segments:
        return None
    return at + 27 + n_segments + sum(table)
