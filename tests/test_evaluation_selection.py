"""The fidelity report on a survey spec with flux errors, continuous outputs, a flag and a
redshift: KS and total-variation statistics of every output, the classifier test with its error,
the selected fraction, and the n(z) of the selection per tomographic bin.

Data come from a toy survey defined here (numpy only): per band, observed flux = true flux +
N(0, sigma) with sigma set by the 10-sigma depth; a flux error scattered around sigma; the i-band
S/N; a size ratio whose median falls with redshift (redshift is no input of the emulator, so an
emulator that misses this dependence selects the wrong n(z)); an integer flag.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from galray.datasets.schema import flux_to_mag, mag_to_flux
from galray.datasets.survey import SurveySpec
from galray.evaluation import emulator as ev
from galray.evaluation import selection as sel

N = 20_000
SPEC = SurveySpec.from_dict(
    {
        "name": "toy",
        "bands": ["g", "r", "i"],
        "deep": {"bands": ["g", "r", "i"], "morphology": {"true_T": "log"}, "redshift": "true_z"},
        "conditions": {"per_band": ["psf_fwhm", "depth"], "band_independent": ["ebv"]},
        "outputs": {
            "flux_err": True,
            "continuous": {"snr": "log", "size_ratio": "log"},
            "flags": ["flags"],
        },
        "selection": "detected & flags == 0 & snr > 10 & size_ratio > 1",
        "tomography": {"quantity": "mag_i", "bins": 3},
    }
)
LN_SIZE_RATIO_SLOPE = -1.5  # d ln(size_ratio) / dz in the reference
Z_RANGE = (0.1, 1.5)


def _truth(n: int = N) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    z = rng.uniform(*Z_RANGE, n)
    mag_i = 19.5 + 2.0 * z + rng.normal(0.0, 0.8, n)
    rows = {
        "true_mag_g": mag_i + 0.8 + 0.3 * z + rng.normal(0.0, 0.1, n),
        "true_mag_r": mag_i + 0.4 + rng.normal(0.0, 0.1, n),
        "true_mag_i": mag_i,
        "true_T": np.exp(rng.normal(-1.0, 0.5, n)) / (1.0 + z),
    }
    for b in SPEC.bands:
        rows[f"psf_fwhm_{b}"] = rng.uniform(0.8, 1.3, n)
        rows[f"depth_{b}"] = 23.8 + rng.uniform(-0.5, 0.5, n)
    rows["ebv"] = rng.uniform(0.0, 0.1, n)
    rows["true_z"] = z
    return pd.DataFrame(rows)


def _measure(
    truth: pd.DataFrame,
    seed: int,
    *,
    snr_scale: float = 1.0,
    flag_rate: float = 0.1,
    size_ratio_knows_z: bool = True,
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = len(truth)
    frame = truth.copy()
    for b in SPEC.bands:
        sigma = mag_to_flux(truth[f"depth_{b}"].to_numpy()) / 10.0
        flux = mag_to_flux(truth[f"true_mag_{b}"].to_numpy()) + sigma * rng.standard_normal(n)
        frame[f"obs_flux_{b}"] = flux
        frame[f"obs_flux_err_{b}"] = sigma * np.exp(rng.normal(0.0, 0.05, n))
    snr = (frame.obs_flux_i / frame.obs_flux_err_i).to_numpy()
    detected = snr > 5.0
    z = truth.true_z.to_numpy()
    if size_ratio_knows_z:
        ln_ratio = 0.3 + LN_SIZE_RATIO_SLOPE * (z - 0.8) + rng.normal(0.0, 0.4, n)
    else:  # the same marginal distribution, blind to z
        sd = np.hypot(0.4, LN_SIZE_RATIO_SLOPE * (Z_RANGE[1] - Z_RANGE[0]) / np.sqrt(12.0))
        ln_ratio = 0.3 + LN_SIZE_RATIO_SLOPE * (z.mean() - 0.8) + rng.normal(0.0, sd, n)
    frame["obs_snr"] = snr * snr_scale
    frame["obs_size_ratio"] = np.exp(ln_ratio)
    u = rng.random(n)
    frame["obs_flags"] = np.where(u < flag_rate, np.where(u < 0.3 * flag_rate, 2, 1), 0)
    for b in SPEC.bands:
        frame[f"obs_mag_{b}"] = flux_to_mag(frame[f"obs_flux_{b}"])
    for c in [f"obs_mag_{b}" for b in SPEC.bands] + SPEC.measured_columns:
        frame[c] = np.where(detected, frame[c], np.nan)
    frame["detected"] = detected
    return frame


@pytest.fixture(scope="module")
def truth():
    return _truth()


@pytest.fixture(scope="module")
def reference(truth):
    return _measure(truth, 10)


@pytest.fixture(scope="module")
def same(reference, truth, tmp_path_factory):
    out = tmp_path_factory.mktemp("same")
    report = ev.fidelity_report(reference, _measure(truth, 11), out, spec=SPEC, min_bin_rows=200)
    return report, out


def test_identical_distributions_agree_within_errors(same):
    report, _ = same
    assert report["survey"] == "toy" and report["bands"] == ["g", "r", "i"]
    for key in ("ks_obs_snr", "ks_obs_size_ratio", "ks_obs_flux_err_i", "ks_obs_flux_r"):
        assert report[key] < 0.03, key
    assert report["tv_obs_flags"] < 0.02
    assert "ks_obs_flags" not in report
    assert report["ks_max"] < 0.03
    # the classifier cannot tell them apart, and its error is the size a 10k-row test half gives
    for key in ("c2st_auc", "c2st_auc_detected"):
        err = report[f"{key}_err"]
        assert 0.001 < err < 0.01
        assert abs(report[key] - 0.5) < 4 * err, key
    # selection: about half the rows, the same fraction within the binomial errors, per bin
    assert 0.3 < report["selected_fraction_ref"] < 0.7
    assert abs(report["selected_fraction_z"]) < 3
    assert report["selection_bins_used"] >= 15
    assert report["selection_max_z"] < 4
    assert report["selection_max_abs_diff"] < 0.06
    assert report["selection_max_abs_diff_lower"] < 0.01  # no bin demands a difference
    # n(z): three bins of increasing mean redshift, equal within ~2 sigma
    assert report["nz_bins"] == 3
    means = [report[f"nz_mean_z_ref_{k}"] for k in range(3)]
    assert means == sorted(means) and means[2] - means[0] > 0.3
    assert report["nz_max_sigma"] < 2.5
    assert report["nz_mean_z_max_abs_diff"] < 3 * max(
        report[f"nz_mean_z_err_{k}"] for k in range(3)
    )


def test_files_written(same):
    report, out = same
    on_disk = json.loads((out / "report.json").read_text())
    for key in ("nz_max_sigma", "selection_max_z", "c2st_auc_err", "tv_obs_flags"):
        assert on_disk[key] == report[key]
    assert {"selection_by_bin.csv", "nz_by_bin.csv"} <= set(report["tables"])
    assert {"selection_vs_true_mag.png", "nz_by_bin.png", "cmd_ri_i.png"} <= set(report["plots"])
    for name in report["plots"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    nz = pd.read_csv(out / "nz_by_bin.csv")
    assert list(nz["bin"]) == [0, 1, 2]
    assert nz.ref_count.sum() == pytest.approx(report["selected_fraction_ref"] * N, abs=1)
    assert (nz.ref_count.max() - nz.ref_count.min()) <= 3  # quantile bins of the reference
    for stat in ("mean_z", "std_z"):
        assert (nz[f"diff_{stat}_err"] > 0).all()
        assert np.allclose(nz[f"diff_{stat}"], nz[f"emu_{stat}"] - nz[f"ref_{stat}"])
    table = pd.read_csv(out / "selection_by_bin.csv")
    assert table["count"].sum() == N
    assert table.depth_bin.nunique() == sel.SELECTION_DEPTH_BINS
    assert {"ref_err", "emu_err", "diff_err", "z"} <= set(table.columns)


def test_shifted_measurement_and_flags_are_caught(reference, truth, same, tmp_path):
    emulated = _measure(truth, 11, snr_scale=1.3, flag_rate=0.2)
    report = ev.fidelity_report(
        reference, emulated, tmp_path, spec=SPEC, plots=False, max_rows=6000
    )
    assert report["ks_obs_snr"] > 0.06 > 4 * same[0]["ks_obs_snr"]
    assert report["tv_obs_flags"] > 0.08
    assert report["ks_max"] >= report["ks_obs_snr"]
    assert report["ks_obs_size_ratio"] < 0.03  # untouched outputs stay close
    assert report["ks_obs_flux_err_i"] < 0.03
    assert report["c2st_auc_detected"] > 0.5 + 10 * report["c2st_auc_detected_err"]
    assert report["c2st_auc"] > 0.5 + 10 * report["c2st_auc_err"]


def test_redshift_blind_selection_is_caught_by_nz(reference, truth, tmp_path):
    """The reference's size ratio (and so its selection) prefers low z; the emulated one has
    the right marginal distribution but no z dependence."""
    emulated = _measure(truth, 11, size_ratio_knows_z=False)
    report = ev.fidelity_report(
        reference, emulated, tmp_path, spec=SPEC, plots=False, max_rows=6000
    )
    assert report["nz_max_sigma"] > 10
    shifts = [report[f"nz_mean_z_emu_{k}"] - report[f"nz_mean_z_ref_{k}"] for k in range(3)]
    assert max(shifts) > 0.05 and min(shifts) > 0  # the emulated selection reaches higher z
    assert report["nz_mean_z_max_abs_diff"] == pytest.approx(max(np.abs(shifts)))


def test_selected_column_is_used(reference, truth, tmp_path):
    emulated = _measure(truth, 11)
    # a redshift-independent selection of the same overall size
    rate = sel.selection_mask(reference, SPEC).mean() / emulated.detected.mean()
    emulated["selected"] = emulated.detected & (np.random.default_rng(5).random(N) < rate)
    ref_sel, emu_sel = sel.selection_mask(reference, SPEC), sel.selection_mask(emulated, SPEC)
    assert (emu_sel == emulated.selected).all()
    bins = sel.redshift_bins(reference, emulated, ref_sel, emu_sel, SPEC)
    assert np.abs(bins.table.sigma_mean_z).max() > 10
    summary = sel.selection_summary(
        sel.selection_table(reference, emulated, ref_sel, emu_sel, "i", "depth_i"),
        ref_sel,
        emu_sel,
        200,
    )
    assert summary["selected_fraction_emu"] == pytest.approx(emulated.selected.mean())
    assert summary["selection_max_z"] > 5  # the cut on S/N and size is gone


def test_nz_bootstrap_error_matches_the_scatter_of_draws(truth):
    """The paired bootstrap error of the mean-z difference matches its scatter over
    independent measurements of both frames (independent errors of the two sides would be
    ~2x too big: most galaxies are selected in both)."""
    diffs, errors, side_errors = [], [], []
    for seed in range(20, 44):
        ref, emu = _measure(truth, 2 * seed), _measure(truth, 2 * seed + 1)
        table = sel.redshift_bins(
            ref, emu, sel.selection_mask(ref, SPEC), sel.selection_mask(emu, SPEC), SPEC, seed
        ).table
        diffs.append(table.diff_mean_z.to_numpy())
        errors.append(table.diff_mean_z_err.to_numpy())
        side_errors.append(np.hypot(table.ref_mean_z_err, table.emu_mean_z_err))
    ratio = np.std(diffs, axis=0, ddof=1) / np.mean(errors, axis=0)
    assert ((ratio > 0.65) & (ratio < 1.5)).all(), ratio
    assert (np.mean(errors, axis=0) < 0.75 * np.mean(side_errors, axis=0)).all()


def test_tomography_band():
    assert sel.tomography_band(SPEC) == "i"
    colour = SurveySpec.from_dict({**SPEC.to_dict(), "tomography": {"quantity": "mag_r - mag_i"}})
    assert sel.tomography_band(colour) == "r"  # the middle of g, r, i
    z_band = SurveySpec.from_dict({**SPEC.to_dict(), "tomography": {"quantity": "flux_g"}})
    assert sel.tomography_band(z_band) == "g"


def test_auc_bootstrap_error_matches_the_binomial_formula():
    """Unpaired scores: the bootstrap error agrees with Hanley & McNeil's at AUC 0.5."""
    rng = np.random.default_rng(0)
    n = 4000
    scores = rng.random(2 * n)
    labels = np.repeat([0, 1], n)
    err = sel.auc_bootstrap_error(scores, labels, np.arange(2 * n), seed=1)
    assert err == pytest.approx(np.sqrt((1 / n + 1 / n) / 12.0), rel=0.2)


def test_auc_difference_of_two_classifiers_on_the_same_rows_is_paired():
    """Two scorers of the same rows that mostly agree: their AUCs differ by far less than
    either's error, and the paired bootstrap knows it (resampling each independently would give
    about sqrt(2) times either's error); the point value is the difference of the AUCs."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    n = 3000
    labels = rng.random(n) < 0.5
    a = labels * 0.3 + rng.normal(size=n)
    b = a + 0.05 * rng.normal(size=n)  # nearly the same classifier
    groups = np.arange(n)
    diff, err = sel.auc_difference((a, labels, groups), (b, labels, groups), seed=2)
    assert diff == pytest.approx(roc_auc_score(labels, a) - roc_auc_score(labels, b))
    single = sel.auc_bootstrap_error(a, labels, groups, seed=2)
    assert err < 0.25 * single
    # a better classifier on the same rows: the difference is many paired errors from zero
    c = labels * 0.6 + rng.normal(size=n)
    diff, err = sel.auc_difference((a, labels, groups), (c, labels, groups), seed=2)
    assert diff < -5 * err
    with pytest.raises(ValueError, match="same groups"):
        sel.auc_difference((a, labels, groups), (a[:-1], labels[:-1], groups[:-1]))


def test_a_bin_of_few_rows_does_not_demand_a_difference_a_bin_of_many_does():
    """selection_max_abs_diff_lower: |diff| - 2 err of the worst bin, at least 0.  A 0.03 difference over
    300 rows is noise; 0.03 over 30,000 rows is a difference of at least ~0.02."""
    rows = [
        {"count": n, "diff": d, "diff_err": np.sqrt(2 * 0.25 / n), "z": 0.0}
        for n, d in ((300, 0.03), (30_000, 0.0))
    ]
    noisy = sel.selection_summary(pd.DataFrame(rows), np.zeros(10), np.zeros(10), min_rows=100)
    assert noisy["selection_max_abs_diff"] == pytest.approx(0.03)
    assert noisy["selection_max_abs_diff_lower"] == 0.0  # within its noise
    rows[1]["diff"] = -0.03  # the large bin now differs for real
    real = sel.selection_summary(pd.DataFrame(rows), np.zeros(10), np.zeros(10), min_rows=100)
    assert real["selection_max_abs_diff_lower"] == pytest.approx(0.03 - 2 * rows[1]["diff_err"])
    assert real["selection_max_abs_diff_lower"] > 0.02
