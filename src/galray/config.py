"""Typed configuration: nested dataclasses built from YAML and ``--set key=value`` overrides.

Each component owns a ``@dataclass`` config whose ``__post_init__`` validates its own fields and
raises :class:`~galray.errors.ConfigError` naming the field.  A job config nests them.  At the
Ray/Tune boundary configs travel as plain dicts (:func:`to_dict`) and are rebuilt with
:func:`from_dict` on the first line of the worker function.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from galray.errors import ConfigError

T = TypeVar("T")


def require(ok: bool, field: str, message: str) -> None:
    """Raise ConfigError('field: message') unless ``ok``."""
    if not ok:
        raise ConfigError(f"{field}: {message}")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, field: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Literal:
        return _choice(value, args, field)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, field)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{field}: bad value {value!r}")
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{field}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=f"{field}.")
    if origin in (list, tuple):
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
            raise ConfigError(f"{field}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{field}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{field}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{field}: expected true/false, got {value!r}")
    if tp in (int, float):
        return _number(value, tp, field)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{field}: expected a string, got {value!r}")
    return value


def _number(value: Any, tp: type, field: str) -> int | float:
    """``value`` as an ``int`` (whole numbers only) or a ``float``; booleans are refused."""
    expected = "an integer" if tp is int else "a number"
    if not isinstance(value, bool):
        if isinstance(value, str):
            try:
                return tp(value)
            except ValueError:
                pass
        elif tp is float and isinstance(value, int | float):
            return float(value)
        elif tp is int and isinstance(value, int):
            return value
        elif tp is int and isinstance(value, float) and value.is_integer():
            return int(value)
    raise ConfigError(f"{field}: expected {expected}, got {value!r}")


def _choice(value: Any, choices: tuple, field: str) -> Any:
    """``value`` if it is one of ``choices``; YAML's true/false also match "true"/"false"."""
    if isinstance(value, bool) and str(value).lower() in choices:
        return str(value).lower()
    if value in choices and not isinstance(value, bool):
        return value
    known = ", ".join(str(c) for c in choices)
    raise ConfigError(f"{field}: must be one of {known}, got {value!r}")


def check_choices(obj: Any, prefix: str = "") -> None:
    """Validate (and normalise) every ``Literal``-typed field of dataclass ``obj`` -- for configs
    built directly rather than through :func:`from_dict`."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        tp = hints.get(f.name)
        if typing.get_origin(tp) is typing.Literal:
            value = _choice(getattr(obj, f.name), typing.get_args(tp), f"{prefix}{f.name}")
            setattr(obj, f.name, value)


def from_dict(cls: type[T], data: dict[str, Any], *, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) dict; unknown keys and bad types name the field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{prefix}{unknown[0]}: unknown field (known: {', '.join(sorted(fields))})"
        )
    kwargs = {name: _coerce(value, hints[name], f"{prefix}{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        if prefix and not str(exc).startswith(prefix):
            raise ConfigError(f"{prefix}{exc}") from None
        raise


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass config as a plain, YAML/JSON-serializable dict."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple | list):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return conv(obj)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (value parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{key}: cannot parse value {raw!r} ({exc})") from None
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{key}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def load_config(cls: type[T], path: str | os.PathLike | None, overrides: list[str] = ()) -> T:
    """Load ``cls`` from a YAML file with ``--set`` overrides applied; errors name the field."""
    data = load_yaml(path) if path is not None else {}
    apply_overrides(data, list(overrides))
    return from_dict(cls, data)


def resolve_config(
    cls: type[T],
    config: str | os.PathLike | Mapping[str, Any] | Any | None,
    overrides: Sequence[str] = (),
    fields: Mapping[str, Any] | None = None,
) -> T:
    """``cls`` from a YAML path, a dict of its fields (sections as dicts) or a ``cls`` object
    (never changed), with ``fields`` merged in (a section given as a dict keeps its other
    fields) and then ``key.sub=value`` ``overrides`` (``--set``) applied; errors name the field."""
    if isinstance(config, cls) and not overrides and not fields:
        return config
    if isinstance(config, str | os.PathLike):
        data = load_yaml(config)
    elif isinstance(config, cls):
        data = to_dict(config)
    elif isinstance(config, Mapping):
        data = copy.deepcopy(dict(config))
    elif config is None:
        data = {}
    else:
        raise ConfigError(
            f"config: expected a YAML path, a dict or a {cls.__name__}, got {type(config).__name__}"
        )
    _merge(data, fields or {})
    apply_overrides(data, list(overrides))
    return from_dict(cls, data)


def _merge(data: dict[str, Any], fields: Mapping[str, Any]) -> None:
    """``fields`` into ``data``, in place: mappings into sections, anything else replaced."""
    for key, value in fields.items():
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = to_dict(value)
        if isinstance(value, Mapping):
            if not isinstance(data.get(key), dict):
                data[key] = {}
            _merge(data[key], value)
        else:
            data[key] = copy.deepcopy(value)
