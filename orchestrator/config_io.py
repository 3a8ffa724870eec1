"""Run configs in and out: a YAML preset plus `section.key=value` overrides -> a validated `RunConfig`.

Every value is checked against its dataclass field's type here, and the dataclasses check their own ranges
when they are built, so a bad config fails at load time with a message naming the key, before any Ray work.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Iterable
from pathlib import Path

import yaml

from model.config import ConfigError, ModelConfig
from orchestrator.config import RunConfig, TrackingConfig, TrainConfig
from pipelines.config import DataConfig

SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "tracking": TrackingConfig}


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> RunConfig:
    """The YAML file at `path` (None: all defaults), then `overrides` such as `train.batch_size=64`.

    A file may start from another: `base: paper.yaml` (relative to the file) is read first, and the file's
    own keys replace the base's, key by key within each section.
    """
    return _resolve({} if path is None else read_preset(Path(path)), overrides)


def read_preset(path: Path, _seen: tuple[Path, ...] = ()) -> dict:
    """The raw sections of the preset at `path`, its `base:` chain merged in."""
    raw = read_yaml(path, "config file")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (model:, data:, train:, tracking:)")
    base = raw.pop("base", None)
    if base is None:
        return raw
    base_path = (path.parent / str(base)).resolve()
    if base_path in _seen:
        raise ConfigError(f"{path}: base: {base} leads back to itself ({' -> '.join(map(str, _seen))})")
    merged = read_preset(base_path, (*_seen, path.resolve()))
    for key, value in raw.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merged[key] | value
        else:
            merged[key] = value
    return merged


def apply_overrides(config: RunConfig, overrides: Iterable[str]) -> RunConfig:
    """`config` with `overrides` applied and checked, as `load_config` applies them to a file."""
    return _resolve(config_to_dict(config), overrides)


def read_yaml(path: str | Path, what: str):
    """The YAML document at `path`; a missing file or bad YAML is an error naming `what` and the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None


def _resolve(raw: dict, overrides: Iterable[str]) -> RunConfig:
    for override in overrides:
        _apply_override(raw, override)
    config = config_from_dict(raw)
    # Local paths (defaults included) made absolute against the working directory: Ray workers run elsewhere.
    return dataclasses.replace(
        config,
        storage_path=_absolute(config.storage_path),
        model=dataclasses.replace(config.model, pretrained=_absolute(config.model.pretrained)),
        data=dataclasses.replace(
            config.data, manifest=_absolute(config.data.manifest), cache_dir=_absolute(config.data.cache_dir)
        ),
    )


def config_from_dict(d: dict) -> RunConfig:
    """A `RunConfig` from a plain dict shaped like `config_to_dict`'s output; keys left out take defaults."""
    top = _field_types(RunConfig)
    _check_keys(d, top, "top-level")
    kwargs = {}
    for key, value in d.items():
        if key in SECTIONS:
            section = {} if value is None else value
            if not isinstance(section, dict):
                raise ConfigError(f"{key}={value!r} must be a mapping of {key}.KEY: VALUE")
            types_ = _field_types(SECTIONS[key])
            _check_keys(section, types_, key)
            fields = {k: _coerce(f"{key}.{k}", v, types_[k]) for k, v in section.items()}
            kwargs[key] = SECTIONS[key](**fields)
        else:
            kwargs[key] = _coerce(key, value, top[key])
    return RunConfig(**kwargs)


def config_to_dict(config) -> dict:
    """Plain, YAML-safe dict of a config dataclass (derived `init=False` fields left out, tuples as lists)."""
    out = {}
    for f in dataclasses.fields(config):
        if f.init:
            value = getattr(config, f.name)
            if dataclasses.is_dataclass(value):
                value = config_to_dict(value)
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def dump_config(config: RunConfig) -> str:
    """The config as YAML, in field order: `load_config` reads it back to an equal config."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def flatten_config(config: RunConfig) -> dict[str, str]:
    """Dotted keys -> strings (MLflow parameters); each `key=value` is also a valid override."""
    flat = {}
    for key, value in config_to_dict(config).items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, v in items:
            flat[key if sub is None else f"{key}.{sub}"] = v if isinstance(v, str) else json.dumps(v)
    return flat


def _apply_override(raw: dict, override: str) -> None:
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(
            f"override {override!r} is not of the form section.key=value (e.g. train.batch_size=64)"
        )
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {override!r}: the value is not valid YAML: {e}") from None
    section, dot, name = key.partition(".")
    if not dot:
        if key in SECTIONS:
            raise ConfigError(f"override {override!r}: {key} is a section; set its keys as {key}.KEY=VALUE")
        raw[key] = value
    elif section in SECTIONS and "." not in name:
        if raw.get(section) is None:
            raw[section] = {}
        if isinstance(raw[section], dict):  # otherwise config_from_dict names the bad section
            raw[section][name] = value
    else:
        allowed = _field_types(SECTIONS[section]) if section in SECTIONS else _field_types(RunConfig)
        where = section if section in SECTIONS else "top-level"
        raise ConfigError(f"unknown key {key!r}; allowed {where} keys: {', '.join(allowed)}")


def _field_types(cls) -> dict[str, typing.Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _check_keys(d: dict, allowed: dict, where: str) -> None:
    for key in d:
        if key not in allowed:
            dotted = key if where == "top-level" else f"{where}.{key}"
            raise ConfigError(f"unknown key {dotted!r}; allowed {where} keys: {', '.join(allowed)}")


def _coerce(key: str, value, tp):
    """`value` as the field type `tp`, or a ConfigError naming the key, the value and the type."""
    try:
        return _convert(value, tp)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} has the wrong type; expected {_type_name(tp)}") from None


def _convert(value, tp):
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):  # X | None
        (inner,) = [a for a in args if a is not type(None)]
        return None if value is None else _convert(value, inner)
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise TypeError
        return tuple(_convert(v, a) for v, a in zip(value, args, strict=True))
    if isinstance(value, bool) or tp is bool:  # bool is an int: keep them apart
        if isinstance(value, bool) and tp is bool:
            return value
    elif tp is int and isinstance(value, int):
        return value
    elif tp is float and isinstance(value, int | float | str):
        return float(value)  # YAML reads 1e-5 (no dot) as a string; a bad string raises ValueError
    elif tp is str and isinstance(value, str | int | float):
        return str(value)
    raise TypeError


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _type_name(tp) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple:
        return f"a list of {len(args)} values ({', '.join(_type_name(a) for a in args)})"
    if args:
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    return _TYPE_NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _absolute(path: str | None) -> str | None:
    """`~` and `$VARS` expanded, then absolute against the working directory; URIs (s3://...) are kept."""
    if not path or "://" in path:
        return path
    return os.path.abspath(os.path.expandvars(os.path.expanduser(path)))
