"""What every ``jobs/*.py`` entrypoint shares: run one ``galray`` subcommand on a Ray cluster.

An entrypoint is ``python jobs/NAME.py ARGS...`` under ``ray job submit``; it runs the ``galray``
command line (:func:`galray.cli.main`) with its subcommand and ``ARGS``, so arguments, config
files, ``--set`` overrides and error messages are exactly those of ``galray``.  The driver runs
on the head node, in a copy of the submitted working directory, with the galray the cluster's
setup installed.

Two things are added for the cluster:

* ``$VAR`` and ``${VAR}`` in the arguments expand from the *cluster's* environment, so
  ``--set 'storage_path=$GALRAY_SHARED/runs'`` (single-quoted: your shell leaves it alone) names
  the shared folder of whichever cluster runs the job.  Unknown variables stay as written.
* A warning when ``MLFLOW_TRACKING_URI`` is unset inside a Ray job: galray would then track into
  ``mlflow.db`` of the job's temporary working-directory copy, which the cluster deletes.
"""

from __future__ import annotations

import os
import sys

from galray.cli import main

IN_RAY_JOB = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for the driver


def run(command: list[str], argv: list[str] | None = None) -> int:
    """``galray COMMAND... ARGV...`` with ``$VAR`` expanded in ``ARGV``; returns its exit code."""
    args = [os.path.expandvars(a) for a in (sys.argv[1:] if argv is None else argv)]
    if IN_RAY_JOB in os.environ and not os.environ.get("MLFLOW_TRACKING_URI"):
        print(
            "galray job: warning: MLFLOW_TRACKING_URI is not set on this cluster; MLflow runs "
            "and models would go to mlflow.db in the job's temporary working directory. Set it "
            "in the environment the Ray nodes start with (see README, 'Running on a cluster').",
            file=sys.stderr,
        )
    return main([*command, *args])
