"""The products galray trains, by name: ``galray train NAME``, ``galray tune NAME`` and
``jobs/train_NAME.py`` look their :class:`~galray.training.job.ProductSpec` up here, and
:func:`train` (``galray.train``) trains one from Python.

A new product is a new package -- its ``__init__`` says what it is in ``SUMMARY`` and
``ABOUT``, its ``spec`` module declares ``SPEC`` -- and one line below.  Specs are imported only
when asked for, so ``galray --help`` stays fast.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from galray.errors import ConfigError

if TYPE_CHECKING:
    from galray.training.job import TrainResult

# product name -> its package (SUMMARY, ABOUT; SPEC in its spec module)
PRODUCTS = {
    "emulator": "galray.emulator",
    "deepfield": "galray.deepfield",
    "stamps": "galray.stamps",
    "estimator": "galray.estimator",
}
# earlier names that still work on the command line
ALIASES = {"sgan": "deepfield"}


def describe(name: str) -> tuple[str, str]:
    """A product's one-line summary and its few sentences more, without importing its code."""
    package = importlib.import_module(PRODUCTS[name])
    return package.SUMMARY, package.ABOUT


def product_names(name: str) -> list[str]:
    """``name`` and its aliases."""
    return [name, *(alias for alias, target in ALIASES.items() if target == name)]


def get_product(name: str):
    """The :class:`~galray.training.job.ProductSpec` registered as ``name`` (or an alias)."""
    name = ALIASES.get(name, name)
    if name not in PRODUCTS:
        raise ConfigError(
            f"product: {name!r} is not a galray product (known: {', '.join(PRODUCTS)})"
        )
    return importlib.import_module(f"{PRODUCTS[name]}.spec").SPEC


def train(
    kind: str,
    config: str | os.PathLike | Mapping[str, Any] | Any | None = None,
    /,
    *,
    resume: str | None = None,
    log=print,
    **overrides: Any,
) -> TrainResult:
    """Train product ``kind`` (``emulator``, ``deepfield`` or its old name ``sgan``, ``stamps``,
    ``estimator``) -- what ``galray train KIND`` runs: Ray Train, the bundle under
    ``storage_path``, MLflow logging and registration, the product's evaluation.

    config: a YAML path, a dict of the config's fields (sections as dicts) or the product's
    config object (not changed); ``overrides``: fields to change, a section as a dict of some of
    its fields (``epochs=3, optim={"batch_size": 128}``).  resume: an interrupted run's MLflow
    run id or name, continued from its latest checkpoint.  Returns the
    :class:`~galray.training.job.TrainResult` (``run_id``, ``registered_uri``, ``bundle_path``,
    ``metrics``, ``report``, ...) the CLI prints its summary from.  A bad field is a
    ConfigError naming it, raised before anything starts."""
    from galray.config import resolve_config
    from galray.training.job import run_training

    spec = get_product(kind)
    cfg = resolve_config(spec.config_cls, config, fields=overrides)
    return run_training(spec, cfg, resume=resume, log=log)
