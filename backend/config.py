"""Typed configuration: one dataclass per part, nested into a task config, loaded from JSON or TOML.

Unknown keys, wrong types and non-finite numbers are refused with the key's dotted path, so a typo in a
config file is an error rather than a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import tomllib

from backend.errors import ConfigError
from backend.nesting import merge_trees

T = TypeVar("T")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a table of settings, got {type(value).__name__}")
        return from_dict(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{path} must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} must be a whole number, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:  # an integer past float's range, e.g. 10**400
            raise ConfigError(f"{path} must be a finite number, got an integer of {len(str(value))} digits") \
                from None
        if not math.isfinite(number):
            raise ConfigError(f"{path} must be a finite number, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be text, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported setting type {tp!r}")  # pragma: no cover - a schema bug


def from_dict(cls: type[T], data: dict, path: str = "") -> T:
    """Build dataclass `cls` from nested dicts, starting from its defaults."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in {path}" if path else ""
        raise ConfigError(f"unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}{where}",
                          f"known: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], f"{path}.{k}" if path else k) for k, v in data.items()}
    return cls(**kwargs)


def merge(base: T, overrides: dict) -> T:
    """A copy of dataclass `base` with nested `overrides` applied (validated like a file)."""
    return from_dict(type(base), merge_trees(dataclasses.asdict(base), overrides))


def load_file(path: str | Path) -> dict:
    """Read a JSON or TOML config file into nested dicts."""
    typed, path = str(path), Path(path)  # errors name the path as the user typed it
    if not path.is_file():
        raise ConfigError(f"config file {typed!r} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            return tomllib.loads(text)
        # Python's json accepts NaN and Infinity; the coercion above refuses them with the key's name
        return json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot parse config file {typed!r}: {exc}") from exc
