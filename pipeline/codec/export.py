"""An inference-only model folder: what `telucodec export` writes and `--model` loads.

    exported = export_model("runs/r1", "models/te-4k")   # the run's best checkpoint (else its latest)
    trained = load_export("models/te-4k")                # trained.TrainedCodec; no optimizer, no pickle

OUT_DIR (a folder or an s3:// prefix; every file written whole, config.json last):
    model.safetensors   the codec's weights and codebooks
    config.json         {"format": "telucodec-model", "version": 1, "model": {...}, "fingerprint": hex}
    provenance.json     run, step, dataset URL and index.json sha256, val metrics at that step, licence
    README.md           the model card: what it was trained on, bitrates, measured quality

The fingerprint is sha256 over the model config (canonical JSON) and every tensor (name, dtype,
shape, bytes). A checkpoint and its export have the same one, .tcq files carry its first 16 hex
digits, and `decode` refuses a model whose fingerprint differs.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path


from pipeline.config import ConfigError, ModelConfig, from_dict
from pipeline.runs.checkpoints import CheckpointRef, resolve_checkpoint
from pipeline.errors import TelucodecError, environment_problem
from pipeline.codec.trained import TrainedCodec, codec_from_state, from_checkpoint, model_fingerprint
from pipeline.storage.store import StoreError, open_store

FORMAT, VERSION = "telucodec-model", 1
FILES = ("model.safetensors", "provenance.json", "README.md", "config.json")
"""What an export writes, in order: config.json last, so a folder with one is complete."""


class ExportError(TelucodecError, RuntimeError):
    """An export folder that cannot be written or read; the message says which file and why."""


@dataclass
class Provenance:
    """Where an exported model came from (provenance.json)."""

    run: str
    run_url: str
    step: int
    chosen_as: str
    """Why this checkpoint: best (by train.best_metric), latest, or named (a step dir was given)."""
    fingerprint: str
    dataset_url: str = ""
    dataset_index_sha256: str | None = None
    dataset_seconds: dict[str, float] = field(default_factory=dict)
    """Seconds of audio per split, from the dataset's index.json."""
    licence: str = "unknown"
    val_metrics: dict[str, float] = field(default_factory=dict)
    val_metrics_from: str = ""
    """metrics.jsonl, the checkpoint's manifest, or '' (no evaluation at that step)."""
    telucodec_version: str = ""
    exported: str = ""
    notes: list[str] = field(default_factory=list)
    """What could not be read (an unreachable dataset, ...)."""


@dataclass
class Exported:
    out_dir: str
    trained: TrainedCodec
    provenance: Provenance


def export_model(source: str, out_dir: str, force: bool = False) -> Exported:
    """Write the export of a checkpoint (a run dir: its best, else latest) to out_dir."""
    if Path(out_dir).is_file():
        raise ExportError(f"{out_dir} is a file; give a folder to write the model to")
    out = open_store(out_dir)
    existing = [o.key for o in out.list("")]
    if existing and not force:
        raise ExportError(f"{out_dir} is not empty ({len(existing)} files): choose a new folder, or "
                          "overwrite with --force")
    ref = resolve_checkpoint(source)
    trained = from_checkpoint(ref, f"{ref.run_url}/checkpoints/step_{ref.step:08d}")
    train_config = ref.checkpoints.load(ref.step, "train")["config"]
    prov = provenance(ref, train_config, trained.fingerprint)
    state = {k: v.detach().cpu().contiguous() for k, v in trained.codec.state_dict().items()}
    from safetensors.torch import save

    out.put("model.safetensors", save(state, metadata={"format": FORMAT, "fingerprint": trained.fingerprint}))
    out.put_text("provenance.json", json.dumps(asdict(prov), indent=1, ensure_ascii=False))
    out.put_text("README.md", model_card(prov, trained.cfg))
    out.put_text("config.json", json.dumps({"format": FORMAT, "version": VERSION, "model": train_config["model"],
                                            "fingerprint": trained.fingerprint}, indent=1))
    return Exported(out_dir, replace(trained, source=out_dir), prov)


def provenance(ref: CheckpointRef, train_config: dict, fingerprint: str) -> Provenance:
    """Run, step, dataset and val metrics of a checkpoint; what cannot be read becomes a note."""
    from pipeline.storage.shards import package_version

    run_cfg, data_url = train_config.get("run", {}), train_config.get("data", {}).get("url", "")
    run_url = open_store(ref.run_url).url  # absolute, so the card still says where from elsewhere
    prov = Provenance(run=run_cfg.get("name") or run_url.rstrip("/").rsplit("/", 1)[-1],
                      run_url=run_url, step=ref.step, chosen_as=ref.chosen_as, fingerprint=fingerprint,
                      dataset_url=data_url, telucodec_version=package_version(),
                      exported=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    add_dataset_facts(prov)
    add_val_metrics(prov, ref)
    return prov


def add_dataset_facts(prov: Provenance) -> None:
    """index.json's sha256, hours per split and licence, when the dataset can still be read."""
    from pipeline.storage.shards import index_sha256, load_index

    if not prov.dataset_url:
        prov.notes.append("the training config names no dataset")
        return
    try:
        store = open_store(prov.dataset_url)
        index = load_index(store)
        prov.dataset_index_sha256 = index_sha256(store)
    except Exception as e:  # provenance is best effort: an unreadable dataset is a note, not a failure
        reason = str(e) if isinstance(e, TelucodecError) else environment_problem(e)
        if reason is None:
            raise
        prov.notes.append(f"dataset not readable: {reason}")
        return
    prov.dataset_seconds = {split: round(t["seconds"], 1) for split, t in index.splits.items()}
    prov.licence = find_licence(index.lineage) or find_licence(index.config) or "unknown"


def find_licence(data) -> str | None:
    """The first 'license' or 'licence' string anywhere in nested dicts and lists (a dataset's
    lineage carries its sources' and a reshard's source's)."""
    if isinstance(data, dict):
        for key in ("license", "licence"):
            if isinstance(data.get(key), str) and data[key].strip():
                return data[key].strip()
        data = list(data.values())
    if isinstance(data, list):
        return next((found for item in data if (found := find_licence(item))), None)
    return None


def add_val_metrics(prov: Provenance, ref: CheckpointRef) -> None:
    """Val metrics logged at the checkpoint's step: metrics.jsonl (the last record wins, a resumed
    run may log a step twice), else the checkpoint manifest's copy."""
    from pipeline.runs.rundir import RunDir

    try:
        records = RunDir(ref.run_url).metrics.read()
    except (TelucodecError, OSError, ValueError):
        records = []
    metrics: dict[str, float] = {}
    for record in records:
        if record.get("step") == ref.step:
            metrics.update({k: v for k, v in record.items() if k.startswith("val/")})
    source = "metrics.jsonl"
    if not metrics:
        meta = (ref.checkpoints.manifest(ref.step) or {}).get("meta", {})
        metrics, source = {k: v for k, v in meta.items() if k.startswith("val/")}, "checkpoint manifest"
    prov.val_metrics, prov.val_metrics_from = metrics, source if metrics else ""


_CARD_METRICS = (("val/snr", "SNR (dB)"), ("val/si_sdr", "SI-SDR (dB)"), ("val/mel_distance", "mel distance"),
                 ("val/pesq", "PESQ-WB"), ("val/stoi", "STOI"), ("val/range_ratio", "output/input range"))


def model_card(prov: Provenance, cfg: ModelConfig) -> str:
    """README.md of an export: what the model is, what it was trained on, what it costs in bits and
    what it measured, from provenance only (nothing here is guessed)."""
    hours = ", ".join(f"{split} {duration(s)}" for split, s in prov.dataset_seconds.items()) or "unknown"
    lines = [f"# telucodec model: {prov.run}, step {prov.step}", "",
             f"A Telugu neural speech codec at {cfg.sample_rate} Hz: {cfg.frame_rate:g} code frames/s, up to "
             f"{cfg.n_codebooks} codebooks of {cfg.codebook_size} entries ({cfg.codebook_bits} bits per code).", "",
             f"- fingerprint: `{prov.fingerprint[:16]}` (sha256 `{prov.fingerprint}` of weights and config; "
             ".tcq files made with this model carry the short form)",
             f"- from: `{prov.run_url}` step {prov.step} ({prov.chosen_as} checkpoint), exported {prov.exported} "
             f"with telucodec {prov.telucodec_version}",
             "", "## Training data", "",
             f"- dataset: `{prov.dataset_url or 'unknown'}`",
             f"- index.json sha256: `{prov.dataset_index_sha256 or 'unknown'}`",
             f"- audio: {hours}", f"- licence of the data: {prov.licence}",
             "", "## Bitrates", "", "| codebooks | kbps |", "|---:|---:|",
             *(f"| {n} | {cfg.bitrate(n) / 1000:.2f} |" for n in range(1, cfg.n_codebooks + 1)),
             "", "Plus a 42-byte header per .tcq file.", "", "## Measured quality", ""]
    if prov.val_metrics:
        lines += [f"Validation metrics at step {prov.step} (from {prov.val_metrics_from}, all {cfg.n_codebooks} "
                  "codebooks):", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {label} | {prov.val_metrics[key]:.3f} |" for key, label in _CARD_METRICS
                  if isinstance(prov.val_metrics.get(key), (int, float))]
    else:
        lines.append(f"No validation metrics were logged at step {prov.step}.")
    lines += ["", "## Use", "", "```bash", "telucodec encode speech.flac speech.tcq --model THIS_FOLDER --codebooks "
              f"{cfg.n_codebooks}", "telucodec decode speech.tcq speech.wav --model THIS_FOLDER", "```"]
    lines += ["", "## Notes", "", *(f"- {n}" for n in prov.notes)] if prov.notes else []
    return "\n".join(lines) + "\n"


def duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 360 else f"{seconds:.0f} s"


def load_export(model_dir: str) -> TrainedCodec:
    """The codec of an export folder, checked against its fingerprint (weights and config.json must
    be the ones exported together)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    store = open_store(model_dir)
    try:
        config = json.loads(store.get_text("config.json"))
        weights = store.get("model.safetensors")
    except StoreError:
        raise ExportError(f"{model_dir}: not an exported model (needs config.json and model.safetensors; "
                          "make one with `telucodec export RUN DIR`)") from None
    except ValueError as e:
        raise ExportError(f"{model_dir}/config.json is not JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT or not isinstance(config.get("model"), dict):
        raise ExportError(f"{model_dir}/config.json is not a telucodec model config")
    try:
        state = load(weights)
        model_cfg = from_dict(ModelConfig, config["model"], "model.")
    except (SafetensorError, ConfigError) as e:
        raise ExportError(f"{model_dir}: cannot load ({e})") from None
    fingerprint = model_fingerprint(state, config["model"])
    if fingerprint != config.get("fingerprint"):
        raise ExportError(f"{model_dir}: model.safetensors and config.json are not the pair that was exported "
                          f"(fingerprint {fingerprint[:16]}, config.json says {str(config.get('fingerprint'))[:16]})")
    return TrainedCodec(codec_from_state(model_cfg, state, model_dir), fingerprint, model_dir, exported_step(store))


def exported_step(store) -> int | None:
    try:
        step = json.loads(store.get_text("provenance.json")).get("step")
    except (StoreError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None
