"""MLflow: where runs are recorded, how an emulator becomes a registered model, and back.

Tracking store.  ``MLFLOW_TRACKING_URI`` if set, else the SQLite file ``./mlflow.db`` of the
current directory, written as an absolute URI so that Ray workers (whose working directory
differs) reach the same store when handed it.  For a SQLite store, experiments created here keep
their artifacts in ``mlartifacts/<experiment>`` next to the database file -- MLflow's own default,
``./mlruns`` of whichever process creates the experiment, would scatter them.

Models.  :func:`log_emulator` logs an emulator bundle directory (:mod:`galray.inference`) as an
MLflow pyfunc model: the bundle travels unchanged as the model's ``bundle`` artifact, so
``galray.load_emulator(uri)`` and ``mlflow.pyfunc.load_model(uri).predict(df)`` give the same
samples.  :func:`resolve_model_uri` turns ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
``models:/m-<id>``, ``runs:/RUN_ID/emulator`` or a local path into that bundle directory, and
raises :class:`~galray.errors.ModelNotFoundError` naming the URI for anything that does not
resolve.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

import galray
from galray.datasets import schema
from galray.errors import ConfigError, ModelNotFoundError

if TYPE_CHECKING:
    from galray.inference import Emulator

DEFAULT_DB = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
MODEL_NAME = "emulator"  # the logged model's name: runs:/RUN_ID/emulator
BUNDLE_ARTIFACT = "bundle"  # key of the bundle in the pyfunc model's artifacts
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


def _ensure_tracking() -> str:
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
    db = _sqlite_file(uri or _ensure_tracking())
    if db is None:
        return None
    folder = re.sub(r"[^\w.-]+", "_", experiment).strip("._") or "experiment"
    return (db.parent / ARTIFACT_DIR / folder).as_posix()


def get_or_create_experiment(name: str) -> str:
    """Id of the experiment ``name``, created (artifacts as :func:`default_artifact_location`)
    if it does not exist yet.  A deleted experiment of that name raises ConfigError."""
    uri = _ensure_tracking()
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
    _ensure_tracking()
    mlflow.log_params(params, run_id=run_id)
    return params


# ---------------------------------------------------------------------- logging a model
class EmulatorPyfunc(mlflow.pyfunc.PythonModel):
    """The pyfunc face of an emulator bundle.

    ``predict(df, params={"seed": 0})``: ``df`` holds the emulator's input columns; returns a
    DataFrame of :meth:`galray.inference.Emulator.sample` (same index as ``df``).
    """

    def load_context(self, context) -> None:
        from galray.inference import Emulator

        self.emulator = Emulator.load(context.artifacts[BUNDLE_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None):
        seed = int((params or {}).get("seed", 0))
        out = self.emulator.sample(model_input, seed=seed)
        index = model_input.index if isinstance(model_input, pd.DataFrame) else None
        return pd.DataFrame(out, index=index)


def _signature(bands: list[str]) -> ModelSignature:
    """Outputs and the ``seed`` param.  No input schema: MLflow would then refuse integer columns
    (int64 -> double may lose precision), and :meth:`Emulator.sample` checks its columns anyway;
    they are listed in the model's metadata instead."""
    outputs = [ColSpec("boolean", "detected"), ColSpec("float", "p_detected")]
    for band in bands:
        outputs += [ColSpec("float", schema.obs_flux(band)), ColSpec("float", schema.obs_mag(band))]
    return ModelSignature(
        outputs=Schema(outputs), params=ParamSchema([ParamSpec("seed", "long", 0)])
    )


@dataclass(frozen=True)
class ModelRef:
    """A logged emulator: ``model_uri`` (``models:/m-<id>``), its registry entry, its run."""

    model_uri: str
    registered_name: str | None
    version: int | None
    alias: str | None
    run_id: str

    @property
    def uri(self) -> str:
        """The URI to load it by: ``models:/NAME@ALIAS``, else ``models:/NAME/VERSION``, else
        :attr:`model_uri`."""
        if self.registered_name and self.alias:
            return f"models:/{self.registered_name}@{self.alias}"
        if self.registered_name and self.version is not None:
            return f"models:/{self.registered_name}/{self.version}"
        return self.model_uri


def _check_registry_names(registered_name: str | None, alias: str | None) -> None:
    if alias and not registered_name:
        raise ConfigError(f"tracking.alias: alias {alias!r} given but no registered_name")
    if registered_name and ("/" in registered_name or ":" in registered_name):
        raise ConfigError(
            f"tracking.registered_name: {registered_name!r} may not contain '/' or ':'"
        )
    if alias is None:
        return
    if not re.fullmatch(r"[\w-]{1,255}", alias):
        raise ConfigError(
            f"tracking.alias: {alias!r} may only hold letters, digits, '_' and '-' (1-255)"
        )
    if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise ConfigError(
            f"tracking.alias: {alias!r} is reserved by MLflow (models:/NAME/latest and "
            "models:/NAME@v3 mean versions); choose another, e.g. 'champion'"
        )


def log_emulator(
    bundle_dir: str | os.PathLike,
    *,
    registered_name: str | None,
    alias: str | None,
    run_id: str | None = None,
) -> ModelRef:
    """Log the emulator bundle ``bundle_dir`` as the pyfunc model ``emulator`` of run ``run_id``
    (default: the active run; a new run if none is active), register it as a new version of
    ``registered_name`` and point ``alias`` at that version.

    ``bundle_dir``: a bundle directory or anything :func:`resolve_model_uri` accepts.
    ``registered_name`` None or empty: log only.  Before anything is written, a bad name or alias
    raises ConfigError and a bundle that does not load raises ModelNotFoundError.
    """
    from galray.inference import Emulator

    registered_name, alias = registered_name or None, alias or None
    _check_registry_names(registered_name, alias)
    bundle = resolve_model_uri(bundle_dir).resolve()
    emulator = Emulator.load(bundle)

    uri = _ensure_tracking()
    if run_id is None:
        active = mlflow.active_run()
        if active is None:
            with mlflow.start_run(run_name=f"log-{bundle.name}") as run:
                return log_emulator(
                    bundle, registered_name=registered_name, alias=alias, run_id=run.info.run_id
                )
        run_id = active.info.run_id
    client = MlflowClient(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise ConfigError(f"run_id: no MLflow run {run_id!r} in {uri} ({exc.message})") from exc

    # The logged model belongs to the run's experiment even when the run is not the active one.
    logged = mlflow.initialize_logged_model(
        name=MODEL_NAME, source_run_id=run_id, experiment_id=run.info.experiment_id
    )
    with warnings.catch_warnings():
        # no input example on purpose: MLflow would load the model and predict to check it
        warnings.filterwarnings("ignore", ".*An input example was not provided")
        info = _log_pyfunc(bundle, emulator, run_id, logged.model_id)
    version = None
    if registered_name:
        registered = mlflow.register_model(info.model_uri, registered_name)
        version = int(registered.version)
        if alias:
            client.set_registered_model_alias(registered_name, alias, registered.version)
    return ModelRef(info.model_uri, registered_name, version, alias, run_id)


def _log_pyfunc(bundle: Path, emulator: Emulator, run_id: str, model_id: str) -> ModelInfo:
    return Model.log(
        artifact_path=None,
        name=MODEL_NAME,
        flavor=mlflow.pyfunc,
        run_id=run_id,
        model_id=model_id,
        python_model=EmulatorPyfunc(),
        artifacts={BUNDLE_ARTIFACT: bundle.as_posix()},
        signature=_signature(emulator.bands),
        metadata={"galray_input_columns": emulator.input_columns, "galray_bands": emulator.bands},
        # explicit: inferring requirements imports the model in a subprocess (~5 s)
        pip_requirements=[f"galray=={galray.__version__}", f"mlflow=={mlflow.__version__}"],
    )


# ---------------------------------------------------------------------- resolving a URI
_MODEL_ALIAS = re.compile(r"models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)/?")
_MODEL_VERSION = re.compile(r"models:/(?P<name>[^/@]+)/(?P<version>\d+)/?")
_LOGGED_MODEL = re.compile(r"models:/(?P<model_id>m-[0-9a-f]+)/?")
_RUN = re.compile(r"runs:/(?P<run_id>[^/]+)(?:/(?P<path>.*))?")


def resolve_model_uri(uri: str | os.PathLike) -> Path:
    """The local directory holding the emulator bundle (``emulator.json``) that ``uri`` names.

    ``uri``: a bundle directory (returned as is), a downloaded MLflow model directory, or an
    MLflow URI -- ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/m-<id>``,
    ``runs:/RUN_ID/emulator`` or any artifact URI -- downloaded from the tracking store in use
    (:func:`tracking_uri` unless MLflow was pointed elsewhere).  Anything that does not resolve
    raises ModelNotFoundError naming ``uri`` and what is missing.
    """
    text = os.fspath(uri)
    if not _is_remote(text):
        path = Path(text).expanduser()
        if not path.exists():
            raise ModelNotFoundError(f"{text}: no such file or directory")
        return _bundle_in(path, text)

    store = _ensure_tracking()
    _check_exists(text, MlflowClient(store), store)
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=text)
    except Exception as exc:  # any failure to fetch is "not found" for the caller
        message = getattr(exc, "message", None) or str(exc)
        raise ModelNotFoundError(f"{text}: cannot download from {store}: {message}") from exc
    return _bundle_in(Path(local), text)


def _is_remote(text: str) -> bool:
    """An MLflow or artifact URI (``scheme:/...``), not a local path (``C:\\...`` included)."""
    return re.match(r"[A-Za-z][\w+.-]+:/", text) is not None


def _check_exists(uri: str, client: MlflowClient, store: str) -> None:
    """Name what is missing (model, alias, version, run) before MLflow's generic error does."""
    if m := _LOGGED_MODEL.fullmatch(uri):
        _lookup(
            uri, store, f"no logged model {m['model_id']!r}", client.get_logged_model, m["model_id"]
        )
    elif m := _MODEL_ALIAS.fullmatch(uri):
        name, alias = m["name"], m["alias"]
        model = _lookup(
            uri, store, f"no registered model {name!r}", client.get_registered_model, name
        )
        if alias not in (model.aliases or {}):
            known = ", ".join(sorted(model.aliases or {})) or "none"
            raise ModelNotFoundError(
                f"{uri}: registered model {name!r} has no alias {alias!r} (aliases: {known})"
            )
    elif m := _MODEL_VERSION.fullmatch(uri):
        name, version = m["name"], m["version"]
        _lookup(uri, store, f"no registered model {name!r}", client.get_registered_model, name)
        _lookup(
            uri,
            store,
            f"registered model {name!r} has no version {version}",
            lambda v: client.get_model_version(name, v),
            version,
        )
    elif m := _RUN.fullmatch(uri):
        _lookup(uri, store, f"no run {m['run_id']!r}", client.get_run, m["run_id"])


def _lookup(uri: str, store: str, missing: str, fetch: Callable[[str], Any], key: str) -> Any:
    try:
        return fetch(key)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise ModelNotFoundError(f"{uri}: {missing} in {store}") from exc
        raise ModelNotFoundError(f"{uri}: lookup in {store} failed: {exc.message}") from exc


def _bundle_in(path: Path, uri: str) -> Path:
    """The bundle directory at ``path``: ``path`` itself, or the bundle artifact of the MLflow
    pyfunc model stored there."""
    if (path / "emulator.json").is_file():
        return path
    if (path / "MLmodel").is_file():
        try:
            flavor = Model.load(path).flavors.get("python_function", {})
        except Exception as exc:  # a corrupt MLmodel file is as good as none
            raise ModelNotFoundError(f"{uri}: unreadable MLmodel file ({exc})") from exc
        artifact = (flavor.get("artifacts") or {}).get(BUNDLE_ARTIFACT, {})
        if artifact.get("path") and (path / artifact["path"] / "emulator.json").is_file():
            return path / artifact["path"]
        raise ModelNotFoundError(f"{uri}: an MLflow model, but not a galray emulator")
    raise ModelNotFoundError(f"{uri}: not a galray emulator (no emulator.json or MLmodel)")
