"""The emulator fidelity report: sensitivity of each statistic, files written, MLflow logging."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest

from galray.datasets import schema
from galray.datasets.simulate import apply_transfer
from galray.errors import DataError
from galray.evaluation.emulator import fidelity_report, log_report_to_mlflow

N = 30_000


def _inputs(n=N):
    rows = {f"true_mag_{b}": np.random.default_rng(1).uniform(19, 25.5, n) for b in "riz"}
    rows["true_size"] = np.random.default_rng(2).uniform(0.1, 1.0, n)
    for b in "riz":
        rows[f"psf_fwhm_{b}"] = np.random.default_rng(3).uniform(0.8, 1.3, n)
        rows[f"depth_{b}"] = np.random.default_rng(4).uniform(22.5, 24.5, n)
    return rows


def _draw(seed, *, bias_i=1.0, extra_noise_i=0.0, threshold_shift=0.0, n=N) -> pd.DataFrame:
    """Measurements through the simulator's transfer function, optionally perturbed."""
    rng = np.random.default_rng(seed)
    rows = _inputs(n)
    res = apply_transfer(rows, rows, {b: np.zeros(n) for b in "riz"}, rng)
    df = pd.DataFrame(rows)
    p_det = np.clip(res.p_detect - threshold_shift, 0, 1)
    det = rng.random(n) < p_det
    for b in "riz":
        flux = res.obs_flux[b]
        if b == "i":
            true = schema.mag_to_flux(rows["true_mag_i"])
            flux = true * bias_i + (flux - true) + extra_noise_i * true * rng.standard_normal(n)
        df[f"obs_mag_{b}"] = np.where(det, schema.flux_to_mag(flux), np.nan)
    df["detected"] = det
    df["p_detect"] = p_det
    return df


@pytest.fixture(scope="module")
def reference():
    return _draw(10)


@pytest.fixture(scope="module")
def same(reference, tmp_path_factory):
    out = tmp_path_factory.mktemp("same")
    return fidelity_report(reference, _draw(11), out, seed=0), out


def test_identical_distributions_are_indistinguishable(same):
    report, _ = same
    assert report["n_rows"] == N
    assert abs(report["c2st_auc"] - 0.5) < 0.03
    assert report["ks_max"] < 0.02
    assert report["detection_max_abs_diff"] < 0.03
    assert report["detection_compared"] == ["p_detect", "detected"]


def test_flux_bias_in_one_band_is_caught(reference, same, tmp_path):
    biased = fidelity_report(reference, _draw(11, bias_i=1.02), tmp_path, seed=0)
    assert biased["c2st_auc"] > 0.55
    assert biased["ks_dmag_i"] > 2 * same[0]["ks_dmag_i"]
    assert biased["ks_dmag_r"] < 0.03  # other bands untouched


def test_extra_noise_is_caught(reference, tmp_path):
    noisy = fidelity_report(reference, _draw(11, extra_noise_i=0.05), tmp_path, seed=0)
    assert noisy["c2st_auc"] > 0.55


def test_detection_threshold_shift_is_caught(reference, tmp_path):
    shifted = fidelity_report(reference, _draw(11, threshold_shift=0.15), tmp_path, seed=0)
    assert shifted["detection_max_abs_diff"] > 0.08
    assert shifted["detection_fraction_emu"] < shifted["detection_fraction_ref"]


def test_files_written(same):
    report, out = same
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["c2st_auc"] == report["c2st_auc"]
    for name in report["tables"] + report["plots"]:
        assert (out / name).stat().st_size > 0
    assert {"cmd_ri_i.png", "detection_vs_true_mag.png"} <= set(report["plots"])
    table = pd.read_csv(out / "dmag_by_true_mag.csv")
    assert set(table.band) == {"r", "i", "z"}
    assert {"ref_median", "emu_median", "ref_width", "emu_width"} <= set(table.columns)


def test_logs_to_mlflow(same, tmp_path):
    report, out = same
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    with mlflow.start_run() as run:
        log_report_to_mlflow(report, out)
    logged = mlflow.get_run(run.info.run_id)
    assert logged.data.metrics["c2st_auc"] == pytest.approx(report["c2st_auc"])
    assert "ks_r_minus_i" in logged.data.metrics
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "fidelity")}
    assert "fidelity/report.json" in names


def test_missing_column_is_named(reference, tmp_path):
    with pytest.raises(DataError, match="obs_mag_z"):
        fidelity_report(reference, reference.drop(columns=["obs_mag_z"]), tmp_path)
    with pytest.raises(DataError, match="rows"):
        fidelity_report(reference, reference.iloc[:10], tmp_path)
