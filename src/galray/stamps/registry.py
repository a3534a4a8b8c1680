"""The stamp generator in the MLflow registry: its bundle kind, its pyfunc face, loading by URI.

:func:`log_stamps_model` logs a bundle directory (:mod:`galray.stamps.bundle`) as the pyfunc
model ``stamps`` of a run, registers it (``galray-stamps`` by default) and points an alias at the
new version; :func:`load_stamps_model` (also ``galray.stamps.load``) loads by
``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/m-<id>``, ``runs:/RUN_ID/stamps`` or a
local directory (:func:`galray.registry.resolve_bundle_uri`).

The pyfunc face: ``mlflow.pyfunc.load_model(uri).predict(df)`` with the property columns (``mag``,
``hlr``, ``z``, ``ellipticity``) returns float32 ``[rows, N, N]`` intrinsic images in counts
(zeropoint 30); ``params={"seed": S}`` picks the draw (default 0).
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

from galray import registry
from galray.stamps.bundle import BUNDLE_META, StampModel

MODEL_NAME = "stamps"  # runs:/RUN_ID/stamps


class StampsPyfunc(mlflow.pyfunc.PythonModel):
    """``predict(df[properties], params={"seed": S}) -> float32 [rows, N, N]``."""

    def load_context(self, context) -> None:
        self.model = StampModel.load(context.artifacts[registry.BUNDLE_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None):
        seed = int((params or {}).get("seed", 0))
        return self.model.generate(pd.DataFrame(model_input), seed=seed)


def _signature(model: StampModel) -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec("double", name) for name in model.conditions.names]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, model.size, model.size))]),
        params=ParamSchema([ParamSpec("seed", "long", 0)]),
    )


KIND = registry.BundleKind(
    label="stamp generator",
    meta_file=BUNDLE_META,
    model_name=MODEL_NAME,
    load=StampModel.load,
    python_model=StampsPyfunc,
    signature=_signature,
    metadata=lambda m: {
        "galray_kind": "stamp-generator",
        "pixel_scale": m.pixel_scale,
        "size": m.size,
        "properties": list(m.conditions.names),
    },
    input_example=lambda m: pd.DataFrame(  # the middle of the training range
        {
            name: [(lo + hi) / 2]
            for name, lo, hi in zip(m.conditions.names, m.conditions.low, m.conditions.high)
        }
    ),
    description=lambda m: (
        f"galray galaxy-stamp generator (VAE + conditional flow, PSF-aware): intrinsic "
        f"{m.size}x{m.size} light profiles at {m.pixel_scale} arcsec/px given "
        f"{', '.join(m.conditions.names)}.  Load with galray.stamps.load(uri), or draw from "
        "GalSim's YAML (modules: [galray.stamps.galsim_config])."
    ),
    tags=lambda m: {"galray.model": "stamps"},
    requirements=("galsim",),
)

log_stamps_model = KIND.log
resolve_stamps_uri = KIND.resolve
load_stamps_model = KIND.load_uri
