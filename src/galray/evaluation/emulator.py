"""Fidelity of a transfer-function emulator against known truth, for any survey spec.

Both frames hold the *same* rows in the same order (the same truth and conditions):
``reference`` the simulated (or real Balrog) measurements, ``emulated`` the emulator's draw for
the same inputs.  Columns are named by a :class:`~galray.datasets.survey.SurveySpec`: its truth
(``true_mag_<b>`` in AB, morphology) and condition columns (``<q>_<b>``, ``<q>``; ``<depth>_<b>``
the 10-sigma limiting AB magnitude), ``detected`` (bool), per wide band ``obs_mag_<b>`` (AB) and
``obs_flux_<b>`` (zeropoint 30; derived from ``obs_mag_<b>`` where a frame lacks it), the spec's
measured columns (``obs_flux_err_<b>``, continuous ``obs_<x>``, integer flags ``obs_<f>``) and
its redshift column when it names one.  Measurements of undetected rows are ignored.  Optional:
per-row detection probabilities ``p_detect`` (reference, as the simulator writes them) and
``p_detected`` (emulated, as :meth:`galray.emulator.bundle.Emulator.sample` returns them), and a
boolean ``selected`` column (in either frame; else ``spec.selection`` is evaluated on it).
Without a spec the frames follow the r, i, z contract of
:func:`~galray.datasets.survey.legacy_spec` (``true_size`` if the reference has it).

``report.json`` holds ``n_rows, survey, bands, selection, seed`` and:

* ``ks_<b>``: two-sample KS statistic D of the observed magnitude among detected rows, per band;
  ``ks_dmag_<b>`` of ``obs - true``; ``ks_<b1>-<b2>`` of the observed colours of adjacent bands;
  ``ks_obs_flux_<b>`` of the flux and ``ks_<column>`` of every continuous measured column
  (``ks_obs_flux_err_<b>``, ``ks_obs_snr``); ``tv_<flag>`` (``tv_obs_flags``): the total
  variation distance of a flag's value distribution (0.5 sum |p_ref - p_emu| over values; equals
  KS D for a 0/1 flag and is never below it, without KS's dependence on the order of bit
  values).  ``ks_max``: the largest of ``ks_<b>``, ``ks_obs_flux_<b>``, ``ks_<column>`` and
  ``tv_<flag>`` (target: <= 0.02).
* ``dmag_by_true_mag.csv`` / ``dmag_by_depth.csv``: count, mean, median, std and robust width
  (1.4826 MAD) of ``obs - true`` per band in 0.5-mag bins of true magnitude and in depth
  quintiles, reference and emulated side by side.
* ``detection_by_bin.csv``: detection fraction in (depth quintile, 0.5-mag true magnitude) bins
  of the ``i`` band (else the first); ``detection_max_abs_diff``: the largest |emulated -
  reference| over bins with at least ``min_bin_rows`` rows.  Where a frame carries per-row
  probabilities their mean is compared instead of the 0/1 outcomes (same expectation, no
  binomial noise; ``detection_compared`` says which).  ``detection_max_abs_z``: the largest
  |difference| in units of the binomial noise of the sides compared by outcomes (NaN when both
  compare probabilities).
* ``selection_by_bin.csv`` (:func:`~galray.evaluation.selection.selection_table`): the selected
  fraction in (depth tercile, 0.5-mag true magnitude) bins of the tomography band (``true_mag_i``
  for ``mag_i``; else the middle wide band) with binomial errors and z-scores;
  ``selection_max_abs_diff``, ``selection_max_z`` (bins with >= ``min_bin_rows`` rows,
  ``selection_bins_used``), ``selection_max_abs_diff_lower`` (the largest
  ``|diff| - 2 diff_err`` over those bins, at least 0: the 2-sigma lower bound of the worst
  bin's difference, the statistic to hold against a tolerance -- ``selection_max_abs_diff``
  over bins of a few hundred rows is their sampling noise), ``selected_fraction_ref``, ``selected_fraction_emu``, and the
  overall difference's ``selected_fraction_err`` and ``selected_fraction_z``.
* n(z), when the spec names a redshift: the selected galaxies of each frame split into
  ``spec.tomography.bins`` bins at the quantiles of ``spec.tomography.quantity`` over the
  selected reference galaxies; ``nz_by_bin.csv``
  (:func:`~galray.evaluation.selection.redshift_bins`) has counts, mean and standard deviation
  of z per bin with bootstrap errors; per bin ``k`` (0-based) ``nz_mean_z_ref_<k>``,
  ``nz_mean_z_emu_<k>`` and ``nz_mean_z_err_<k>`` (bootstrap error of the emulated - reference
  difference, a row's two versions resampled together); ``nz_mean_z_max_abs_diff``,
  ``nz_max_sigma`` (largest |difference| / error), ``nz_std_z_max_abs_diff``,
  ``nz_std_z_max_sigma``, ``nz_bins``.
* ``c2st_auc``: classifier two-sample test.  A gradient-boosted classifier learns to tell
  emulated from reference rows from truth, conditions (:func:`c2st_features`: observed
  magnitudes, ``obs - true``, the flux residual in units of the depth's noise and asinh of the
  flux S/N per band, every measured column through its transform, log of flux errors, flags as
  integers, the detected flag); its ROC AUC on held-out rows is reported (0.5:
  indistinguishable).  The split is by row, so a row's two versions always fall in the same half
  (never one in training and its twin held out) and the shared truth can never identify a label.
  Undetected rows carry only the flag, so where most rows are undetected they dilute the AUC
  towards 0.5 however good the classifier; ``c2st_auc_detected`` repeats the test on the
  detected rows alone and measures the photometry undiluted.  ``c2st_auc_err`` and
  ``c2st_auc_detected_err``: bootstrap error of the held-out AUC (rows resampled with both
  versions; the classifier is not refitted).

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

from galray.datasets.schema import mag_to_flux
from galray.datasets.survey import SurveySpec, legacy_spec
from galray.errors import DataError
from galray.evaluation.selection import (
    auc_bootstrap_error,
    bin_labels,
    depth_bins,
    depth_mag_table,
    magnitude_bins,
    nz_summary,
    redshift_bins,
    selection_mask,
    selection_summary,
    selection_table,
    tomography_band,
)
from galray.io import atomic_path, write_json

MIN_ROWS = 100
REPORT_NAME = "report.json"
TRUTH_TOLERANCE = 1e-3  # mag: float32 storage of a float64 truth must still count as equal
DEFAULT_BANDS = ("r", "i", "z")

# -------------------------------------------------------------------------- inputs


def resolve_spec(
    spec: SurveySpec | None, bands: Sequence[str] | None, reference: pd.DataFrame
) -> SurveySpec:
    """``spec``; without one, the legacy spec of ``bands`` (r, i, z), with ``true_size`` if the
    reference has it."""
    if spec is None:
        bands = DEFAULT_BANDS if bands is None else bands
        return legacy_spec(list(bands), "true_size" in reference.columns)
    if bands is not None and list(bands) != list(spec.bands):
        raise DataError(f"bands {list(bands)} differ from survey {spec.name!r}'s {spec.bands}")
    return spec


def required_columns(spec: SurveySpec) -> list[str]:
    """Inputs, ``detected``, observed magnitudes, measured columns and the redshift."""
    mags = [f"obs_mag_{b}" for b in spec.bands]
    extra = [spec.deep.redshift] if spec.deep.redshift else []
    return [*spec.input_columns, *mags, *spec.measured_columns, "detected", *extra]


def _check_inputs(reference: pd.DataFrame, emulated: pd.DataFrame, spec: SurveySpec) -> None:
    needed = required_columns(spec)
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
    shared = spec.input_columns + ([spec.deep.redshift] if spec.deep.redshift else [])
    for c in shared:
        a, e = reference[c].to_numpy(np.float64), emulated[c].to_numpy(np.float64)
        differ = ~np.isclose(a, e, rtol=1e-6, atol=TRUTH_TOLERANCE, equal_nan=True)
        if differ.any():
            raise DataError(
                f"emulated rows: column {c!r} differs from the reference in {differ.sum()} "
                "rows; both frames must hold the same rows in the same order"
            )


def _standardise(frame: pd.DataFrame, rows: np.ndarray | None, spec: SurveySpec):
    """The rows to evaluate, index reset, ``detected`` bool, fluxes present, and every
    measurement (``obs_*``) NaN where undetected."""
    frame = frame.iloc[rows] if rows is not None else frame
    frame = frame.reset_index(drop=True)
    detected = frame["detected"].astype(bool).to_numpy()
    values = {}
    for b in spec.bands:
        values[f"obs_mag_{b}"] = frame[f"obs_mag_{b}"].to_numpy(np.float64)
        flux = f"obs_flux_{b}"
        values[flux] = (
            frame[flux].to_numpy(np.float64)
            if flux in frame.columns
            else mag_to_flux(values[f"obs_mag_{b}"])
        )
    values |= {c: frame[c].to_numpy(np.float64) for c in spec.measured_columns}
    masked = {c: np.where(detected, v, np.nan) for c, v in values.items()}
    return frame.assign(detected=detected, **masked)


# -------------------------------------------------------------------------- KS statistics


def _ks(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size == 0 or b.size == 0:
        return math.nan
    return float(ks_2samp(a, b).statistic)


def _tv(a, b) -> float:
    """Total variation distance of two samples' value distributions (finite values)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size == 0 or b.size == 0:
        return math.nan
    values, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    p = np.bincount(inverse[: a.size], minlength=values.size) / a.size
    q = np.bincount(inverse[a.size :], minlength=values.size) / b.size
    return float(0.5 * np.abs(p - q).sum())


def _nanmax(values) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(max(finite)) if finite else math.nan


def ks_statistics(ref: pd.DataFrame, emu: pd.DataFrame, spec: SurveySpec) -> dict[str, float]:
    """KS D of detected rows' observed magnitudes, ``obs - true``, adjacent-band colours,
    fluxes and continuous measurements; total variation distance of the flags."""
    out: dict[str, float] = {}
    bands = spec.bands
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
    flags = {f"obs_{f}" for f in spec.outputs.flags}
    outputs = [f"ks_{b}" for b in bands]
    for c in spec.flux_columns + spec.measured_columns:
        key = f"tv_{c}" if c in flags else f"ks_{c}"
        out[key] = (_tv if c in flags else _ks)(rd[c], ed[c])
        outputs.append(key)
    out["ks_max"] = _nanmax(out[k] for k in outputs)
    return out


# -------------------------------------------------------------------------- binned tables


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
    """``obs - true`` per band in bins of ``by`` (``"true_mag"``, or a per-band depth
    quantity such as ``"depth"``: columns ``<by>_<b>``), side by side.

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
        table.insert(1, "bin", bin_labels(table.index))
        table.insert(2, "bin_centre", [iv.mid for iv in table.index])
        parts.append(table.reset_index(drop=True))
    return pd.concat(parts, ignore_index=True)


def _detection_values(frame: pd.DataFrame, probability: str) -> tuple[pd.Series, str]:
    """Per-row detection probability where the frame carries one, else the 0/1 outcome."""
    if probability in frame.columns and frame[probability].notna().all():
        return frame[probability].astype(np.float64), probability
    return frame.detected.astype(np.float64), "detected"


def detection_table(
    ref: pd.DataFrame, emu: pd.DataFrame, band: str = "i", depth: str = "depth"
) -> pd.DataFrame:
    """Detection fraction in (``<depth>_<band>`` quantile, 0.5-mag true magnitude) bins.

    Columns: ``depth_bin, true_mag_bin, depth_centre, true_mag_centre, count, ref_detected,
    emu_detected, diff`` (emulated - reference) and ``z`` (diff over its binomial noise).
    ``attrs["compared"]`` names what each side averages (a probability column or ``detected``).
    """
    keys = [
        pd.cut(ref[f"{depth}_{band}"], depth_bins(ref[f"{depth}_{band}"]), include_lowest=True),
        pd.cut(ref[f"true_mag_{band}"], magnitude_bins(ref[f"true_mag_{band}"])),
    ]
    ref_p, ref_src = _detection_values(ref, "p_detect")
    emu_p, emu_src = _detection_values(emu, "p_detected")
    r = ref_p.groupby(keys, observed=True).agg(["count", "mean"])
    e = emu_p.groupby(keys, observed=True).mean()
    table = pd.DataFrame({"count": r["count"], "ref_detected": r["mean"], "emu_detected": e})
    table = depth_mag_table(table, "detected")
    table["diff"] = table.emu_detected - table.ref_detected
    # binomial noise of each side compared by outcomes; probabilities add none
    sides = (ref_src == "detected") + (emu_src == "detected")
    p = 0.5 * (table.ref_detected + table.emu_detected)
    noise = np.sqrt(sides * p * (1.0 - p) / table["count"])
    table["z"] = np.where(noise > 0, table["diff"] / noise.where(noise > 0, 1.0), np.nan)
    table.attrs["compared"] = [ref_src, emu_src]
    return table


# -------------------------------------------------------------------------- classifier test


def _transform(values: np.ndarray, kind: str) -> np.ndarray:
    if kind == "log":  # non-positive values (rare) share the lowest finite value; NaN stays
        return np.log(np.clip(values, np.finfo(np.float64).tiny, None))
    return np.arcsinh(values) if kind == "asinh" else values


def c2st_features(frame: pd.DataFrame, spec: SurveySpec) -> np.ndarray:
    """Classifier inputs per row: truth (morphology through its transform), conditions; per
    wide band the observed magnitude, ``obs - true``, the flux residual in units of the depth's
    point-source noise and asinh of the flux in those units; flux errors (log), the continuous
    measurements (their transforms), the flags, and ``detected``.  Measurements of undetected
    rows are NaN."""

    def col(name: str) -> np.ndarray:
        return frame[name].to_numpy(np.float64)

    parts = [col(f"true_mag_{b}") for b in spec.deep.bands]
    parts += [_transform(col(c), t) for c, t in spec.deep.morphology.items()]
    parts += [col(c) for c in spec.condition_columns]
    for b in spec.bands:
        obs, true, flux = col(f"obs_mag_{b}"), col(f"true_mag_{b}"), col(f"obs_flux_{b}")
        # sigma = F(depth) / 10: a flux error in units of the noise where it is made, which
        # trees cannot assemble from magnitudes in a few splits
        sigma = mag_to_flux(col(f"{spec.conditions.depth}_{b}")) / 10.0
        parts += [obs, obs - true, (flux - mag_to_flux(true)) / sigma, np.arcsinh(flux / sigma)]
    if spec.outputs.flux_err:
        parts += [_transform(col(f"obs_flux_err_{b}"), "log") for b in spec.bands]
    parts += [_transform(col(f"obs_{c}"), t) for c, t in spec.outputs.continuous.items()]
    parts += [col(f"obs_{f}") for f in spec.outputs.flags]
    parts.append(frame.detected.to_numpy(np.float64))
    return np.stack(parts, axis=1)


def classifier_two_sample_test(
    ref: pd.DataFrame,
    emu: pd.DataFrame,
    spec: SurveySpec,
    seed: int = 0,
    *,
    detected_only: bool = False,
) -> tuple[float, float]:
    """Held-out ROC AUC of a gradient-boosted classifier separating ``emu`` (1) from ``ref``
    (0), and its bootstrap error.

    Rows (pairs of a reference and an emulated version) are split 50/50 with ``seed``, so both
    halves hold the two labels equally and a row's twin is never held out while it trains.
    ``detected_only``: use each frame's detected rows only.  NaNs when a half holds fewer than
    20 rows of a label.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score

    n = len(ref)
    halves = np.array_split(np.random.default_rng(seed).permutation(n), 2)
    x_ref, x_emu = c2st_features(ref, spec), c2st_features(emu, spec)
    keep_ref = ref.detected.to_numpy() if detected_only else np.ones(n, bool)
    keep_emu = emu.detected.to_numpy() if detected_only else np.ones(n, bool)

    def labelled(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        r, e = rows[keep_ref[rows]], rows[keep_emu[rows]]
        labels = np.repeat([0.0, 1.0], [r.size, e.size])
        return np.concatenate([x_ref[r], x_emu[e]]), labels, np.concatenate([r, e])

    (x_train, y_train, _), (x_test, y_test, pairs) = labelled(halves[0]), labelled(halves[1])
    if min(np.bincount(y.astype(int), minlength=2).min() for y in (y_train, y_test)) < 20:
        return math.nan, math.nan
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
    scores = clf.predict_proba(x_test)[:, 1]
    auc = float(roc_auc_score(y_test, scores))
    return auc, auc_bootstrap_error(scores, y_test, pairs, seed)


# -------------------------------------------------------------------------- the report


def fidelity_report(
    reference: pd.DataFrame,
    emulated: pd.DataFrame,
    out_dir: str | Path,
    *,
    spec: SurveySpec | None = None,
    bands: Sequence[str] | None = None,
    seed: int = 0,
    max_rows: int | None = None,
    min_bin_rows: int = 500,
    plots: bool = True,
    model: str | None = None,
) -> dict:
    """Compare ``emulated`` with ``reference`` (the same rows); write tables, plots, report.json.

    spec: the survey's data contract; None: the legacy one of ``bands`` (default r, i, z; give
    ``bands`` with a spec only if they match its bands).  max_rows: evaluate a random subset of
    this many rows (drawn with ``seed``, the same rows of both frames).  min_bin_rows: detection
    and selection bins with fewer rows are left out of their maxima.  Returns the report (see
    the module docstring); its ``tables`` and ``plots`` are file names inside ``out_dir``.
    Raises :class:`DataError` naming a missing column, or when the frames do not hold the same
    rows.  model: what to call the emulated side in the figures' titles (e.g. its registered
    name and version; they also give the rows and the seed).
    """
    spec = resolve_spec(spec, bands, reference)
    bands = tuple(spec.bands)
    _check_inputs(reference, emulated, spec)
    rows = None
    if max_rows is not None and len(reference) > max_rows:
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(len(reference), size=max_rows, replace=False))
    ref = _standardise(reference, rows, spec)
    emu = _standardise(emulated, rows, spec)
    ref_sel, emu_sel = selection_mask(ref, spec), selection_mask(emu, spec)

    report: dict = {"n_rows": len(ref), "survey": spec.name, "bands": list(bands)}
    report |= {"selection": spec.selection, "seed": seed}
    report.update(ks_statistics(ref, emu, spec))
    depth = spec.conditions.depth
    det_band = "i" if "i" in bands else bands[0]
    sel_band = tomography_band(spec)
    tables = {
        "dmag_by_true_mag": dmag_table(ref, emu, bands, "true_mag"),
        "dmag_by_depth": dmag_table(ref, emu, bands, depth),
        "detection_by_bin": detection_table(ref, emu, det_band, depth),
        "selection_by_bin": selection_table(
            ref, emu, ref_sel, emu_sel, sel_band, f"{depth}_{sel_band}"
        ),
    }
    det = tables["detection_by_bin"]
    used = det[det["count"] >= min_bin_rows]
    report["detection_max_abs_diff"] = _nanmax(used["diff"].abs())
    report["detection_max_abs_z"] = _nanmax(used["z"].abs())
    report["detection_bins_used"] = len(used)
    report["detection_compared"] = det.attrs["compared"]
    report["detection_fraction_ref"] = float(ref.detected.mean())
    report["detection_fraction_emu"] = float(emu.detected.mean())
    report.update(selection_summary(tables["selection_by_bin"], ref_sel, emu_sel, min_bin_rows))
    nz = None
    if spec.deep.redshift:
        nz = redshift_bins(ref, emu, ref_sel, emu_sel, spec, seed)
        tables["nz_by_bin"] = nz.table
        report["nz_quantity"] = spec.tomography.quantity
        report.update(nz_summary(nz.table))
    for key, detected_only in (("c2st_auc", False), ("c2st_auc_detected", True)):
        auc, err = classifier_two_sample_test(ref, emu, spec, seed, detected_only=detected_only)
        report[key], report[f"{key}_err"] = auc, err

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        with atomic_path(out / f"{name}.csv") as tmp:
            table.to_csv(tmp, index=False)
    report["tables"] = [f"{name}.csv" for name in tables]
    if plots:
        from galray.evaluation.plots import fidelity_plots, plot_title

        title = plot_title(model, len(ref), seed)
        report["plots"] = fidelity_plots(
            ref, emu, bands, tables, out, selection_band=sel_band, redshift=nz, title=title
        )
    else:
        report["plots"] = []
    write_json(report, out / REPORT_NAME)
    return report
