"""The measurement yardstick in the MLflow registry: its bundle kind, its pyfunc face, loading
by URI.

:func:`log_estimator_model` logs a bundle directory (:mod:`galray.estimator.bundle`) as the
pyfunc model ``estimator`` of a run, registers it (``galray-estimator`` by default) and points an
alias at the new version; :func:`load_estimator_model` (also ``galray.estimator.load``) loads by
``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/RUN_ID/estimator`` or a local
directory.

The pyfunc face: ``mlflow.pyfunc.load_model(uri).predict({"stamp": [rows, N, N], "psf": [rows,
N, N], "noise_sigma": [rows]})`` returns a DataFrame of estimates and uncertainties
(``<param>``, ``<param>_err``).
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec

from galray import registry
from galray.estimator.bundle import BUNDLE_META, EstimatorModel

MODEL_NAME = "estimator"  # runs:/RUN_ID/estimator


class EstimatorPyfunc(mlflow.pyfunc.PythonModel):
    """``predict({"stamp", "psf", "noise_sigma"}) -> DataFrame`` of estimates."""

    def load_context(self, context) -> None:
        self.model = EstimatorModel.load(context.artifacts[registry.BUNDLE_ARTIFACT])

    def predict(self, context, model_input, params: dict | None = None) -> pd.DataFrame:
        get = model_input.__getitem__
        return self.model.measure(
            np.asarray(get("stamp")), np.asarray(get("psf")), np.asarray(get("noise_sigma"))
        )


def _signature(model: EstimatorModel) -> ModelSignature:
    n = model.size
    return ModelSignature(
        inputs=Schema(
            [
                TensorSpec(np.dtype(np.float32), (-1, n, n), "stamp"),
                TensorSpec(np.dtype(np.float32), (-1, n, n), "psf"),
                TensorSpec(np.dtype(np.float32), (-1,), "noise_sigma"),
            ]
        ),
        outputs=Schema(
            [ColSpec("double", c) for name in model.names for c in (name, f"{name}_err")]
        ),
    )


def _example(model: EstimatorModel) -> dict:
    """A round Gaussian galaxy in a Moffat-like PSF: an input of the right shapes."""
    n = model.size
    y, x = np.mgrid[:n, :n] - n // 2
    r2 = (x**2 + y**2).astype(np.float32)
    galaxy = 1000.0 * np.exp(-r2 / 18.0) / (2 * np.pi * 9.0)
    psf = np.exp(-r2 / 4.0)
    return {
        "stamp": galaxy[None].astype(np.float32),
        "psf": (psf / psf.sum())[None].astype(np.float32),
        "noise_sigma": np.array([2.0], np.float32),
    }


KIND = registry.BundleKind(
    label="estimator",
    meta_file=BUNDLE_META,
    model_name=MODEL_NAME,
    load=EstimatorModel.load,
    python_model=EstimatorPyfunc,
    signature=_signature,
    metadata=lambda m: {
        "galray_kind": "estimator",
        "pixel_scale": m.pixel_scale,
        "size": m.size,
        "population": m.population,
        "targets": m.names,
    },
    input_example=_example,
    description=lambda m: (
        f"galray measurement yardstick: a CNN measuring {', '.join(m.names)} (each with a "
        f"calibrated 1-sigma uncertainty) on {m.size}x{m.size} px stamps at {m.pixel_scale} "
        f"arcsec/px, given each stamp's PSF image and noise sigma; trained on the "
        f"{m.population} stamp population.  Load with galray.estimator.load(uri)."
    ),
    tags=lambda m: {"galray.model": "estimator"},
)

log_estimator_model = KIND.log
resolve_estimator_uri = KIND.resolve
load_estimator_model = KIND.load_uri
