"""galray: distributed generative emulators of astronomical survey data on Ray."""

from __future__ import annotations

from galray._version import __version__
from galray.errors import (
    ConfigError,
    DataError,
    FootprintError,
    GalrayError,
    ModelNotFoundError,
    OutputExistsError,
)

__all__ = [
    "ConfigError",
    "DataError",
    "FootprintError",
    "GalrayError",
    "ModelNotFoundError",
    "OutputExistsError",
    "__version__",
    "load_emulator",
    "train",
    "train_emulator",
]


def load_emulator(uri: str):
    """Load a trained transfer-function emulator from ``models:/NAME@ALIAS``, ``runs:/ID/PATH``
    or a local directory.  See :func:`galray.emulator.registry.load_emulator`."""
    from galray.emulator.registry import load_emulator as _load

    return _load(uri)


def __getattr__(name: str):
    # galray.train (galray.products.train: any product from a YAML path, a dict or its config;
    # what `galray train KIND` runs) and galray.train_emulator (galray.emulator.train) are
    # resolved on first access, so that `import galray` -- and loading a saved model -- never
    # imports the trainers or Ray.
    if name == "train":
        from galray.products import train

        return train
    if name == "train_emulator":
        from galray.emulator.train import train_emulator

        return train_emulator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
