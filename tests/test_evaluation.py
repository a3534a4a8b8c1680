"""The emulator fidelity report: sensitivity of each statistic, files written, MLflow logging.

Data come from a toy transfer function defined here (independent of galray's simulator): per
band, observed flux = true flux (x an optional bias) + N(0, sigma) with sigma set by the
10-sigma depth, detection by the i-band S/N of the observed flux.
"""

from __future__ import annotations

import json
import math

import mlflow
import numpy as np
import pandas as pd
import pytest
from scipy.special import ndtr

from galray.datasets.schema import flux_to_mag, mag_to_flux
from galray.errors import DataError
from galray.evaluation import emulator as ev
from galray.tracking import log_report

N = 40_000
BANDS = ("r", "i", "z")
SNR_THRESHOLD = 5.0


def _inputs(n: int = N) -> pd.DataFrame:
    """Truth (AB mags, arcsec) and conditions of ``n`` galaxies, the same on every call."""
    rng = np.random.default_rng(1)
    mag_i = rng.uniform(19.0, 25.0, n)
    r_i, i_z = rng.normal(0.5, 0.25, n), rng.normal(0.25, 0.1, n)
    rows = {"true_mag_r": mag_i + r_i, "true_mag_i": mag_i, "true_mag_z": mag_i - i_z}
    rows["true_size"] = rng.uniform(0.2, 1.2, n)
    for b, depth in zip(BANDS, (23.9, 23.5, 22.9)):
        rows[f"psf_fwhm_{b}"] = rng.uniform(0.8, 1.3, n)
        rows[f"depth_{b}"] = depth + rng.uniform(-0.6, 0.6, n)
    return pd.DataFrame(rows)


def _measure(
    truth: pd.DataFrame,
    seed: int,
    *,
    bias_i: float = 1.0,
    extra_noise_i: float = 0.0,
    threshold: float = SNR_THRESHOLD,
    probability: str | None = None,
) -> pd.DataFrame:
    """One measurement of every row; ``probability``: also store P(detected) under that name."""
    rng = np.random.default_rng(seed)
    frame = truth.copy()
    snr = {}
    for b in BANDS:
        flux = mag_to_flux(truth[f"true_mag_{b}"].to_numpy())
        sigma = mag_to_flux(truth[f"depth_{b}"].to_numpy()) / 10.0
        if b == "i":
            flux = flux * bias_i
            snr["expected"] = flux / sigma
            flux = flux + extra_noise_i * flux * rng.standard_normal(len(truth))
        frame[f"obs_flux_{b}"] = flux + sigma * rng.standard_normal(len(truth))
        snr[b] = frame[f"obs_flux_{b}"].to_numpy() / sigma
    detected = snr["i"] > threshold
    for b in BANDS:
        frame[f"obs_mag_{b}"] = np.where(detected, flux_to_mag(frame[f"obs_flux_{b}"]), np.nan)
    frame["detected"] = detected
    if probability is not None:
        frame[probability] = ndtr(snr["expected"] - threshold)
    return frame


@pytest.fixture(scope="module")
def truth():
    return _inputs()


@pytest.fixture(scope="module")
def reference(truth):
    return _measure(truth, 10, probability="p_detect")


@pytest.fixture(scope="module")
def same(reference, truth, tmp_path_factory):
    out = tmp_path_factory.mktemp("same")
    return ev.fidelity_report(reference, _measure(truth, 11), out, seed=0), out


def test_identical_distributions_are_indistinguishable(same):
    report, _ = same
    assert report["n_rows"] == N
    assert report["c2st_auc"] < 0.53
    assert report["c2st_auc_detected"] < 0.53
    assert report["ks_max"] < 0.02
    assert max(report[f"ks_dmag_{b}"] for b in BANDS) < 0.02
    assert max(report["ks_r-i"], report["ks_i-z"]) < 0.02
    assert report["detection_compared"] == ["p_detect", "detected"]
    assert report["detection_bins_used"] >= 30
    assert report["detection_max_abs_diff"] < 0.03
    assert report["detection_max_abs_z"] < 4.5  # within the binomial noise of the outcomes


def test_flux_bias_in_one_band_is_caught(reference, truth, same, tmp_path):
    biased = ev.fidelity_report(reference, _measure(truth, 11, bias_i=1.05), tmp_path, plots=False)
    assert biased["c2st_auc"] > 0.55
    assert biased["ks_dmag_i"] > 0.1 > 3 * same[0]["ks_dmag_i"]
    assert biased["ks_i"] > 2 * same[0]["ks_i"]
    assert biased["ks_dmag_r"] < 0.02  # the other bands are untouched
    table = pd.read_csv(tmp_path / "dmag_by_true_mag.csv")
    bright = table[(table.band == "i") & (table.bin_centre < 21)]
    assert np.allclose(bright.emu_mean - bright.ref_mean, -2.5 * np.log10(1.05), atol=0.005)


def test_extra_noise_is_caught(reference, truth, tmp_path):
    noisy = ev.fidelity_report(
        reference, _measure(truth, 11, extra_noise_i=0.05), tmp_path, plots=False
    )
    assert noisy["c2st_auc"] > 0.55
    table = pd.read_csv(tmp_path / "dmag_by_depth.csv")
    i_band = table[table.band == "i"]
    assert (i_band.emu_width > 1.5 * i_band.ref_width).all()


def test_detection_threshold_shift_is_caught(reference, truth, tmp_path):
    emulated = _measure(truth, 11, threshold=1.1 * SNR_THRESHOLD)
    shifted = ev.fidelity_report(reference, emulated, tmp_path, plots=False)
    assert shifted["detection_max_abs_diff"] > 0.05
    assert shifted["detection_max_abs_z"] > 6
    assert shifted["detection_fraction_emu"] < shifted["detection_fraction_ref"]


def test_detection_probabilities_remove_binomial_noise(truth, tmp_path):
    """Compared as probabilities (simulator's p_detect, emulator's p_detected) on both sides."""
    ref = _measure(truth, 10, probability="p_detect")
    same = ev.fidelity_report(ref, _measure(truth, 11, probability="p_detected"), tmp_path / "a")
    assert same["detection_compared"] == ["p_detect", "p_detected"]
    assert same["detection_max_abs_diff"] < 0.03
    assert math.isnan(same["detection_max_abs_z"])
    emulated = _measure(truth, 11, threshold=1.1 * SNR_THRESHOLD, probability="p_detected")
    shifted = ev.fidelity_report(ref, emulated, tmp_path / "b", plots=False)
    assert shifted["detection_max_abs_diff"] > 0.05


def test_files_written(same):
    report, out = same
    on_disk = json.loads((out / "report.json").read_text())
    for key in ("c2st_auc", "c2st_auc_detected", "ks_max", "detection_max_abs_diff", "n_rows"):
        assert on_disk[key] == report[key]
    assert {"ks_r", "ks_i", "ks_z", "ks_dmag_i", "ks_r-i", "ks_i-z"} <= set(on_disk)
    assert set(report["plots"]) == {
        "cmd_ri_i.png",
        "dmag_vs_true_mag.png",
        "detection_vs_true_mag.png",
        "detection_vs_depth.png",
        "obs_mag_hist.png",
        "selection_vs_true_mag.png",
    }
    for name in report["tables"] + report["plots"]:
        assert (out / name).stat().st_size > 1000
    for name in report["plots"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    by_mag = pd.read_csv(out / "dmag_by_true_mag.csv")
    assert set(by_mag.band) == set(BANDS)
    for who in ("ref", "emu"):
        assert {f"{who}_{s}" for s in ("count", "mean", "median", "std", "width")} <= set(
            by_mag.columns
        )
    detection = pd.read_csv(out / "detection_by_bin.csv")
    assert detection["count"].sum() == N
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_logs_to_mlflow(same, tmp_path):
    report, out = same
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    with mlflow.start_run() as run:
        log_report(report, out)
    logged = mlflow.get_run(run.info.run_id).data.metrics
    assert logged["test/c2st_auc"] == pytest.approx(report["c2st_auc"])
    assert logged["test/ks_max"] == pytest.approx(report["ks_max"])
    assert logged["test/ks_r_minus_i"] == pytest.approx(report["ks_r-i"])
    assert "test/seed" not in logged
    client = mlflow.MlflowClient()
    names = {a.path for a in client.list_artifacts(run.info.run_id, "fidelity")}
    assert {"fidelity/report.json", "fidelity/cmd_ri_i.png", "fidelity/detection_by_bin.csv"} <= (
        names
    )


def test_max_rows_subsamples_the_same_rows_deterministically(reference, truth, tmp_path):
    emulated = _measure(truth, 11)
    a = ev.fidelity_report(reference, emulated, tmp_path / "a", max_rows=5000, plots=False)
    b = ev.fidelity_report(reference, emulated, tmp_path / "b", max_rows=5000, plots=False)
    assert a["n_rows"] == 5000
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN-safe equality
    assert a["c2st_auc"] < 0.56  # the same rows of both frames: still indistinguishable


@pytest.mark.parametrize("column", ["obs_mag_z", "depth_i", "psf_fwhm_r", "detected"])
def test_missing_column_is_named(reference, column, tmp_path):
    with pytest.raises(DataError, match=f"emulated rows: missing column.*{column}"):
        ev.fidelity_report(reference, reference.drop(columns=[column]), tmp_path)
    with pytest.raises(DataError, match=f"reference rows: missing column.*{column}"):
        ev.fidelity_report(reference.drop(columns=[column]), reference, tmp_path)


def test_frames_must_hold_the_same_rows(reference, tmp_path):
    with pytest.raises(DataError, match="rows"):
        ev.fidelity_report(reference, reference.iloc[:-10], tmp_path)
    with pytest.raises(DataError, match="true_mag_r"):
        ev.fidelity_report(reference, reference.sample(frac=1.0, random_state=0), tmp_path)
    with pytest.raises(DataError, match="too few"):
        ev.fidelity_report(reference.iloc[:10], reference.iloc[:10], tmp_path)


def test_sizeless_catalog_runs(truth, tmp_path):
    """No ``true_size`` anywhere: the legacy spec drops it and nothing else asks for it."""
    sizeless = truth.drop(columns=["true_size"])
    ref, emu = _measure(sizeless, 10), _measure(sizeless, 11)
    report = ev.fidelity_report(ref, emu, tmp_path, max_rows=5000)
    assert report["survey"] == "riz" and report["n_rows"] == 5000
    assert report["ks_max"] < 0.05
    assert abs(report["c2st_auc"] - 0.5) < 4 * report["c2st_auc_err"]
    assert report["selected_fraction_ref"] == report["detection_fraction_ref"]  # "detected"
    assert "nz_bins" not in report and "nz_by_bin.csv" not in report["tables"]
    assert "selection_vs_true_mag.png" in report["plots"]
    spec = ev.resolve_spec(None, None, ref)
    assert "true_size" not in spec.input_columns
    assert ev.c2st_features(ref, spec).shape == (N, 3 + 6 + 3 * 4 + 1)
    with_size = ev.resolve_spec(None, None, truth)
    assert ev.c2st_features(_measure(truth, 10), with_size).shape == (N, 3 + 1 + 6 + 3 * 4 + 1)


def test_spec_and_bands_must_agree(reference, tmp_path):
    spec = ev.resolve_spec(None, ("r", "i", "z"), reference)
    assert ev.resolve_spec(spec, ("r", "i", "z"), reference) is spec
    with pytest.raises(DataError, match="bands"):
        ev.fidelity_report(reference, reference, tmp_path, spec=spec, bands=("g", "r"))
