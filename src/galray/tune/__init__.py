"""Hyperparameter sweeps with Ray Tune (``galray tune <trainer>``).

A trainer becomes tunable by one entry in :data:`TUNABLES`: its name and the
:class:`~galray.tune.sweep.Tunable` that says how a trial trains and how the best checkpoint
becomes a model.  The sweep itself -- search space, ASHA, MLflow parent/child runs, resume -- is
the same for every trainer (:mod:`galray.tune.sweep`).
"""

from __future__ import annotations

import importlib

# trainer name -> "module:attribute" of its Tunable (imported only when used)
TUNABLES = {
    "emulator": "galray.tune.emulator:EMULATOR",
    "sgan": "galray.tune.sgan:SGAN",
}


def get_tunable(name: str):
    """The :class:`~galray.tune.sweep.Tunable` registered as ``name``."""
    from galray.errors import ConfigError

    if name not in TUNABLES:
        raise ConfigError(f"trainer: {name!r} is not tunable (known: {', '.join(TUNABLES)})")
    module, attribute = TUNABLES[name].split(":")
    return getattr(importlib.import_module(module), attribute)
