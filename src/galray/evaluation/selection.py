"""The selection and its n(z) in the emulator fidelity report.

Both frames hold the same rows (see :mod:`galray.evaluation.emulator`), so every statistic here
compares the reference and emulated versions of one set of galaxies, and every sampling error
treats a row's two versions as one draw:

* the selected fraction per (depth, true magnitude) bin carries the binomial error of each side
  and of the difference (from the pooled fraction of both sides, which bounds the paired
  difference's variance from above);
* the n(z) errors come from a Poisson bootstrap over rows (:data:`N_BOOTSTRAP` replicates, fixed
  seed) that reweights a row's reference and emulated versions together, so the error of the
  emulated - reference difference keeps the large positive correlation of the two sides (most
  galaxies are selected in both) instead of adding two independent errors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

from galray.datasets.selection import evaluate, names_in, select
from galray.datasets.survey import SurveySpec
from galray.errors import DataError

MAG_BIN_WIDTH = 0.5  # mag
DEPTH_BINS = 5  # quantile bins of depth (detection table)
SELECTION_DEPTH_BINS = 3  # quantile bins of depth (selection table, plotted as lines)
N_BOOTSTRAP = 200
_BOOTSTRAP_BLOCK = 4_000_000  # weights drawn at once (replicates x rows)

# -------------------------------------------------------------------------- bins


def magnitude_bins(values) -> np.ndarray:
    """Edges every :data:`MAG_BIN_WIDTH` mag on whole multiples, covering the finite values."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    lo = np.floor(values.min() / MAG_BIN_WIDTH) * MAG_BIN_WIDTH
    hi = np.ceil(values.max() / MAG_BIN_WIDTH) * MAG_BIN_WIDTH
    return np.arange(lo, max(hi, lo + MAG_BIN_WIDTH) + 1e-9, MAG_BIN_WIDTH)


def depth_bins(values, bins: int = DEPTH_BINS) -> np.ndarray:
    """Quantile edges (``bins`` bins; fewer where depths repeat)."""
    values = np.asarray(values, np.float64)
    edges = np.unique(np.nanquantile(values, np.linspace(0.0, 1.0, bins + 1)))
    return edges if edges.size > 1 else np.array([edges[0] - 1e-6, edges[0] + 1e-6])


def depth_mag_table(table: pd.DataFrame, what: str) -> pd.DataFrame:
    """A table grouped by (depth bin, true magnitude bin) with columns count, ref_<what> and
    emu_<what>, flattened: the bins as labels beside their centres."""
    table = table.reset_index()
    table.columns = ["depth_bin", "true_mag_bin", "count", f"ref_{what}", f"emu_{what}"]
    table.insert(2, "depth_centre", [iv.mid for iv in table.depth_bin])
    table.insert(3, "true_mag_centre", [iv.mid for iv in table.true_mag_bin])
    table["depth_bin"] = bin_labels(table.depth_bin)
    table["true_mag_bin"] = bin_labels(table.true_mag_bin)
    return table


def bin_labels(index) -> list[str]:
    return [f"{iv.left:.2f}-{iv.right:.2f}" for iv in index]


# -------------------------------------------------------------------------- the selection


def tomography_band(spec: SurveySpec) -> str:
    """The wide band the tomographic quantity is measured in (``mag_i`` -> ``i``): the one band
    its magnitudes or fluxes name; otherwise (a colour, or none) the middle wide band."""
    found = set()
    for name in names_in(spec.tomography.quantity, "tomography.quantity"):
        short = name.removeprefix("obs_").removeprefix("true_")
        for prefix in ("mag_", "flux_err_", "flux_"):
            if short.startswith(prefix) and short[len(prefix) :] in spec.bands:
                found.add(short[len(prefix) :])
                break
    return found.pop() if len(found) == 1 else spec.bands[len(spec.bands) // 2]


def selection_mask(frame: pd.DataFrame, spec: SurveySpec) -> np.ndarray:
    """The frame's ``selected`` column where it has one, else ``spec.selection`` evaluated."""
    if "selected" in frame.columns:
        if frame["selected"].isna().any():
            raise DataError("column 'selected' holds missing values")
        return frame["selected"].to_numpy().astype(bool)
    return select(spec.selection, frame)


def selection_table(
    ref: pd.DataFrame,
    emu: pd.DataFrame,
    ref_sel: np.ndarray,
    emu_sel: np.ndarray,
    band: str,
    depth_column: str,
) -> pd.DataFrame:
    """Selected fraction in (``depth_column`` tercile, 0.5-mag ``true_mag_<band>``) bins.

    Columns: ``depth_bin, true_mag_bin, depth_centre, true_mag_centre, count, ref_selected,
    ref_err, emu_selected, emu_err`` (binomial errors of each side), ``diff`` (emulated -
    reference), ``diff_err`` (from the pooled fraction: sqrt(2 p (1 - p) / count)) and ``z``
    (diff / diff_err; NaN where both sides select all or none)."""
    mag, depth = ref[f"true_mag_{band}"], ref[depth_column]
    keys = [
        pd.cut(depth, depth_bins(depth, SELECTION_DEPTH_BINS), include_lowest=True),
        pd.cut(mag, magnitude_bins(mag)),
    ]
    outcomes = pd.DataFrame({"ref": ref_sel.astype(np.float64), "emu": emu_sel.astype(np.float64)})
    grouped = outcomes.groupby(keys, observed=True)
    table = grouped.agg(count=("ref", "size"), ref_selected=("ref", "mean"))
    table["emu_selected"] = grouped["emu"].mean()
    table = depth_mag_table(table, "selected")
    n = table["count"].to_numpy(np.float64)
    for side in ("ref", "emu"):
        p = table[f"{side}_selected"]
        table.insert(table.columns.get_loc(f"{side}_selected") + 1, f"{side}_err", _binom(p, n))
    table["diff"] = table.emu_selected - table.ref_selected
    table["diff_err"] = np.sqrt(2.0) * _binom(0.5 * (table.ref_selected + table.emu_selected), n)
    err = table["diff_err"].to_numpy()
    table["z"] = np.where(err > 0, table["diff"] / np.where(err > 0, err, 1.0), np.nan)
    return table


def _binom(p, n) -> np.ndarray:
    p = np.asarray(p, np.float64)
    return np.sqrt(p * (1.0 - p) / n)


def selection_summary(
    table: pd.DataFrame, ref_sel: np.ndarray, emu_sel: np.ndarray, min_rows: int
) -> dict:
    """The report's selection keys (see :mod:`galray.evaluation.emulator`)."""
    used = table[table["count"] >= min_rows]
    n = ref_sel.size
    p_ref, p_emu = float(ref_sel.mean()), float(emu_sel.mean())
    err = float(np.sqrt(2.0) * _binom(0.5 * (p_ref + p_emu), n))
    return {
        "selected_fraction_ref": p_ref,
        "selected_fraction_emu": p_emu,
        "selected_fraction_err": err,
        "selected_fraction_z": (p_emu - p_ref) / err if err > 0 else math.nan,
        "selection_max_abs_diff": _nanmax(used["diff"].abs()),
        # the 2-sigma lower bound of the worst bin's |diff| (0: every bin is within its noise):
        # a bin of few rows shows |diff| = 0.03 by chance alone, so "every bin within t" is
        # refuted only where |diff| - 2 err > t
        "selection_max_abs_diff_lower": max(
            _nanmax(used["diff"].abs() - 2.0 * used["diff_err"]), 0.0
        ),
        "selection_max_z": _nanmax(used["z"].abs()),
        "selection_bins_used": len(used),
    }


def _nanmax(values) -> float:
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    return float(values.max()) if values.size else math.nan


# -------------------------------------------------------------------------- n(z)


@dataclass
class RedshiftBins:
    """The selected galaxies' redshifts and tomographic bins (-1: not selected, or a
    non-finite quantity or redshift), and the per-bin table."""

    z: np.ndarray
    ref_bin: np.ndarray
    emu_bin: np.ndarray
    edges: np.ndarray  # of the tomographic quantity; the outer ones are -inf and +inf
    table: pd.DataFrame


def tomographic_bins(
    ref: pd.DataFrame,
    emu: pd.DataFrame,
    ref_sel: np.ndarray,
    emu_sel: np.ndarray,
    spec: SurveySpec,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Redshift, reference and emulated bin of every row, and the edges: quantiles of
    ``spec.tomography.quantity`` over the selected reference galaxies, applied to both."""
    z = ref[spec.deep.redshift].to_numpy(np.float64)
    quantity = spec.tomography.quantity
    q_ref = np.asarray(evaluate(quantity, ref), np.float64)
    q_emu = np.asarray(evaluate(quantity, emu), np.float64)
    ok_ref = ref_sel & np.isfinite(q_ref) & np.isfinite(z)
    ok_emu = emu_sel & np.isfinite(q_emu) & np.isfinite(z)
    k = spec.tomography.bins
    if ok_ref.any():
        inner = np.quantile(q_ref[ok_ref], np.linspace(0.0, 1.0, k + 1)[1:-1])
    else:
        inner = np.full(k - 1, np.nan)
    edges = np.concatenate([[-np.inf], inner, [np.inf]])

    def assign(ok: np.ndarray, q: np.ndarray) -> np.ndarray:
        return np.where(ok, np.searchsorted(inner, np.where(ok, q, 0.0), side="right"), -1)

    return z, assign(ok_ref, q_ref), assign(ok_emu, q_emu), edges


def redshift_bins(
    ref: pd.DataFrame,
    emu: pd.DataFrame,
    ref_sel: np.ndarray,
    emu_sel: np.ndarray,
    spec: SurveySpec,
    seed: int = 0,
    n_boot: int = N_BOOTSTRAP,
) -> RedshiftBins:
    """The n(z) of the selection per tomographic bin, reference vs emulated.

    Table, one row per bin ``k`` (0-based): ``bin, q_lo, q_hi`` (edges of the tomographic
    quantity), ``ref_count, emu_count``, and for ``s`` in ``mean_z, std_z``: ``ref_<s>,
    ref_<s>_err, emu_<s>, emu_<s>_err, diff_<s>`` (emulated - reference), ``diff_<s>_err`` and
    ``sigma_<s>`` (diff / diff_err).  Errors: Poisson bootstrap over rows (``seed``)."""
    z, ref_bin, emu_bin, edges = tomographic_bins(ref, emu, ref_sel, emu_sel, spec)
    k = spec.tomography.bins
    # per row, sparse: [count, sum z, sum z^2] of its bin, reference then emulated
    entries = []
    for side, bins in enumerate((ref_bin, emu_bin)):
        rows = np.flatnonzero(bins >= 0)
        zz = z[rows]
        for j, values in enumerate((np.ones_like(zz), zz, zz * zz)):
            entries.append((rows, (side * k + bins[rows]) * 3 + j, values))
    rows, cols, values = (np.concatenate(parts) for parts in zip(*entries))
    moments = sparse.csr_matrix((values, (rows, cols)), shape=(len(z), 2 * k * 3))
    moments = moments[np.flatnonzero(moments.getnnz(axis=1))]  # rows selected on some side
    point = _bin_stats(np.asarray(moments.sum(axis=0)), k)
    boot = _bin_stats(_bootstrap_sums(moments, n_boot, seed), k)

    table = pd.DataFrame({"bin": np.arange(k), "q_lo": edges[:-1], "q_hi": edges[1:]})
    table["ref_count"] = point["count"][0, 0].astype(np.int64)
    table["emu_count"] = point["count"][0, 1].astype(np.int64)
    for stat in ("mean_z", "std_z"):
        value, replicas = point[stat][0], boot[stat]
        for side, name in enumerate(("ref", "emu")):
            table[f"{name}_{stat}"] = value[side]
            table[f"{name}_{stat}_err"] = _nanstd(replicas[:, side])
        diff = value[1] - value[0]
        err = _nanstd(replicas[:, 1] - replicas[:, 0])
        table[f"diff_{stat}"] = diff
        table[f"diff_{stat}_err"] = err
        table[f"sigma_{stat}"] = np.where(err > 0, diff / np.where(err > 0, err, 1.0), np.nan)
    return RedshiftBins(z, ref_bin, emu_bin, edges, table)


def _bootstrap_sums(moments: sparse.csr_matrix, n_boot: int, seed: int) -> np.ndarray:
    """Column sums of ``moments`` under ``n_boot`` Poisson(1) reweightings of its rows."""
    rng = np.random.default_rng(seed)
    block = max(1, _BOOTSTRAP_BLOCK // max(moments.shape[0], 1))
    transposed = moments.T.tocsr()
    sums = []
    for start in range(0, n_boot, block):
        weights = rng.poisson(1.0, (min(block, n_boot - start), moments.shape[0]))
        sums.append(np.asarray(transposed @ weights.T.astype(np.float64)).T)
    return np.concatenate(sums) if sums else np.zeros((0, moments.shape[1]))


def _bin_stats(sums: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Count, mean and standard deviation of z per (replicate, side, bin) from moment sums."""
    sums = sums.reshape(len(sums), 2, k, 3)
    n, s1, s2 = sums[..., 0], sums[..., 1], sums[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(n > 0, s1 / n, np.nan)
        var = np.where(n > 1, s2 / n - mean * mean, np.nan)
    return {"count": n, "mean_z": mean, "std_z": np.sqrt(np.clip(var, 0.0, None))}


def _nanstd(replicas: np.ndarray) -> np.ndarray:
    """Standard deviation over replicates (axis 0), ignoring replicates without the bin."""
    finite = np.isfinite(replicas)
    enough = finite.sum(axis=0) > 1
    out = np.full(replicas.shape[1:], np.nan)
    if enough.any():
        with np.errstate(invalid="ignore"):
            out[enough] = np.nanstd(replicas[:, enough], axis=0, ddof=1)
    return out


def nz_summary(table: pd.DataFrame) -> dict:
    """The report's n(z) keys (see :mod:`galray.evaluation.emulator`)."""
    out: dict = {"nz_bins": len(table)}
    for row in table.itertuples():
        out[f"nz_mean_z_ref_{row.bin}"] = float(row.ref_mean_z)
        out[f"nz_mean_z_emu_{row.bin}"] = float(row.emu_mean_z)
        out[f"nz_mean_z_err_{row.bin}"] = float(row.diff_mean_z_err)
    out["nz_mean_z_max_abs_diff"] = _nanmax(table["diff_mean_z"].abs())
    out["nz_max_sigma"] = _nanmax(table["sigma_mean_z"].abs())
    out["nz_std_z_max_abs_diff"] = _nanmax(table["diff_std_z"].abs())
    out["nz_std_z_max_sigma"] = _nanmax(table["sigma_std_z"].abs())
    return out


# -------------------------------------------------------------------------- AUC error


def auc_bootstrap_samples(
    scores: np.ndarray,
    labels: np.ndarray,
    groups: Sequence[int] | np.ndarray,
    seed: int = 0,
    n_boot: int = N_BOOTSTRAP,
) -> np.ndarray:
    """The ROC AUC (label 1 scored above label 0, ties half) under ``n_boot`` Poisson bootstrap
    resamples over ``groups`` (a row's reference and emulated versions share a group, so they
    are reweighted together); NaN where a resample lost a class.  The weights depend only on
    ``seed``, ``n_boot``, the number of rows and the set of groups, so two score vectors over the
    same groups and rows get the same resamples: the differences of their samples bootstrap the
    difference of the two AUCs (:func:`auc_difference`)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    _, group = np.unique(np.asarray(groups)[order], return_inverse=True)
    positive = labels[order]
    rng = np.random.default_rng(seed)
    n_groups = int(group.max()) + 1 if group.size else 0
    block = max(1, _BOOTSTRAP_BLOCK // max(scores.size, 1))
    aucs = []
    for start in range(0, n_boot, block):
        weights = rng.poisson(1.0, (min(block, n_boot - start), n_groups)).astype(np.float64)
        w = weights[:, group]
        neg = np.add.reduceat(np.where(positive, 0.0, w), starts, axis=1)
        pos = np.add.reduceat(np.where(positive, w, 0.0), starts, axis=1)
        below = np.cumsum(neg, axis=1) - neg
        with np.errstate(divide="ignore", invalid="ignore"):
            aucs.append((pos * (below + 0.5 * neg)).sum(1) / (pos.sum(1) * neg.sum(1)))
    return np.concatenate(aucs) if aucs else np.zeros(0)


def auc_bootstrap_error(
    scores: np.ndarray,
    labels: np.ndarray,
    groups: Sequence[int] | np.ndarray,
    seed: int = 0,
    n_boot: int = N_BOOTSTRAP,
) -> float:
    """Standard deviation of the ROC AUC under the bootstrap of :func:`auc_bootstrap_samples`."""
    aucs = auc_bootstrap_samples(scores, labels, groups, seed, n_boot)
    aucs = aucs[np.isfinite(aucs)]
    return float(np.std(aucs, ddof=1)) if aucs.size > 1 else math.nan


def auc_difference(
    a: tuple[np.ndarray, np.ndarray, np.ndarray],
    b: tuple[np.ndarray, np.ndarray, np.ndarray],
    seed: int = 0,
    n_boot: int = N_BOOTSTRAP,
) -> tuple[float, float]:
    """AUC(a) - AUC(b) and its bootstrap error, for two (scores, labels, groups) over the same
    groups and rows (two classifiers scored on the same held-out galaxies): both are resampled
    with the same weights, so what the two share (which galaxies were drawn) cancels."""
    from sklearn.metrics import roc_auc_score

    label = [dict(zip(np.asarray(g).tolist(), np.asarray(y).tolist())) for _, y, g in (a, b)]
    if len(a[0]) != len(b[0]) or label[0] != label[1]:
        raise ValueError(
            "auc_difference: the two score sets are not over the same groups with the same labels"
        )
    diff = float(roc_auc_score(a[1], a[0]) - roc_auc_score(b[1], b[0]))
    d = auc_bootstrap_samples(*a, seed, n_boot) - auc_bootstrap_samples(*b, seed, n_boot)
    d = d[np.isfinite(d)]
    return diff, float(np.std(d, ddof=1)) if d.size > 1 else math.nan
