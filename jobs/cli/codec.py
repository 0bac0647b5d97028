"""Using a trained codec: `encode` (audio -> .tcq bitstream), `decode` (.tcq -> audio), each on a
file or a folder tree, and `eval` (telucodec at 1..N codebooks beside Opus and Codec2 on held-out
clips). The model is a checkpoint (--checkpoint) or a folder made by `telucodec export` (--model)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.table import Table

from jobs.cli.common import FORMATTER, UsageError, cell, console, err_console, progress_bar
from pipeline.errors import TelucodecError


def register(sub) -> None:
    register_encode(sub)
    register_decode(sub)
    register_eval(sub)


def add_model_args(s) -> None:
    """--checkpoint or --model, exactly one."""
    group = s.add_mutually_exclusive_group(required=True)
    group.add_argument("--checkpoint", metavar="CK", help="run dir (its best checkpoint, else its "
                       "latest) or a checkpoints/step_NNNNNNNN dir")
    group.add_argument("--model", metavar="DIR", help="model folder made by `telucodec export`")


ENCODE_STDIO = ("IN may be - (stdin): it is first copied whole into a temporary file in TMPDIR, since "
                "decoders need to seek, so it needs disk space the size of the input, not memory. OUT may "
                "be - (stdout): stdout then carries only the .tcq bytes; the summary goes to stderr.")
DECODE_STDIO = ("IN may be - (stdin): the .tcq is read whole into memory, as a .tcq file is (it holds only "
                "codes, a few MB per hour). OUT may be - (stdout): the audio, in --format (default wav), "
                "is written to a temporary file in TMPDIR first (WAV and FLAC headers are finished last, "
                "and a pipe cannot be rewound), then copied to stdout; the summary goes to stderr.")


def check_stdio(args) -> None:
    """Refuse "-" on a terminal (binary audio typed in or printed out is never what was meant),
    and a folder written to stdout."""
    if args.input == "-" and sys.stdin.isatty():
        raise UsageError("IN is - but stdin is a terminal: pipe or redirect a file into it (... < speech.wav)")
    if args.output == "-" and sys.stdout.isatty():
        raise UsageError("OUT is - but stdout is a terminal: redirect it to a file or a pipe (... > out)")
    if args.output == "-" and is_folder(args.input):
        raise UsageError(f"{args.input} is a folder: its outputs need an output folder, not stdout")


def is_folder(path: str) -> bool:
    return path != "-" and Path(path).is_dir()


def load_from_args(args):
    from pipeline.codec.inference import load_trained

    return load_trained(checkpoint=args.checkpoint, model=args.model)


# ---------------------------------------------------------------- encode
def register_encode(sub) -> None:
    s = sub.add_parser("encode", help="compress audio files to .tcq bitstreams",
                       description="Decode any soundfile-readable file, mix it to mono, resample it to the "
                       "model's rate (soxr), clip it to [-1, 1] and write its codes as a .tcq bitstream (a "
                       "42-byte header with the model's fingerprint, the file's rate, channel count and "
                       "length, then the codes bit-packed at log2(codebook_size) bits). Long files are "
                       "read and coded in 10 s chunks, so memory stays bounded. IN may be a folder: every "
                       "audio file under it is encoded to the same path under OUT with .tcq, a bad file "
                       "is reported and skipped, and a table sums up (exit status 1 if any failed). "
                       "Existing outputs are refused without --force. " + ENCODE_STDIO,
                       epilog="examples:\n"
                       "  telucodec encode speech.flac speech.tcq --model models/te-4k\n"
                       "  telucodec encode in.wav in.tcq --checkpoint runs/r1 --codebooks 4\n"
                       "  telucodec encode recordings/ coded/ --model models/te-4k --force\n"
                       "  telucodec encode - speech.tcq --model models/te-4k < speech.wav\n"
                       "  curl -s https://example.org/talk.flac | telucodec encode - - --model models/te-4k > talk.tcq",
                       formatter_class=FORMATTER)
    s.add_argument("input", metavar="IN_AUDIO|IN_DIR|-")
    s.add_argument("output", metavar="OUT.tcq|OUT_DIR|-")
    add_model_args(s)
    s.add_argument("--codebooks", type=int, metavar="N", help="residual levels to keep (default: all)")
    s.add_argument("--force", action="store_true", help="overwrite outputs that exist")
    s.set_defaults(func=encode)


def encode(args) -> int:
    from pipeline.codec.files import encode_file, mirror_tree, output_name
    from pipeline.storage.audio import AUDIO_EXTENSIONS

    check_stdio(args)
    trained = load_from_args(args)
    n_q = trained.cfg.n_codebooks if args.codebooks is None else args.codebooks
    if not 1 <= n_q <= trained.cfg.n_codebooks:
        raise UsageError(f"--codebooks must be 1..{trained.cfg.n_codebooks} for this model, got {n_q}")
    if is_folder(args.input):
        pairs = mirror_tree(args.input, args.output, AUDIO_EXTENSIONS, ".tcq")
        return code_folder(args, pairs, lambda src, dst: encode_file(trained, src, dst, n_q, True), "encode")
    result = encode_file(trained, args.input, args.output, n_q, force=args.force)
    if result.clipped:
        err_console.print(f"note: {result.clipped} samples outside [-1, 1] clipped", highlight=False)
    cfg = trained.cfg
    summary = err_console if args.output == "-" else console  # stdout may carry the .tcq itself
    summary.print(f"{output_name(args.output)}: {result.bytes} bytes for {result.seconds:.2f} s -> "
                  f"{result.kbps:.2f} kbps ({n_q} codebooks x {cfg.codebook_bits} bits at {cfg.frame_rate:g} "
                  f"frames/s = {cfg.bitrate(n_q) / 1000:.2f} kbps of codes, plus the header); model "
                  f"{trained.short_fingerprint}", markup=False, highlight=False)
    return 0


# ---------------------------------------------------------------- decode
def register_decode(sub) -> None:
    s = sub.add_parser("decode", help="decode .tcq bitstreams to audio files",
                       description="Decode a .tcq bitstream with the model that made it (the file holds "
                       "codes, not weights; a version-2 file names its model's fingerprint and another "
                       "model is refused) back to the sample rate, channel count and length of the file "
                       "that was encoded (channels are copies of the one mono mix that was coded). The "
                       "output's extension names its format: .wav (float, the decoder's output exactly), "
                       ".flac (16-bit) or .ogg (Vorbis). IN may be a folder of .tcq files: OUT is then a "
                       "folder, written as a mirrored tree in --format (exit status 1 if any file "
                       "failed). Existing outputs are refused without --force. " + DECODE_STDIO,
                       epilog="examples:\n"
                       "  telucodec decode speech.tcq speech.wav --model models/te-4k\n"
                       "  telucodec decode speech.tcq speech16k.flac --checkpoint runs/r1 --rate 16000\n"
                       "  telucodec decode coded/ decoded/ --model models/te-4k --format flac\n"
                       "  telucodec decode - speech.wav --model models/te-4k < speech.tcq\n"
                       "  telucodec decode speech.tcq - --model models/te-4k --format flac > speech.flac",
                       formatter_class=FORMATTER)
    s.add_argument("input", metavar="IN.tcq|IN_DIR|-")
    s.add_argument("output", metavar="OUT.wav|OUT_DIR|-")
    add_model_args(s)
    s.add_argument("--rate", type=int, metavar="HZ", help="output sample rate (default: the original file's)")
    s.add_argument("--format", choices=("wav", "flac", "ogg"), help="output format for a folder or stdout "
                   "(default wav); a single output file's extension names its format")
    s.add_argument("--force", action="store_true", help="overwrite outputs that exist")
    s.set_defaults(func=decode)


def decode(args) -> int:
    from pipeline.codec.files import decode_file, mirror_tree, output_name

    if args.rate is not None and not 1000 <= args.rate <= 384000:
        raise UsageError(f"--rate must be 1000..384000 Hz, got {args.rate}")
    check_stdio(args)
    folder = is_folder(args.input)
    if args.format and not folder and args.output != "-":
        raise UsageError(f"--format is for folders and stdout; the extension of {args.output} names its format")
    trained = load_from_args(args)
    if folder:
        pairs = mirror_tree(args.input, args.output, [".tcq"], f".{args.format or 'wav'}")
        return code_folder(args, pairs, lambda src, dst: decode_file(trained, src, dst, args.rate, True), "decode")
    result = decode_file(trained, args.input, args.output, args.rate, args.force, args.format or "wav")
    if result.clipped:
        err_console.print(f"note: {result.clipped} samples outside [-1, 1] clipped for "
                          f"{output_name(args.output)}", highlight=False)
    summary = err_console if args.output == "-" else console  # stdout may carry the audio itself
    summary.print(f"{output_name(args.output)}: {result.seconds:.2f} s at {result.sample_rate} Hz, {result.channels} "
                  f"channel(s), from {result.n_codebooks} codebooks ({result.kbps:.2f} kbps)",
                  markup=False, highlight=False)
    return 0


# ---------------------------------------------------------------- folders
def code_folder(args, pairs: list, code, verb: str) -> int:
    """Run code(src, dst) over mirrored pairs with a progress bar; a file that fails is reported
    in the table and skipped. Exit 0, or 1 when some files failed."""
    if not pairs:
        raise UsageError(f"{args.input}: no files to {verb} under it")
    if Path(args.output).exists() and not Path(args.output).is_dir():
        raise UsageError(f"{args.output} is a file; a folder input needs an output folder")
    existing = [dst for _, dst in pairs if dst.exists()]
    if existing and not args.force:
        raise UsageError(f"{args.output}: {len(existing)} of {len(pairs)} outputs exist already (e.g. "
                         f"{existing[0]}); use --force to overwrite them")
    results, failures = [], []
    with progress_bar(f"{verb} {args.input}", total=len(pairs)) as update:
        for done, (src, dst) in enumerate(pairs, 1):
            try:
                dst.parent.mkdir(parents=True, exist_ok=True)
                results.append(code(src, dst))
            except (TelucodecError, OSError) as e:
                failures.append((src, str(e).removeprefix(f"{src}: ")))
            update(done)
    console.print(folder_table(args.input, results, failures))
    return 1 if failures else 0


def folder_table(root: str, results: list, failures: list, max_rows: int = 50) -> Table:
    """Files with seconds and kbps, every failure with its reason, and a total row."""
    seconds, size = sum(r.seconds for r in results), sum(r.bytes for r in results)
    table = Table(title=f"{len(results)} of {len(results) + len(failures)} files under {root}", show_footer=True)
    table.add_column("file", footer="total")
    table.add_column("seconds", justify="right", footer=f"{seconds:.1f}")
    table.add_column("kbps", justify="right", footer=cell(size * 8 / seconds / 1000 if seconds else None, 2))
    table.add_column("result", footer=f"{len(failures)} failed" if failures else "ok")
    shown = results[:max(0, max_rows - len(failures))]
    for r in shown:
        table.add_row(str(Path(r.input).relative_to(root)), f"{r.seconds:.1f}", f"{r.kbps:.2f}", "ok")
    for src, reason in failures:
        table.add_row(str(Path(src).relative_to(root)), "-", "-", reason)
    if len(shown) < len(results):
        table.caption = f"{len(results) - len(shown)} more files coded fine"
    return table


# ---------------------------------------------------------------- eval
def register_eval(sub) -> None:
    s = sub.add_parser("eval", help="score a model against Opus 6 kbps and Codec2 3.2 kbps",
                       description="On the first N clips of a split (each cut to at most S seconds), "
                       "score telucodec at 1..n_codebooks codebooks, Opus at 6 kbps and Codec2 at "
                       "3.2 kbps: SNR, SI-SDR, mel distance, PESQ-WB, STOI and measured bitrate. Writes "
                       "OUT/eval.json and spectrogram PNGs (input vs each codec, each panel labelled with "
                       "that clip's kbps, PESQ-WB and STOI). With --save-audio, every clip's input and "
                       "decoded audio go to OUT/audio/CLIP/ as float WAVs at the model's rate, named as "
                       "the table's rows: input.wav, telucodec-1.wav .. telucodec-N.wav, opus-6k.wav, "
                       "codec2-3200.wav. A missing opusenc or c2enc is reported in the table, not fatal "
                       "(and its WAV is not written).",
                       epilog="examples:\n"
                       "  telucodec eval --checkpoint runs/tiny --data demo_out/data --clips 8 --out eval_out\n"
                       "  telucodec eval --model models/te-4k --data s3://b/te-v1\n"
                       "  telucodec eval --model models/te-4k --data demo_out/data --clips 3 --save-audio",
                       formatter_class=FORMATTER)
    add_model_args(s)
    s.add_argument("--data", required=True, metavar="URL", help="dataset made by `telucodec prep`")
    s.add_argument("--split", default="test", help="split to evaluate on (default test)")
    s.add_argument("--clips", type=int, default=8, metavar="N", help="first N samples of the split (default 8)")
    s.add_argument("--seconds", type=float, default=4.0, metavar="S", help="cut each clip to S seconds (default 4)")
    s.add_argument("--out", default="eval_out", metavar="DIR", help="folder for eval.json and PNGs (default eval_out)")
    s.add_argument("--spectrograms", type=int, default=3, metavar="K", help="PNGs for the first K clips (default 3)")
    s.add_argument("--save-audio", action="store_true", help="write every clip's input and decoded audio "
                   "under OUT/audio/CLIP/ (one WAV per codec row)")
    s.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    s.set_defaults(func=evaluate)


def evaluate(args) -> int:
    if args.clips < 1 or args.seconds <= 0:
        raise UsageError("--clips must be >= 1 and --seconds > 0")
    trained = load_from_args(args)
    err_console.print(f"evaluating {trained.source} on {args.data} ({args.split}, {args.clips} clips "
                      f"of at most {args.seconds:g} s) against opus and codec2 ...", highlight=False)
    report = evaluate_with_progress(trained, args.data, args.split, args.clips, args.seconds, args.out,
                                    args.spectrograms, args.save_audio)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    console.print(eval_table(report))
    for s in report.scores:
        if s.note:
            console.print(f"  {s.name}: {s.note}", markup=False, highlight=False)
    audio = f", and audio for {len(report.audio)} clip(s) under {Path(args.out) / 'audio'}" if report.audio else ""
    console.print(f"wrote {Path(args.out) / 'eval.json'} and {len(report.spectrograms)} spectrogram PNG(s){audio}",
                  highlight=False)
    return 0


def evaluate_with_progress(*args):
    """evaluate_checkpoint with a progress bar on stderr (clips scored, every codec and codebook count)."""
    from pipeline.evaluation.report import evaluate_checkpoint

    with progress_bar("scoring clips") as update:
        return evaluate_checkpoint(*args, on_clip=update)


def eval_table(report) -> Table:
    table = Table(title=f"step {report.step} on {report.data} ({report.split}: {len(report.clips)} clips, "
                  f"{report.seconds:.1f} s)")
    for col in ("codec", "kbps", "SNR dB", "SI-SDR dB", "mel dist", "PESQ-WB", "STOI"):
        table.add_column(col, justify="left" if col == "codec" else "right")
    for s in report.scores:
        table.add_row(s.name, *(cell(v, 2) for v in (s.bitrate_kbps, s.snr, s.si_sdr, s.mel_distance,
                                                       s.pesq)), cell(s.stoi, 3))
    return table
