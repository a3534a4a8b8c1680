"""The sweep config of ``galray tune <product>``: a base training config, a search space over its
fields, and how Ray Tune runs the trials.  Validated once, before any Ray work; errors name the
field (``search.net.widht: unknown field``).

YAML form::

    base: emulator-smoke.yaml      # optional: a training config to start from (path relative
                                   # to this file)
    train:                         # training-config fields, merged over ``base``
      epochs: 4                    # the budget of a trial that is never stopped early
    search:                        # dotted training-config field -> one distribution
      optim.lr_generator: {loguniform: [1.0e-4, 1.0e-3]}
      optim.batch_size: {choice: [128, 256, 512]}
      net.depth: {randint: [2, 4]}             # inclusive bounds
      net:                                     # nested keys work too
        width: {choice: [64, 128, 256]}
    tune:                          # :class:`TuneSettings`
      num_samples: 8
      max_concurrent_trials: 2

Distributions: ``choice: [a, b, ...]`` and ``grid: [a, b, ...]`` (every value, times
``num_samples``) for any field; ``uniform`` / ``loguniform: [low, high]`` for float fields;
``randint`` / ``lograndint: [low, high]`` (both inclusive) for integer fields.  Each candidate
value (every choice, both bounds) is checked against the training config's own validation.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from galray.config import (
    apply_overrides,
    check_choices,
    from_dict,
    load_yaml,
    require,
    to_dict,
)
from galray.errors import ConfigError

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint", "lograndint")
_FLOAT_ONLY = ("uniform", "loguniform")
_INT_ONLY = ("randint", "lograndint")
SWEEP_KEYS = ("base", "train", "search", "tune")


@dataclass
class TuneSettings:
    """How the sweep runs (the ``tune:`` section).

    metric, mode: the per-epoch validation metric that ranks trials and drives early stopping
    (default: the trainer's, e.g. ``val_swd``, minimised).  num_samples: trials drawn from the
    search space (times every ``grid`` combination).  max_concurrent_trials: trials running at
    once.  scheduler: ``asha`` (asynchronous successive halving: stops poor trials at rungs of
    ``grace_period * reduction_factor**k`` epochs) or ``fifo`` (every trial runs all epochs).
    grace_period: epochs every trial runs before ASHA may stop it.  reduction_factor: ASHA's
    rung spacing; about one trial in ``reduction_factor`` passes each rung.  trial_cpus: CPU
    share of each trial's own process, which only drives its Ray Train workers (their shares are
    ``train.scaling``).  seed: draws of the search space.  name: experiment
    directory under ``storage_path`` (default ``tune-<product>-<time>``).  storage_path: where
    sweep directories are kept (on a cluster, storage every node reads and writes).
    """

    metric: str | None = None
    mode: Literal["min", "max"] = "min"
    num_samples: int = 8
    max_concurrent_trials: int = 2
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: int = 1
    reduction_factor: float = 2.0
    trial_cpus: float = 0.1
    seed: int = 0
    name: str | None = None
    storage_path: str = "galray-tune"

    def __post_init__(self) -> None:
        check_choices(self)
        require(self.num_samples >= 1, "num_samples", f"must be >= 1, got {self.num_samples}")
        require(
            self.max_concurrent_trials >= 1,
            "max_concurrent_trials",
            f"must be >= 1, got {self.max_concurrent_trials}",
        )
        require(self.grace_period >= 1, "grace_period", f"must be >= 1, got {self.grace_period}")
        require(
            self.reduction_factor > 1,
            "reduction_factor",
            f"must be > 1, got {self.reduction_factor}",
        )
        require(self.trial_cpus >= 0, "trial_cpus", f"must be >= 0, got {self.trial_cpus}")
        require(
            self.name is None or (self.name and "/" not in self.name),
            "name",
            f"must be a non-empty directory name, got {self.name!r}",
        )


@dataclass(frozen=True)
class Dimension:
    """One searched field: ``path`` (dotted), a distribution and its arguments."""

    path: str
    kind: str
    args: tuple

    def domain(self):
        """The Ray Tune domain (``randint`` bounds made inclusive)."""
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.args))
        if self.kind == "grid":
            return tune.grid_search(list(self.args))
        if self.kind == "uniform":
            return tune.uniform(*self.args)
        if self.kind == "loguniform":
            return tune.loguniform(*self.args)
        if self.kind == "randint":
            return tune.randint(self.args[0], self.args[1] + 1)
        return tune.lograndint(self.args[0], self.args[1] + 1)

    def describe(self) -> str:
        return f"{self.kind}({', '.join(repr(a) for a in self.args)})"


@dataclass
class Sweep:
    """A validated sweep: the trainer's base config (object and dict), the search space, and the
    Tune settings.  ``raw`` is the merged YAML (``train`` / ``search`` / ``tune``) that rebuilds
    it on resume."""

    product: str
    base: Any
    base_dict: dict
    space: list[Dimension]
    settings: TuneSettings
    raw: dict = field(default_factory=dict)

    def param_space(self) -> dict:
        return {d.path: d.domain() for d in self.space}

    def trial_config(self, params: dict) -> Any:
        """The base config with one trial's sampled ``params`` (dotted keys) applied."""
        return trial_config(type(self.base), self.base_dict, params)


def trial_config(cls: type, base_dict: dict, params: dict, prefix: str = "") -> Any:
    data = copy.deepcopy(base_dict)
    for path, value in params.items():
        node = data
        parts = path.split(".")
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value
    return from_dict(cls, data, prefix=prefix)


# ----------------------------------------------------------------------------- loading


def load_sweep(
    product: str,
    config_cls: type,
    path: str | Path | None,
    overrides: list[str] = (),
    *,
    fixed: tuple[str, ...] = (),
) -> Sweep:
    """Read a sweep YAML, apply ``--set`` overrides and validate everything once.

    overrides: ``train.epochs=3``, ``tune.num_samples=4``, ``search.net.width={choice: [32, 64]}``.
    fixed: training-config fields (or sections) that may not be searched.
    """
    data = load_yaml(path) if path is not None else {}
    search_sets = [o for o in overrides if o.strip().startswith("search.")]
    apply_overrides(data, [o for o in overrides if o not in search_sets])
    unknown = sorted(set(data) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section (known: {', '.join(SWEEP_KEYS)})")
    train = {}
    if data.get("base") is not None:
        base_path = Path(str(data["base"]))
        if not base_path.is_absolute() and path is not None:
            base_path = Path(path).parent / base_path
        train = load_yaml(base_path)
    _section(data, "train")
    train = _merge(train, data.get("train") or {})
    search = _flatten_search(_section(data, "search"), "search")
    for item in search_sets:  # search.KEY=SPEC adds or replaces a dimension, =null drops it
        key, raw = item.split("=", 1)
        spec = apply_overrides({}, [f"x={raw}"])["x"]
        if spec is None:
            search.pop(key.strip().removeprefix("search."), None)
        else:
            search.update(_flatten_search(spec, key.strip()))
    return build_sweep(
        product,
        config_cls,
        {"train": train, "search": search, "tune": _section(data, "tune")},
        fixed=fixed,
    )


def build_sweep(product: str, config_cls: type, raw: dict, *, fixed: tuple[str, ...] = ()) -> Sweep:
    """Validate ``raw`` = ``{"train": ..., "search": {dotted: spec}, "tune": ...}``."""
    settings = from_dict(TuneSettings, raw.get("tune") or {}, prefix="tune.")
    base = from_dict(config_cls, raw.get("train") or {}, prefix="train.")
    base_dict = to_dict(base)
    space = [
        _dimension(key, spec, config_cls, base_dict, fixed)
        for key, spec in (raw.get("search") or {}).items()
    ]
    require(bool(space), "search", "the search space is empty: give at least one field")
    return Sweep(product, base, base_dict, space, settings, copy.deepcopy(raw))


def _section(data: dict, name: str) -> dict:
    value = data.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: expected a mapping, got {value!r}")
    return value


def _merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _is_spec(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DISTRIBUTIONS


def _flatten_search(node: Any, where: str) -> dict[str, Any]:
    """``{net: {width: {choice: ...}}}`` and ``{net.width: {choice: ...}}`` alike, as dotted
    keys (relative to ``search``)."""
    if _is_spec(node):
        return {where.removeprefix("search.").removeprefix("search"): node}
    if not (isinstance(node, dict) and node and all(isinstance(v, dict) for v in node.values())):
        raise ConfigError(
            f"{where}: expected one distribution, e.g. {{choice: [64, 128]}} "
            f"(known: {', '.join(DISTRIBUTIONS)}), got {node!r}"
        )
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_flatten_search(value, f"{where}.{key}"))
    return out


# ----------------------------------------------------------------------------- validation


def _field_type(cls: type, path: str) -> Any:
    """The annotated type of the dotted field ``path`` of dataclass ``cls``."""
    node: Any = cls
    parts = path.split(".")
    for i, part in enumerate(parts):
        where = "search." + ".".join(parts[: i + 1])
        if not (isinstance(node, type) and dataclasses.is_dataclass(node)):
            raise ConfigError(f"{where}: unknown field ({'.'.join(parts[:i])} has no fields)")
        names = {f.name for f in dataclasses.fields(node) if f.init}
        if part not in names:
            raise ConfigError(f"{where}: unknown field (known: {', '.join(sorted(names))})")
        node = typing.get_type_hints(node)[part]
        args = [a for a in typing.get_args(node) if a is not type(None)]
        if typing.get_origin(node) in (typing.Union, types.UnionType) and len(args) == 1:
            node = args[0]
    if isinstance(node, type) and dataclasses.is_dataclass(node):
        raise ConfigError(f"search.{path}: is a section, search one of its fields")
    return node


def _dimension(key: str, spec: Any, cls: type, base_dict: dict, fixed) -> Dimension:
    where = f"search.{key}"
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{where}: not a dotted field name")
    tp = _field_type(cls, key)
    for name in fixed:
        if key == name or key.startswith(name + "."):
            raise ConfigError(f"{where}: not searchable (fixed for every trial of a sweep)")
    if not _is_spec(spec):
        raise ConfigError(
            f"{where}: expected one distribution, e.g. {{choice: [64, 128]}} "
            f"(known: {', '.join(DISTRIBUTIONS)}), got {spec!r}"
        )
    kind, args = next(iter(spec.items()))
    where = f"{where}.{kind}"
    if not isinstance(args, list | tuple) or not args:
        raise ConfigError(f"{where}: expected a non-empty list, got {args!r}")
    args = tuple(args)
    if kind in ("choice", "grid"):
        candidates = list(args)
    else:
        if len(args) != 2 or not all(_is_number(a) for a in args):
            raise ConfigError(f"{where}: expected [low, high], got {list(args)}")
        low, high = args
        require(low < high, where, f"low must be < high, got {list(args)}")
        if kind in ("loguniform", "lograndint"):
            require(low > 0, where, f"low must be > 0 for a log scale, got {low}")
        if kind in _FLOAT_ONLY:
            require(
                tp is float,
                where,
                f"{kind} draws real numbers but the field is {_type_name(tp)}: "
                "use choice, randint or lograndint",
            )
            args = (float(low), float(high))
        else:
            require(
                tp is int and all(float(a).is_integer() for a in args),
                where,
                f"{kind} draws integers: the field must be an integer field and the bounds "
                f"integers, got {_type_name(tp)} and {list(args)}",
            )
            args = (int(low), int(high))
        candidates = list(args)
    for value in candidates:
        try:
            trial_config(cls, base_dict, {key: value})
        except ConfigError as exc:
            raise ConfigError(f"{where}: value {value!r} is not valid ({exc})") from None
    return Dimension(key, kind, args)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))
