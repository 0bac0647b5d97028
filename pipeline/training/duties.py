"""What rank 0 does besides training: run logs, printed progress and evals, health warnings, cancel
and grow requests, the cost ledger and budget, and W&B. Every other rank gets the no-ops of
RankDuties, so the loop calls them without asking which rank it is.
"""

from __future__ import annotations

import time

from pipeline.codec.losses import adversarial_active
from pipeline.codec.metrics import SCORERS, scorer
from pipeline.config import Config, TrainConfig
from pipeline.evaluation.clips import load_eval_clips
from pipeline.evaluation.scorer import evaluate_model
from pipeline.runs.cost import CostTotals, CostTracker
from pipeline.runs.rundir import RUN_ENDS, RunDir, RunEnd
from pipeline.training.tracking import Tracker, make_tracker


class RankDuties:
    """What rank 0 does besides training, as no-ops: what every other rank gets (`train` builds
    MainProcessDuties where `accel.is_main_process`), so the loop calls them without asking."""

    def begin(self, step: int, saved: dict | None) -> None:
        """Before the first step; `saved`: the checkpoint's extra state, None on a fresh start."""

    def load_eval_clips(self) -> None:
        """The val clips every eval decodes."""

    def print_progress(self, step: int, metrics: dict) -> None:
        """One progress line for the job log."""

    def log(self, metrics: dict, step: int) -> None:
        """A step's metrics: metrics.jsonl and W&B."""

    def evaluate_and_report(self, model, step: int) -> dict:
        """Val metrics, reported everywhere; {} where no eval runs."""
        return {}

    def warn(self, text: str, record: dict) -> None:
        """A warning (health, rollback): job log, events.jsonl, ledger and a W&B alert."""

    def driver_requests(self) -> tuple[bool, bool]:
        """(cancel, grow): whether the driver asked the run to end for good (its job was stopped),
        and to restart a shrunk elastic run's worker group larger (capacity returned)."""
        return False, False

    def over_budget(self, step: int) -> str | None:
        """Why the run must stop for good now (budget.*), else None."""
        return None

    def checkpoint_extra(self) -> dict:
        """What the checkpoint keeps besides the training state (cost totals, W&B run id)."""
        return {}

    def rolled_back(self, saved: dict) -> None:
        """The loop went back to a checkpoint with this extra state."""

    def seen_requests(self, counts) -> None:
        """The worker group's requests to remote stores so far, all ranks together (storage.REQUESTS's array)."""

    def flush(self) -> None:
        """The run's logs to the store (s3 run dirs)."""

    def record_end(self, end: RunEnd, step: int, **fields) -> None:
        """How the loop ended: events.jsonl and its message."""

    def close(self, status: str, step: int) -> None:
        """The final cost to W&B, close it, and the ledger's last line."""


class MainProcessDuties(RankDuties):
    """Rank 0's duties: events.jsonl and metrics.jsonl, the printed progress and eval lines, evals,
    cancel polling, the cost ledger and budget (pipeline/runs/cost.py) and W&B (pipeline/training/tracking.py;
    its no-op tracker when tracking is off)."""

    def __init__(self, cfg: Config, accel, run: RunDir, started: float):
        self.cfg, self.run, self.started = cfg, run, started
        self.workers, self.device = accel.num_processes, accel.device
        self.clips: list = []
        self._next_request_check = 0.0
        self.cost: CostTracker  # both made in begin
        self.tracker: Tracker

    def begin(self, step: int, saved: dict | None) -> None:
        """Continue the cost ledger and the W&B run of the checkpoint (`saved`), or start them."""
        if saved is None:
            self.run.events.append({"event": "start", "step": 0, "bitrate": self.cfg.model.bitrate()})
        else:
            self.run.events.append({"event": "resumed", "step": step})
            print(f"resumed {self.run.url} from step {step}", flush=True)
        saved = saved or {}
        self.cost = CostTracker(self.cfg, self.run, workers=self.workers, started=self.started)
        self.tracker = make_tracker(self.cfg, saved.get("wandb_run_id") or self.cost.ledger_value("wandb_run_id"))
        self.cost.begin(saved.get("cost"), step, wandb_run_id=self.tracker.run_id)
        if saved.get("world") not in (None, self.workers):
            self.resized(saved["world"], step)
        if problem := best_metric_problem(self.cfg.train):
            self.warn(problem, {"event": "warning", "step": step, "message": problem})

    def resized(self, before: int, step: int) -> None:
        """The worker group came back at another size (elastic training): say so everywhere."""
        why = "workers lost (a node vanished or was preempted)" if self.workers < before else "capacity returned"
        record = {"event": "resized", "step": step, "from": before, "to": self.workers, "why": why}
        print(f"resized from {before} to {self.workers} workers at step {step}: {why}; the global batch "
              f"stays {self.cfg.train.batch_size}", flush=True)
        self.run.events.append(record)
        self.cost.record("resized", step, **{k: record[k] for k in ("from", "to", "why")})
        self.tracker.alert(f"resized to {self.workers} workers at step {step}", why)

    def load_eval_clips(self) -> None:
        cfg = self.cfg
        self.clips = load_eval_clips(cfg.train.eval_url or cfg.data.url, cfg.train.eval_split, cfg.train.eval_clips,
                                     cfg.train.eval_seconds, cfg.model.sample_rate)

    def print_progress(self, step: int, metrics: dict) -> None:
        print(progress_line(step, self.cfg.train.steps, metrics, self.cost.totals(), self.cfg.train.use_gpu),
              flush=True)

    def log(self, metrics: dict, step: int) -> None:
        """metrics.jsonl, and W&B with the running cost."""
        self.run.metrics.append({"step": step, **metrics})
        self.tracker.log({**metrics, **self.cost.metrics(step)}, step)

    def evaluate_and_report(self, model, step: int) -> dict:
        """Eval metrics to metrics.jsonl, W&B (with dollars per dB and audio samples), the ledger and the
        job log; a health warning for each problem."""
        ev = evaluate_model(model, self.clips, self.cfg.model.sample_rate)
        self.run.metrics.append({"step": step, **ev})
        self.tracker.log({**ev, **self.cost.evaluated(step, ev["val/snr"])}, step)
        self.tracker.log_samples(step, model, self.clips)
        perceptual = "".join(f", {label} {ev[key]:.2f}" for key, label in (("val/pesq", "PESQ-WB"), ("val/stoi", "STOI"))
                             if key in ev)
        print(f"step {step}: val SNR {ev['val/snr']:.2f} dB, SI-SDR {ev['val/si_sdr']:.2f} dB, "
              f"range ratio {ev['val/range_ratio']:.2f}, mel distance {ev['val/mel_distance']:.3f}{perceptual}",
              flush=True)
        for problem in health_problems(ev, step, self.cfg):
            record = {"event": "health", "step": step, "problem": problem, "val/snr": ev["val/snr"],
                      "val/range_ratio": ev["val/range_ratio"]}
            if step < self.cfg.train.health_alarm_step:  # a young codec passes through these states
                print(f"note: step {step}: {problem} (usual this early; an alarm from step "
                      f"{self.cfg.train.health_alarm_step} on)", flush=True)
                self.run.events.append({**record, "alarm": False})
            else:
                self.warn(f"step {step}: {problem}", record)
        return ev

    def warn(self, text: str, record: dict) -> None:
        print(f"WARNING {text}", flush=True)
        self.run.events.append(record)
        fields = {k: v for k, v in record.items() if k not in ("event", "step")}
        self.cost.record(record["event"], record["step"], **fields)
        self.tracker.alert(f"{record['event']} at step {record['step']}",
                           record.get("problem") or record.get("message", ""))

    def driver_requests(self) -> tuple[bool, bool]:
        """The driver's RunDir.request_cancel and request_grow; store lookups once per
        preempt.poll_seconds (a grow only while the group is below train.workers)."""
        if time.monotonic() < self._next_request_check:
            return False, False
        self._next_request_check = time.monotonic() + self.cfg.preempt.poll_seconds
        return self.run.cancel_requested(), self.workers < self.cfg.train.workers and self.run.grow_requested()

    def over_budget(self, step: int) -> str | None:
        return self.cost.over_budget(step)

    def checkpoint_extra(self) -> dict:
        return {"cost": self.cost.state(), "wandb_run_id": self.tracker.run_id}

    def seen_requests(self, counts) -> None:
        self.cost.seen_requests(counts)

    def rolled_back(self, saved: dict) -> None:
        if saved.get("cost"):  # the work since then is redone
            self.cost.rolled_back(saved["cost"])

    def flush(self) -> None:
        self.run.flush()

    def record_end(self, end: RunEnd, step: int, **fields) -> None:
        self.run.events.append({"event": end.event, "step": step, **fields})
        self.run.flush()
        if end.message:
            print(end.message.format(step=step, **fields), flush=True)

    def close(self, status: str, step: int) -> None:
        """The final cost to W&B, close it (crashed: exit code 1; stopped or regrow: preempted, the
        run goes on in the next worker group), and the ledger's last line (finished, preempted,
        regrowing, budget, cancelled, crashed)."""
        self.tracker.log(self.cost.metrics(step), step)
        self.tracker.finish(exit_code=1 if status == "crashed" else 0, preempted=bool(RUN_ENDS[status].restart_reason))
        self.cost.close(RUN_ENDS[status].event, step)


def best_metric_problem(train: TrainConfig) -> str | None:
    """Why evaluation cannot measure train.best_metric here (a perceptual score whose optional
    package is missing), or None. The run goes on, keeping no best checkpoint."""
    name = train.best_metric
    if name not in SCORERS:
        return None
    _, missing = scorer(name)
    return missing and (f"train.best_metric is {name}, but {missing}: val/{name} is not measured and no best "
                        f"checkpoint is kept (or set train.best_metric=mel_distance)")


def health_problems(ev: dict, step: int, cfg: Config) -> list[str]:
    """The old failure, made visible: a collapsed output range after warm-up, or a negative SNR
    before the adversarial stage (which trades SNR for sound on purpose: there it is no alarm)."""
    if step < cfg.train.warmup_steps:
        return []
    problems = []
    if ev["val/snr"] < 0 and not adversarial_active(cfg.loss, step):
        problems.append(f"val SNR is {ev['val/snr']:.2f} dB (< 0): the codec is worse than silence")
    if ev["val/range_ratio"] < 0.5:
        problems.append(f"output/input range ratio is {ev['val/range_ratio']:.2f} (< 0.5): outputs are "
                        "collapsing toward zero")
    return problems


def progress_line(step: int, steps: int, metrics: dict, spent: CostTotals, gpu: bool) -> str:
    """One line of progress for the job log: step/total, loss, rates, ETA and what was spent so far
    (GPU-hours on GPU, worker-hours on CPU)."""
    rate = metrics["steps_per_s"]
    eta = round((steps - step) / rate) if rate > 0 else 0
    hours, minutes, seconds = eta // 3600, eta // 60 % 60, eta % 60
    eta_text = f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"
    hours_text = f"{spent.gpu_hours:.2f} GPU-h" if gpu else f"{spent.worker_hours:.2f} worker-h"
    return (f"step {step}/{steps}  loss {metrics['loss/total']:.3f}  {rate:.2f} steps/s  "
            f"{metrics['audio_s_per_s']:.1f} audio-s/s  ETA {eta_text}  {hours_text}  ${spent.usd:.2f}")
