"""Exceptions users of galray can catch.

Which to raise:

* :class:`ConfigError` -- a configuration value (YAML, ``--set``, a Tune search space) is wrong.
  Always name the field (``trainer.batch_size``), never just the value.
* :class:`DataError` -- an input file is unusable: missing or all-NaN column, wrong dtype, empty,
  truncated or corrupt, inconsistent HEALPix metadata.  Always name the file and the column.
* :class:`FootprintError` -- too many galaxies fall outside the condition-map footprint.
* :class:`ModelNotFoundError` -- a model URI (``models:/name@alias``, ``runs:/...``, a path) does
  not resolve.
* :class:`OutputExistsError` -- an output directory holds another run's results and neither
  overwrite nor resume was asked for.
* :class:`OutputError` -- the output cannot be written (disk full, quota, read-only file system).
  Name the output; say that nothing partial was left and what was kept.

All derive from :class:`GalrayError`, so ``except GalrayError`` catches every user-facing error.
"""

from __future__ import annotations


class GalrayError(Exception):
    """Base class of every error galray raises on purpose."""


class ConfigError(GalrayError, ValueError):
    """A configuration field has a bad value; the message names the field."""


class DataError(GalrayError, ValueError):
    """An input file or table is unusable; the message names the file and the column."""


class FootprintError(DataError):
    """Too many galaxies fall outside the footprint of the condition maps."""


class ModelNotFoundError(GalrayError, LookupError):
    """A model URI does not resolve to a galray model."""


class OutputExistsError(GalrayError, FileExistsError):
    """The output location already holds results of another run."""


class OutputError(GalrayError, OSError):
    """Writing the output failed (no space left, quota, read-only); nothing partial is left."""
