"""MLflow tracking: where runs are recorded, experiments, params and reports.

Tracking store.  ``MLFLOW_TRACKING_URI`` if set, else the SQLite file ``./mlflow.db`` of the
current directory, written as an absolute URI so that Ray workers (whose working directory
differs) reach the same store when handed it.  For a SQLite store, experiments created here keep
their artifacts in ``mlartifacts/<experiment>`` next to the database file -- MLflow's own default,
``./mlruns`` of whichever process creates the experiment, would scatter them.

Models are logged, registered and resolved by :mod:`galray.registry`; each product's
``registry`` module says what its bundle is.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from galray.errors import ConfigError

DEFAULT_DB = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
MAX_PARAM_KEY = 250  # MLflow's limits on a param's key and value length
MAX_PARAM_VALUE = 6000
_TRUNCATED = "...[truncated]"


# ---------------------------------------------------------------------- tracking store
def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<absolute path of ./mlflow.db>``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    # quoted as MLflow does: SQLAlchemy decodes %xx in the database path
    return f"sqlite:///{quote((Path.cwd() / DEFAULT_DB).as_posix(), safe='/')}"


def configure_tracking(uri: str | None = None) -> str:
    """Point MLflow at ``uri`` (default :func:`tracking_uri`) and return it.

    MLflow also exports it as ``MLFLOW_TRACKING_URI``, so processes started afterwards (a local
    Ray cluster's workers) inherit it; pass it explicitly to workers of a remote cluster.
    """
    uri = uri or tracking_uri()
    mlflow.set_tracking_uri(uri)
    return uri


def ensure_tracking() -> str:
    """The tracking URI in use, configuring galray's default if nothing chose one."""
    if not mlflow.tracking.is_tracking_uri_set():
        return configure_tracking()
    return mlflow.get_tracking_uri()


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative paths from the current directory)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = unquote(uri[len("sqlite:///") :].split("?", 1)[0])
    if not path or path == ":memory:":
        return None
    return Path(os.path.abspath(path))


def default_artifact_location(experiment: str, uri: str | None = None) -> str | None:
    """Artifact location for a new experiment: ``<db dir>/mlartifacts/<experiment>`` for a SQLite
    store, None (the server's choice) for any other store."""
    db = _sqlite_file(uri or ensure_tracking())
    if db is None:
        return None
    folder = re.sub(r"[^\w.-]+", "_", experiment).strip("._") or "experiment"
    return (db.parent / ARTIFACT_DIR / folder).as_posix()


def get_or_create_experiment(name: str) -> str:
    """Id of the experiment ``name``, created (artifacts as :func:`default_artifact_location`)
    if it does not exist yet.  A deleted experiment of that name raises ConfigError."""
    uri = ensure_tracking()
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(
                name, artifact_location=default_artifact_location(name, uri)
            )
        except MlflowException:
            # another process (a second Ray worker) may have created it meanwhile
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise ConfigError(
            f"tracking.experiment: experiment {name!r} was deleted in {uri}; restore it "
            "(mlflow experiments restore) or choose another name"
        )
    return experiment.experiment_id


# ---------------------------------------------------------------------- params
def flatten_params(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings (and dataclasses) as ``{"a.b.c": str(value)}``.

    Keys are made valid for MLflow (characters outside ``[\\w./ -]`` become ``_``) and at most
    250 characters; values longer than MLflow's 6000 characters are cut, ending in
    ``...[truncated]``.  Lists stay one value (``"['r', 'i']"``).
    """
    out: dict[str, str] = {}
    for key, value in d.items():
        name = re.sub(r"[^\w./ -]", "_", f"{prefix}{key}")[:MAX_PARAM_KEY]
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        if isinstance(value, Mapping):
            out.update(flatten_params(value, prefix=f"{name}."))
            continue
        text = str(value)
        if len(text) > MAX_PARAM_VALUE:
            text = text[: MAX_PARAM_VALUE - len(_TRUNCATED)] + _TRUNCATED
        out[name] = text
    return out


def log_params_flat(
    d: Mapping[str, Any], prefix: str = "", *, run_id: str | None = None
) -> dict[str, str]:
    """Log :func:`flatten_params` of ``d`` to run ``run_id`` (default: the active run, started
    if none is) and return what was logged.  Logging a key again with another value fails:
    MLflow params are immutable."""
    params = flatten_params(d, prefix)
    ensure_tracking()
    mlflow.log_params(params, run_id=run_id)
    return params


# ---------------------------------------------------------------------- reports
# numbers in a report that describe the run, not its fidelity
NOT_METRICS = frozenset({"seed"})


def report_metrics(report: dict) -> dict[str, float]:
    """The report's finite scalar numbers, named as MLflow metrics (``ks_r-i`` -> ``ks_r_minus_i``)."""
    return {
        k.replace("-", "_minus_"): float(v)
        for k, v in report.items()
        if k not in NOT_METRICS
        and isinstance(v, int | float)
        and not isinstance(v, bool)
        and math.isfinite(v)
    }


def log_report(
    report: dict, out_dir: str | Path, artifact_path: str = "fidelity", *, run_id: str | None = None
) -> None:
    """Log an evaluation report's scalar metrics, and ``out_dir`` as artifacts under
    ``artifact_path``, to run ``run_id`` (default: the active run, started if none is)."""
    metrics = report_metrics(report)
    if run_id is None:
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(out_dir), artifact_path=artifact_path)
        return
    from mlflow.entities import Metric

    client = MlflowClient(ensure_tracking())
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
    client.log_artifacts(run_id, str(out_dir), artifact_path=artifact_path)


def __getattr__(name: str):
    # MLflow models logged by galray 0.1.0 pickled their pyfunc wrapper as
    # ``galray.tracking.EmulatorPyfunc``; unpickling them looks it up here.
    if name == "EmulatorPyfunc":
        from galray.emulator.registry import EmulatorPyfunc

        return EmulatorPyfunc
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
