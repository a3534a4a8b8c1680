"""MLflow: a deep-field generator bundle as a registered model, and back.

:func:`log_deepfield_model` logs a bundle directory (:mod:`galray.deepfield.model`) as the pyfunc
model ``sgan`` of a run -- the directory travels unchanged as the model's ``bundle`` artifact --
registers it and points an alias at the new version.  :func:`resolve_deepfield_uri` turns
``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/m-<id>``, ``runs:/RUN_ID/sgan`` or a
local path back into that directory.  The tracking store, alias rules (``latest`` and ``vN`` are
reserved by MLflow) and URI checks are :mod:`galray.tracking`'s.

The pyfunc face: ``mlflow.pyfunc.load_model(uri).predict(df)`` with columns ``height``,
``width`` and ``seed`` (one row per image, all the same size) returns float32
``[rows, C, height, width]`` in the training image's units.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema, TensorSpec

import galray
from galray import tracking
from galray.deepfield.model import BUNDLE_META, DeepFieldModel
from galray.errors import ConfigError, DataError, ModelNotFoundError

MODEL_NAME = "sgan"  # runs:/RUN_ID/sgan
BUNDLE_ARTIFACT = "bundle"


class DeepFieldPyfunc(mlflow.pyfunc.PythonModel):
    """``predict(df[height, width, seed]) -> float32 [rows, C, height, width]``."""

    def load_context(self, context) -> None:
        self.model = DeepFieldModel.load(context.artifacts[BUNDLE_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None):
        frame = pd.DataFrame(model_input)
        missing = {"height", "width", "seed"} - set(frame.columns)
        if missing:
            raise DataError(f"deep-field generator input: missing column(s) {sorted(missing)}")
        sizes = set(zip(frame.height.astype(int), frame.width.astype(int)))
        if len(sizes) != 1:
            raise DataError(f"deep-field generator input: rows ask for sizes {sorted(sizes)}")
        ((h, w),) = sizes
        return np.stack([self.model.generate(h, w, int(s)) for s in frame.seed])


def log_deepfield_model(
    bundle_dir: str | os.PathLike,
    *,
    registered_name: str | None,
    alias: str | None,
    run_id: str,
) -> tracking.ModelRef:
    """Log ``bundle_dir`` as the pyfunc model ``sgan`` of run ``run_id``, register it as a new
    version of ``registered_name`` (None: log only) and point ``alias`` at that version."""
    registered_name, alias = registered_name or None, alias or None
    tracking._check_registry_names(registered_name, alias)
    bundle = Path(bundle_dir).resolve()
    DeepFieldModel.load(bundle)  # refuse a damaged bundle before anything is written
    uri = tracking._ensure_tracking()
    client = MlflowClient(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise ConfigError(f"run_id: no MLflow run {run_id!r} in {uri} ({exc.message})") from exc
    logged = mlflow.initialize_logged_model(
        name=MODEL_NAME, source_run_id=run_id, experiment_id=run.info.experiment_id
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*An input example was not provided")
        info = Model.log(
            artifact_path=None,
            name=MODEL_NAME,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            model_id=logged.model_id,
            python_model=DeepFieldPyfunc(),
            artifacts={BUNDLE_ARTIFACT: bundle.as_posix()},
            signature=ModelSignature(
                inputs=Schema([ColSpec("long", c) for c in ("height", "width", "seed")]),
                outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1, -1))]),
            ),
            metadata={"galray_kind": "deepfield-generator"},
            pip_requirements=[f"galray=={galray.__version__}", f"mlflow=={mlflow.__version__}"],
        )
    version = None
    if registered_name:
        registered = mlflow.register_model(info.model_uri, registered_name)
        version = int(registered.version)
        if alias:
            client.set_registered_model_alias(registered_name, alias, registered.version)
    return tracking.ModelRef(info.model_uri, registered_name, version, alias, run_id)


def resolve_deepfield_uri(uri: str | os.PathLike) -> Path:
    """The local bundle directory (holding ``sgan.json``) that ``uri`` names; anything that does
    not resolve raises ModelNotFoundError naming ``uri``."""
    text = os.fspath(uri)
    if not tracking._is_remote(text):
        path = Path(text).expanduser()
        if not path.exists():
            raise ModelNotFoundError(f"{text}: no such file or directory")
        return _bundle_in(path, text)
    store = tracking._ensure_tracking()
    tracking._check_exists(text, MlflowClient(store), store)
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=text)
    except Exception as exc:  # any failure to fetch is "not found" for the caller
        message = getattr(exc, "message", None) or str(exc)
        raise ModelNotFoundError(f"{text}: cannot download from {store}: {message}") from exc
    return _bundle_in(Path(local), text)


def _bundle_in(path: Path, uri: str) -> Path:
    if (path / BUNDLE_META).is_file():
        return path
    if (path / "MLmodel").is_file():
        try:
            flavor = Model.load(path).flavors.get("python_function", {})
        except Exception as exc:  # a corrupt MLmodel file is as good as none
            raise ModelNotFoundError(f"{uri}: unreadable MLmodel file ({exc})") from exc
        artifact = (flavor.get("artifacts") or {}).get(BUNDLE_ARTIFACT, {})
        if artifact.get("path") and (path / artifact["path"] / BUNDLE_META).is_file():
            return path / artifact["path"]
        raise ModelNotFoundError(f"{uri}: an MLflow model, but not a galray deep-field generator")
    raise ModelNotFoundError(f"{uri}: not a galray deep-field generator (no {BUNDLE_META})")
