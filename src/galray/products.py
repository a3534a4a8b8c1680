"""The products galray trains, by name: ``galray train NAME``, ``galray tune NAME`` and
``jobs/train_NAME.py`` look their :class:`~galray.training.job.ProductSpec` up here.

A new product is a new package with a ``spec`` module defining ``SPEC``, and one line below.
Specs are imported only when asked for, so ``galray --help`` stays fast.
"""

from __future__ import annotations

import importlib

from galray.errors import ConfigError

# product name -> the module whose SPEC declares it
PRODUCTS = {
    "emulator": "galray.emulator.spec",
    "deepfield": "galray.deepfield.spec",
}
# earlier names that still work on the command line
ALIASES = {"sgan": "deepfield"}


def get_product(name: str):
    """The :class:`~galray.training.job.ProductSpec` registered as ``name`` (or an alias)."""
    name = ALIASES.get(name, name)
    if name not in PRODUCTS:
        raise ConfigError(
            f"product: {name!r} is not a galray product (known: {', '.join(PRODUCTS)})"
        )
    return importlib.import_module(PRODUCTS[name]).SPEC
