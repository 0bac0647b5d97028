"""The telucodec configuration: nested frozen dataclasses, YAML layering and dotted overrides.

    cfg = load_config(["configs/base.yaml", "configs/tiny.yaml"], ["prep.sample_rate=24000"])

Files layer left to right, then `key.sub=value` overrides. Unknown keys and values of the wrong type
raise `ConfigError` naming the full dotted key. Each section is one dataclass; the string under a
field is its documentation (shown by `telucodec config show --docs`).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the dotted key."""


@dataclass(frozen=True)
class DataConfig:
    url: str = ""
    """Dataset URL (a folder, file:// or s3://bucket/prefix) holding shards and index.json."""


@dataclass(frozen=True)
class PrepConfig:
    sample_rate: int = 16000
    """Output sample rate in Hz; every source is resampled to it with soxr."""
    max_seconds: float = 10.0
    """Longest segment; longer recordings are cut into equal parts no longer than this."""
    min_seconds: float = 1.0
    """Segments shorter than this are dropped."""
    trim_silence: bool = True
    """Trim leading and trailing silence before segmenting."""
    silence_db: float = -40.0
    """Frames quieter than this (dB relative to the file's peak) count as silence when trimming."""
    loudness_db: typing.Optional[float] = None
    """If set, scale each file to this RMS level in dBFS before clipping (off by default)."""
    val_fraction: float = 0.05
    """Share of speakers held out for the val split."""
    test_fraction: float = 0.05
    """Share of speakers held out for the test split."""
    shard_max_samples: int = 1000
    """A shard is closed once it holds this many samples."""
    shard_max_mb: float = 256.0
    """A shard is closed once it holds this many megabytes (10^6 bytes)."""
    workers: int = 0
    """Decode/encode processes; 0 means one per CPU core."""

    def __post_init__(self):
        _check(self.sample_rate >= 1000, "prep.sample_rate", "must be at least 1000 Hz")
        _check(0 < self.min_seconds <= self.max_seconds, "prep.min_seconds",
               "must be > 0 and <= prep.max_seconds")
        _check(0 <= self.val_fraction and 0 <= self.test_fraction
               and self.val_fraction + self.test_fraction < 1, "prep.val_fraction",
               "val and test fractions must be >= 0 and sum to less than 1")
        _check(self.shard_max_samples >= 1, "prep.shard_max_samples", "must be >= 1")
        _check(self.shard_max_mb > 0, "prep.shard_max_mb", "must be > 0")
        _check(self.workers >= 0, "prep.workers", "must be >= 0")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    """Where the training data lives."""
    prep: PrepConfig = field(default_factory=PrepConfig)
    """How raw audio becomes shards."""


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def load_config(files: typing.Sequence[str | Path] = (), overrides: typing.Sequence[str] = ()) -> Config:
    """Layer YAML files left to right, then apply `dotted.key=value` overrides."""
    merged: dict = {}
    for path in files:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        _deep_merge(merged, data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        node = merged
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {part} is a value, not a section")
        node[leaf] = yaml.safe_load(raw) if raw.strip() else ""
    return from_dict(Config, merged)


def _deep_merge(into: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _deep_merge(into[k], v)
        else:
            into[k] = v


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from plain data, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"{prefix}{key}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(hints[k], v, f"{prefix}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - all fields have defaults
        raise ConfigError(f"{prefix or 'config'}: {e}") from None


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, key)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (inner, *_) = typing.get_args(hint) or (Any,)
        return tuple(_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a field type this loader does not know is a programming error
        raise TypeError(f"{key}: unsupported config type {hint}")
    raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r}")


def to_dict(cfg: Any) -> dict:
    """The config as plain data (what goes to YAML, W&B and checkpoints)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def to_yaml(cfg: Any, docs: bool = False) -> str:
    """The resolved config as YAML; with `docs`, each field's documentation as a comment above it."""
    if not docs:
        return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)
    lines: list[str] = []
    _yaml_with_docs(cfg, 0, lines)
    return "\n".join(lines) + "\n"


def _yaml_with_docs(obj: Any, indent: int, lines: list[str]) -> None:
    pad = "  " * indent
    docs = field_docs(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        for doc_line in textwrap.wrap(docs.get(f.name, ""), 96 - len(pad)):
            lines.append(f"{pad}# {doc_line}")
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:")
            _yaml_with_docs(value, indent + 1, lines)
        else:
            dumped = yaml.safe_dump({f.name: to_dict_value(value)}, allow_unicode=True,
                                    default_flow_style=True, width=10_000).strip()
            lines.append(f"{pad}{dumped[1:-1] if dumped.startswith('{') else dumped}")


def to_dict_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the string literal written under it in the class body."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs
