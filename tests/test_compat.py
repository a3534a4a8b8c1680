"""Bundles and MLflow models saved by galray 0.1.0 before the package re-layout (issue 14) still
load, through every entry point, and give exactly the output they gave then
(``tests/data/legacy-0.1``, made at commit c8a153d)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

import galray
from galray.deepfield.registry import load_deepfield_model

LEGACY = Path(__file__).parent / "data" / "legacy-0.1"


def _rows() -> dict[str, np.ndarray]:
    with np.load(LEGACY / "emulator-rows.npz") as f:
        return {k: f[k] for k in f.files}


# The flow samples through galray's own spline inverse since 0.2 (zuko's before): the same map,
# rounded differently in float32 (relative differences ~2e-6).
RTOL = {"gan": 1e-6, "flow": 2e-5}


def _expected(kind: str) -> dict[str, np.ndarray]:
    with np.load(LEGACY / "emulator-samples.npz") as f:
        return {k.split("/", 1)[1]: f[k] for k in f.files if k.startswith(f"{kind}/")}


@pytest.mark.parametrize("kind", ["gan", "flow"])
def test_old_emulator_bundle_samples_as_before(kind):
    emulator = galray.load_emulator(LEGACY / f"emulator-{kind}")
    assert emulator.model == kind
    out = emulator.sample(_rows(), seed=7)
    expected = _expected(kind)
    assert list(out) == [*expected, "selected"]  # the survey's selection: "detected" for riz
    np.testing.assert_array_equal(out["selected"], out["detected"])
    for key, values in expected.items():
        np.testing.assert_allclose(out[key], values, rtol=RTOL[kind], atol=1e-6, equal_nan=True)


def test_old_mlflow_emulator_loads_by_galray_and_by_pyfunc():
    """The downloaded MLflow model: galray finds the bundle inside it; MLflow unpickles the
    wrapper logged as ``galray.tracking.EmulatorPyfunc`` and predicts the same samples."""
    model_dir = LEGACY / "mlflow-emulator-flow"
    rows = _rows()
    expected = _expected("flow")
    out = galray.load_emulator(model_dir).sample(rows, seed=7)
    np.testing.assert_allclose(
        out["obs_flux_i"], expected["obs_flux_i"], rtol=RTOL["flow"], equal_nan=True
    )
    pyfunc = mlflow.pyfunc.load_model(str(model_dir))
    frame = pyfunc.predict(pd.DataFrame(rows), params={"seed": 7})
    np.testing.assert_array_equal(frame["detected"].to_numpy(), expected["detected"])
    np.testing.assert_allclose(
        frame["obs_mag_r"].to_numpy(), expected["obs_mag_r"], rtol=RTOL["flow"], equal_nan=True
    )


def test_old_deepfield_bundle_generates_as_before():
    expected = np.load(LEGACY / "deepfield-48x32-seed5.npy")
    for source in ("deepfield", "mlflow-deepfield"):
        model = load_deepfield_model(LEGACY / source)
        np.testing.assert_allclose(model.generate(48, 32, seed=5), expected, rtol=1e-5, atol=1e-6)
    pyfunc = mlflow.pyfunc.load_model(str(LEGACY / "mlflow-deepfield"))
    out = pyfunc.predict(pd.DataFrame({"height": [48], "width": [32], "seed": [5]}))
    np.testing.assert_allclose(out[0], expected, rtol=1e-5, atol=1e-6)
