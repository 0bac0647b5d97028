"""What runs cost and where they stand: `cost RUN...` and `runs STORE` (tables, or --json); `sync RUN`
uploads a run's offline W&B folders as one W&B run."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from jobs.cli.common import FORMATTER, UsageError, amount, cell, console


def register(sub) -> None:
    s = sub.add_parser("cost", help="what runs cost: GPU-hours, worker-hours, dollars, restarts, waste",
                       description="Read each run's ledger.jsonl (or, without one, its latest checkpoint) and "
                       "print GPU-hours, worker-hours, dollars, restarts, wasted GPU-hours (replayed steps and "
                       "restart gaps), best val SNR and dollars per dB of SNR gained. A run whose last ledger "
                       "line is an old heartbeat is 'lost': it died without a goodbye and is billed to that "
                       "heartbeat. Without RUN_URL: every run under ./runs.",
                       epilog="examples:\n  telucodec cost runs/tiny\n  telucodec cost s3://bucket/runs/r1 --json",
                       formatter_class=FORMATTER)
    s.add_argument("runs", nargs="*", metavar="RUN_URL", help="run dir or s3:// URL")
    s.add_argument("--json", action="store_true", help="print JSON (an object for one run, else a list)")
    s.set_defaults(func=cost)

    s = sub.add_parser("runs", help="table of every run under a store: status, cost, best SNR",
                       description="List every run dir directly under STORE_URL that has a ledger or "
                       "checkpoints, with its status and cost (as `telucodec cost`).",
                       epilog="examples:\n  telucodec runs\n  telucodec runs s3://bucket/runs --json",
                       formatter_class=FORMATTER)
    s.add_argument("store", nargs="?", default="runs", metavar="STORE_URL",
                   help="folder or s3:// prefix (default ./runs)")
    s.add_argument("--json", action="store_true", help="print a JSON list")
    s.set_defaults(func=runs)

    s = sub.add_parser("sync", help="upload a run's offline W&B folders as one W&B run",
                       description="Upload the offline W&B folders a run left (one per worker group: a "
                       "preempted and resumed run has several) in one `wandb sync`, which replays folders of "
                       "the same run id oldest first and resumes the run for each later one: one W&B run whose "
                       "history goes on across restarts. Folders synced before are skipped. Needs "
                       "WANDB_API_KEY (or `wandb login`). Run it when the run has ended or waits for a "
                       "restart, not while a worker group is still writing.",
                       epilog="examples:\n  telucodec sync runs/tiny\n  telucodec sync runs/tiny --dry-run\n"
                       "  telucodec sync s3://bucket/runs/r1 --entity team", formatter_class=FORMATTER)
    s.add_argument("run", metavar="RUN", help="run dir or s3:// URL (its W&B files are where its rank 0 "
                   "wrote them), or a tracking.dir folder")
    s.add_argument("--project", default="", help="W&B project (default: the one the run was started with)")
    s.add_argument("--entity", default="", help="W&B entity (default: the run's, else the API key's)")
    s.add_argument("--dry-run", action="store_true", help="list what wandb sync would upload; upload nothing")
    s.set_defaults(func=sync)

def cost(args) -> int:
    from pipeline.runs.cost import find_runs, summarize_run

    urls = args.runs or find_runs("runs")
    if not urls:
        raise UsageError("no runs under ./runs: give RUN_URL (a run dir or s3:// URL)")
    for url in args.runs:
        require_store(url)
    summaries = [summarize_run(u) for u in urls]
    if args.json:
        data = [s.to_dict() for s in summaries]
        print(json.dumps(data[0] if len(args.runs) == 1 else data, indent=2))
        return 0
    console.print(cost_table(summaries, "cost of " + (", ".join(args.runs) if args.runs else "runs under ./runs")))
    return 0


def runs(args) -> int:
    from pipeline.runs.cost import find_runs, summarize_run

    urls = find_runs(args.store)
    if not urls:  # none found: a store with no runs is an answer, a missing one is a mistake
        require_store(args.store)
    summaries = [summarize_run(u) for u in urls]
    if args.json:
        print(json.dumps([s.to_dict() for s in summaries], indent=2))
        return 0
    if not summaries:
        console.print(f"no runs under {args.store} (a run dir holds ledger.jsonl or checkpoints/)", highlight=False)
        return 0
    console.print(cost_table(summaries, f"runs under {args.store}"))
    return 0


def sync(args) -> int:
    from pipeline.training.tracking import sync_run

    segments = sync_run(args.run, project=args.project, entity=args.entity, dry_run=args.dry_run)
    console.print(f"{'would upload' if args.dry_run else 'synced'} {len(segments)} offline folder(s) of "
                  f"{args.run} as one W&B run", highlight=False)
    return 0


def require_store(url: str) -> None:
    """UsageError when there is nothing at `url`: a missing folder, or an S3 prefix with no objects."""
    from pipeline.storage.store import is_remote, open_store

    if not is_remote(url) and Path(url).is_file():
        raise UsageError(f"{url} is a file: give a run folder (or a folder of runs)")
    if not (open_store(url).list() if is_remote(url) else Path(url).is_dir()):
        raise UsageError(f"{url}: no such folder" if not is_remote(url) else f"{url}: nothing stored there")


def cost_table(summaries, title: str, width: int | None = None) -> Table:
    """One row per run (RunCost), and a total row when there are several. Run names never wrap:
    where the terminal (`width`) is too narrow, columns that are all zero go first, then $/dB,
    best SNR, requests and restarts (`telucodec cost --json` has every figure)."""
    from rich import box

    def requests(t) -> int:
        return sum(t.storage_requests.values())

    # (header, value of a RunCost, summed in the total row, how it is shown)
    columns = [("run", lambda s: s.name, False, str), ("status", lambda s: s.status, False, str),
               ("GPU\nhours", lambda s: s.totals.gpu_hours, True, amount),
               ("worker\nhours", lambda s: s.totals.worker_hours, True, amount),
               ("$", lambda s: s.totals.usd, True, amount),
               ("storage\n$", lambda s: s.totals.storage_usd, True, amount),
               ("storage\nrequests", lambda s: requests(s.totals), True, lambda v: f"{v:,}"),
               ("restarts", lambda s: s.totals.restarts, True, str),
               ("wasted\nGPU-h", lambda s: s.totals.wasted_gpu_hours, True, amount),
               ("wasted\nworker-h", lambda s: s.totals.wasted_worker_hours, True, amount),
               ("best val\nSNR dB", lambda s: s.best_snr, False, lambda v: cell(v, 2)),
               ("$/dB", lambda s: s.usd_per_db, False, lambda v: "-" if v is None else amount(v))]
    rows = [[value(s) for _, value, _, _ in columns] for s in summaries]
    if len(rows) > 1:
        rows.append(["total", ""] + [sum(r[i] for r in rows) if summed else None
                                     for i, (_, _, summed, _) in enumerate(columns) if i >= 2])
    header = [h for h, _, _, _ in columns]
    cells = [[v if i < 2 else shown(v) if v is not None else "-" for i, (v, (_, _, _, shown)) in
              enumerate(zip(r, columns))] for r in rows]
    widths = [max([len(line) for line in header[i].split("\n")] + [len(c[i]) for c in cells]) for i in range(len(header))]
    keep = list(range(len(header)))
    named = {h.replace("\n", " "): i for i, h in enumerate(header)}
    all_zero = [named[h] for h in ("GPU hours", "wasted GPU-h", "worker hours", "wasted worker-h", "storage $",
                                   "storage requests") if all(not r[named[h]] for r in rows)]
    for i in [*all_zero, named["$/dB"], named["best val SNR dB"], named["storage requests"], named["restarts"],
              named["wasted GPU-h"], named["GPU hours"]]:
        if sum(widths[k] for k in keep) + 3 * len(keep) <= (width or console.width):
            break
        if i in keep:
            keep.remove(i)
    table = Table(title=title, box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
    for i in keep:
        table.add_column(header[i], justify="left" if i < 2 else "right", no_wrap=True)
    for n, c in enumerate(cells):
        if len(rows) > 1 and n == len(rows) - 1:
            table.add_section()
        table.add_row(*(c[i] for i in keep))
    return table
