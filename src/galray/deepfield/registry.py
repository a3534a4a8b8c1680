"""The deep-field generator in the MLflow registry: its bundle kind, its pyfunc face, loading by
URI.

:func:`log_deepfield_model` logs a bundle directory (:mod:`galray.deepfield.bundle`) as the pyfunc
model ``sgan`` of a run -- the directory travels unchanged as the model's ``bundle`` artifact --
registers it and points an alias at the new version.  :func:`load_deepfield_model` loads by
``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/m-<id>``, ``runs:/RUN_ID/sgan`` or a
local directory (:func:`galray.registry.resolve_bundle_uri`).  (``sgan`` names the logged model
and the bundle's files, as in bundles saved by earlier versions.)

The pyfunc face: ``mlflow.pyfunc.load_model(uri).predict(df)`` with columns ``height``,
``width`` and ``seed`` (one row per image, all the same size) returns float32
``[rows, C, height, width]`` in the training image's units.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec

from galray import registry
from galray.deepfield.bundle import BUNDLE_META, DeepFieldModel
from galray.errors import DataError

MODEL_NAME = "sgan"  # runs:/RUN_ID/sgan


class DeepFieldPyfunc(mlflow.pyfunc.PythonModel):
    """``predict(df[height, width, seed]) -> float32 [rows, C, height, width]``."""

    def load_context(self, context) -> None:
        self.model = DeepFieldModel.load(context.artifacts[registry.BUNDLE_ARTIFACT])

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


KIND = registry.BundleKind(
    label="deep-field generator",
    meta_file=BUNDLE_META,
    model_name=MODEL_NAME,
    load=DeepFieldModel.load,
    python_model=DeepFieldPyfunc,
    signature=lambda _: ModelSignature(
        inputs=Schema([ColSpec("long", c) for c in ("height", "width", "seed")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1, -1))]),
    ),
    metadata=lambda _: {"galray_kind": "deepfield-generator"},
    input_example=lambda _: pd.DataFrame({"height": [256], "width": [256], "seed": [0]}),
    description=lambda m: (
        f"galray deep-field generator (Spatial GAN) of {len(m.bands)}-band "
        f"({', '.join(m.bands)}) images at {m.pixel_scale} arcsec/px: any height x width, "
        "seamless, deterministic for a seed.  Generate with galray generate deepfield, or "
        "mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({'height': [h], 'width': [w], "
        "'seed': [s]})) -> float32 [rows, bands, h, w]."
    ),
    tags=lambda m: {"galray.model": "sgan"},
)


# log (and register, alias) a bundle; a URI -> its local bundle directory; a URI -> the model
log_deepfield_model = KIND.log
resolve_deepfield_uri = KIND.resolve
load_deepfield_model = KIND.load_uri
