"""Source-extraction evaluation of deep fields: a field matches itself, degraded fields are caught."""

from __future__ import annotations

import copy
import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from scipy.ndimage import gaussian_filter

from galray.cli import main
from galray.datasets.deepfield import DeepFieldConfig, simulate_deepfield
from galray.datasets.fitsfield import read_field, write_field
from galray.errors import DataError
from galray.evaluation.deepfield import (
    DetectionSettings,
    compare_catalogs,
    deepfield_report,
    extract_sources,
)

pytest.importorskip("sep")


@pytest.fixture(scope="module")
def real_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "real.fits"
    simulate_deepfield(path, DeepFieldConfig(size=640, seed=9, density=500), log=lambda *_: None)
    return path


@pytest.fixture(scope="module")
def real(real_path):
    return read_field(real_path)


def test_real_against_itself_is_a_perfect_match(real, tmp_path):
    report = deepfield_report(real, [real], tmp_path / "self")
    assert report["n_real"] > 50
    assert report["ks_p_min"] == pytest.approx(1.0)
    assert report["median_dmag_max"] == 0.0
    assert report["count_ratio"] == 1.0
    assert report["meets_targets"]
    on_disk = json.loads((tmp_path / "self" / "report.json").read_text())
    for key in ("ks_p_min", "median_dmag_max", "count_ratio"):
        assert on_disk[key] == pytest.approx(report[key])
    for name in ("magnitudes.png", "colours.png", "cutouts.png", "real_sources.parquet"):
        assert (tmp_path / "self" / name).is_file()
    assert not list((tmp_path / "self").glob(".*tmp*"))


def test_magnitudes_follow_the_zeropoint(real):
    cat = extract_sources(real, [31.4] * 3)
    brighter = extract_sources(real, [32.4] * 3)
    np.testing.assert_allclose(brighter.mag_i - cat.mag_i, 1.0, equal_nan=True)
    assert {"x", "y", "flux_r", "mag_z", "kron_radius"} <= set(cat.columns)
    edge = DetectionSettings().edge
    assert cat.x.min() >= edge and cat.y.max() <= 640 - 1 - edge


def test_a_dimmed_field_is_caught(real, tmp_path):
    dimmed = copy.deepcopy(real)
    dimmed.data = dimmed.data * np.float32(10 ** (-0.4 * 0.3))
    report = deepfield_report(real, [dimmed], tmp_path / "dim", plots=False)
    assert all(report[f"median_dmag_{b}"] == pytest.approx(0.3, abs=0.02) for b in "riz")
    assert report["count_ratio"] < 0.9  # fewer sources above each magnitude limit
    assert not report["meets_targets"]


def test_a_blurred_field_is_caught(real, tmp_path):
    blurred = copy.deepcopy(real)
    blurred.data = np.stack([gaussian_filter(b, 1.5) for b in real.data]).astype(np.float32)
    report = deepfield_report(real, [blurred], tmp_path / "blur", plots=False)
    assert abs(report["count_ratio"] - 1) > 0.2 or report["ks_p_min"] < 0.05
    assert not report["meets_targets"]


def test_sources_aligned_with_the_y_axis_are_measured(real):
    """sep reports theta in float32, and for an object elongated exactly along y it comes out
    as +-pi/2 by the sign of a rounding error; +pi/2 rounded up is rejected by sep's own
    aperture functions.  Streaks of several lengths: with this noise some land on +pi/2."""
    field = copy.deepcopy(real)
    rng = np.random.default_rng(3)
    field.data = rng.normal(0.0, 1e-3, real.data.shape).astype(np.float32)
    lengths = [6, 8, 10, 12, 16, 20]
    for k, length in enumerate(lengths):
        x = 60 + 100 * k
        field.data[:, 280:340, x - 10 : x + 11] = 0.0  # no noise pixel joins the object
        field.data[:, 296 : 296 + length, x] = 1.0  # one pixel wide: x2 = xy = 0
    cat = extract_sources(field, [30.0] * 3).sort_values("x")
    assert len(cat) == len(lengths)
    assert (np.abs(cat.theta) <= np.pi / 2).all()
    for band in "riz":
        assert np.isfinite(cat[f"mag_{band}"]).all()
        # the long ones are measured in their Kron ellipses (the short ones in the minimum
        # circle, which clips them): the whole streak
        long = cat[f"mag_{band}"].to_numpy()[-2:]
        np.testing.assert_allclose(long, 30.0 - 2.5 * np.log10(lengths[-2:]), atol=0.05)


def test_compare_catalogs_on_known_samples():
    rng = np.random.default_rng(0)
    import pandas as pd

    def catalog(n, shift=0.0):
        m = rng.uniform(22, 28, n) + shift
        return pd.DataFrame({"mag_r": m + 0.3, "mag_i": m})

    real = catalog(2000)
    same = compare_catalogs(real, 10.0, catalog(4000), 20.0, ["r", "i"], mag_limits=27.0)
    assert same["ks_p_min"] > 0.01 and abs(same["count_ratio"] - 1) < 0.1
    assert same["median_dmag_max"] < 0.15
    shifted = compare_catalogs(real, 10.0, catalog(2000, 0.5), 10.0, ["r", "i"], mag_limits=27.0)
    assert shifted["median_dmag_i"] == pytest.approx(0.5, abs=0.15)
    assert shifted["ks_p_min"] < 1e-3
    half = compare_catalogs(real, 10.0, catalog(1000), 10.0, ["r", "i"], mag_limits=27.0)
    assert half["count_ratio"] == pytest.approx(0.5, abs=0.08)


def test_sampling_errors_match_the_scatter_between_independent_catalogs():
    """The stated errors are what independent draws of the same population actually scatter
    by: a median of n uniform(22, 28) values has sigma 6 / (2 sqrt(n)); a count, sqrt(n)."""
    rng = np.random.default_rng(1)

    def catalog(n):
        return pd.DataFrame({"mag_i": rng.uniform(22, 28, rng.poisson(n))})

    reports = [
        compare_catalogs(catalog(2000), 10.0, catalog(2000), 10.0, ["i"], mag_limits=27.0)
        for _ in range(40)
    ]
    expected = np.sqrt(2) * 6 / (2 * np.sqrt(2000))  # difference of two medians
    errs = np.array([r["median_dmag_err_i"] for r in reports])
    assert np.median(errs) == pytest.approx(expected, rel=0.15)
    scatter = np.std([r["median_dmag_i"] for r in reports], ddof=1)
    assert scatter == pytest.approx(expected, rel=0.35)
    count_errs = np.array([r["count_ratio_err_i"] for r in reports])
    assert np.median(count_errs) == pytest.approx(np.sqrt(2 / (2000 * 5 / 6)), rel=0.1)
    assert all(r["median_dmag_max_sigma"] < 4 for r in reports)
    shifted = compare_catalogs(
        catalog(2000), 10.0, catalog(2000).assign(mag_i=lambda f: f.mag_i + 0.6), 10.0, ["i"],
        mag_limits=27.0,
    )  # fmt: skip
    assert shifted["median_dmag_max_sigma"] > 5


def test_evaluate_cli_writes_the_report_and_logs_to_mlflow(real_path, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    args = ["evaluate", "deepfield", "--real", str(real_path), "--generated", str(real_path)]
    assert main([*args, "--out", str(tmp_path / "report"), "--mag-limit", "27"]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["mag_limits"] == {"r": 27.0, "i": 27.0, "z": 27.0}
    runs = mlflow.search_runs(experiment_names=["galray-evaluation"])
    assert len(runs) == 1 and runs["metrics.test/count_ratio"].iloc[0] == 1.0


def test_bad_inputs_name_the_file(real, real_path, tmp_path, capsys):
    # missing file: the CLI prints one line naming it and exits 2
    code = main(["evaluate", "deepfield", "--real", str(real_path), "--generated",
                 str(tmp_path / "missing.fits"), "--out", str(tmp_path / "r"), "--no-mlflow"])  # fmt: skip
    assert code == 2 and "missing.fits" in capsys.readouterr().err
    two_bands = copy.deepcopy(real)
    two_bands.data, two_bands.bands = real.data[:2], real.bands[:2]
    two_bands.zeropoints, two_bands.path = real.zeropoints[:2], "two.fits"
    with pytest.raises(DataError, match=r"two\.fits: holds 2 band"):
        deepfield_report(real, [two_bands], tmp_path / "r2")
    nan = real.data.copy()
    nan[0, 5, 5] = np.nan
    fits.HDUList([fits.PrimaryHDU(), *[fits.ImageHDU(b) for b in nan]]).writeto(
        tmp_path / "nan.fits"
    )
    with pytest.raises(DataError, match=r"nan\.fits: non-finite"):
        read_field(tmp_path / "nan.fits")
    no_zp = copy.deepcopy(real)
    no_zp.zeropoints, no_zp.path = [None] * 3, "nozp.fits"
    write_field(tmp_path / "nozp.fits", no_zp)
    with pytest.raises(DataError, match=r"nozp\.fits: band r has no zeropoint"):
        deepfield_report(read_field(tmp_path / "nozp.fits"), [real], tmp_path / "r3")
