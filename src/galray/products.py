"""The products galray trains, by name: ``galray train NAME``, ``galray tune NAME`` and
``jobs/train_NAME.py`` look their :class:`~galray.training.job.ProductSpec` up here.

A new product is a new package -- its ``__init__`` says what it is in ``SUMMARY`` and
``ABOUT``, its ``spec`` module declares ``SPEC`` -- and one line below.  Specs are imported only
when asked for, so ``galray --help`` stays fast.
"""

from __future__ import annotations

import importlib

from galray.errors import ConfigError

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
