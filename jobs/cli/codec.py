"""Using a trained codec: `encode` (audio -> .tcq bitstream), `decode` (.tcq -> audio) and `eval`
(telucodec at 1..N codebooks beside Opus and Codec2 on held-out clips)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from jobs.cli.common import FORMATTER, UsageError, cell, console, err_console


def register(sub) -> None:
    register_encode(sub)
    register_decode(sub)
    register_eval(sub)


# ---------------------------------------------------------------- encode
def register_encode(sub) -> None:
    s = sub.add_parser("encode", help="compress an audio file to a .tcq bitstream with a checkpoint",
                       description="Decode any soundfile-readable file, mix to mono, resample to the "
                       "model's rate (soxr), clip to [-1, 1] and write the codes as a .tcq bitstream "
                       "(20-byte header, then codes bit-packed at log2(codebook_size) bits). Prints "
                       "the file size and the effective bitrate.",
                       epilog="examples:\n"
                       "  telucodec encode speech.flac speech.tcq --checkpoint runs/tiny\n"
                       "  telucodec encode in.wav in.tcq --checkpoint runs/r1/checkpoints/step_00002000 "
                       "--codebooks 4", formatter_class=FORMATTER)
    s.add_argument("input", metavar="IN_AUDIO")
    s.add_argument("output", metavar="OUT.tcq")
    s.add_argument("--checkpoint", required=True, metavar="CK",
                   help="run dir (its latest checkpoint) or a checkpoints/step_NNNNNNNN dir")
    s.add_argument("--codebooks", type=int, metavar="N", help="residual levels to keep (default: all)")
    s.set_defaults(func=encode)


def encode(args) -> int:
    from pipeline.bitstream import HEADER_SIZE
    from pipeline.inference import encode_to_bitstream, load_codec, read_codec_input

    codec, cfg, _ = load_codec(args.checkpoint)
    n_q = cfg.model.n_codebooks if args.codebooks is None else args.codebooks
    if not 1 <= n_q <= cfg.model.n_codebooks:
        raise UsageError(f"--codebooks must be 1..{cfg.model.n_codebooks} for this checkpoint, got {n_q}")
    audio, outside = read_codec_input(args.input, cfg.model.sample_rate)
    if outside:
        err_console.print(f"note: {outside} samples outside [-1, 1] clipped", highlight=False)
    data = encode_to_bitstream(codec, audio, n_q)
    write_output_bytes(args.output, data)
    seconds = len(audio) / cfg.model.sample_rate
    console.print(f"{args.output}: {len(data)} bytes for {seconds:.2f} s -> {len(data) * 8 / seconds / 1000:.2f} "
                  f"kbps ({n_q} codebooks x {cfg.model.codebook_bits} bits at {cfg.model.frame_rate:g} frames/s "
                  f"= {codec.bitrate(n_q) / 1000:.2f} kbps of codes, plus a {HEADER_SIZE}-byte header)",
                  markup=False, highlight=False)
    return 0


def write_output_bytes(path: str, data: bytes) -> None:
    try:
        Path(path).write_bytes(data)
    except OSError as e:
        raise UsageError(f"{path}: cannot write ({e.strerror})") from None


# ---------------------------------------------------------------- decode
def register_decode(sub) -> None:
    s = sub.add_parser("decode", help="decode a .tcq bitstream to a WAV file with its checkpoint",
                       description="Decode a .tcq bitstream with the checkpoint that made it (the file "
                       "holds codes, not weights) to a float WAV at the model's rate, cut to the "
                       "original length. Refuses a bitstream whose rate, code width or codebook count "
                       "does not fit the checkpoint.",
                       epilog="example: telucodec decode speech.tcq speech.wav --checkpoint runs/tiny",
                       formatter_class=FORMATTER)
    s.add_argument("input", metavar="IN.tcq")
    s.add_argument("output", metavar="OUT.wav")
    s.add_argument("--checkpoint", required=True, metavar="CK",
                   help="run dir or checkpoints/step_NNNNNNNN dir of the model that encoded it")
    s.set_defaults(func=decode)


def decode(args) -> int:
    import soundfile as sf
    import torch

    from pipeline.inference import check_bitstream_fits, load_codec

    bs = read_tcq(args.input)
    codec, cfg, _ = load_codec(args.checkpoint)
    check_bitstream_fits(bs, cfg.model, args.input)
    with torch.inference_mode():
        audio = codec.decode(torch.from_numpy(bs.codes)[None], length=bs.n_samples)[0, 0].numpy()
    try:  # float WAV: the decoder's output exactly, peaks above 1 included
        sf.write(args.output, audio, bs.sample_rate, format="WAV", subtype="FLOAT")
    except (sf.LibsndfileError, OSError) as e:
        raise UsageError(f"{args.output}: cannot write ({e})") from None
    console.print(f"{args.output}: {bs.n_samples / bs.sample_rate:.2f} s at {bs.sample_rate} Hz from "
                  f"{bs.n_codebooks} codebooks (float WAV, peak {float(abs(audio).max(initial=0)):.3f})",
                  markup=False, highlight=False)
    return 0


def read_tcq(path: str):
    """Read and parse a .tcq file; BitstreamError naming the file when it is not one of ours."""
    from pipeline.bitstream import BitstreamError, read_bitstream

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return read_bitstream(data)
    except BitstreamError as e:
        raise BitstreamError(f"{path}: {e}") from None


# ---------------------------------------------------------------- eval
def register_eval(sub) -> None:
    s = sub.add_parser("eval", help="score a checkpoint against Opus 6 kbps and Codec2 3.2 kbps",
                       description="On the first N clips of a split (each cut to at most S seconds), "
                       "score telucodec at 1..n_codebooks codebooks, Opus at 6 kbps and Codec2 at "
                       "3.2 kbps: SNR, SI-SDR, mel distance, PESQ-WB, STOI and measured bitrate. Writes "
                       "OUT/eval.json and spectrogram PNGs (input vs each codec). A missing opusenc or "
                       "c2enc is reported in the table, not fatal.",
                       epilog="example: telucodec eval --checkpoint runs/tiny --data demo_out/data "
                       "--clips 8 --out eval_out", formatter_class=FORMATTER)
    s.add_argument("--checkpoint", required=True, metavar="CK", help="run dir or checkpoints/step_NNNNNNNN dir")
    s.add_argument("--data", required=True, metavar="URL", help="dataset made by `telucodec prep`")
    s.add_argument("--split", default="test", help="split to evaluate on (default test)")
    s.add_argument("--clips", type=int, default=8, metavar="N", help="first N samples of the split (default 8)")
    s.add_argument("--seconds", type=float, default=4.0, metavar="S", help="cut each clip to S seconds (default 4)")
    s.add_argument("--out", default="eval_out", metavar="DIR", help="folder for eval.json and PNGs (default eval_out)")
    s.add_argument("--spectrograms", type=int, default=3, metavar="K", help="PNGs for the first K clips (default 3)")
    s.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    s.set_defaults(func=evaluate)


def evaluate(args) -> int:
    if args.clips < 1 or args.seconds <= 0:
        raise UsageError("--clips must be >= 1 and --seconds > 0")
    err_console.print(f"evaluating {args.checkpoint} on {args.data} ({args.split}, {args.clips} clips "
                      f"of at most {args.seconds:g} s) against opus and codec2 ...", highlight=False)
    report = evaluate_with_progress(args.checkpoint, args.data, args.split, args.clips, args.seconds,
                                    args.out, args.spectrograms)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    console.print(eval_table(report))
    for s in report.scores:
        if s.note:
            console.print(f"  {s.name}: {s.note}", markup=False, highlight=False)
    console.print(f"wrote {Path(args.out) / 'eval.json'} and {len(report.spectrograms)} spectrogram PNG(s)",
                  highlight=False)
    return 0


def evaluate_with_progress(*args):
    """evaluate_checkpoint with a progress bar on stderr (clips scored, every codec and codebook count)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from pipeline.evaluation import evaluate_checkpoint

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task("scoring clips", total=None)
        return evaluate_checkpoint(*args, on_clip=lambda done, total: bar.update(task, completed=done, total=total))


def eval_table(report) -> Table:
    table = Table(title=f"step {report.step} on {report.data} ({report.split}: {len(report.clips)} clips, "
                  f"{report.seconds:.1f} s)")
    for col in ("codec", "kbps", "SNR dB", "SI-SDR dB", "mel dist", "PESQ-WB", "STOI"):
        table.add_column(col, justify="left" if col == "codec" else "right")
    for s in report.scores:
        table.add_row(s.name, *(cell(v, 2) for v in (s.bitrate_kbps, s.snr, s.si_sdr, s.mel_distance,
                                                       s.pesq)), cell(s.stoi, 3))
    return table
