"""The `telucodec` command line: one subcommand per stage of the pipeline.

    telucodec demo                       # corpus -> prep -> reshard -> train -> eval, all local
    telucodec corpus OUT_DIR --minutes 5
    telucodec prep SRC... --out URL [CONFIG.yaml...] [key=value...]
    telucodec shards ls URL | verify URL
    telucodec reshard SRC_URL DST_URL --ranks 8 --shard-mb 500
    telucodec config show [CONFIG.yaml...] [key=value...]
    telucodec train configs/tiny.yaml data.url=DATA run.dir=RUN
    telucodec encode IN.wav OUT.tcq --checkpoint RUN | decode IN.tcq OUT.wav --checkpoint RUN
    telucodec eval --checkpoint RUN --data DATA
    telucodec cost RUN | runs STORE
    telucodec submit [--local | --address http://HEAD:8265] CONFIG.yaml... key=value...
    telucodec jobs ls | status ID | logs ID [--follow] | stop ID
    telucodec cluster up --local | down --local

Errors in user input print one line (`telucodec: error: ...`) and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from urllib.parse import urlparse

from rich.console import Console
from rich.table import Table

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

EPILOG = """\
examples:
  telucodec demo
  telucodec corpus corpus/ --minutes 5
  telucodec prep corpus/ --out s3://my-bucket/te-v1
  telucodec shards ls s3://my-bucket/te-v1
  telucodec reshard s3://my-bucket/te-v1 s3://my-bucket/te-v1-r24 --ranks 24 --shuffle
  telucodec train configs/tiny.yaml data.url=demo_out/data run.dir=runs/tiny
  telucodec eval --checkpoint runs/tiny --data demo_out/data
  telucodec cost runs/tiny
  telucodec cluster up --local
  telucodec submit --local configs/tiny.yaml data.url=demo_out/data-r2 train.steps=50
  telucodec jobs status te-20261124-101500-1a2b-3c4d5e --local
  telucodec config show configs/base.yaml prep.sample_rate=24000

Run `telucodec COMMAND --help` for each command's options.
"""


class UsageError(RuntimeError):
    """Bad command-line input; printed as one line."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input, not a bug: printed as one line."""
    from data_prep.corpus import CorpusError
    from data_prep.prep import PrepError
    from data_prep.reshard import ReshardError
    from pipeline.audio import AudioError
    from pipeline.bitstream import BitstreamError
    from pipeline.checkpoint import CheckpointError
    from pipeline.config import ConfigError
    from pipeline.data import DataError
    from pipeline.shards import DatasetError
    from pipeline.store import StoreError
    from jobs.submit import SubmitError

    return (UsageError, ConfigError, StoreError, DatasetError, PrepError, CorpusError, ReshardError,
            CheckpointError, BitstreamError, AudioError, DataError, SubmitError)


def split_config_args(items: list[str]) -> tuple[list[str], list[str]]:
    """Split positional words into YAML files and dotted key=value overrides."""
    files = [i for i in items if "=" not in i]
    overrides = [i for i in items if "=" in i]
    for f in files:
        if not f.endswith((".yaml", ".yml")):
            raise UsageError(f"{f}: expected a YAML config file or a key=value override")
    return files, overrides


def default_config_files() -> list[str]:
    """configs/base.yaml from the working directory or the source tree, if there is one."""
    for root in (Path.cwd(), Path(__file__).resolve().parent.parent):
        base = root / "configs" / "base.yaml"
        if base.is_file():
            return [str(base)]
    return []


def load_cli_config(items: list[str]):
    from pipeline.config import load_config

    files, overrides = split_config_args(items)
    return load_config(default_config_files() + files, overrides)


# ---------------------------------------------------------------- config
def cmd_config_show(args) -> int:
    from pipeline.config import to_dict, to_yaml

    cfg = load_cli_config(args.items)
    if args.json:
        print(json.dumps(to_dict(cfg), indent=2))
    else:
        print(to_yaml(cfg, docs=args.docs), end="")
    return 0


# ---------------------------------------------------------------- corpus
def cmd_corpus(args) -> int:
    from data_prep.corpus import synthesize_corpus

    summary = synthesize_corpus(Path(args.out_dir), minutes=args.minutes, seed=args.seed)
    console.print(f"wrote {summary.files} files, {summary.seconds / 60:.1f} min of Telugu speech "
                  f"({summary.over_range} over full scale) -> {summary.manifest}")
    return 0


# ---------------------------------------------------------------- prep
def cmd_prep(args) -> int:
    from data_prep.prep import run_prep

    cfg = load_cli_config(args.items)
    summary = run_prep(args.sources, args.out, cfg.prep, fmt=args.format, overwrite=args.overwrite)
    print_prep_summary(summary)
    return 0 if summary.samples else 1


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
    if summary.rejects:
        console.print(f"[yellow]{len(summary.rejects)} file(s) rejected[/] (listed in {summary.rejects_url}):")
        for r in summary.rejects[:20]:
            console.print(f"  {r['path']}: {r['reason']}", markup=False, highlight=False)
        if len(summary.rejects) > 20:
            console.print(f"  ... and {len(summary.rejects) - 20} more")


# ---------------------------------------------------------------- shards
def cmd_shards_ls(args) -> int:
    from pipeline.shards import load_index

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


def cmd_shards_verify(args) -> int:
    from rich.progress import Progress

    from pipeline.shards import load_index, verify_dataset

    total = len(load_index(args.url).shards)
    with Progress(console=err_console, transient=True) as bar:
        task = bar.add_task("verifying shards", total=total)
        problems = verify_dataset(args.url, on_shard=lambda _: bar.advance(task))
    if problems:
        for p in problems:
            err_console.print(f"BAD {p}", markup=False, highlight=False)
        err_console.print(f"{len(problems)} problem(s) in {args.url}")
        return 1
    console.print(f"OK: {total} shards match the index; every sample decodes and lies in [-1, 1]")
    return 0


# ---------------------------------------------------------------- train
def cmd_train(args) -> int:
    cfg = load_cli_config(args.items)
    if not cfg.data.url:
        raise UsageError("no dataset: give data.url=URL (a folder or s3:// prefix made by `telucodec prep`)")
    if args.resume == "never":
        from pipeline.checkpoint import Checkpoints

        step = Checkpoints(cfg.run.dir).latest_step()
        if step is not None:
            raise UsageError(f"{cfg.run.dir} already holds a run at step {step}: give a new run.dir, "
                             f"or --resume auto to continue it")
    console.print(f"run {cfg.run.dir}: {cfg.model.n_codebooks} codebooks x {cfg.model.codebook_size} -> "
                  f"{cfg.model.bitrate() / 1000:.2f} kbps at {cfg.model.sample_rate} Hz, "
                  f"{cfg.train.steps} steps, {max(cfg.train.workers, 1)} worker(s)")
    if cfg.train.workers == 0:
        from jobs.ray_train import cancel_on_sigterm
        from pipeline.train import train

        with cancel_on_sigterm(cfg.run.dir):
            result = train(cfg)
    else:
        from jobs.ray_train import train_on_ray

        result = train_on_ray(cfg)
    console.print(f"{result.status} at step {result.step}; checkpoints in {cfg.run.dir}/checkpoints")
    return 0


# ---------------------------------------------------------------- reshard
def cmd_reshard(args) -> int:
    from data_prep.reshard import ReshardOptions, reshard
    from pipeline.shards import load_index

    opts = ReshardOptions(samples_per_shard=args.samples_per_shard, shard_mb=args.shard_mb, shards=args.shards,
                          ranks=args.ranks, shuffle=args.shuffle, seed=args.seed,
                          splits=tuple(s for s in (args.splits or "").split(",") if s),
                          segment_seconds=args.segment_seconds, sample_rate=args.sample_rate,
                          overwrite=args.overwrite, workers=args.workers, io_threads=args.io_threads,
                          spill_gb=args.spill_gb, tmp_dir=args.tmp_dir)
    summary = reshard(args.src, args.dst, opts)
    if summary.noop:
        console.print(f"nothing to do: {summary.dst_url} already holds this reshard of {summary.src_url}")
        return 0
    console.print(shards_table(summary.dst_url, load_index(summary.dst_url)))
    rate = summary.bytes_written / 1e6 / max(summary.elapsed_s, 1e-9)
    kept = f", kept {summary.kept_shards} from an interrupted run" if summary.kept_shards else ""
    console.print(f"wrote {summary.written_shards} shards{kept} in {summary.elapsed_s:.1f} s ({rate:.1f} MB/s); "
                  f"keys and seconds match the source")
    return 0


# ---------------------------------------------------------------- encode / decode
def cmd_encode(args) -> int:
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


def cmd_decode(args) -> int:
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
def cmd_eval(args) -> int:
    from pipeline.evaluation import evaluate_checkpoint

    if args.clips < 1 or args.seconds <= 0:
        raise UsageError("--clips must be >= 1 and --seconds > 0")
    err_console.print(f"evaluating {args.checkpoint} on {args.data} ({args.split}, {args.clips} clips "
                      f"of at most {args.seconds:g} s) against opus and codec2 ...", highlight=False)
    report = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.clips, args.seconds,
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


def eval_table(report) -> Table:
    table = Table(title=f"step {report.step} on {report.data} ({report.split}: {len(report.clips)} clips, "
                  f"{report.seconds:.1f} s)")
    for col in ("codec", "kbps", "SNR dB", "SI-SDR dB", "mel dist", "PESQ-WB", "STOI"):
        table.add_column(col, justify="left" if col == "codec" else "right")
    for s in report.scores:
        table.add_row(s.name, *(_cell(v, 2) for v in (s.bitrate_kbps, s.snr, s.si_sdr, s.mel_distance,
                                                       s.pesq)), _cell(s.stoi, 3))
    return table


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# ---------------------------------------------------------------- cost / runs
def cmd_cost(args) -> int:
    from pipeline.cost import find_runs, summarize_run

    urls = args.runs or find_runs("runs")
    if not urls:
        raise UsageError("no runs under ./runs: give RUN_URL (a run dir or s3:// URL)")
    summaries = [summarize_run(u) for u in urls]
    if args.json:
        data = [s.to_dict() for s in summaries]
        print(json.dumps(data[0] if len(args.runs) == 1 else data, indent=2))
        return 0
    console.print(cost_table(summaries, "cost of " + (", ".join(args.runs) if args.runs else "runs under ./runs")))
    return 0


def cmd_runs(args) -> int:
    from pipeline.cost import find_runs, summarize_run

    summaries = [summarize_run(u) for u in find_runs(args.store)]
    if args.json:
        print(json.dumps([s.to_dict() for s in summaries], indent=2))
        return 0
    if not summaries:
        console.print(f"no runs under {args.store} (a run dir holds ledger.jsonl or checkpoints/)", highlight=False)
        return 0
    console.print(cost_table(summaries, f"runs under {args.store}"))
    return 0


def cost_table(summaries, title: str) -> Table:
    """One row per run (RunCost), and a total row when there are several."""
    from rich import box

    table = Table(title=title, box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
    for col in ("run", "status", "GPU\nhours", "worker\nhours", "$", "restarts", "wasted\nGPU-h", "best val\nSNR dB",
                "$/dB"):
        table.add_column(col, justify="left" if col in ("run", "status") else "right", overflow="fold")
    for s in summaries:
        t = s.totals
        table.add_row(s.name, s.status, _amount(t.gpu_hours), _amount(t.worker_hours), _amount(t.usd),
                      str(t.restarts), _amount(t.wasted_gpu_hours), _cell(s.best_snr, 2),
                      "-" if s.usd_per_db is None else _amount(s.usd_per_db))
    if len(summaries) > 1:
        totals = [sum(getattr(s.totals, k) for s in summaries)
                  for k in ("gpu_hours", "worker_hours", "usd", "restarts", "wasted_gpu_hours")]
        table.add_section()
        table.add_row("total", "", *(_amount(v) for v in totals[:3]), str(totals[3]), _amount(totals[4]), "", "")
    return table


def _amount(value: float) -> str:
    """Hours or dollars: cents for big numbers, four decimals for the small ones of short runs."""
    return f"{value:,.2f}" if value >= 1 else f"{value:.4f}"


# ---------------------------------------------------------------- submit, jobs, cluster
def cluster_address(args) -> str:
    """--address, else --local (starting or reusing the local head), else RAY_ADDRESS if it is a
    dashboard URL."""
    import os

    from jobs.submit import local_head_up

    if args.address:
        return args.address
    if args.local:
        address, started = local_head_up()
        if started:
            err_console.print(f"started a local Ray head, dashboard {address} (stop it: telucodec cluster down --local)")
        return address
    env = os.environ.get("RAY_ADDRESS", "")
    if env.startswith(("http://", "https://")):
        return env
    raise UsageError("which cluster? pass --address http://HEAD:8265 (its dashboard), or --local for a Ray "
                     "head on this machine (or set RAY_ADDRESS=http://HEAD:8265)")


def cmd_submit(args) -> int:
    from jobs.ray_train import with_absolute_paths
    from jobs.submit import submit

    cfg = load_cli_config(args.items)  # checked here: a typo fails before any upload
    if not cfg.data.url:
        raise UsageError("no dataset: give data.url=URL (an s3:// prefix made by `telucodec prep`, or a folder "
                         "the cluster's nodes can read)")
    run_dir_given = any(i.startswith("run.dir=") for i in args.items)
    cfg = with_absolute_paths(cfg)  # the job runs in another directory (a relative path means nothing there)
    address = cluster_address(args)
    if urlparse(address).hostname not in ("127.0.0.1", "localhost", "::1"):
        from pipeline.store import is_remote

        local = [name for name, url in (("data.url", cfg.data.url), ("run dir", cfg.run.dir if run_dir_given else args.runs))
                 if not is_remote(url)]
        if local:
            err_console.print(f"telucodec: warning: {' and '.join(local)} on this machine's disk: the cluster's nodes "
                              f"must see the same path (a shared file system), else use s3://", highlight=False)
    sub = submit(address, cfg, run=args.run or "", runs_root=args.runs, run_dir_given=run_dir_given,
                 max_upload_mb=args.max_upload_mb, pip=args.pip, image=args.image or "")
    print(f"job: {sub.job_id}")
    console.print(f"run:       {sub.run}  ({'resuming' if sub.resumed else 'new'}, {sub.run_dir})", highlight=False)
    console.print(f"dashboard: {sub.dashboard_url}", highlight=False)
    console.print(f"W&B:       {sub.wandb_url}", highlight=False)
    console.print(f"next:      telucodec jobs status {sub.job_id}{' --local' if args.local else ''}"
                  f"   |   jobs logs {sub.job_id} --follow   |   jobs stop {sub.job_id}", highlight=False)
    return 0


def cmd_jobs_ls(args) -> int:
    from rich import box

    from jobs.submit import list_jobs

    address = cluster_address(args)
    views = list_jobs(address)
    table = Table(title=f"telucodec jobs on {address}", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("job (run-nonce)", no_wrap=True, min_width=max([len(v.job_id) for v in views] + [15]))
    for col in ("state", "step", "steps/s", "$", "val SNR dB"):
        table.add_column(col, justify="left" if col == "state" else "right")
    for v in views:  # restarts, times and messages: `jobs status ID`
        table.add_row(v.job_id, v.state, _cell(v.step, 0), _cell(v.steps_per_s, 2),
                      "-" if v.usd is None else _amount(v.usd), _cell(v.val_snr, 2))
    console.print(table if views else "no telucodec jobs on this cluster")
    return 0


def cmd_jobs_status(args) -> int:
    from jobs.submit import job_status

    v = job_status(cluster_address(args), args.job_id)
    print(v.state)  # the first line is Ray's state word alone, for scripts
    rows = [("run", f"{v.run}  ({v.run_dir})"), ("run status", v.run_status or "-"),
            ("started", _when(v.started)), ("ended", _when(v.ended)), ("step", _cell(v.step, 0)),
            ("steps/s", _cell(v.steps_per_s, 2)), ("cost so far", "-" if v.usd is None else f"${_amount(v.usd)}"),
            ("restarts", _cell(v.restarts, 0)), ("last val SNR", _cell(v.val_snr, 2) + " dB"),
            ("message", v.message or "-")]
    for key, value in rows:
        console.print(f"{key + ':':14}{value}", highlight=False, markup=False)
    return 0


def cmd_jobs_logs(args) -> int:
    from jobs.submit import job_logs

    job_logs(cluster_address(args), args.job_id, follow=args.follow)
    return 0


def cmd_jobs_stop(args) -> int:
    from pipeline.checkpoint import Checkpoints
    from jobs.submit import stop_job

    v = stop_job(cluster_address(args), args.job_id, wait_s=args.wait)
    print(v.state)
    if v.run_dir:
        step = Checkpoints(v.run_dir).latest_step()
        console.print(f"last checkpoint: step {step} in {v.run_dir}/checkpoints; resume with "
                      f"`telucodec submit --run {v.run} ...`", highlight=False)
    return 0


def cmd_cluster(args) -> int:
    from jobs.submit import local_address, local_head_down, local_head_up

    if not args.local:
        raise UsageError("only --local clusters are managed here; for AWS or GCP spot nodes use "
                         "`ray up jobs/clusters/aws-spot.yaml` / `ray down ...` (see README)")
    if args.action == "up":
        address, started = local_head_up(cpus=args.cpus)
        console.print(f"{'started' if started else 'reusing'} local Ray head: dashboard {address}", highlight=False)
        console.print("submit with: telucodec submit --local CONFIG.yaml data.url=...", highlight=False)
    else:
        local_head_down()
        console.print(f"stopped the local Ray head ({local_address()}) and other Ray processes of this user",
                      highlight=False)
    return 0


def _when(t: float | None) -> str:
    import time

    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


# ---------------------------------------------------------------- demo
def cmd_demo(args) -> int:
    """corpus -> prep -> reshard for the ranks -> train (Ray, one spot drill) -> eval -> cost, all local."""
    from data_prep.corpus import synthesize_corpus
    from data_prep.prep import run_prep
    from data_prep.reshard import ReshardOptions, reshard
    from pipeline.shards import load_index

    out = Path(args.out).absolute()
    tiny = [str(Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml")]
    cfg = load_cli_config(tiny + list(args.items))
    workers = cfg.train.workers
    console.rule("1/6  synthesize a Telugu corpus (espeak-ng / festival)")
    corpus = synthesize_corpus(out / "corpus", minutes=args.minutes, seed=args.seed)
    console.print(f"{corpus.files} files, {corpus.seconds / 60:.1f} min from {len(corpus.speakers)} voices, "
                  f"{corpus.over_range} over full scale")
    console.rule("2/6  prep: clip to [-1, 1], trim, segment, split by speaker, write shards")
    prepped = out / "data"
    print_prep_summary(run_prep([str(corpus.manifest)], str(prepped), cfg.prep, overwrite=True))
    console.rule(f"3/6  reshard for {max(workers, 1)} rank(s)")
    dataset = out / f"data-r{max(workers, 1)}"
    # Only train is sharded for the ranks; eval reads the held-out splits from the prepped dataset.
    reshard(str(prepped), str(dataset), ReshardOptions(ranks=max(workers, 1), shuffle=True, overwrite=True,
                                                       splits=("train",)))
    console.print(shards_table(str(dataset), load_index(str(dataset))))
    run_dir = out / "run"
    drill = demo_train(cfg, tiny + list(args.items), dataset, prepped, run_dir, preempt=args.preemption)
    console.rule("5/6  eval against Opus 6 kbps and Codec2 3.2 kbps (test split)")
    from pipeline.evaluation import evaluate_checkpoint

    report = evaluate_checkpoint(str(run_dir), str(prepped), "test", 8, 4.0, out / "eval", 3)
    console.print(eval_table(report))
    console.rule("6/6  cost (the ledger; local CPU time is priced at $0 unless cost.usd_per_hour is set)")
    from pipeline.cost import summarize_run

    cost = summarize_run(str(run_dir))
    console.print(cost_table([cost], f"cost of {run_dir}"))
    print_demo_summary(cfg, out, dataset, prepped, run_dir, report, cost, drill)
    return 0


def demo_train(cfg, items: list[str], dataset: Path, prepped: Path, run_dir: Path, preempt: bool):
    """Stage 4: train on local Ray, with one simulated spot reclaim halfway (a SpotDrill)."""
    import shutil

    from jobs.spot_drill import SpotDrill

    shutil.rmtree(run_dir, ignore_errors=True)  # the demo starts fresh each time
    at = max(1, cfg.train.steps // 2)
    console.rule(f"4/6  train the tiny codec ({cfg.train.steps} steps, {cfg.train.workers or 'no'} Ray worker(s)"
                 + (f", a simulated spot reclaim at step ~{at})" if preempt else ")"))
    items = items + [f"data.url={dataset}", f"train.eval_url={prepped}", f"run.dir={run_dir}", "train.eval_split=test"]
    if not preempt:
        cmd_train(argparse.Namespace(items=items, resume="auto"))
        return None
    with SpotDrill(str(run_dir), at_step=at) as drill:
        cmd_train(argparse.Namespace(items=items + [f"preempt.aws_endpoint={drill.url}", "preempt.poll_seconds=0.5"],
                                     resume="auto"))
    return drill


def print_demo_summary(cfg, out: Path, dataset: Path, prepped: Path, run_dir: Path, report, cost, drill) -> None:
    full = report.score(f"telucodec-{cfg.model.n_codebooks}")
    wandb_runs = sorted(run_dir.glob("wandb/offline-run-*"))
    console.rule("summary")
    console.print(f"shards:       {dataset}  (prepped: {prepped}, rejects: {prepped / 'rejects.jsonl'})")
    console.print(f"checkpoints:  {run_dir / 'checkpoints'}")
    console.print(f"metrics:      {run_dir / 'metrics.jsonl'}, events: {run_dir / 'events.jsonl'}")
    console.print(f"cost ledger:  {run_dir / 'ledger.jsonl'}  (${cost.totals.usd:.2f}, "
                  f"{cost.totals.worker_hours:.3f} worker-hours, {cost.totals.restarts} restart(s))")
    console.print(f"W&B offline:  {wandb_runs[-1] if wandb_runs else 'none (tracking.enabled=false)'}"
                  + (f" ({len(wandb_runs)} folders, one per worker group; `wandb sync` uploads them)"
                     if wandb_runs else ""))
    console.print(f"eval:         {out / 'eval' / 'eval.json'} and {len(report.spectrograms)} spectrogram PNG(s)")
    if drill is not None:
        console.print(f"spot drill:   notice at step {drill.fired_at}, checkpoint and stop at step {drill.stopped_at}, "
                      f"resumed there by a new worker group" if drill.stopped_at is not None
                      else "spot drill:   the run ended before the notice was acted on")
    console.print(f"telucodec-{cfg.model.n_codebooks} at {full.bitrate_kbps:.2f} kbps on held-out clips: "
                  f"SNR {full.snr:.2f} dB, SI-SDR {full.si_sdr:.2f} dB (a CPU toy: minutes of audio, "
                  f"{cfg.train.steps} steps; see README for what to expect at scale)")
    console.print("next, on a real cluster: telucodec prep ... --out s3://BUCKET/te; telucodec submit --address "
                  "http://HEAD:8265 --runs s3://BUCKET/runs configs/gpu.yaml data.url=s3://BUCKET/te-r8 "
                  "train.workers=8; telucodec jobs status ID")


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="telucodec", description="Train a neural speech codec on Telugu "
                                "speech: data prep, training on Ray + Accelerate, cost tracking.",
                                epilog=EPILOG, formatter_class=fmt)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    c = sub.add_parser("config", help="show the resolved configuration")
    csub = c.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    s = csub.add_parser("show", help="print the resolved config (base.yaml, then files, then overrides)",
                        description="Layer configs/base.yaml, the given YAML files and key=value "
                        "overrides, check them, and print the result.",
                        epilog="example: telucodec config show configs/tiny.yaml prep.sample_rate=24000",
                        formatter_class=fmt)
    s.add_argument("items", nargs="*", metavar="CONFIG.yaml|key=value")
    s.add_argument("--docs", action="store_true", help="add each field's documentation as a comment")
    s.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    s.set_defaults(func=cmd_config_show)

    s = sub.add_parser("corpus", help="synthesize an offline Telugu speech corpus (espeak-ng, festival)",
                       description="Synthesize Telugu speech from a bundled sentence list with every "
                       "Telugu voice installed, and write wavs plus manifest.tsv. Some files are "
                       "deliberately over full scale (float WAV, peaks 1.01-1.3) to exercise clipping.",
                       epilog="example: telucodec corpus corpus/ --minutes 5 --seed 1", formatter_class=fmt)
    s.add_argument("out_dir", metavar="OUT_DIR")
    s.add_argument("--minutes", type=float, default=3.0, help="audio to make (default 3)")
    s.add_argument("--seed", type=int, default=0, help="random seed for sentences and voices")
    s.set_defaults(func=cmd_corpus)

    s = sub.add_parser("prep", help="raw audio -> clipped, segmented WebDataset shards on a store",
                       description="Decode, mix to mono, resample, clip to [-1, 1], trim silence, cut "
                       "into segments, split by speaker and write {split}-NNNNNN.tar shards and "
                       "index.json (last). Bad files go to rejects.jsonl and the run continues. "
                       "Re-running the same command after an interruption completes the dataset.",
                       epilog="sources: a folder (wav, flac, ogg, mp3; recursive), a manifest "
                       "(.tsv/.csv/.jsonl with a path column), an OpenSLR SLR66 folder (line_index.tsv) "
                       "or a Common Voice folder (validated.tsv + clips/).\n\nexamples:\n"
                       "  telucodec prep corpus/ --out runs/data\n"
                       "  telucodec prep te_in_female/ te_in_male/ --out s3://bucket/te --format openslr\n"
                       "  telucodec prep cv-te/ --out s3://bucket/cv prep.max_seconds=8",
                       formatter_class=fmt)
    s.add_argument("sources", nargs="+", metavar="SRC")
    s.add_argument("--out", required=True, metavar="URL", help="dataset URL: folder, file:// or s3://")
    s.add_argument("--format", choices=["auto", "folder", "manifest", "openslr", "commonvoice"],
                   default="auto", help="source layout (default: detect)")
    s.add_argument("--config", dest="items", action="append", default=[], metavar="CONFIG.yaml|key=value",
                   help="config file or override (repeatable); bare key=value words work too")
    s.add_argument("--overwrite", action="store_true", help="replace a different dataset at --out")
    s.set_defaults(func=cmd_prep)

    sh = sub.add_parser("shards", help="list or verify a dataset's shards")
    shsub = sh.add_subparsers(dest="shards_command", metavar="ACTION", required=True)
    s = shsub.add_parser("ls", help="table of splits: shards, samples, hours, size",
                         epilog="example: telucodec shards ls s3://bucket/te", formatter_class=fmt)
    s.add_argument("url", metavar="URL")
    s.add_argument("--json", action="store_true", help="print totals per split as JSON")
    s.set_defaults(func=cmd_shards_ls)
    s = shsub.add_parser("verify", help="re-hash every shard and decode every sample",
                         description="Re-hash every shard against index.json, decode every sample and "
                         "check it lies in [-1, 1]. Exits 1 naming each bad shard.",
                         epilog="example: telucodec shards verify s3://bucket/te", formatter_class=fmt)
    s.add_argument("url", metavar="URL")
    s.set_defaults(func=cmd_shards_verify)

    s = sub.add_parser("train", help="train the codec (Ray Train + Accelerate; resumes automatically)",
                       description="Train the codec on a dataset made by `telucodec prep`. Layers "
                       "configs/base.yaml, the given YAML files and key=value overrides. Resumes from "
                       "the newest whole checkpoint in run.dir; metrics go to run.dir/metrics.jsonl.",
                       epilog="examples:\n"
                       "  telucodec train configs/tiny.yaml data.url=demo_out/data run.dir=runs/tiny\n"
                       "  telucodec train configs/gpu.yaml data.url=s3://bucket/te run.dir=s3://bucket/runs/r1 "
                       "train.workers=8 train.use_gpu=true\n"
                       "  telucodec train configs/tiny.yaml data.url=demo_out/data train.workers=0   # no Ray",
                       formatter_class=fmt)
    s.add_argument("--resume", choices=("auto", "never"), default="auto",
                   help="auto (default): continue the run in run.dir if it has a checkpoint; never: refuse "
                   "to start when it has one")
    s.add_argument("items", nargs="*", metavar="CONFIG.yaml|key=value")
    s.set_defaults(func=cmd_train)

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
                       formatter_class=fmt)
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
    s.set_defaults(func=cmd_reshard)

    s = sub.add_parser("encode", help="compress an audio file to a .tcq bitstream with a checkpoint",
                       description="Decode any soundfile-readable file, mix to mono, resample to the "
                       "model's rate (soxr), clip to [-1, 1] and write the codes as a .tcq bitstream "
                       "(20-byte header, then codes bit-packed at log2(codebook_size) bits). Prints "
                       "the file size and the effective bitrate.",
                       epilog="examples:\n"
                       "  telucodec encode speech.flac speech.tcq --checkpoint runs/tiny\n"
                       "  telucodec encode in.wav in.tcq --checkpoint runs/r1/checkpoints/step_00002000 "
                       "--codebooks 4", formatter_class=fmt)
    s.add_argument("input", metavar="IN_AUDIO")
    s.add_argument("output", metavar="OUT.tcq")
    s.add_argument("--checkpoint", required=True, metavar="CK",
                   help="run dir (its latest checkpoint) or a checkpoints/step_NNNNNNNN dir")
    s.add_argument("--codebooks", type=int, metavar="N", help="residual levels to keep (default: all)")
    s.set_defaults(func=cmd_encode)

    s = sub.add_parser("decode", help="decode a .tcq bitstream to a WAV file with its checkpoint",
                       description="Decode a .tcq bitstream with the checkpoint that made it (the file "
                       "holds codes, not weights) to a float WAV at the model's rate, cut to the "
                       "original length. Refuses a bitstream whose rate, code width or codebook count "
                       "does not fit the checkpoint.",
                       epilog="example: telucodec decode speech.tcq speech.wav --checkpoint runs/tiny",
                       formatter_class=fmt)
    s.add_argument("input", metavar="IN.tcq")
    s.add_argument("output", metavar="OUT.wav")
    s.add_argument("--checkpoint", required=True, metavar="CK",
                   help="run dir or checkpoints/step_NNNNNNNN dir of the model that encoded it")
    s.set_defaults(func=cmd_decode)

    s = sub.add_parser("eval", help="score a checkpoint against Opus 6 kbps and Codec2 3.2 kbps",
                       description="On the first N clips of a split (each cut to at most S seconds), "
                       "score telucodec at 1..n_codebooks codebooks, Opus at 6 kbps and Codec2 at "
                       "3.2 kbps: SNR, SI-SDR, mel distance, PESQ-WB, STOI and measured bitrate. Writes "
                       "OUT/eval.json and spectrogram PNGs (input vs each codec). A missing opusenc or "
                       "c2enc is reported in the table, not fatal.",
                       epilog="example: telucodec eval --checkpoint runs/tiny --data demo_out/data "
                       "--clips 8 --out eval_out", formatter_class=fmt)
    s.add_argument("--checkpoint", required=True, metavar="CK", help="run dir or checkpoints/step_NNNNNNNN dir")
    s.add_argument("--data", required=True, metavar="URL", help="dataset made by `telucodec prep`")
    s.add_argument("--split", default="test", help="split to evaluate on (default test)")
    s.add_argument("--clips", type=int, default=8, metavar="N", help="first N samples of the split (default 8)")
    s.add_argument("--seconds", type=float, default=4.0, metavar="S", help="cut each clip to S seconds (default 4)")
    s.add_argument("--out", default="eval_out", metavar="DIR", help="folder for eval.json and PNGs (default eval_out)")
    s.add_argument("--spectrograms", type=int, default=3, metavar="K", help="PNGs for the first K clips (default 3)")
    s.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("cost", help="what runs cost: GPU-hours, worker-hours, dollars, restarts, waste",
                       description="Read each run's ledger.jsonl (or, without one, its latest checkpoint) and "
                       "print GPU-hours, worker-hours, dollars, restarts, wasted GPU-hours (replayed steps and "
                       "restart gaps), best val SNR and dollars per dB of SNR gained. A run whose last ledger "
                       "line is an old heartbeat is 'lost': it died without a goodbye and is billed to that "
                       "heartbeat. Without RUN_URL: every run under ./runs.",
                       epilog="examples:\n  telucodec cost runs/tiny\n  telucodec cost s3://bucket/runs/r1 --json",
                       formatter_class=fmt)
    s.add_argument("runs", nargs="*", metavar="RUN_URL", help="run dir or s3:// URL")
    s.add_argument("--json", action="store_true", help="print JSON (an object for one run, else a list)")
    s.set_defaults(func=cmd_cost)

    s = sub.add_parser("runs", help="table of every run under a store: status, cost, best SNR",
                       description="List every run dir directly under STORE_URL that has a ledger or "
                       "checkpoints, with its status and cost (as `telucodec cost`).",
                       epilog="examples:\n  telucodec runs\n  telucodec runs s3://bucket/runs --json",
                       formatter_class=fmt)
    s.add_argument("store", nargs="?", default="runs", metavar="STORE_URL",
                   help="folder or s3:// prefix (default ./runs)")
    s.add_argument("--json", action="store_true", help="print a JSON list")
    s.set_defaults(func=cmd_runs)

    s = sub.add_parser("submit", help="submit a training run to a Ray cluster (from a laptop)",
                       description="Resolve and check the config here, stage the project (less .git, .venv, "
                       "data, runs and caches; size-checked before upload) and submit `telucodec train` as a "
                       "Ray job. WANDB_API_KEY and AWS credentials are forwarded inside the job's package, "
                       "never in its visible runtime_env or metadata, and never printed. Prints `job: ID`, "
                       "the dashboard URL and the W&B run URL.",
                       epilog="examples:\n"
                       "  telucodec submit --local configs/tiny.yaml data.url=demo_out/data-r2 train.steps=50\n"
                       "  telucodec submit --address http://HEAD:8265 --runs s3://b/runs configs/gpu.yaml \\\n"
                       "      data.url=s3://b/te-r8 train.workers=8\n"
                       "  telucodec submit --address http://HEAD:8265 --runs s3://b/runs --run te-20261124-101500-1a2b "
                       "configs/gpu.yaml ...   # resume that run",
                       formatter_class=fmt)
    add_cluster_options(s)
    s.add_argument("--run", help="run name to resume (or to start with this name); default: a new unique name")
    s.add_argument("--runs", default="runs", metavar="URL",
                   help="where run dirs go: s3://bucket/runs on a real cluster (default ./runs, fine with --local)")
    s.add_argument("--max-upload-mb", type=float, default=100.0, help="refuse a bigger working dir (default 100)")
    s.add_argument("--pip", action="store_true",
                   help="install pyproject's dependencies in the job's runtime env (a cluster image without them)")
    s.add_argument("--image", help="container image URI for the job (runtime_env image_uri)")
    s.add_argument("items", nargs="*", metavar="CONFIG.yaml|key=value")
    s.set_defaults(func=cmd_submit)

    j = sub.add_parser("jobs", help="list, inspect, follow or stop submitted jobs",
                       description="Ray's job state plus, from each run's ledger and metrics: step, steps/s, "
                       "dollars so far, restarts and the last val SNR.", formatter_class=fmt,
                       epilog="examples:\n  telucodec jobs ls --local\n  telucodec jobs status ID --address "
                       "http://HEAD:8265\n  telucodec jobs logs ID --follow\n  telucodec jobs stop ID")
    jsub = j.add_subparsers(dest="jobs_command", required=True, metavar="ls|status|logs|stop")
    s = jsub.add_parser("ls", help="table of telucodec jobs: state, step, cost, SNR")
    add_cluster_options(s)
    s.set_defaults(func=cmd_jobs_ls)
    s = jsub.add_parser("status", help="the Ray state word (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED), then details")
    add_cluster_options(s)
    s.add_argument("job_id", metavar="ID")
    s.set_defaults(func=cmd_jobs_status)
    s = jsub.add_parser("logs", help="the job's driver log (rank 0's prints among it)")
    add_cluster_options(s)
    s.add_argument("job_id", metavar="ID")
    s.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    s.set_defaults(func=cmd_jobs_logs)
    s = jsub.add_parser("stop", help="stop a job: the workers save a checkpoint first, then it is STOPPED")
    add_cluster_options(s)
    s.add_argument("job_id", metavar="ID")
    s.add_argument("--wait", type=float, default=150.0, help="seconds to wait for the final state (default 150)")
    s.set_defaults(func=cmd_jobs_stop)

    s = sub.add_parser("cluster", help="start or stop a local Ray head (for users without a cluster)",
                       description="`up --local` starts a Ray head on 127.0.0.1 with its dashboard on port 8265 "
                       "(TELUCODEC_LOCAL_RAY_PORT), or reuses the one there; `down --local` runs `ray stop`, "
                       "which ends every Ray process this user started on this machine. For cloud clusters "
                       "use `ray up jobs/clusters/aws-spot.yaml`.",
                       epilog="examples:\n  telucodec cluster up --local\n  telucodec cluster down --local",
                       formatter_class=fmt)
    s.add_argument("action", choices=("up", "down"))
    s.add_argument("--local", action="store_true", help="this machine")
    s.add_argument("--cpus", type=int, help="CPUs the local head offers (default: this machine's, at least 3)")
    s.set_defaults(func=cmd_cluster)

    s = sub.add_parser("demo", help="run the pipeline end to end on this machine",
                       description="Synthesize a small Telugu corpus, prep it into shards in a local "
                       "folder, reshard it for the Ray workers, train the tiny codec on a local Ray "
                       "(configs/tiny.yaml) through one simulated spot reclaim (a fake EC2 metadata "
                       "service on 127.0.0.1 announces it halfway), evaluate it beside Opus and Codec2, "
                       "and report its cost. Needs no cloud account; key=value words override "
                       "configs/tiny.yaml.",
                       epilog="examples:\n  telucodec demo\n  telucodec demo --minutes 1 train.steps=50",
                       formatter_class=fmt)
    s.add_argument("--out", default="demo_out", help="folder for everything the demo writes")
    s.add_argument("--minutes", type=float, default=3.0, help="minutes of speech to synthesize")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-preemption", dest="preemption", action="store_false",
                   help="skip the simulated spot reclaim halfway through training")
    s.add_argument("items", nargs="*", metavar="CONFIG.yaml|key=value")
    s.set_defaults(func=cmd_demo)
    return p


def add_cluster_options(s) -> None:
    g = s.add_mutually_exclusive_group()
    g.add_argument("--address", help="the cluster's dashboard, http://HEAD:8265 (default: $RAY_ADDRESS)")
    g.add_argument("--local", action="store_true", help="a Ray head on this machine (started if not running)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may follow options: collect them, refuse anything else
        bad = [e for e in extra if "=" not in e or e.startswith("-")]
        if bad or not hasattr(args, "items"):
            parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
        args.items = list(args.items) + extra
    try:
        return args.func(args)
    except user_errors() as e:
        err_console.print(f"telucodec: error: {e}", markup=False, highlight=False)
        return 2
    except KeyboardInterrupt:
        err_console.print("telucodec: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
