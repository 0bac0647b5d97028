"""What a run costs in GPU-hours, worker-hours and dollars, kept by rank 0 so that it is never lost.

    cost = CostTracker(cfg, RunDir(cfg.run.dir), workers=8, started=group_start)
    cost.begin(checkpoint_extra.get("cost"), step)   # ledger: start, or restarted (gap billed as wasted)
    cost.totals()                                    # CostTotals(worker_hours=..., gpu_hours=..., usd=...)
    cost.state()                                     # into every checkpoint, so totals never go backwards
    cost.close("finished", step)

    summarize_run("s3://bucket/runs/r1")             # RunCost, for `telucodec cost` and `telucodec runs`

The clock runs from the worker group's start: cost = workers x wall time x the price of a
worker-hour (cost.usd_per_hour, else the instance's price from configs/prices.yaml shared among the
workers it hosts; an unpriced local machine is $0), and GPU-hours = workers x GPUs per worker x wall
time. Rank 0 appends the running totals to RUN/ledger.jsonl at the start, every
cost.heartbeat_seconds, at evals, on health events and at the end, so a node that dies without a
goodbye is billed up to its last line. A new worker group continues from the newer of its
checkpoint's totals and the ledger's last line; the work done after that checkpoint (replayed now)
and the gap until the new group started are added to the `wasted_*` totals.
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from pipeline.cloud import InstanceInfo, this_instance
from pipeline.config import CONFIG_DIR, Config, ConfigError
from pipeline.runs.rundir import RUN_END_BY_EVENT, RunDir
from pipeline.storage.store import (KINDS, StoreError, no_requests, open_store, requests_by_kind,
                                    requests_by_purpose, tally_from)

PRICES_FILE = CONFIG_DIR / "prices.yaml"
LEDGER = "ledger.jsonl"


@dataclass(frozen=True)
class Price:
    usd_per_worker_hour: float
    source: str
    """Where the price came from, in words (goes into the ledger's start line)."""
    instance_type: str = ""
    region: str = ""
    spot: bool = False


def load_prices(path: str = "") -> dict:
    """The price table: instance type -> {cloud, gpus, vcpus, usd_per_hour: {region: {on_demand, spot}}}."""
    path = Path(path) if path else PRICES_FILE
    try:
        table = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cost.prices: cannot read {path} ({e})") from None
    if not isinstance(table, dict):
        raise ConfigError(f"cost.prices: {path} must map instance types to prices")
    return table


def worker_price(cfg: Config, instance: InstanceInfo | None = None, per_node: bool = False) -> Price:
    """Dollars per worker-hour: cost.usd_per_hour, else the table's price for the instance type
    (from config, else from the cloud's metadata), else $0 for a local machine. `per_node`: a
    worker is a whole instance (a prep or reshard job's nodes)."""
    c = cfg.cost
    if c.usd_per_hour is not None:
        return Price(c.usd_per_hour, "cost.usd_per_hour", c.instance_type, c.region, bool(c.spot))
    if c.instance_type:
        kind, region, spot, origin = c.instance_type, c.region, bool(c.spot), "cost.instance_type"
    else:
        instance = instance or this_instance(cfg.preempt.endpoints)
        if instance is None:
            return Price(0.0, "local machine (set cost.usd_per_hour to bill it)")
        kind, region, origin = instance.instance_type, c.region or instance.region, f"{instance.cloud} metadata"
        spot = instance.spot if c.spot is None else c.spot
    table = {k: v for k, v in load_prices(c.prices).items() if k != "storage"}
    entry = table.get(kind)
    if entry is None:
        if origin == "cost.instance_type":
            raise ConfigError(f"cost.instance_type: {kind} has no price in {c.prices or PRICES_FILE} (known: "
                              f"{', '.join(sorted(table))}); add it there or set cost.usd_per_hour")
        return Price(0.0, f"{kind} (from {origin}) has no price in the table: set cost.usd_per_hour",
                     kind, region, spot)
    regions = entry["usd_per_hour"]
    priced = region if region in regions else next(iter(regions))
    note = "" if priced == region else f", {priced} price: no {region or 'region'} in the table"
    cpus = max(1, cfg.train.cpus_per_worker)
    per_instance = 1 if per_node else entry["gpus"] if cfg.train.use_gpu else max(1, entry["vcpus"] // cpus)
    usd = regions[priced]["spot" if spot else "on_demand"]
    return Price(usd / per_instance, f"{kind} {'spot' if spot else 'on-demand'} ${usd:g}/h / {per_instance} "
                 f"workers (configs/prices.yaml, approximate; from {origin}{note})", kind, priced, spot)


@dataclass(frozen=True)
class StoragePrice:
    """Dollars per request of each kind (storage.KINDS), and per byte a GET carries out (egress)."""
    per_request: dict
    usd_per_get_byte: float
    source: str

    def usd(self, counts: np.ndarray) -> float:
        """What a tally array's requests (and, with egress, its GET bytes) cost."""
        total = sum(counts[:, k, 0].sum() * self.per_request.get(kind, 0.0) for k, kind in enumerate(KINDS))
        return float(total + counts[:, KINDS.index("GET"), 1].sum() * self.usd_per_get_byte)


def storage_price(cfg: Config) -> StoragePrice:
    """The request prices of the run's object store (cost.store, else guessed from AWS_ENDPOINT_URL)."""
    table = load_prices(cfg.cost.prices).get("storage") or {}
    name = cfg.cost.store or store_kind(os.environ.get("AWS_ENDPOINT_URL", ""))
    entry = table.get(name)
    if entry is None:
        raise ConfigError(f"cost.store: {name} has no request prices under storage: in "
                          f"{cfg.cost.prices or PRICES_FILE} (known: {', '.join(sorted(table)) or 'none'})")
    per_request = {"GET": entry["get_per_1000"] / 1000, "PUT": entry["put_per_1000"] / 1000,
                   "LIST": entry["list_per_1000"] / 1000}
    egress = entry.get("egress_per_gb", 0.0) / 1e9 if cfg.cost.egress else 0.0
    return StoragePrice(per_request, egress, f"{name} list prices (configs/prices.yaml, approximate"
                        f"{', with egress' if cfg.cost.egress else ''})")


def store_kind(endpoint: str) -> str:
    """Whose prices an S3 endpoint's requests are billed at."""
    host = endpoint.lower()
    return "gcs" if "storage.googleapis.com" in host else "r2" if "r2.cloudflarestorage.com" in host else "s3"


_SPENT = ("worker_hours", "gpu_hours", "usd")


@dataclass
class CostTotals:
    worker_hours: float = 0.0
    gpu_hours: float = 0.0
    usd: float = 0.0
    wasted_worker_hours: float = 0.0
    """Hours of work that were thrown away: steps replayed after a restart, restart gaps."""
    wasted_gpu_hours: float = 0.0
    wasted_usd: float = 0.0
    restarts: int = 0
    storage_usd: float = 0.0
    """What the run's requests to remote stores cost (at `storage_price`); not part of `usd`."""
    storage: dict = dataclasses.field(default_factory=dict)
    """Every rank's and loader worker's requests to remote stores by purpose, with bytes:
    {purpose: {"GET": n, "GET_bytes": n, ...}} (storage.requests_by_purpose)."""

    @property
    def storage_requests(self) -> dict[str, int]:
        """{"GET": n, "PUT": n, "LIST": n}, all purposes together."""
        return requests_by_kind(tally_from(self.storage))

    @property
    def total_usd(self) -> float:
        """Instances and storage requests together."""
        return self.usd + self.storage_usd

    def to_dict(self) -> dict:
        return {**{k: (round(v, 9) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()},
                "storage_requests": self.storage_requests}

    def spent_since(self, earlier: "CostTotals") -> "CostTotals":
        """What was spent between `earlier` and these totals (never negative)."""
        return CostTotals(*(max(0.0, getattr(self, k) - getattr(earlier, k)) for k in _SPENT))

    def billed(self, spent: "CostTotals") -> "CostTotals":
        """These totals with `spent` added."""
        return dataclasses.replace(self, **{k: getattr(self, k) + getattr(spent, k) for k in _SPENT})

    def wasted(self, spent: "CostTotals") -> "CostTotals":
        """These totals with `spent` (already billed) counted as wasted too."""
        return dataclasses.replace(self, **{f"wasted_{k}": getattr(self, f"wasted_{k}") + getattr(spent, k)
                                            for k in _SPENT})

    @classmethod
    def from_dict(cls, d: dict | None) -> "CostTotals":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in names})


class CostTracker:
    """Rank 0's running cost: a clock from the worker group's start, the ledger, its heartbeat, the budget."""

    def __init__(self, cfg: Config, run: RunDir, workers: int, started: float, price: Price | None = None):
        self.cfg, self.workers, self.started = cfg, workers, started
        self.gpus_per_worker = 1 if cfg.train.use_gpu else 0
        self.price = price or worker_price(cfg)
        self.storage_price = storage_price(cfg)
        self.requests = no_requests()
        """This worker group's requests to remote stores so far (every rank's; see `seen_requests`)."""
        self.ledger = run.log(LEDGER)
        self.base = CostTotals()
        """Totals at `started` (what earlier worker groups spent, and this one's restart gap)."""
        self.step, self.first_snr, self.budget_reason = 0, None, None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def usd_per_hour(self) -> float:
        """What the whole run burns per hour now."""
        return self.workers * self.price.usd_per_worker_hour

    def spend(self, seconds: float) -> CostTotals:
        """What `seconds` of this worker group's wall time cost."""
        h = self.workers * max(0.0, seconds) / 3600
        return CostTotals(h, h * self.gpus_per_worker, h * self.price.usd_per_worker_hour)

    def totals(self, at: float | None = None) -> CostTotals:
        counts = tally_from(self.base.storage) + self.requests
        return dataclasses.replace(self.base.billed(self.spend((at or time.time()) - self.started)),
                                   storage_usd=self.storage_price.usd(counts), storage=requests_by_purpose(counts))

    def seen_requests(self, counts: np.ndarray) -> None:
        """This worker group's requests to remote stores until now, all ranks together (a tally array)."""
        with self._lock:
            self.requests = counts.copy()

    def begin(self, saved: dict | None, step: int, **fields) -> dict:
        """Continue from the checkpoint's totals or the ledger's last line (whichever is newer); write
        the start (or restarted) line and start the heartbeat."""
        history = self.ledger.read()
        last = next((r for r in reversed(history) if "usd" in r), None)
        ckpt = CostTotals.from_dict(saved)
        self.first_snr = (saved or {}).get("first_snr")
        self.first_snr = first_snr(history) if self.first_snr is None else self.first_snr
        if last is None or (saved and saved.get("time", 0) >= last["time"]):
            prior, prior_time, after = ckpt, (saved or {}).get("time"), "checkpoint"
        else:
            prior, prior_time, after = CostTotals.from_dict(last), last["time"], last["event"]
        self.base, event, extra = prior, "start", {}
        if prior_time is not None:  # a later worker group: the work after the checkpoint is replayed now
            end = RUN_END_BY_EVENT.get(after)
            clean = end is not None and end.for_good
            gap_s = 0.0 if clean else min(max(0.0, self.started - prior_time), self.cfg.cost.max_gap_minutes * 60)
            replayed, gap = prior.spent_since(ckpt), self.spend(gap_s)
            self.base = dataclasses.replace(prior.wasted(replayed).billed(gap).wasted(gap),
                                            restarts=prior.restarts + int(not clean))
            event = "resumed" if clean else "restarted"
            extra = {"after": after, "gap_s": round(gap_s, 3),
                     "replayed_worker_hours": round(replayed.worker_hours, 9)}
        record = self.record(event, step, **extra, workers=self.workers, gpus_per_worker=self.gpus_per_worker,
                             usd_per_worker_hour=self.price.usd_per_worker_hour, price_source=self.price.source,
                             instance_type=self.price.instance_type, region=self.price.region,
                             spot=self.price.spot, heartbeat_s=self.cfg.cost.heartbeat_seconds,
                             storage_price_source=self.storage_price.source, **fields)
        self._thread = threading.Thread(target=self._beat, daemon=True, name="cost-heartbeat")
        self._thread.start()
        return record

    def rolled_back(self, saved: dict) -> None:
        """The loop went back to a checkpoint mid-run: the work since then is redone."""
        with self._lock:
            self.base = self.base.wasted(self.totals().spent_since(CostTotals.from_dict(saved)))

    def record(self, event: str, step: int | None = None, **fields) -> dict:
        """Append a ledger line with the running totals (and upload it, for s3 run dirs)."""
        with self._lock:
            self.step = self.step if step is None else step
            record = {"event": event, "step": self.step, **fields, **self.totals().to_dict(),
                      "usd_per_hour": self.usd_per_hour}
            self.ledger.append(record)
            self.ledger.flush()
        return record

    def _beat(self) -> None:
        while not self._stop.wait(self.cfg.cost.heartbeat_seconds):
            try:
                self.record("heartbeat")
            except Exception as e:  # a store hiccup must not end the heartbeat: the next beat tries again
                print(f"WARNING cost ledger heartbeat failed: {type(e).__name__}: {e}", flush=True)

    def evaluated(self, step: int, snr: float) -> dict:
        """Ledger line for an eval; returns cost metrics with dollars per dB gained since the first eval."""
        if self.first_snr is None:
            self.first_snr = snr
        per_db = usd_per_db(self.totals().usd, snr, self.first_snr)
        self.record("eval", step, **{"val/snr": snr, "usd_per_db": per_db})
        return {**self.metrics(step), **({"cost/usd_per_db": per_db} if per_db is not None else {})}

    def metrics(self, step: int | None = None) -> dict:
        """The running totals as tracker metrics (cost/...)."""
        self.step = self.step if step is None else step
        t = self.totals()
        return {"cost/gpu_hours": t.gpu_hours, "cost/worker_hours": t.worker_hours, "cost/usd": t.usd,
                "cost/usd_per_hour": self.usd_per_hour, "cost/wasted_gpu_hours": t.wasted_gpu_hours,
                "cost/wasted_worker_hours": t.wasted_worker_hours, "cost/wasted_usd": t.wasted_usd,
                "cost/restarts": t.restarts, "cost/storage_usd": t.storage_usd,
                **{f"cost/storage_{kind.lower()}": n for kind, n in t.storage_requests.items()}}

    def over_budget(self, step: int) -> str | None:
        """Why the run must stop now (budget.max_usd / max_gpu_hours reached), else None."""
        self.step, b, t = step, self.cfg.budget, self.totals()
        if b.max_usd and t.total_usd >= b.max_usd:
            self.budget_reason = f"cost ${t.total_usd:.4f} reached budget.max_usd ${b.max_usd:g}"
        elif b.max_gpu_hours and t.gpu_hours >= b.max_gpu_hours:
            self.budget_reason = f"{t.gpu_hours:.4f} GPU-hours reached budget.max_gpu_hours {b.max_gpu_hours:g}"
        return self.budget_reason

    def state(self) -> dict:
        """What a checkpoint keeps: the totals, when they were taken, and the first eval's SNR."""
        now = time.time()
        return {**self.totals(now).to_dict(), "time": now, "step": self.step, "first_snr": self.first_snr}

    def close(self, event: str, step: int, **fields) -> dict:
        """Stop the heartbeat and write the last line (finished, preempted, budget, crashed)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if event == "budget" and self.budget_reason:
            fields["reason"] = self.budget_reason
        return self.record(event, step, **fields)

    def ledger_value(self, key: str):
        """The newest value of `key` in the ledger (e.g. the W&B run id of a run that never checkpointed)."""
        return newest_ledger_value(self.ledger.read(), key)


def newest_ledger_value(history: list[dict], key: str):
    """The newest non-empty value of `key` among ledger lines, or None."""
    return next((r[key] for r in reversed(history) if r.get(key)), None)


def first_snr(history: list[dict]) -> float | None:
    return next((r["val/snr"] for r in history if r.get("event") == "eval"), None)


def usd_per_db(usd: float, snr: float | None, first: float | None) -> float | None:
    """Dollars per dB of val SNR gained since the first eval; None until there is a gain."""
    if snr is None or first is None or snr - first <= 0:
        return None
    return usd / (snr - first)


# ------------------------------------------------------------------------------------- summaries
@dataclass
class RunCost:
    name: str
    url: str
    status: str
    """finished, budget, stopped (preempted), cancelled (job stopped), crashed, running, lost (no
    goodbye; billed to its last heartbeat) or unknown."""
    step: int
    totals: CostTotals
    best_snr: float | None = None
    first_snr: float | None = None
    usd_per_hour: float = 0.0
    instance_type: str = ""
    last_time: float | None = None

    @property
    def usd_per_db(self) -> float | None:
        return usd_per_db(self.totals.usd, self.best_snr, self.first_snr)

    def to_dict(self) -> dict:
        return {"name": self.name, "url": self.url, "status": self.status, "step": self.step,
                **self.totals.to_dict(), "best_snr": self.best_snr, "first_snr": self.first_snr,
                "usd_per_db": self.usd_per_db, "usd_per_hour": self.usd_per_hour,
                "instance_type": self.instance_type, "last_time": self.last_time}


def summarize_run(url: str, now: float | None = None) -> RunCost:
    """A run's cost and status from its ledger (or, for a run without one, its latest checkpoint)."""
    run = RunDir(url)
    name = run.url.rstrip("/").rsplit("/", 1)[-1]
    history = run.log(LEDGER).read()
    if not history:
        return summarize_from_checkpoint(run, name)
    last = history[-1]
    starts = [r for r in history if r["event"] in ("start", "restarted", "resumed")]
    beat = starts[-1].get("heartbeat_s", 60.0) if starts else 60.0
    if last["event"] in RUN_END_BY_EVENT:
        status = RUN_END_BY_EVENT[last["event"]].status
    else:
        status = "running" if (now or time.time()) - last["time"] < 3 * beat else "lost"
    snrs = [r["val/snr"] for r in history if r.get("event") == "eval"]
    priced = next((r for r in reversed(history) if "usd_per_worker_hour" in r), {})
    return RunCost(name, run.url, status, int(last.get("step", 0)), CostTotals.from_dict(last),
                   max(snrs, default=None), first_snr(history), last.get("usd_per_hour", 0.0),
                   priced.get("instance_type", ""), last["time"])


def summarize_from_checkpoint(run: RunDir, name: str) -> RunCost:
    from pipeline.runs.checkpoints import Checkpoints

    ckpts = Checkpoints(run.store)
    step = ckpts.latest_step()
    if step is None:
        raise StoreError(f"{run.url}: not a run dir (no {LEDGER} and no whole checkpoint)")
    extra = ckpts.load(step, "train").get("extra", {})
    saved = extra.get("cost") or {}
    status = (run.last_end() or ("unknown", 0))[0]
    best = ckpts.best()
    best_snr = best["value"] if best and best.get("metric") == "val/snr" else None  # best may be by PESQ
    return RunCost(name, run.url, status, step, CostTotals.from_dict(saved),
                   best_snr, saved.get("first_snr"), last_time=saved.get("time"))


_RUN_MARK = re.compile(r"^([^/]+)/(ledger\.jsonl|checkpoints/latest\.json|checkpoints/step_\d{8}/manifest\.json)$")


def find_runs(store_url: str) -> list[str]:
    """URLs of the run dirs directly under `store_url` (those with a ledger or checkpoints), by name."""
    store = open_store(store_url)
    names = {m[1] for o in store.list() if (m := _RUN_MARK.match(o.key))}
    return [store.join(n) for n in sorted(names)]
