"""Fidelity of a transfer-function emulator against known truth.

Both frames hold the *same* rows in the same order (the same truth and conditions):
``reference`` the simulated (or real Balrog) measurements, ``emulated`` the emulator's draw for
the same inputs.  Columns, per band ``b``: ``true_mag_b`` (AB), ``psf_fwhm_b`` (arcsec),
``depth_b`` (10-sigma point-source limiting AB magnitude), ``obs_mag_b`` (AB, NaN when not
detected), ``detected`` (bool); optionally ``true_size`` (arcsec), and per-row detection
probabilities ``p_detect`` (reference, as the simulator writes them) and ``p_detected``
(emulated, as :meth:`galray.emulator.bundle.Emulator.sample` returns them).  Observed magnitudes of
undetected rows are ignored.

``report.json`` holds:

* ``ks_<b>``: two-sample KS statistic D of the observed magnitude among detected rows, per band;
  ``ks_dmag_<b>`` of ``obs - true``; ``ks_<b1>-<b2>`` of the observed colours of adjacent bands
  (r-i, i-z); ``ks_max``: the largest per-band ``ks_<b>`` (target: <= 0.02).
* ``dmag_by_true_mag.csv`` / ``dmag_by_depth.csv``: count, mean, median, std and robust width
  (1.4826 MAD) of ``obs - true`` per band in 0.5-mag bins of true magnitude and in depth
  quintiles, reference and emulated side by side.
* ``detection_by_bin.csv``: detection fraction in (``depth_i`` quintile, 0.5-mag ``true_mag_i``)
  bins; ``detection_max_abs_diff``: the largest |emulated - reference| over bins with at least
  ``min_bin_rows`` rows.  Where a frame carries per-row probabilities their mean is compared
  instead of the 0/1 outcomes (same expectation, no binomial noise; ``detection_compared``
  says which).  ``detection_max_abs_z``: the largest |difference| in units of the binomial
  noise of the sides compared by outcomes (NaN when both compare probabilities).
* ``c2st_auc``: classifier two-sample test.  A gradient-boosted classifier learns to tell
  emulated from reference rows from truth, conditions, observed magnitudes, ``obs - true``, the
  flux residual in units of the depth's noise, and the detected flag; its ROC AUC on held-out
  rows is reported (0.5: indistinguishable).  The split is by row, so a row's two versions
  always fall in the same half and the shared truth can never identify a label.
  Undetected rows carry only the flag, so where most rows are undetected they dilute the AUC
  towards 0.5 however good the classifier; ``c2st_auc_detected`` repeats the test on the
  detected rows alone and measures the photometry undiluted.

  Calibration (simulator transfer function, 45k rows per side, 21 % detected; the
  Bayes-optimal AUC in brackets): independent draws 0.50 / 0.49 (detected only); a 2 % flux
  bias in one band 0.52 [0.525] / 0.59 [0.60]; extra Gaussian flux noise of 5 % of the flux
  in one band 0.52 [0.522] / 0.58 [0.595].
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

from galray.errors import DataError
from galray.io import atomic_path, write_json

MAG_BIN_WIDTH = 0.5  # mag
DEPTH_BINS = 5  # quantile bins of depth
MIN_ROWS = 100
REPORT_NAME = "report.json"
TRUTH_TOLERANCE = 1e-3  # mag: float32 storage of a float64 truth must still count as equal

# -------------------------------------------------------------------------- inputs


def required_columns(bands: Sequence[str]) -> list[str]:
    per_band = ("true_mag", "psf_fwhm", "depth", "obs_mag")
    return [f"{q}_{b}" for b in bands for q in per_band] + ["detected"]


def _check_inputs(reference: pd.DataFrame, emulated: pd.DataFrame, bands: Sequence[str]) -> None:
    needed = required_columns(bands)
    for name, frame in (("reference", reference), ("emulated", emulated)):
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise DataError(f"{name} rows: missing column(s) {missing}")
        if frame["detected"].isna().any():
            raise DataError(f"{name} rows: column 'detected' holds missing values")
    if len(reference) != len(emulated):
        raise DataError(
            f"reference has {len(reference)} rows, emulated {len(emulated)}: they must hold "
            "the same rows"
        )
    if len(reference) < MIN_ROWS:
        raise DataError(f"reference rows: {len(reference)} are too few to evaluate")
    for c in [f"{q}_{b}" for b in bands for q in ("true_mag", "depth")]:
        a, e = reference[c].to_numpy(np.float64), emulated[c].to_numpy(np.float64)
        differ = ~np.isclose(a, e, rtol=0.0, atol=TRUTH_TOLERANCE, equal_nan=True)
        if differ.any():
            raise DataError(
                f"emulated rows: column {c!r} differs from the reference in {differ.sum()} "
                "rows; both frames must hold the same rows in the same order"
            )


def _standardise(frame: pd.DataFrame, rows: np.ndarray | None, bands: Sequence[str]):
    """The rows to evaluate, index reset, ``detected`` bool, ``obs_mag`` NaN where undetected."""
    frame = frame.iloc[rows] if rows is not None else frame
    frame = frame.reset_index(drop=True)
    detected = frame["detected"].astype(bool).to_numpy()
    masked = {
        f"obs_mag_{b}": np.where(detected, frame[f"obs_mag_{b}"].to_numpy(np.float64), np.nan)
        for b in bands
    }
    return frame.assign(detected=detected, **masked)


# -------------------------------------------------------------------------- KS statistics


def _ks(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size == 0 or b.size == 0:
        return math.nan
    return float(ks_2samp(a, b).statistic)


def _nanmax(values) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(max(finite)) if finite else math.nan


def ks_statistics(ref: pd.DataFrame, emu: pd.DataFrame, bands: Sequence[str]) -> dict[str, float]:
    """KS D of detected rows' observed magnitudes, ``obs - true`` and adjacent-band colours."""
    out: dict[str, float] = {}
    rd, ed = ref[ref.detected], emu[emu.detected]
    for b in bands:
        out[f"ks_{b}"] = _ks(rd[f"obs_mag_{b}"], ed[f"obs_mag_{b}"])
        out[f"ks_dmag_{b}"] = _ks(
            rd[f"obs_mag_{b}"] - rd[f"true_mag_{b}"], ed[f"obs_mag_{b}"] - ed[f"true_mag_{b}"]
        )
    for b1, b2 in itertools.pairwise(bands):
        out[f"ks_{b1}-{b2}"] = _ks(
            rd[f"obs_mag_{b1}"] - rd[f"obs_mag_{b2}"], ed[f"obs_mag_{b1}"] - ed[f"obs_mag_{b2}"]
        )
    out["ks_max"] = _nanmax(out[f"ks_{b}"] for b in bands)
    return out


# -------------------------------------------------------------------------- binned tables


def magnitude_bins(values) -> np.ndarray:
    """Edges every :data:`MAG_BIN_WIDTH` mag on whole multiples, covering the finite values."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    lo = np.floor(values.min() / MAG_BIN_WIDTH) * MAG_BIN_WIDTH
    hi = np.ceil(values.max() / MAG_BIN_WIDTH) * MAG_BIN_WIDTH
    return np.arange(lo, max(hi, lo + MAG_BIN_WIDTH) + 1e-9, MAG_BIN_WIDTH)


def depth_bins(values) -> np.ndarray:
    """Quantile edges (:data:`DEPTH_BINS` bins; fewer where depths repeat)."""
    values = np.asarray(values, np.float64)
    edges = np.unique(np.nanquantile(values, np.linspace(0.0, 1.0, DEPTH_BINS + 1)))
    return edges if edges.size > 1 else np.array([edges[0] - 1e-6, edges[0] + 1e-6])


def _labels(index) -> list[str]:
    return [f"{iv.left:.2f}-{iv.right:.2f}" for iv in index]


def _dmag_stats(frame: pd.DataFrame, band: str, by: pd.Series) -> pd.DataFrame:
    det = frame.detected.to_numpy()
    dmag = (frame[f"obs_mag_{band}"] - frame[f"true_mag_{band}"])[det]
    grouped = dmag.groupby(by[det], observed=False)
    deviation = (dmag - grouped.transform("median")).abs()
    return pd.DataFrame(
        {
            "count": grouped.count(),
            "mean": grouped.mean(),
            "median": grouped.median(),
            "std": grouped.std(),
            "width": 1.4826 * deviation.groupby(by[det], observed=False).median(),
        }
    )


def dmag_table(ref: pd.DataFrame, emu: pd.DataFrame, bands: Sequence[str], by: str) -> pd.DataFrame:
    """``obs - true`` per band in bins of ``by`` (``"true_mag"`` or ``"depth"``), side by side.

    One row per (band, bin): ``ref_count, ref_mean, ref_median, ref_std, ref_width`` and the
    same with ``emu_``; ``width`` is 1.4826 x the median absolute deviation (mag)."""
    edges_of = magnitude_bins if by == "true_mag" else depth_bins
    parts = []
    for b in bands:
        column = f"{by}_{b}"
        key = pd.cut(ref[column], edges_of(ref[column]), include_lowest=True)
        r = _dmag_stats(ref, b, key).add_prefix("ref_")
        e = _dmag_stats(emu, b, key).add_prefix("emu_")
        table = pd.concat([r, e], axis=1)
        table.insert(0, "band", b)
        table.insert(1, "bin", _labels(table.index))
        table.insert(2, "bin_centre", [iv.mid for iv in table.index])
        parts.append(table.reset_index(drop=True))
    return pd.concat(parts, ignore_index=True)


def _detection_values(frame: pd.DataFrame, probability: str) -> tuple[pd.Series, str]:
    """Per-row detection probability where the frame carries one, else the 0/1 outcome."""
    if probability in frame.columns and frame[probability].notna().all():
        return frame[probability].astype(np.float64), probability
    return frame.detected.astype(np.float64), "detected"


def detection_table(ref: pd.DataFrame, emu: pd.DataFrame, band: str = "i") -> pd.DataFrame:
    """Detection fraction in (depth quantile, 0.5-mag true magnitude) bins of ``band``.

    Columns: ``depth_bin, true_mag_bin, depth_centre, true_mag_centre, count, ref_detected,
    emu_detected, diff`` (emulated - reference) and ``z`` (diff over its binomial noise).
    ``attrs["compared"]`` names what each side averages (a probability column or ``detected``).
    """
    keys = [
        pd.cut(ref[f"depth_{band}"], depth_bins(ref[f"depth_{band}"]), include_lowest=True),
        pd.cut(ref[f"true_mag_{band}"], magnitude_bins(ref[f"true_mag_{band}"])),
    ]
    ref_p, ref_src = _detection_values(ref, "p_detect")
    emu_p, emu_src = _detection_values(emu, "p_detected")
    r = ref_p.groupby(keys, observed=True).agg(["count", "mean"])
    e = emu_p.groupby(keys, observed=True).mean()
    table = pd.DataFrame({"count": r["count"], "ref_detected": r["mean"], "emu_detected": e})
    table = table.reset_index()
    table.columns = ["depth_bin", "true_mag_bin", "count", "ref_detected", "emu_detected"]
    table.insert(2, "depth_centre", [iv.mid for iv in table.depth_bin])
    table.insert(3, "true_mag_centre", [iv.mid for iv in table.true_mag_bin])
    table["depth_bin"] = _labels(table.depth_bin)
    table["true_mag_bin"] = _labels(table.true_mag_bin)
    table["diff"] = table.emu_detected - table.ref_detected
    # binomial noise of each side compared by outcomes; probabilities add none
    sides = (ref_src == "detected") + (emu_src == "detected")
    p = 0.5 * (table.ref_detected + table.emu_detected)
    noise = np.sqrt(sides * p * (1.0 - p) / table["count"])
    table["z"] = np.where(noise > 0, table["diff"] / noise.where(noise > 0, 1.0), np.nan)
    table.attrs["compared"] = [ref_src, emu_src]
    return table


# -------------------------------------------------------------------------- classifier test


def c2st_features(frame: pd.DataFrame, bands: Sequence[str], with_size: bool) -> np.ndarray:
    """Classifier inputs per row: truth, conditions, observed magnitudes (NaN if undetected),
    ``obs - true``, the flux residual in units of the depth's point-source noise, detected."""

    def col(name: str) -> np.ndarray:
        return frame[name].to_numpy(np.float64)

    parts = [col(f"true_mag_{b}") for b in bands] + ([col("true_size")] if with_size else [])
    parts += [col(f"{q}_{b}") for b in bands for q in ("psf_fwhm", "depth")]
    for b in bands:
        obs, true, depth = col(f"obs_mag_{b}"), col(f"true_mag_{b}"), col(f"depth_{b}")
        # (F_obs - F_true) / sigma, sigma = F(depth) / 10: a flux error in units of the noise
        # where it is made, which trees cannot assemble from magnitudes in a few splits
        pull = 10.0 * (10.0 ** (-0.4 * (obs - depth)) - 10.0 ** (-0.4 * (true - depth)))
        parts += [obs, obs - true, pull]
    parts.append(frame.detected.to_numpy(np.float64))
    return np.stack(parts, axis=1)


def classifier_two_sample_test(
    ref: pd.DataFrame,
    emu: pd.DataFrame,
    bands: Sequence[str],
    seed: int = 0,
    *,
    detected_only: bool = False,
) -> float:
    """Held-out ROC AUC of a gradient-boosted classifier separating ``emu`` (1) from ``ref`` (0).

    Rows (pairs of a reference and an emulated version) are split 50/50 with ``seed``, so both
    halves hold the two labels equally.  ``detected_only``: use each frame's detected rows only.
    NaN when a half holds fewer than 20 rows of a label.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score

    n = len(ref)
    halves = np.array_split(np.random.default_rng(seed).permutation(n), 2)
    with_size = "true_size" in ref.columns and "true_size" in emu.columns
    x_ref, x_emu = c2st_features(ref, bands, with_size), c2st_features(emu, bands, with_size)
    keep_ref = ref.detected.to_numpy() if detected_only else np.ones(n, bool)
    keep_emu = emu.detected.to_numpy() if detected_only else np.ones(n, bool)

    def labelled(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r, e = rows[keep_ref[rows]], rows[keep_emu[rows]]
        return np.concatenate([x_ref[r], x_emu[e]]), np.repeat([0.0, 1.0], [r.size, e.size])

    (x_train, y_train), (x_test, y_test) = labelled(halves[0]), labelled(halves[1])
    if min(np.bincount(y.astype(int), minlength=2).min() for y in (y_train, y_test)) < 20:
        return math.nan
    clf = HistGradientBoostingClassifier(
        learning_rate=0.05,
        max_iter=500,
        max_leaf_nodes=15,
        l2_regularization=1.0,
        early_stopping=True,
        validation_fraction=0.2,
        n_iter_no_change=40,
        random_state=seed,
    )
    clf.fit(x_train, y_train)
    return float(roc_auc_score(y_test, clf.predict_proba(x_test)[:, 1]))


# -------------------------------------------------------------------------- the report


def fidelity_report(
    reference: pd.DataFrame,
    emulated: pd.DataFrame,
    out_dir: str | Path,
    *,
    bands: Sequence[str] = ("r", "i", "z"),
    seed: int = 0,
    max_rows: int | None = None,
    min_bin_rows: int = 500,
    plots: bool = True,
) -> dict:
    """Compare ``emulated`` with ``reference`` (the same rows); write tables, plots, report.json.

    max_rows: evaluate a random subset of this many rows (drawn with ``seed``, the same rows of
    both frames).  min_bin_rows: detection bins with fewer rows are left out of
    ``detection_max_abs_diff``.  Returns the report (see the module docstring); its ``tables``
    and ``plots`` are file names inside ``out_dir``.  Raises :class:`DataError` naming a missing
    column, or when the frames do not hold the same rows.
    """
    bands = tuple(bands)
    _check_inputs(reference, emulated, bands)
    rows = None
    if max_rows is not None and len(reference) > max_rows:
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(len(reference), size=max_rows, replace=False))
    ref = _standardise(reference, rows, bands)
    emu = _standardise(emulated, rows, bands)

    report: dict = {"n_rows": len(ref), "bands": list(bands), "seed": seed}
    report.update(ks_statistics(ref, emu, bands))
    tables = {
        "dmag_by_true_mag": dmag_table(ref, emu, bands, "true_mag"),
        "dmag_by_depth": dmag_table(ref, emu, bands, "depth"),
        "detection_by_bin": detection_table(ref, emu, "i" if "i" in bands else bands[0]),
    }
    det = tables["detection_by_bin"]
    used = det[det["count"] >= min_bin_rows]
    report["detection_max_abs_diff"] = _nanmax(used["diff"].abs())
    report["detection_max_abs_z"] = _nanmax(used["z"].abs())
    report["detection_bins_used"] = len(used)
    report["detection_compared"] = det.attrs["compared"]
    report["detection_fraction_ref"] = float(ref.detected.mean())
    report["detection_fraction_emu"] = float(emu.detected.mean())
    report["c2st_auc"] = classifier_two_sample_test(ref, emu, bands, seed)
    report["c2st_auc_detected"] = classifier_two_sample_test(
        ref, emu, bands, seed, detected_only=True
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        with atomic_path(out / f"{name}.csv") as tmp:
            table.to_csv(tmp, index=False)
    report["tables"] = [f"{name}.csv" for name in tables]
    if plots:
        from galray.evaluation.plots import fidelity_plots

        report["plots"] = fidelity_plots(ref, emu, bands, tables, out)
    else:
        report["plots"] = []
    write_json(report, out / REPORT_NAME)
    return report
