"""The data commands: `corpus` (offline Telugu TTS), `prep` (raw audio -> shards), `shards ls|verify`
and `reshard` (store to store)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from data_prep.sources import FORMATS
from jobs.cli.common import (FORMATTER, UsageError, console, err_console, is_config_word,
                             is_override, load_cli_config)


def register(sub) -> None:
    register_corpus(sub)
    register_prep(sub)
    register_shards(sub)
    register_reshard(sub)


# ---------------------------------------------------------------- corpus
def register_corpus(sub) -> None:
    s = sub.add_parser("corpus", help="synthesize an offline Telugu speech corpus (espeak-ng, festival)",
                       description="Synthesize Telugu speech from a bundled sentence list with every "
                       "Telugu voice installed, and write wavs plus manifest.tsv. Some files are "
                       "deliberately over full scale (float WAV, peaks 1.01-1.3) to exercise clipping. "
                       "Each engine is tried on one sentence first: one that fails is reported with its "
                       "error and the apt line that fixes it, and left out.",
                       epilog="example: telucodec corpus corpus/ --minutes 5 --seed 1", formatter_class=FORMATTER)
    s.add_argument("out_dir", metavar="OUT_DIR")
    s.add_argument("--minutes", type=float, default=3.0, help="audio to make (default 3)")
    s.add_argument("--seed", type=int, default=0, help="random seed for sentences and voices")
    s.set_defaults(func=corpus)


def corpus(args) -> int:
    from data_prep.corpus import synthesize_corpus

    if args.minutes <= 0:
        raise UsageError(f"--minutes must be > 0, got {args.minutes:g}")
    summary = synthesize_corpus(Path(args.out_dir), minutes=args.minutes, seed=args.seed)
    print_broken_voices(summary)
    console.print(f"wrote {summary.files} files, {summary.seconds / 60:.1f} min of Telugu speech "
                  f"({summary.over_range} over full scale) -> {summary.manifest}")
    return 0


def print_broken_voices(summary) -> None:
    for line in summary.broken:
        err_console.print(f"telucodec: warning: {line}", markup=False, highlight=False)


# ---------------------------------------------------------------- prep
def register_prep(sub) -> None:
    s = sub.add_parser("prep", help="raw audio -> clipped, segmented WebDataset shards on a store",
                       description="Decode, mix to mono, resample, clip to [-1, 1], trim silence, cut "
                       "into segments, split by speaker and write {split}-NNNNNN.tar shards and "
                       "index.json (last). Bad files go to rejects.jsonl and the run continues. "
                       "Re-running the same command after an interruption completes the dataset. "
                       "Words ending in .yaml (or a shipped config name) and key=value words are config; "
                       "every other word is a source.",
                       epilog="sources (local paths or s3:// URLs alike; --format picks one, else detected):\n"
                       "  folder       every audio file below it (wav flac ogg opus mp3 aiff m4a aac mp4 webm)\n"
                       "  manifest     a .tsv/.csv/.jsonl with a path column (+ text, speaker)\n"
                       "  openslr      an OpenSLR SLR66 folder (line_index.tsv)\n"
                       "  commonvoice  a Common Voice folder (validated.tsv + clips/)\n"
                       "  kathbath     Kathbath's m4a release, one language (train/ valid/ test_known/ ...)\n"
                       "  fleurs       FLEURS's release, one language (train.tsv ... + audio/train.tar.gz ...)\n"
                       "  parquet      a .parquet file or a folder of them (Hugging Face hub shards:\n"
                       "               IndicVoices, Kathbath, FLEURS, Shrutilipi, IndicTTS); --columns names\n"
                       "               the audio, text and speaker columns where the defaults do not fit\n\n"
                       "examples:\n"
                       "  telucodec prep corpus/ --out runs/data\n"
                       "  telucodec prep te_in_female/ te_in_male/ --out s3://bucket/te --format openslr\n"
                       "  telucodec prep s3://bucket/indicvoices-te/ --out s3://bucket/te\n"
                       "  telucodec prep shards/ --out data/te --columns text=sentence,speaker=client_id\n"
                       "  telucodec prep cv-te/ --out s3://bucket/cv configs/base.yaml prep.workers=8",
                       formatter_class=FORMATTER)
    s.add_argument("words", nargs="+", metavar="SRC|CONFIG|key=value")
    s.add_argument("--out", required=True, metavar="URL", help="dataset URL: folder, file:// or s3://")
    s.add_argument("--format", choices=["auto", *FORMATS],
                   default="auto", help="source layout (default: detect)")
    s.add_argument("--config", dest="config_items", action="append", default=[], metavar="CONFIG|key=value",
                   help="config or override (repeatable; bare words work too)")
    s.add_argument("--overwrite", action="store_true", help="replace a different dataset at --out")
    s.add_argument("--allow-outside", action="store_true",
                   help="let manifests name files outside their own folder (absolute or ../ paths)")
    s.add_argument("--columns", default="", metavar="ROLE=COL,...",
                   help="parquet columns for audio, text and speaker (default: the hub's usual names)")
    s.add_argument("--ray", nargs="?", const="auto", default=None, metavar="ADDRESS",
                   help="fan out over a Ray cluster (this machine's, or HOST:PORT): the same dataset, byte for "
                        "byte; the default in a job `telucodec submit prep` started")
    s.set_defaults(func=prep)


def prep(args) -> int:
    from data_prep.prep import run_prep

    call = prep_call(args)
    summary = run_prep(call.pop("sources"), call.pop("out"), call.pop("cfg").prep, **call, ray_address=args.ray)
    print_prep_summary(summary)
    return 0 if summary.samples else 1


def prep_call(args) -> dict:
    """`prep`'s words -> run_prep's arguments, the whole config as `cfg` (checked: a typo fails here,
    before any work)."""
    from data_prep.sources import SourceError
    from data_prep.sources.parquet import parse_columns

    sources = [w for w in args.words if not (is_override(w) or is_config_word(w))]
    items = [w for w in args.words if w not in sources] + args.config_items
    if not sources:
        raise UsageError("no source: give a folder, a manifest, a parquet file or one of the layouts "
                         "`telucodec prep --help` lists (paths or s3:// URLs)")
    cfg = load_cli_config(items)
    try:
        columns = parse_columns(args.columns)
    except SourceError as e:
        raise UsageError(str(e)) from None
    return {"sources": sources, "out": args.out, "cfg": cfg, "fmt": args.format, "overwrite": args.overwrite,
            "allow_outside": args.allow_outside, "columns": columns}


def print_prep_summary(summary) -> None:
    if summary.already_complete:
        console.print(f"{summary.url} already holds this dataset (same sources and config): nothing to do")
    table = Table(title=f"prep -> {summary.url}")
    for col in ("split", "shards", "samples", "hours", "clipped files"):
        table.add_column(col, justify="right" if col != "split" else "left")
    for split, t in summary.splits.items():
        table.add_row(split, str(t["shards"]), str(t["samples"]), f"{t['seconds'] / 3600:.3f}",
                      str(summary.clipped_files.get(split, 0)))
    console.print(table)
    if summary.resumed_shards:
        console.print(f"resumed: {summary.resumed_shards} verified shards kept from an earlier run")
    if summary.nodes:
        from data_prep.cluster import node_names

        console.print(f"nodes: {len(summary.nodes)} ({node_names(summary.nodes)} of the audio)", highlight=False)
    if summary.rejects:
        console.print(f"[yellow]{len(summary.rejects)} file(s) rejected[/] (listed in {summary.rejects_url}):")
        for r in summary.rejects[:20]:
            console.print(f"  {r['path']}: {r['reason']}", markup=False, highlight=False)
        if len(summary.rejects) > 20:
            console.print(f"  ... and {len(summary.rejects) - 20} more")


# ---------------------------------------------------------------- shards
def register_shards(sub) -> None:
    sh = sub.add_parser("shards", help="list or verify a dataset's shards")
    shsub = sh.add_subparsers(dest="shards_command", metavar="ACTION", required=True)
    s = shsub.add_parser("ls", help="table of splits: shards, samples, hours, size",
                         epilog="examples:\n  telucodec shards ls s3://bucket/te\n  telucodec shards ls data/te --json",
                         formatter_class=FORMATTER)
    s.add_argument("url", metavar="URL")
    s.add_argument("--json", action="store_true", help="print totals per split as JSON")
    s.set_defaults(func=shards_ls)
    s = shsub.add_parser("verify", help="re-hash every shard and decode every sample",
                         description="Re-hash every shard against index.json, decode every sample and "
                         "check it lies in [-1, 1]. Exits 1 naming each bad shard.",
                         epilog="example: telucodec shards verify s3://bucket/te", formatter_class=FORMATTER)
    s.add_argument("url", metavar="URL")
    s.set_defaults(func=shards_verify)
    s = shsub.add_parser("upgrade", help="add per-sample byte ranges to an older index (one read of every shard)",
                         description="Training reads blocks of samples with one ranged read each, at the byte "
                         "ranges index.json records; indexes written by telucodec before 0.2 lack them and "
                         "training refuses them. This reads every shard once, checks it against the "
                         "index's digest and rewrites index.json with the ranges. Shards are not touched.",
                         epilog="example: telucodec shards upgrade s3://bucket/te", formatter_class=FORMATTER)
    s.add_argument("url", metavar="URL")
    s.set_defaults(func=shards_upgrade)


def shards_ls(args) -> int:
    from pipeline.storage.shards import load_index

    index = load_index(args.url)
    if args.json:
        print(json.dumps(index.splits, indent=2))
        return 0
    console.print(shards_table(args.url, index))
    return 0


def shards_table(url: str, index) -> Table:
    table = Table(title=f"{url}  ({index.sample_rate} Hz, telucodec {index.version})")
    for col in ("split", "shards", "samples", "hours", "size"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for split, t in index.splits.items():
        table.add_row(split, str(t["shards"]), str(t["samples"]), f"{t['seconds'] / 3600:.3f}",
                      human_bytes(t["bytes"]))
    return table


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""  # unreachable


def over_shards(url: str, label: str, work):
    """(shard count, `work(url, on_shard=..., index=...)`) with a progress bar over the shards."""
    from rich.progress import Progress

    from pipeline.storage.shards import load_index

    index = load_index(url)
    with Progress(console=err_console, transient=True) as bar:
        task = bar.add_task(label, total=len(index.shards))
        return len(index.shards), work(url, on_shard=lambda _: bar.advance(task), index=index)


def shards_verify(args) -> int:
    from pipeline.storage.shards import verify_dataset

    total, problems = over_shards(args.url, "verifying shards", verify_dataset)
    if problems:
        for p in problems:
            err_console.print(f"BAD {p}", markup=False, highlight=False)
        err_console.print(f"{len(problems)} problem(s) in {args.url}")
        return 1
    console.print(f"OK: {total} shards match the index; every sample decodes and lies in [-1, 1]")
    return 0


def shards_upgrade(args) -> int:
    from pipeline.storage.shards import upgrade_index

    _, scanned = over_shards(args.url, "scanning shards", upgrade_index)
    if scanned:
        console.print(f"OK: sample byte ranges of {scanned} shard(s) added to {args.url}/index.json")
    else:
        console.print(f"OK: {args.url}/index.json already has every sample's byte range; nothing to do")
    return 0


# ---------------------------------------------------------------- reshard
def register_reshard(sub) -> None:
    s = sub.add_parser("reshard", help="copy a dataset into new shards: sizes, ranks, shuffle, re-cut, resample",
                       description="Stream a dataset from one store to another (s3:// or local, either way) "
                       "into new shards: sized by samples, megabytes or count, balanced so every split's "
                       "shard count is a multiple of --ranks with sample counts differing by at most one, "
                       "optionally shuffled, re-cut or resampled. A plain re-pack copies the FLAC bytes "
                       "as they are. The source is only read; index.json (with lineage) is written last, "
                       "after the result is checked against the source. Re-running the same command "
                       "after an interruption completes it; re-running a finished one does nothing.",
                       epilog="examples:\n"
                       "  telucodec reshard s3://bucket/te s3://bucket/te-r8 --shard-mb 256 --ranks 8 --shuffle\n"
                       "  telucodec reshard s3://bucket/te /data/te-val --splits val\n"
                       "  telucodec reshard /data/te s3://bucket/te-24k-5s --sample-rate 24000 "
                       "--segment-seconds 5",
                       formatter_class=FORMATTER)
    s.add_argument("src", metavar="SRC_URL", help="source dataset: folder, file:// or s3://")
    s.add_argument("dst", metavar="DST_URL", help="destination prefix: folder, file:// or s3://")
    shape = s.add_mutually_exclusive_group()
    shape.add_argument("--samples-per-shard", type=int, metavar="N", help="at most N samples per shard")
    shape.add_argument("--shard-mb", type=float, metavar="M", help="shards of about M megabytes")
    shape.add_argument("--shards", type=int, metavar="K", help="K shards per split")
    s.add_argument("--ranks", type=int, default=1, metavar="R",
                   help="make each split's shard count a multiple of R, samples balanced (default 1)")
    s.add_argument("--shuffle", action="store_true", help="shuffle samples across each split")
    s.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    s.add_argument("--splits", metavar="LIST", help="comma-separated splits to copy (default: all)")
    s.add_argument("--segment-seconds", type=float, metavar="S",
                   help="re-cut samples into equal parts of at most S seconds (keys KEY_s000, ...)")
    s.add_argument("--sample-rate", type=int, metavar="HZ", help="resample to HZ (soxr)")
    s.add_argument("--overwrite", action="store_true", help="replace a different dataset at DST_URL")
    s.add_argument("--workers", type=int, default=0, help="processes for re-cut/resample (default: CPUs)")
    s.add_argument("--io-threads", type=int, default=8, help="download/upload threads (default 8)")
    s.add_argument("--spill-gb", type=float, default=16.0,
                   help="local disk a shuffle may use per source pass (default 16)")
    s.add_argument("--tmp-dir", metavar="DIR", help="folder for temporary files (default: system temp)")
    s.add_argument("--ray", nargs="?", const="auto", default=None, metavar="ADDRESS",
                   help="fan out over a Ray cluster (this machine's, or HOST:PORT): the same shards, byte for "
                        "byte; the default in a job `telucodec submit reshard` started")
    s.set_defaults(func=reshard)


def reshard_options(args):
    from data_prep.reshard import ReshardOptions

    return ReshardOptions(samples_per_shard=args.samples_per_shard, shard_mb=args.shard_mb, shards=args.shards,
                          ranks=args.ranks, shuffle=args.shuffle, seed=args.seed,
                          splits=tuple(s for s in (args.splits or "").split(",") if s),
                          segment_seconds=args.segment_seconds, sample_rate=args.sample_rate,
                          overwrite=args.overwrite, workers=args.workers, io_threads=args.io_threads,
                          spill_gb=args.spill_gb, tmp_dir=args.tmp_dir)


def reshard(args) -> int:
    from data_prep.reshard import reshard as run_reshard
    from pipeline.storage.shards import load_index

    summary = run_reshard(args.src, args.dst, reshard_options(args), ray_address=args.ray)
    if summary.noop:
        console.print(f"nothing to do: {summary.dst_url} already holds this reshard of {summary.src_url}")
        return 0
    console.print(shards_table(summary.dst_url, load_index(summary.dst_url)))
    rate = summary.bytes_written / 1e6 / max(summary.elapsed_s, 1e-9)
    kept = f", kept {summary.kept_shards} from an interrupted run" if summary.kept_shards else ""
    console.print(f"wrote {summary.written_shards} shards{kept} in {summary.elapsed_s:.1f} s ({rate:.1f} MB/s); "
                  f"keys and seconds match the source")
    if summary.nodes:
        from data_prep.cluster import node_names

        console.print(f"nodes: {len(summary.nodes)} ({node_names(summary.nodes)} of the audio)", highlight=False)
    return 0
