"""The emulator in the MLflow registry: its bundle kind, its pyfunc face, loading by URI.

:func:`log_emulator` logs an emulator bundle directory (:mod:`galray.emulator.bundle`) as the
MLflow pyfunc model ``emulator`` of a run (the bundle travels unchanged as the model's ``bundle``
artifact), so ``galray.load_emulator(uri)`` and ``mlflow.pyfunc.load_model(uri).predict(df)``
give the same samples.  :func:`load_emulator` loads by ``models:/NAME@ALIAS``,
``models:/NAME/VERSION``, ``models:/m-<id>``, ``runs:/RUN_ID/emulator`` or a local directory
(:func:`galray.registry.resolve_bundle_uri`).
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from galray import registry
from galray.datasets import schema
from galray.emulator.bundle import BUNDLE_META, Emulator
from galray.emulator.features import _inverse

MODEL_NAME = "emulator"  # the logged model's name: runs:/RUN_ID/emulator


class EmulatorPyfunc(mlflow.pyfunc.PythonModel):
    """The pyfunc face of an emulator bundle.

    ``predict(df, params={"seed": 0})``: ``df`` holds the emulator's input columns; returns a
    DataFrame of :meth:`galray.emulator.bundle.Emulator.sample` (same index as ``df``).
    """

    def load_context(self, context) -> None:
        self.emulator = Emulator.load(context.artifacts[registry.BUNDLE_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None):
        seed = int((params or {}).get("seed", 0))
        out = self.emulator.sample(model_input, seed=seed)
        index = model_input.index if isinstance(model_input, pd.DataFrame) else None
        return pd.DataFrame(out, index=index)


def _signature(emulator: Emulator) -> ModelSignature:
    """Inputs (the survey spec's truth and condition columns, doubles: cast integer columns, which
    MLflow will not convert), outputs and the ``seed`` param."""
    spec = emulator.spec
    inputs = [ColSpec("double", name) for name in emulator.input_columns]
    outputs = [ColSpec("boolean", "detected"), ColSpec("float", "p_detected")]
    for band in emulator.bands:
        outputs += [ColSpec("float", schema.obs_flux(band)), ColSpec("float", schema.obs_mag(band))]
    flags = {f"obs_{name}" for name in spec.outputs.flags}
    for name in spec.measured_columns:
        outputs.append(ColSpec("integer" if name in flags else "float", name))
    outputs.append(ColSpec("boolean", "selected"))
    return ModelSignature(
        inputs=Schema(inputs),
        outputs=Schema(outputs),
        params=ParamSchema([ParamSpec("seed", "long", 0)]),
    )


def _input_example(emulator: Emulator) -> pd.DataFrame:
    """Three rows of inputs: the training rows' mean, and one standard deviation either side
    (of each column as the networks see it, so log-scaled columns stay positive)."""
    features = emulator.features
    transforms = emulator.spec.deep.morphology
    mean, std = np.asarray(features.cond_mean), np.asarray(features.cond_std)
    rows = np.stack([mean, mean - std, mean + std])
    return pd.DataFrame(
        {
            name: _inverse(transforms.get(name, "identity"), rows[:, j]).astype(np.float64)
            for j, name in enumerate(emulator.input_columns)
        }
    )


def _description(emulator: Emulator) -> str:
    spec = emulator.spec
    return (
        f"galray transfer-function emulator ({emulator.model} model) of the {spec.name} survey: "
        f"given each galaxy's truth and the observing conditions at its position "
        f"({', '.join(emulator.input_columns)}), draws detection and the measured "
        f"{', '.join(emulator.output_columns[2:-1])}, and whether the galaxy is selected.  "
        "Load with galray.load_emulator(uri).sample(rows, seed=...) or "
        "mlflow.pyfunc.load_model(uri).predict(df, params={'seed': ...})."
    )


KIND = registry.BundleKind(
    label="emulator",
    meta_file=BUNDLE_META,
    model_name=MODEL_NAME,
    load=Emulator.load,
    python_model=EmulatorPyfunc,
    signature=_signature,
    metadata=lambda e: {
        "galray_input_columns": e.input_columns,
        "galray_bands": e.bands,
        "galray_survey": e.spec.to_dict(),
    },
    input_example=_input_example,
    description=_description,
    tags=lambda e: {"galray.model": e.model, "galray.survey": e.spec.name},
)


# log (and register, alias) a bundle; a URI -> its local bundle directory; a URI -> the model
log_emulator = KIND.log
resolve_emulator_uri = KIND.resolve
load_emulator = KIND.load_uri
