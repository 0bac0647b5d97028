"""The command line's grammar and manners: configs by name from any folder, one grammar for every
command, honest exit codes, --version, a closed pipe, and an explicit resume.

    .venv/bin/pytest tests/cli/test_cli.py -q
"""

import json
import subprocess
import sys
from importlib.metadata import version

import pytest

from audio_fixtures import make_dataset, write_manifest_corpus
from jobs.cli import main
from pipeline.config import CONFIG_DIR, load_config, to_dict
from pipeline.storage.shards import load_index
from run_fixtures import OFF_CLOUD, QUICK_EVAL

TELUCODEC = [sys.executable, "-m", "jobs.cli"]


def test_version_is_the_installed_package_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"telucodec {version('telucodec')}"


def test_shipped_configs_by_name_from_another_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name in ("tiny", "gpu"):
        assert main(["config", "show", name, "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown == to_dict(load_config([CONFIG_DIR / "base.yaml", CONFIG_DIR / f"{name}.yaml"]))
    assert main(["config", "show", "configs/tiny.yaml", "train.lr=0.5", "--json"]) == 0  # the README's form
    assert json.loads(capsys.readouterr().out)["train"]["lr"] == 0.5


def test_an_unknown_config_or_override_is_one_line_naming_it(capsys):
    assert main(["config", "show", "tinny"]) == 2
    assert capsys.readouterr().err.strip() == ("telucodec: error: tinny: expected a config (a .yaml file, or one of: "
                                               "base, gpu, tiny, v1) or a key=value override")
    assert main(["config", "show", "tiny", "lr=3"]) == 2
    assert "lr=3: not a key=value override" in capsys.readouterr().err
    assert main(["config", "show", "train.lrr=3"]) == 2
    assert "train.lrr" in capsys.readouterr().err


def test_prep_takes_configs_and_overrides_positionally_as_the_readme_shows(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    write_manifest_corpus(corpus, n_files=4, n_speakers=2)
    out = tmp_path / "data"
    assert main(["prep", str(corpus / "manifest.tsv"), "--out", str(out), "configs/base.yaml",
                 "prep.workers=1", "prep.sample_rate=8000"]) == 0
    assert load_index(str(out)).sample_rate == 8000
    assert main(["prep", "prep.workers=1", "--out", str(tmp_path / "none")]) == 2
    assert "no source" in capsys.readouterr().err


def test_missing_paths_exit_non_zero_in_one_line(tmp_path, capsys):
    for argv in (["runs", str(tmp_path / "nope")], ["cost", str(tmp_path / "nope")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("telucodec: error: ") and len(err.strip().splitlines()) == 1
    assert main(["runs", str(tmp_path)]) == 0  # an existing folder with no runs is an answer
    assert "no runs under" in capsys.readouterr().out


def test_a_closed_pipe_ends_quietly():
    """`telucodec config show --docs | true`: the reader is gone before the first write."""
    proc = subprocess.Popen([*TELUCODEC, "config", "show", "--docs"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 141
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[str, list[str]]:
    """A 2-step in-process run of the tiny model, and the words that made it."""
    root = tmp_path_factory.mktemp("cli-run")
    make_dataset(str(root / "data"), [8], sr=16000, seconds=0.3)
    words = ["tiny", f"data.url={root / 'data'}", f"run.dir={root / 'run'}", "train.workers=0", "train.steps=2",
             "train.batch_size=2", "train.segment_seconds=0.2", "train.eval_every=1000", *QUICK_EVAL,
             "tracking.enabled=false", *OFF_CLOUD]
    assert main(["train", *words]) == 0
    return str(root / "run"), words


def test_train_on_a_run_with_another_model_is_refused_in_one_line(trained_run, capsys):
    _, words = trained_run
    capsys.readouterr()
    for mode in ("auto", "force"):
        assert main(["train", "--resume", mode, *words, "model.channels=4"]) == 2
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err and len(captured.err.strip().splitlines()) == 1, captured.err
        assert "model.channels" in captured.err and "new run.dir" in captured.err


def test_train_names_the_harmless_changes_it_accepts_on_resume(trained_run, capsys):
    run, words = trained_run
    capsys.readouterr()
    assert main(["train", *words, "train.steps=3"]) == 0
    out = capsys.readouterr().out
    assert "changed on resume: train.steps 2 -> 3" in out and "finished at step 3" in out


@pytest.mark.parametrize("words, says", [
    (["demo", "--minutes", "-1"], "minutes must be > 0"),
    (["cost", "TYPO"], "TYPO: no such folder"),
    (["cost", "FILE"], "FILE is a file: give a run folder"),
    (["reshard", "a", "b", "--ranks", "0"], "--ranks must be >= 1 (got 0)"),
    (["reshard", "a", "b", "--spill-gb", "0"], "--spill-gb must be > 0 (got 0.0)"),
    (["jobs", "ls", "--address", "127.0.0.1:9"], "its port 9 reachable"),
])
def test_a_mistake_is_one_line_naming_it_and_leaves_nothing_behind(words, says, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("")
    assert main(words) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]


def test_a_dataset_without_the_eval_split_is_refused_before_training(tmp_path, capsys):
    """The demo's train-only reshard as data.url, eval on its (missing) val split: one line naming
    train.eval_split and train.eval_url and the splits there are, before any step (no run dir)."""
    make_dataset(str(tmp_path / "train-only"), [4], sr=16000, seconds=0.3)
    run = tmp_path / "run"
    assert main(["train", "tiny", f"data.url={tmp_path / 'train-only'}", f"run.dir={run}", "train.workers=0",
                 *OFF_CLOUD]) == 2
    err = capsys.readouterr().err.strip()
    assert "no 'val' split to evaluate on (it has: train)" in err and "train.eval_url" in err
    assert len(err.splitlines()) == 1 and not run.exists()
