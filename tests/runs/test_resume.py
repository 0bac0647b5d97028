"""Resume is explicit: a changed config is accepted and reported, refused in one line, or forced.

One real two-step run (configs/tiny.yaml, shrunk further, in this process) is copied into each test.
"""

import dataclasses
import shutil
import typing

import pytest

from audio_fixtures import make_dataset
from pipeline.runs.checkpoints import Checkpoints
from pipeline.config import Config, load_config, to_dict
from pipeline.runs.resume import RESUME_RULES, ResumeError, check_resume, resume_rule
from pipeline.runs.rundir import RunDir
from pipeline.training.loop import train
from pipeline.training.step import lr_factor
from run_fixtures import TINY_MEL, TINY_RUN

SMALL = [*TINY_RUN, *TINY_MEL, "train.steps=2", "train.workers=0", "train.lr=0.003", "tracking.enabled=false"]


def leaf_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for name, hint in typing.get_type_hints(cls).items():
        keys += leaf_keys(hint, f"{prefix}{name}.") if dataclasses.is_dataclass(hint) else [prefix + name]
    return keys


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(dataset url, run dir) of a finished two-step run."""
    data = str(tmp_path_factory.mktemp("ds"))
    make_dataset(data, [6, 6], sr=16000, seconds=0.3)
    run = tmp_path_factory.mktemp("trained") / "run"
    assert train(load_config(["configs/tiny.yaml"], [f"data.url={data}", f"run.dir={run}", *SMALL])).step == 2
    return data, run


@pytest.fixture
def run_of(trained, tmp_path):
    """A copy of the trained run in this test's tmp_path, and its config with more overrides."""
    data, trained_run = trained
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)

    def config(*more):
        return load_config(["configs/tiny.yaml"], [f"data.url={data}", f"run.dir={run}", *SMALL, *more])
    return run, config


def test_every_config_field_has_a_resume_rule_and_every_rule_a_field():
    keys = leaf_keys(Config)
    assert [k for k in keys if resume_rule(k) is None] == []
    assert [r for r in RESUME_RULES if not any(k == r or k.startswith(r + ".") for k in keys)] == []


def test_a_harmless_change_is_accepted_reported_and_trained_on(run_of):
    run, config = run_of
    cfg = config("train.steps=4", "train.checkpoint_every=3")
    lines = check_resume(cfg, "auto")
    assert "changed on resume: train.steps 2 -> 4" in lines
    assert "changed on resume: train.checkpoint_every 100 -> 3" in lines
    assert train(cfg).step == 4
    assert check_resume(cfg, "auto") == []  # the new checkpoint records the new config


def test_a_changed_lr_is_refused_in_one_line_naming_it_and_the_ways_on(run_of):
    run, config = run_of
    with pytest.raises(ResumeError) as e:
        check_resume(config("train.lr=0.5", "train.steps=4"), "auto")
    message = str(e.value)
    assert "\n" not in message
    assert "train.lr 0.003 -> 0.5" in message and "train.steps" not in message  # harmless: not named
    assert "new run.dir" in message and "--resume force" in message


def test_a_forced_lr_is_what_the_optimizer_uses_and_what_the_checkpoint_records(run_of):
    run, config = run_of
    cfg = config("train.lr=0.5", "train.steps=4")
    assert "changed on resume: train.lr 0.003 -> 0.5 (forced)" in check_resume(cfg, "force")
    assert train(cfg).step == 4
    lrs = {r["step"]: r["lr"] for r in RunDir(str(run)).metrics.read() if "lr" in r}
    assert lrs[3] == pytest.approx(0.5 * lr_factor(cfg.train, 2)) and lrs[4] == pytest.approx(0.5 * lr_factor(cfg.train, 3))
    ckpts = Checkpoints(str(run))
    assert ckpts.load(ckpts.latest_step(), "train")["config"]["train"]["lr"] == 0.5
    assert ckpts.load(ckpts.latest_step(), "optim")["opt_g"]["param_groups"][0]["lr"] == pytest.approx(
        0.5 * lr_factor(cfg.train, 3))


def test_a_model_change_is_refused_even_with_force(run_of):
    run, config = run_of
    for mode, named in (("auto", ["model.channels 2 -> 4", "train.lr 0.003 -> 0.5"]),
                        ("force", ["model.channels 2 -> 4"])):
        with pytest.raises(ResumeError) as e:
            check_resume(config("model.channels=4", "train.lr=0.5"), mode)
        message = str(e.value)
        assert "\n" not in message and all(n in message for n in named)
        assert "new run.dir" in message and "--resume force" not in message


def test_never_refuses_an_existing_run_and_a_new_run_dir_starts_in_every_mode(run_of, tmp_path):
    run, config = run_of
    with pytest.raises(ResumeError, match="already holds a run at step 2"):
        check_resume(config(), "never")
    fresh = config("model.channels=4", f"run.dir={tmp_path / 'fresh'}")
    assert [check_resume(fresh, mode) for mode in ("auto", "never", "force")] == [[], [], []]


def test_a_run_on_s3_is_checked_against_its_checkpoint(s3_bucket):
    run = f"{s3_bucket}/runs/r1"
    saved = load_config(["configs/tiny.yaml"], [f"run.dir={run}"])
    Checkpoints(run).save(7, {"train": {"step": 7, "config": to_dict(saved)}})
    assert check_resume(dataclasses.replace(saved, train=dataclasses.replace(saved.train, steps=900)), "auto") \
        == ["changed on resume: train.steps 500 -> 900"]
    with pytest.raises(ResumeError, match=r"model\.n_codebooks 8 -> 4"):
        check_resume(dataclasses.replace(saved, model=dataclasses.replace(saved.model, n_codebooks=4)), "force")


def test_a_checkpoint_from_before_block_reads_resumes_only_as_it_read_or_forced():
    """A saved config without data.block_samples read a sample at a time: resuming it with blocks
    is another deal from there on, so it is a forceable change, not a silent one."""
    from pipeline.runs.resume import FORCEABLE, config_changes

    saved = to_dict(Config())
    del saved["data"]["block_samples"]
    (change,) = config_changes(saved, Config())
    assert (change.key, change.old, change.new, change.rule) == ("data.block_samples", 1, 32, FORCEABLE)
    one = dataclasses.replace(Config(), data=dataclasses.replace(Config().data, block_samples=1))
    assert config_changes(saved, one) == []
