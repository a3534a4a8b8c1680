"""The model registry for every galray product: a bundle directory as an MLflow model, and back.

A product's trained model is saved as a directory (a "bundle") marked by one metadata file
(``emulator.json``, ``sgan.json``).  :func:`log_bundle` logs that directory unchanged as the
``bundle`` artifact of an MLflow pyfunc model of a run, registers it as a new version of a
registered model and points an alias at that version.  :func:`resolve_bundle_uri` turns
``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/m-<id>``, ``runs:/RUN_ID/PATH``, a
downloaded MLflow model directory or a bundle directory back into the bundle directory, and raises
:class:`~galray.errors.ModelNotFoundError` naming the URI and what is missing for anything that
does not resolve.  A product describes its bundle once, as a :class:`BundleKind`, in its own
``registry`` module.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient

from galray import model_cache
from galray._version import __version__
from galray.errors import ConfigError, ModelNotFoundError
from galray.tracking import ensure_tracking

BUNDLE_ARTIFACT = "bundle"  # key of the bundle in the pyfunc model's artifacts
MODEL_CODE_FILE = "galray_model.py"  # the model's code (models from code), in the model directory


@dataclass(frozen=True)
class BundleKind:
    """What the registry needs to know of one product's bundles.

    label: what to call it in messages ("emulator").  meta_file: the file that marks a bundle
    directory.  model_name: the logged model's name (``runs:/RUN_ID/<model_name>``).
    load(path, device=): the bundle object of a directory; ModelNotFoundError if damaged.
    python_model: the pyfunc class (a module-level ``mlflow.pyfunc.PythonModel`` subclass, built
    without arguments), which the logged model's code imports (:func:`model_code`; nothing is
    pickled).  signature(bundle), metadata(bundle): the logged model's MLflow signature and
    metadata.  input_example(bundle): a DataFrame of valid inputs (saved with the model, not run).
    description(bundle): what the model is and how to call it (the registered model's and each
    version's description).  tags(bundle): tags of the version (``galray.model``, ...).
    requirements: pip requirements beyond galray's own (``galsim``), pinned as installed.
    """

    label: str
    meta_file: str
    model_name: str
    load: Callable[..., Any]
    python_model: type[mlflow.pyfunc.PythonModel]
    signature: Callable[[Any], ModelSignature]
    metadata: Callable[[Any], Mapping[str, Any]]
    input_example: Callable[[Any], Any] = lambda bundle: None
    description: Callable[[Any], str] = lambda bundle: ""
    tags: Callable[[Any], Mapping[str, str]] = lambda bundle: {}
    requirements: tuple[str, ...] = ()

    def log(self, bundle_dir, *, registered_name, alias, run_id=None) -> ModelRef:
        """:func:`log_bundle` of this kind."""
        return log_bundle(
            self, bundle_dir, registered_name=registered_name, alias=alias, run_id=run_id
        )

    def resolve(self, uri: str | os.PathLike) -> Path:
        """:func:`resolve_bundle_uri` of this kind."""
        return resolve_bundle_uri(self, uri)

    def load_uri(self, uri: str | os.PathLike, device="cpu"):
        """The bundle object ``uri`` names (any form :func:`resolve_bundle_uri` accepts)."""
        return self.load(self.resolve(uri), device=device)


@dataclass(frozen=True)
class ModelRef:
    """A logged model: ``model_uri`` (``models:/m-<id>``), its registry entry, its run."""

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

    @property
    def registered_uri(self) -> str | None:
        """:attr:`uri` if the model was registered, else None."""
        return self.uri if self.registered_name else None


def check_registry_names(registered_name: str | None, alias: str | None) -> None:
    """Refuse a registered name or alias MLflow would reject or misread (names the field)."""
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


# ---------------------------------------------------------------------- logging a bundle
def log_bundle(
    kind: BundleKind,
    bundle_dir: str | os.PathLike,
    *,
    registered_name: str | None,
    alias: str | None,
    run_id: str | None = None,
) -> ModelRef:
    """Log the bundle ``bundle_dir`` as the pyfunc model ``kind.model_name`` of run ``run_id``
    (default: the active run; a new run if none is active), register it as a new version of
    ``registered_name`` and point ``alias`` at that version.

    ``bundle_dir``: a bundle directory or anything :func:`resolve_bundle_uri` accepts.
    ``registered_name`` None or empty: log only.  Before anything is written, a bad name or alias
    raises ConfigError and a bundle that does not load raises ModelNotFoundError.
    """
    registered_name, alias = registered_name or None, alias or None
    check_registry_names(registered_name, alias)
    bundle_path = resolve_bundle_uri(kind, bundle_dir).resolve()
    bundle = kind.load(bundle_path)

    uri = ensure_tracking()
    if run_id is None:
        active = mlflow.active_run()
        if active is None:
            with mlflow.start_run(run_name=f"log-{bundle_path.name}") as run:
                return log_bundle(
                    kind,
                    bundle_path,
                    registered_name=registered_name,
                    alias=alias,
                    run_id=run.info.run_id,
                )
        run_id = active.info.run_id
    client = MlflowClient(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise ConfigError(f"run_id: no MLflow run {run_id!r} in {uri} ({exc.message})") from exc

    # The logged model belongs to the run's experiment even when the run is not the active one.
    logged = mlflow.initialize_logged_model(
        name=kind.model_name, source_run_id=run_id, experiment_id=run.info.experiment_id
    )
    info = _log_pyfunc(kind, bundle_path, bundle, run_id, logged.model_id)
    version = None
    if registered_name:
        tags = {**_run_tags(run), **kind.tags(bundle)}
        registered = mlflow.register_model(info.model_uri, registered_name, tags=tags)
        version = int(registered.version)
        _describe_version(kind, bundle, client, registered_name, registered.version, run)
        if alias:
            client.set_registered_model_alias(registered_name, alias, registered.version)
    return ModelRef(info.model_uri, registered_name, version, alias, run_id)


def _run_tags(run) -> dict[str, str]:
    """The training run's galray tags (version, commit, product, model, survey), and its id."""
    tags = {
        k: v for k, v in run.data.tags.items() if k.startswith("galray.") and k != "galray.run_dir"
    }
    return {**tags, "galray.run_id": run.info.run_id}


def _describe_version(kind: BundleKind, bundle, client, name: str, version: str, run) -> None:
    """The version's description (the model's, and the run that trained it); the registered
    model's too while it has none (a description written by hand stays)."""
    text = kind.description(bundle)
    if not text:
        return
    note = run.data.tags.get("mlflow.note.content", "")
    trained = f"Trained by run `{run.info.run_name}` ({run.info.run_id})."
    description = "\n\n".join(filter(None, [text, trained, note]))
    client.update_model_version(name, version, description=description)
    if not client.get_registered_model(name).description:
        client.update_registered_model(name, description=text)


def requirements(extra: tuple[str, ...] = ()) -> list[str]:
    """pip requirements of a logged model: galray itself, every package galray depends on (torch,
    zuko, numpy, ...) and ``extra``, each pinned to the version installed here."""
    names = []
    for spec in importlib.metadata.requires("galray") or []:
        if "extra ==" not in spec:  # optional dependencies
            names.append(re.split(r"[<>=!~;\s]", spec, maxsplit=1)[0])
    out = [f"galray=={__version__}"]
    for name in dict.fromkeys([*names, *extra]):
        base = name.split("[")[0]
        try:
            out.append(f"{name}=={importlib.metadata.version(base)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(name)
    return out


def _log_pyfunc(kind: BundleKind, path: Path, bundle, run_id: str, model_id: str) -> ModelInfo:
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / MODEL_CODE_FILE
        code.write_text(model_code(kind))
        return Model.log(
            artifact_path=None,
            name=kind.model_name,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            model_id=model_id,
            python_model=str(code),  # models from code: no python_model.pkl
            artifacts={BUNDLE_ARTIFACT: path.as_posix()},
            signature=kind.signature(bundle),
            input_example=kind.input_example(bundle),
            metadata=dict(kind.metadata(bundle)),
            # explicit: inferring requirements imports the model in a subprocess (~5 s)
            pip_requirements=requirements(kind.requirements),
        )


def model_code(kind: BundleKind) -> str:
    """The Python file logged as the model's code (MLflow "models from code"): it imports
    ``kind.python_model`` from the installed galray and hands MLflow an instance, so loading the
    model unpickles nothing.  The file is plain text in the model directory: read it."""
    cls = kind.python_model
    return (
        f'"""The MLflow pyfunc face of a galray {kind.label} (logged by galray {__version__}).\n\n'
        "mlflow.pyfunc.load_model runs this file: it imports galray, installed, and nothing\n"
        'else; the model itself is the bundle directory, JSON and tensor files."""\n\n'
        "import mlflow.models\n\n"
        f"from {cls.__module__} import {cls.__qualname__}\n\n"
        f"mlflow.models.set_model({cls.__qualname__}())\n"
    )


# ---------------------------------------------------------------------- resolving a URI


def resolve_bundle_uri(kind: BundleKind, uri: str | os.PathLike) -> Path:
    """The local bundle directory (holding ``kind.meta_file``) that ``uri`` names.

    ``uri``: a bundle directory (returned as is), a downloaded MLflow model directory, or an
    MLflow URI -- ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/m-<id>``,
    ``runs:/RUN_ID/PATH`` or any artifact URI -- downloaded from the tracking store in use
    (:func:`~galray.tracking.tracking_uri` unless MLflow was pointed elsewhere) once, into the
    model cache (:mod:`galray.model_cache`; later calls reuse the verified copy).  Anything that
    does not resolve raises ModelNotFoundError naming ``uri`` and what is missing.
    """
    text = os.fspath(uri)
    if not is_remote(text):
        path = Path(text).expanduser()
        if not path.exists():
            raise ModelNotFoundError(f"{text}: no such file or directory")
        return _bundle_in(kind, path, text)

    store = ensure_tracking()
    _check_exists(text, MlflowClient(store), store)
    path, _, _ = model_cache.fetch(
        text, lambda d: _bundle_in(kind, d, text), kind.meta_file, store, log=lambda *_: None
    )
    return path


def is_remote(text: str) -> bool:
    """An MLflow or artifact URI (``scheme:/...``), not a local path (``C:\\...`` included)."""
    return re.match(r"[A-Za-z][\w+.-]+:/", text) is not None


def model_provenance(uri: str | os.PathLike, client: MlflowClient | None = None) -> dict:
    """What a model URI names, for the record an output keeps of the model that made it:
    ``uri`` as given, ``registered_name``, ``version`` (an alias resolved to the version it
    points at now), ``alias``, ``run_id`` (the training run) and ``model_id`` (MLflow's logged
    model), None where not known.  A local path names no registry entry: only ``uri`` (its
    absolute path).  ModelNotFoundError for a registry URI that does not resolve."""
    text = os.fspath(uri)
    out = dict.fromkeys(("registered_name", "version", "alias", "run_id", "model_id"))
    if not is_remote(text):
        return {"uri": str(Path(text).expanduser().resolve()), **out}
    out["uri"] = text
    store = ensure_tracking()
    client = client or MlflowClient(store)
    _check_exists(text, client, store)
    if m := model_cache.MODEL_ALIAS.fullmatch(text):
        version = client.get_model_version_by_alias(m["name"], m["alias"])
        out["alias"] = m["alias"]
    elif m := model_cache.MODEL_VERSION.fullmatch(text):
        version = client.get_model_version(m["name"], m["version"])
    else:
        version = None
    if version is not None:
        out |= {"registered_name": version.name, "version": int(version.version)}
        out |= {"run_id": version.run_id, "model_id": getattr(version, "model_id", None)}
    elif m := model_cache.LOGGED_MODEL.fullmatch(text):
        out |= {"model_id": m["model_id"]}
        out["run_id"] = client.get_logged_model(m["model_id"]).source_run_id
    elif m := model_cache.RUN.fullmatch(text):
        out["run_id"] = m["run_id"]
    return out


def _check_exists(uri: str, client: MlflowClient, store: str) -> None:
    """Name what is missing (model, alias, version, run) before MLflow's generic error does."""
    if m := model_cache.LOGGED_MODEL.fullmatch(uri):
        _lookup(
            uri, store, f"no logged model {m['model_id']!r}", client.get_logged_model, m["model_id"]
        )
    elif m := model_cache.MODEL_ALIAS.fullmatch(uri):
        name, alias = m["name"], m["alias"]
        model = _lookup(
            uri, store, f"no registered model {name!r}", client.get_registered_model, name
        )
        if alias not in (model.aliases or {}):
            known = ", ".join(sorted(model.aliases or {})) or "none"
            raise ModelNotFoundError(
                f"{uri}: registered model {name!r} has no alias {alias!r} (aliases: {known})"
            )
    elif m := model_cache.MODEL_VERSION.fullmatch(uri):
        name, version = m["name"], m["version"]
        _lookup(uri, store, f"no registered model {name!r}", client.get_registered_model, name)
        _lookup(
            uri,
            store,
            f"registered model {name!r} has no version {version}",
            lambda v: client.get_model_version(name, v),
            version,
        )
    elif m := model_cache.RUN.fullmatch(uri):
        _lookup(uri, store, f"no run {m['run_id']!r}", client.get_run, m["run_id"])


def _lookup(uri: str, store: str, missing: str, fetch: Callable[[str], Any], key: str) -> Any:
    try:
        return fetch(key)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise ModelNotFoundError(f"{uri}: {missing} in {store}") from exc
        raise ModelNotFoundError(f"{uri}: lookup in {store} failed: {exc.message}") from exc


def _bundle_in(kind: BundleKind, path: Path, uri: str) -> Path:
    """The bundle directory at ``path``: ``path`` itself, or the bundle artifact of the MLflow
    pyfunc model stored there."""
    if (path / kind.meta_file).is_file():
        return path
    if (path / "MLmodel").is_file():
        try:
            flavor = Model.load(path).flavors.get("python_function", {})
        except Exception as exc:  # a corrupt MLmodel file is as good as none
            raise ModelNotFoundError(f"{uri}: unreadable MLmodel file ({exc})") from exc
        artifact = (flavor.get("artifacts") or {}).get(BUNDLE_ARTIFACT, {})
        if artifact.get("path") and (path / artifact["path"] / kind.meta_file).is_file():
            return path / artifact["path"]
        raise ModelNotFoundError(f"{uri}: an MLflow model, but not a galray {kind.label}")
    raise ModelNotFoundError(f"{uri}: not a galray {kind.label} (no {kind.meta_file} or MLmodel)")
