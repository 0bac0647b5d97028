"""`telucodec export`: an inference-only model folder with the checkpoint's fingerprint, its
provenance and a model card; encode/decode/eval take it with --model and need nothing else.

    .venv/bin/pytest tests/codec/test_export.py -q
"""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audio_fixtures import make_dataset, tone
from jobs.cli import main
from pipeline.runs.checkpoints import Checkpoints
from pipeline.config import Config, DataConfig, RunConfig
from pipeline.codec.export import find_licence, load_export
from pipeline.codec.inference import load_codec, load_trained
from pipeline.runs.checkpoints import resolve_checkpoint
from pipeline.runs.rundir import RunDir
from run_fixtures import TINY_CODEC, make_checkpoint

VAL = {"val/snr": 3.5, "val/si_sdr": 2.25, "val/mel_distance": 1.125, "val/pesq": 1.75, "val/stoi": 0.5}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run with a readable dataset, checkpoints at steps 7 and 9, step 7 marked best and its val
    metrics in metrics.jsonl."""
    root = tmp_path_factory.mktemp("export")
    make_dataset(str(root / "data"), [4], sr=16000, seconds=0.3)
    cfg = Config(model=TINY_CODEC, data=DataConfig(url=str(root / "data")), run=RunConfig(dir=str(root / "run"),
                                                                                          name="te-tiny"))
    for step in (7, 9):
        make_checkpoint(root / "run", step=step, cfg=cfg)
    Checkpoints(str(root / "run")).mark_best(7, "val/pesq", 1.75)
    RunDir(str(root / "run")).metrics.append({"step": 7, **VAL})
    return root / "run"


def test_export_writes_weights_config_provenance_and_a_model_card(run, tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["export", str(run), str(out)]) == 0
    assert "step 7 (best)" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors", "provenance.json"]
    fingerprint = load_trained(checkpoint=f"{run}/checkpoints/step_00000007").fingerprint
    config = json.loads((out / "config.json").read_text())
    assert config["fingerprint"] == fingerprint and config["model"]["codebook_size"] == 16
    prov = json.loads((out / "provenance.json").read_text())
    index_sha = hashlib.sha256((run.parent / "data" / "index.json").read_bytes()).hexdigest()
    assert (prov["run"], prov["step"], prov["chosen_as"], prov["fingerprint"]) == ("te-tiny", 7, "best", fingerprint)
    assert (prov["dataset_url"], prov["dataset_index_sha256"]) == (str(run.parent / "data"), index_sha)
    assert prov["val_metrics"] == VAL and prov["val_metrics_from"] == "metrics.jsonl" and prov["licence"] == "unknown"
    card = (out / "README.md").read_text()
    assert f"`{fingerprint[:16]}`" in card and index_sha in card and "licence of the data: unknown" in card
    assert "| 1 | 0.20 |" in card and "| 4 | 0.80 |" in card  # 50 frames/s x 4 bits per codebook
    assert "| SNR (dB) | 3.500 |" in card and "| PESQ-WB | 1.750 |" in card


def test_a_run_folder_means_one_checkpoint_everywhere(run, tmp_path):
    """Its best (step 7 here, not the latest 9) for load_trained, load_codec, encode's --checkpoint
    and export alike; a run that marked no best means its latest."""
    assert load_trained(checkpoint=str(run)).step == 7 and load_codec(str(run))[2] == 7
    sf.write(tmp_path / "in.wav", tone(0.3, 16000), 16000)
    assert main(["encode", str(tmp_path / "in.wav"), str(tmp_path / "in.tcq"), "--checkpoint", str(run)]) == 0
    assert main(["export", str(run), str(tmp_path / "model")]) == 0
    assert main(["decode", str(tmp_path / "in.tcq"), str(tmp_path / "out.wav"), "--model", str(tmp_path / "model")]) == 0
    no_best = tmp_path / "no-best"
    shutil.copytree(run, no_best)
    (no_best / "checkpoints" / "best.json").unlink()
    assert load_trained(checkpoint=str(no_best)).step == 9 and resolve_checkpoint(str(no_best)).chosen_as == "latest"


def test_a_checkpoints_tcq_decodes_with_its_export_after_the_run_is_gone(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    sf.write(tmp_path / "in.wav", tone(0.8, 22050), 22050)
    assert main(["encode", str(tmp_path / "in.wav"), str(tmp_path / "in.tcq"), "--checkpoint",
                 f"{copy}/checkpoints/step_00000007"]) == 0
    assert main(["decode", str(tmp_path / "in.tcq"), str(tmp_path / "ck.wav"), "--checkpoint",
                 f"{copy}/checkpoints/step_00000007"]) == 0
    assert main(["export", str(copy), str(tmp_path / "model")]) == 0
    shutil.rmtree(copy)  # no checkpoint, optimizer or run dir: the export is enough
    assert main(["decode", str(tmp_path / "in.tcq"), str(tmp_path / "ex.wav"), "--model", str(tmp_path / "model")]) == 0
    from_checkpoint, from_export = (sf.read(tmp_path / n, dtype="float32")[0] for n in ("ck.wav", "ex.wav"))
    assert len(from_export) == int(0.8 * 22050)
    np.testing.assert_array_equal(from_checkpoint, from_export)
    trained = load_export(str(tmp_path / "model"))
    assert trained.step == 7 and not trained.codec.training
    assert main(["encode", str(tmp_path / "in.wav"), str(tmp_path / "again.tcq"), "--model",
                 str(tmp_path / "model")]) == 0
    assert (tmp_path / "again.tcq").read_bytes() == (tmp_path / "in.tcq").read_bytes()


def test_eval_takes_an_export(run, tmp_path, capsys):
    assert main(["export", f"{run}/checkpoints/step_00000009", str(tmp_path / "model")]) == 0
    assert main(["eval", "--model", str(tmp_path / "model"), "--data", str(run.parent / "data"), "--split", "train",
                 "--clips", "1", "--seconds", "0.3", "--out", str(tmp_path / "eval"), "--spectrograms", "0",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert report["step"] == 9 and report["checkpoint"] == str(tmp_path / "model")
    assert report["scores"][0]["name"] == "telucodec-1" and report["scores"][0]["snr"] is not None


def error(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("telucodec: error:") and "\n" not in err
    return err


def test_a_non_empty_folder_is_refused_without_force(run, tmp_path, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "notes.txt").write_text("mine")
    assert "is not empty (1 files)" in error(["export", str(run), str(tmp_path / "model")], capsys)
    assert main(["export", str(run), str(tmp_path / "model"), "--force"]) == 0
    assert (tmp_path / "model" / "notes.txt").read_text() == "mine" and (tmp_path / "model" / "config.json").is_file()


def test_weights_and_config_that_were_not_exported_together_are_refused(run, tmp_path, capsys):
    assert main(["export", str(run), str(tmp_path / "model")]) == 0
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    config["model"]["ema_decay"] = 0.9
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    sf.write(tmp_path / "in.wav", tone(0.2, 16000), 16000)
    err = error(["encode", str(tmp_path / "in.wav"), str(tmp_path / "o.tcq"), "--model", str(tmp_path / "model")],
                capsys)
    assert "not the pair that was exported" in err
    (tmp_path / "model" / "model.safetensors").write_bytes(b"junk")
    assert "cannot load" in error(["encode", str(tmp_path / "in.wav"), str(tmp_path / "o.tcq"), "--model",
                                   str(tmp_path / "model")], capsys)


def test_a_run_without_a_best_or_a_dataset_exports_its_latest_and_says_what_is_missing(tmp_path, capsys):
    make_checkpoint(tmp_path / "run", step=3)
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "model")]) == 0
    captured = capsys.readouterr()
    assert "step 3 (latest)" in captured.out and "names no dataset" in captured.err
    card = (tmp_path / "model" / "README.md").read_text()
    assert "No validation metrics were logged at step 3." in card and "dataset: `unknown`" in card
    assert "no whole checkpoint" in error(["export", str(tmp_path / "none"), str(tmp_path / "m2")], capsys)


def test_the_licence_is_found_anywhere_in_a_datasets_lineage():
    lineage = {"source": "s3://b/te", "source_lineage": {"sources": [{"path": "x"}, {"licence": "CC-BY-4.0"}]}}
    assert find_licence(lineage) == "CC-BY-4.0" and find_licence({"sources": []}) is None
