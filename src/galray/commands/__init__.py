"""Subcommands of the ``galray`` CLI, one module per verb (see :mod:`galray.cli`)."""
