"""MLflow tracking: where runs are recorded, experiments, params and reports.

Tracking store.  ``MLFLOW_TRACKING_URI`` if set, else the SQLite file ``./mlflow.db`` of the
current directory, written as an absolute URI so that Ray workers (whose working directory
differs) reach the same store when handed it.  For a SQLite store, experiments created here keep
their artifacts in ``mlartifacts/<experiment>`` next to the database file -- MLflow's own default,
``./mlruns`` of whichever process creates the experiment, would scatter them.

Experiments galray creates carry the tag ``mlflow.experimentKind`` =
``custom_model_development``, so MLflow 3's UI opens them as model training (runs, metrics,
models), not as a GenAI app (traces).  Metrics are named ``train/...``, ``val/...`` and
``test/...`` (:func:`metric_name`), which the UI draws as one chart section each; runs logged
before galray 0.1.1 used the bare names (``val_ks_max``), and Ray Train's reports (what Tune
ranks trials by) still do.  :func:`describe_run` gives a training run its description, tags and
training data (``mlflow.log_input``).

Models are logged, registered and resolved by :mod:`galray.registry`; each product's
``registry`` module says what its bundle is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import subprocess
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
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # MLflow 3's UI: which view an experiment opens in
EXPERIMENT_KIND = "custom_model_development"  # runs, metrics, models (not "genai_development")
SPLITS = ("train", "val", "test")
# run tags (galray.product and galray.run_dir are galray.training.runs')
TAG_VERSION = "galray.version"
TAG_COMMIT = "galray.git_commit"
TAG_MODEL = "galray.model"
TAG_SURVEY = "galray.survey"
TAG_NOTE = "mlflow.note.content"  # the run's (or experiment's) description in the UI


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
                name,
                artifact_location=default_artifact_location(name, uri),
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
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
    if EXPERIMENT_KIND_TAG not in experiment.tags:  # created by galray 0.1.0, or by hand
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


# ---------------------------------------------------------------------- metric names
UNPREFIXED = frozenset({"epoch"})  # the step of every curve: one chart of its own


def metric_name(key: str, split: str = "train") -> str:
    """The MLflow name of a metric: ``val_ks_max`` -> ``val/ks_max``, ``test_...`` ->
    ``test/...``, ``train_seconds`` -> ``train/seconds``, anything else ``<split>/<key>``; a
    name that already has a ``/`` is kept, and so is ``epoch``."""
    if "/" in key or key in UNPREFIXED:
        return key
    for prefix in SPLITS:
        if key.startswith(prefix + "_"):
            return f"{prefix}/{key[len(prefix) + 1 :]}"
    return f"{split}/{key}"


def prefixed(metrics: Mapping[str, float], split: str = "train") -> dict[str, float]:
    """``metrics`` renamed by :func:`metric_name`."""
    return {metric_name(k, split): v for k, v in metrics.items()}


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


# ---------------------------------------------------------------------- a training run's record
def active_params(d: Mapping[str, Any], inactive: tuple[str, ...] = ()) -> dict[str, str]:
    """:func:`flatten_params` of ``d`` without the fields under ``inactive`` (dotted prefixes:
    ``flow`` drops ``flow.*``) -- the config fields the run's model does not use."""
    return {
        k: v
        for k, v in flatten_params(d).items()
        if not any(k == p or k.startswith(p + ".") for p in inactive)
    }


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """The data a run trains on, as :func:`describe_run` records it: ``source`` (a path),
    ``name`` (shown in the UI), ``digest`` (:func:`files_digest` of what identifies it),
    ``survey`` (the survey spec's name, if it has one) and ``rows``."""

    source: str
    name: str
    digest: str
    survey: str | None = None
    rows: int | None = None

    @classmethod
    def of_path(cls, path, manifests=(), rows: int | None = None) -> TrainingData:
        """A file or directory ``path`` as the data, named by it, its digest over the
        ``manifests`` (file names inside ``path``) and the listing of ``path``."""
        path = Path(path)
        digest = files_digest([path / m for m in manifests], listing=path)
        return cls(source=str(path.resolve()), name=path.name, digest=digest, rows=rows)


def files_digest(paths, listing: str | os.PathLike | None = None) -> str:
    """16 hex digits of SHA-256 over the contents of ``paths`` that exist (manifests:
    ``survey.json``, ``simulation.json``) and the names and sizes of the files under
    ``listing`` (the data files themselves are not read)."""
    h = hashlib.sha256()
    for path in map(Path, paths):
        if path.is_file():
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    if listing is not None and Path(listing).exists():
        root = Path(listing)
        files = [root] if root.is_file() else sorted(f for f in root.rglob("*") if f.is_file())
        for f in files:
            h.update(f"{f.relative_to(root.parent)}:{f.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """The commit of the git checkout galray runs from (``+dirty`` with uncommitted changes to
    tracked files); None when galray is not in a checkout (an installed package) or git is
    missing."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        run = dict(cwd=where, capture_output=True, text=True, timeout=10, check=True)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], **run).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit or None


def run_tags(product: str, model: str, survey: str | None) -> dict[str, str]:
    """The tags every galray training run carries: galray's version, the git commit (absent
    outside a checkout), the product, the model kind and the survey spec (absent if none)."""
    from galray._version import __version__

    tags = {TAG_VERSION: __version__, "galray.product": product, TAG_MODEL: model}
    commit = git_commit()
    if commit:
        tags[TAG_COMMIT] = commit
    if survey:
        tags[TAG_SURVEY] = survey
    return tags


def describe_run(
    product: str,
    model: str,
    data: TrainingData | None,
    description: str,
    *,
    run_id: str | None = None,
    log_input: bool = True,
) -> None:
    """Give a training run (default: the active one) its description (``mlflow.note.content``,
    shown on the run page), :func:`run_tags` and, with ``log_input``, its training data as an
    MLflow dataset input (context ``training``; the UI's "Inputs")."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    client = MlflowClient(ensure_tracking())
    run_id = run_id or mlflow.active_run().info.run_id
    tags = run_tags(product, model, data.survey if data else None)
    for key, value in {**tags, TAG_NOTE: description}.items():
        client.set_tag(run_id, key, value)
    if data is None or not log_input:
        return
    from mlflow.data.dataset_source_registry import get_registered_sources

    # MLflow's source for a local path (registered at import; its class has no import path)
    local = next(c for c in get_registered_sources() if c._get_source_type() == "local")
    dataset = MetaDataset(local(data.source), name=data.name, digest=data.digest)
    entity = dataset._to_mlflow_entity()
    context = InputTag(key=MLFLOW_DATASET_CONTEXT, value="training")
    client.log_inputs(run_id, datasets=[DatasetInput(entity, tags=[context])])


# ---------------------------------------------------------------------- reports
# numbers in a report that describe the run, not its fidelity
NOT_METRICS = frozenset({"seed"})
TAG_MISSING = "galray.metrics_missing"  # report numbers that could not be computed, and why

# why a report number may be NaN, and what to do
NAN_HINTS = {
    "detection_max_abs_diff": (
        "no (depth, magnitude) bin of the detection table has enough rows to compare; score "
        "more rows (galray evaluate --rows, or --split all when the test split is small; "
        "eval_rows in training)"
    ),
    "detection_max_abs_z": "as detection_max_abs_diff, or both sides compare probabilities",
}
_NAN_HINT = "could not be computed on these rows (too few?); see report.json"


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def missing_metrics(report: Mapping[str, Any], keys=None) -> dict[str, str]:
    """``{name: why}`` for the report's numbers (of ``keys``, default all) that are NaN or
    infinite, each with a hint (:data:`NAN_HINTS`) and the number of rows scored."""
    rows = report.get("n_rows")
    scored = f"{rows:,} rows scored: " if _is_number(rows) else ""
    return {
        key: scored + NAN_HINTS.get(key, _NAN_HINT)
        for key in (report if keys is None else keys)
        if _is_number(report.get(key)) and not math.isfinite(report[key])
    }


def headline(report: Mapping[str, Any], keys) -> tuple[dict[str, Any], list[str]]:
    """The report's headline numbers for the console, as valid JSON (a NaN becomes null), and a
    warning line for each that is missing, saying why and what to do."""
    missing = missing_metrics(report, keys)
    values = {k: (None if k in missing else report.get(k)) for k in keys}
    warnings = [f"warning: {k} is missing: {why}" for k, why in missing.items()]
    return values, warnings


def report_metrics(report: dict, split: str = "test") -> dict[str, float]:
    """The report's finite scalar numbers, named as MLflow metrics (``ks_r-i`` ->
    ``<split>/ks_r_minus_i``)."""
    return {
        metric_name(k.replace("-", "_minus_"), split): float(v)
        for k, v in report.items()
        if k not in NOT_METRICS and _is_number(v) and math.isfinite(v)
    }


def log_report(
    report: dict,
    out_dir: str | Path,
    artifact_path: str = "fidelity",
    *,
    run_id: str | None = None,
    split: str = "test",
) -> None:
    """Log an evaluation report's scalar metrics (as ``<split>/NAME``), and ``out_dir`` as
    artifacts under ``artifact_path``, to run ``run_id`` (default: the active run, started if
    none is).  Numbers that are NaN are not logged: the tag ``galray.metrics_missing`` names
    them and says why."""
    metrics = report_metrics(report, split)
    missing = "; ".join(f"{k}: {why}" for k, why in missing_metrics(report).items())
    if run_id is None:
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(out_dir), artifact_path=artifact_path)
        if missing:
            mlflow.set_tag(TAG_MISSING, missing[:5000])
        return
    from mlflow.entities import Metric

    client = MlflowClient(ensure_tracking())
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
    client.log_artifacts(run_id, str(out_dir), artifact_path=artifact_path)
    if missing:
        client.set_tag(run_id, TAG_MISSING, missing[:5000])


def __getattr__(name: str):
    # MLflow models logged by galray 0.1.0 pickled their pyfunc wrapper as
    # ``galray.tracking.EmulatorPyfunc``; unpickling them looks it up here.
    if name == "EmulatorPyfunc":
        from galray.emulator.registry import EmulatorPyfunc

        return EmulatorPyfunc
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run_page(base: str, run_id: str) -> str:
    """The MLflow UI's page of run ``run_id`` under ``base``, in its machine-learning view
    (MLflow 3's UI opens in its GenAI view unless the link says otherwise; the mode is a browser
    setting, whatever the experiment's tags)."""
    try:
        experiment = mlflow.get_run(run_id).info.experiment_id
    except Exception:  # the store is unreachable now: a link to the runs list instead
        return f"{base}/#/?workflowType=machine_learning"
    return f"{base}/#/experiments/{experiment}/runs/{run_id}?workflowType=machine_learning"
