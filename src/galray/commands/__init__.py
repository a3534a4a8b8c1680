"""Subcommands of the ``galray`` CLI, one module per area (see :mod:`galray.cli`)."""
