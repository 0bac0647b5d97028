import pytest

from pipeline.config import Config, ConfigError, field_docs, load_config, to_dict, to_yaml, PrepConfig


def test_defaults_and_layering(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("prep:\n  sample_rate: 24000\n  max_seconds: 8\n")
    b = tmp_path / "b.yaml"
    b.write_text("prep:\n  max_seconds: 6.5\ndata:\n  url: s3://b/x\n")
    cfg = load_config([a, b], ["prep.min_seconds=0.5"])
    assert cfg.prep.sample_rate == 24000          # from a
    assert cfg.prep.max_seconds == 6.5            # b wins over a
    assert cfg.prep.min_seconds == 0.5            # override
    assert cfg.data.url == "s3://b/x"
    assert cfg.prep.val_fraction == PrepConfig().val_fraction  # untouched default


def test_base_yaml_equals_dataclass_defaults():
    assert to_dict(load_config(["configs/base.yaml"])) == to_dict(Config())


@pytest.mark.parametrize("override, message", [
    ("prep.sample_rte=1", "prep.sample_rte: unknown key"),
    ("prep.sample_rate=fast", "prep.sample_rate: expected int"),
    ("prep.trim_silence=3", "prep.trim_silence: expected bool"),
    ("nosuch.key=1", "nosuch: unknown key"),
    ("prep.min_seconds=20", "prep.min_seconds: must be"),
    ("prep", "not of the form"),
])
def test_bad_overrides_name_the_dotted_key(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config([], [override])


def test_yaml_floats_written_as_exponents_are_floats(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("prep:\n  shard_max_mb: 5e2\n")
    assert load_config([f]).prep.shard_max_mb == 500.0


def test_optional_field_accepts_null_and_number():
    assert load_config([], ["prep.loudness_db=-23"]).prep.loudness_db == -23.0
    assert load_config([], ["prep.loudness_db=null"]).prep.loudness_db is None


def test_every_field_is_documented_and_shown():
    for cls in (Config, PrepConfig):
        import dataclasses
        assert set(field_docs(cls)) == {f.name for f in dataclasses.fields(cls)}
    text = to_yaml(Config(), docs=True)
    assert "# Output sample rate in Hz" in text
    assert "sample_rate: 16000" in text


def test_frozen():
    cfg = Config()
    with pytest.raises(Exception):
        cfg.prep.sample_rate = 1


NEGATIVE_IS_VALID = {"data.loudness_db", "prep.silence_db", "prep.loudness_db", "data.workers"}
"""Numeric keys where a negative value means something (dB levels; -1 loader workers = automatic)."""


def numeric_keys():
    import dataclasses
    import typing

    from pipeline.config import Config

    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(typing.get_type_hints(Config)[section.name]):
            hint = typing.get_type_hints(typing.get_type_hints(Config)[section.name])[f.name]
            if hint in (int, float, typing.Optional[int], typing.Optional[float]):
                yield f"{section.name}.{f.name}"


@pytest.mark.parametrize("key", sorted(set(numeric_keys()) - NEGATIVE_IS_VALID))
def test_every_numeric_key_refuses_a_negative_value_naming_itself(key):
    """A sweep over the config: -5 is out of range for every count, interval, rate and weight."""
    with pytest.raises(ConfigError) as refused:
        load_config(["base"], [f"{key}=-5"])
    assert str(refused.value).startswith(f"{key}:"), str(refused.value)


@pytest.mark.parametrize("override, key", [("train.lr=0", "train.lr"), ("train.betas=[2, 3]", "train.betas"),
                                           ("train.betas=[0.9]", "train.betas"), ("train.eval_every=0", "train.eval_every"),
                                           ("train.min_lr_ratio=2", "train.min_lr_ratio"),
                                           ("train.rollback_lr_factor=0", "train.rollback_lr_factor")])
def test_out_of_range_training_settings_name_their_own_key(override, key):
    with pytest.raises(ConfigError, match=f"^{key}:"):
        load_config(["base", "tiny"], [override])


def test_a_config_written_before_preempt_endpoints_still_loads():
    """Checkpoints and YAML files name preempt.aws_endpoint / gcp_endpoint; they now live under
    preempt.endpoints, and the old names still load (checkpoints of older runs resume and export)."""
    from pipeline.config import from_dict

    old = to_dict(load_config(["base", "tiny"]))
    old["preempt"] = {k: v for k, v in old["preempt"].items() if k != "endpoints"}
    old["preempt"].update(aws_endpoint="http://127.0.0.1:9", gcp_endpoint="")
    cfg = from_dict(Config, old)
    assert cfg.preempt.endpoints == {"aws": "http://127.0.0.1:9", "gcp": "", "azure": "auto"}
    assert load_config(["base"], ["preempt.gcp_endpoint=''"]).preempt.endpoints["gcp"] == ""
