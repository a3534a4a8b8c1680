"""Fidelity of a transfer-function emulator against known truth.

Both frames hold the *same* rows (truth and conditions): ``reference`` the simulated (or real
Balrog) measurements, ``emulated`` the emulator's draw for the same inputs.  The report holds:

* ``ks_<b>``: KS statistic D of the observed magnitude among detected rows, per band;
  ``ks_dmag_<b>`` of ``obs - true``; ``ks_<b1>-<b2>`` of the observed colours r-i and i-z;
  ``ks_max``: the largest per-band ``ks_<b>``.
* ``dmag_by_true_mag.csv`` / ``dmag_by_depth.csv``: count, mean, median, std and robust width
  (1.4826 MAD) of ``obs - true`` in bins of true magnitude and of depth, reference vs emulated.
* ``detection_by_bin.csv``: detection fraction in (depth_i, true_mag_i) bins;
  ``detection_max_abs_diff``: the largest |difference| over bins with >= ``min_bin_rows`` rows.
* ``c2st_auc``: classifier two-sample test.  A gradient-boosted classifier learns to tell
  emulated from reference rows given truth, conditions, observed magnitudes, ``obs - true`` and
  the detected flag; its ROC AUC on held-out pairs is reported (0.5: indistinguishable).  A row's
  two versions always fall in the same half, so truth alone never identifies a label.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

from galray.errors import DataError
from galray.io import atomic_path

MAG_BINS = np.arange(16.0, 27.51, 0.5)
REPORT_NAME = "report.json"


def _require(frame: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{name} rows: missing column(s) {missing}")


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size == 0 or b.size == 0:
        return float("nan")
    return float(ks_2samp(a, b).statistic)


def ks_statistics(ref: pd.DataFrame, emu: pd.DataFrame, bands: Sequence[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    rd, ed = ref[ref.detected], emu[emu.detected]
    for b in bands:
        out[f"ks_{b}"] = _ks(rd[f"obs_mag_{b}"].to_numpy(), ed[f"obs_mag_{b}"].to_numpy())
        out[f"ks_dmag_{b}"] = _ks(
            (rd[f"obs_mag_{b}"] - rd[f"true_mag_{b}"]).to_numpy(),
            (ed[f"obs_mag_{b}"] - ed[f"true_mag_{b}"]).to_numpy(),
        )
    for b1, b2 in itertools.pairwise(bands):
        out[f"ks_{b1}-{b2}"] = _ks(
            (rd[f"obs_mag_{b1}"] - rd[f"obs_mag_{b2}"]).to_numpy(),
            (ed[f"obs_mag_{b1}"] - ed[f"obs_mag_{b2}"]).to_numpy(),
        )
    out["ks_max"] = float(np.nanmax([out[f"ks_{b}"] for b in bands]))
    return out


def _dmag_stats(frame: pd.DataFrame, band: str, by: str, bins: np.ndarray) -> pd.DataFrame:
    det = frame[frame.detected]
    dmag = det[f"obs_mag_{band}"] - det[f"true_mag_{band}"]
    key = pd.cut(det[by], bins)
    grouped = dmag.groupby(key, observed=False)
    median = grouped.median()
    deviation = (dmag - grouped.transform("median")).abs()
    mad = deviation.groupby(key, observed=False).median()
    return pd.DataFrame(
        {
            "count": grouped.count(),
            "mean": grouped.mean(),
            "median": median,
            "std": grouped.std(),
            "width": 1.4826 * mad,
        }
    )


def dmag_table(
    ref: pd.DataFrame, emu: pd.DataFrame, bands: Sequence[str], by: str, bins_of=None
) -> pd.DataFrame:
    """``obs - true`` per band in bins of ``by`` (``true_mag`` or ``depth``), side by side."""
    rows = []
    for b in bands:
        column = f"{by}_{b}"
        bins = MAG_BINS if bins_of is None else bins_of(ref[column])
        r = _dmag_stats(ref, b, column, bins).add_prefix("ref_")
        e = _dmag_stats(emu, b, column, bins).add_prefix("emu_")
        table = pd.concat([r, e], axis=1)
        table.insert(0, "band", b)
        table.insert(1, "bin", [f"{iv.left:.2f}-{iv.right:.2f}" for iv in table.index])
        rows.append(table.reset_index(drop=True))
    return pd.concat(rows, ignore_index=True)


def _depth_bins(values: pd.Series) -> np.ndarray:
    edges = np.unique(np.quantile(values.to_numpy(), np.linspace(0, 1, 6)))
    edges[0] -= 1e-6
    edges[-1] += 1e-6
    return edges


def _detection_expectation(frame: pd.DataFrame, column: str) -> tuple[pd.Series, str]:
    """Per-row detection probability if the frame carries one, else the 0/1 outcome.

    Averaging probabilities instead of Bernoulli outcomes removes most of the binomial noise
    from per-bin detection fractions (the simulator's ``p_detect``, the emulator's
    ``p_detected``)."""
    if column in frame.columns and frame[column].notna().all():
        return frame[column].astype(float), column
    return frame.detected.astype(float), "detected"


def detection_table(ref: pd.DataFrame, emu: pd.DataFrame, band: str = "i") -> pd.DataFrame:
    """Detection fraction in (depth quintile, 0.5-mag true-magnitude) bins of ``band``."""
    depth_bins = _depth_bins(ref[f"depth_{band}"])
    keys = [pd.cut(ref[f"depth_{band}"], depth_bins), pd.cut(ref[f"true_mag_{band}"], MAG_BINS)]
    ref_p, ref_src = _detection_expectation(ref, "p_detect")
    emu_p, emu_src = _detection_expectation(emu, "p_detected")
    r = ref_p.groupby(keys, observed=True).agg(["count", "mean"])
    e = emu_p.groupby(keys, observed=True).mean()
    table = pd.DataFrame({"count": r["count"], "ref_detected": r["mean"], "emu_detected": e})
    table = table.reset_index()
    table.columns = ["depth_bin", "true_mag_bin", "count", "ref_detected", "emu_detected"]
    table["diff"] = table.emu_detected - table.ref_detected
    for c in ("depth_bin", "true_mag_bin"):
        table[c] = [f"{iv.left:.2f}-{iv.right:.2f}" for iv in table[c]]
    table.attrs["sources"] = (ref_src, emu_src)
    return table


def c2st_features(frame: pd.DataFrame, bands: Sequence[str]) -> np.ndarray:
    cols = [f"true_mag_{b}" for b in bands]
    cols += ["true_size"] if "true_size" in frame.columns else []
    cols += [
        f"{q}_{b}" for b in bands for q in ("psf_fwhm", "depth") if f"{q}_{b}" in frame.columns
    ]
    parts = [frame[cols].to_numpy(np.float64)]
    obs = np.stack([frame[f"obs_mag_{b}"].to_numpy(np.float64) for b in bands], axis=1)
    true = np.stack([frame[f"true_mag_{b}"].to_numpy(np.float64) for b in bands], axis=1)
    parts += [obs, obs - true, frame.detected.to_numpy(np.float64)[:, None]]
    return np.concatenate(parts, axis=1)


def classifier_two_sample_test(
    ref: pd.DataFrame, emu: pd.DataFrame, bands: Sequence[str], seed: int = 0
) -> float:
    """Held-out ROC AUC of a gradient-boosted classifier separating ``emu`` from ``ref`` rows."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score

    n = len(ref)
    rng = np.random.default_rng(seed)
    pairs = rng.permutation(n)
    train, test = pairs[: n // 2], pairs[n // 2 :]
    x_ref, x_emu = c2st_features(ref, bands), c2st_features(emu, bands)

    def stack(idx):
        x = np.concatenate([x_ref[idx], x_emu[idx]])
        y = np.concatenate([np.zeros(idx.size), np.ones(idx.size)])
        return x, y

    clf = HistGradientBoostingClassifier(
        max_iter=400,
        learning_rate=0.1,
        max_leaf_nodes=31,
        early_stopping=True,
        validation_fraction=0.15,
        n_iter_no_change=20,
        random_state=seed,
    )
    clf.fit(*stack(train))
    x_test, y_test = stack(test)
    return float(roc_auc_score(y_test, clf.predict_proba(x_test)[:, 1]))


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
    """Compare ``emulated`` with ``reference`` (same rows); write tables, plots, report.json."""
    bands = tuple(bands)
    needed = [f"{p}_{b}" for b in bands for p in ("true_mag", "obs_mag", "depth")] + ["detected"]
    _require(reference, needed, "reference")
    _require(emulated, needed, "emulated")
    if len(reference) != len(emulated):
        raise DataError(
            f"reference has {len(reference)} rows, emulated {len(emulated)}: they must match"
        )
    if len(reference) < 100:
        raise DataError(f"reference: {len(reference)} rows are too few to evaluate")
    ref = reference.reset_index(drop=True)
    emu = emulated.reset_index(drop=True)
    if max_rows is not None and len(ref) > max_rows:
        ref, emu = ref.iloc[:max_rows], emu.iloc[:max_rows]
    ref = ref.assign(detected=ref.detected.astype(bool))
    emu = emu.assign(detected=emu.detected.astype(bool))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"n_rows": len(ref), "bands": list(bands)}
    report.update(ks_statistics(ref, emu, bands))
    by_mag = dmag_table(ref, emu, bands, "true_mag")
    by_depth = dmag_table(ref, emu, bands, "depth", bins_of=_depth_bins)
    det_band = "i" if "i" in bands else bands[0]
    det = detection_table(ref, emu, det_band)
    populated = det[det["count"] >= min_bin_rows]
    report["detection_max_abs_diff"] = (
        float(populated["diff"].abs().max()) if len(populated) else float("nan")
    )
    report["detection_bins_used"] = len(populated)
    report["detection_compared"] = list(det.attrs["sources"])
    report["detection_fraction_ref"] = float(ref.detected.mean())
    report["detection_fraction_emu"] = float(emu.detected.mean())
    report["c2st_auc"] = classifier_two_sample_test(ref, emu, bands, seed)

    tables = {
        "dmag_by_true_mag": by_mag,
        "dmag_by_depth": by_depth,
        "detection_by_bin": det,
    }
    for name, table in tables.items():
        with atomic_path(out / f"{name}.csv") as tmp:
            table.to_csv(tmp, index=False)
    report["tables"] = [f"{name}.csv" for name in tables]
    report["plots"] = _plots(ref, emu, bands, by_mag, det, out) if plots else []
    with atomic_path(out / REPORT_NAME) as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    return report


def _plots(ref, emu, bands, by_mag, det, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig, name):
        with atomic_path(out / name) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        plt.close(fig)
        written.append(name)

    # colour-magnitude diagrams
    if {"r", "i"} <= set(bands):
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharex=True, sharey=True)
        for ax, frame, title in ((axes[0], ref, "reference"), (axes[1], emu, "emulated")):
            d = frame[frame.detected]
            ax.hist2d(
                d.obs_mag_r - d.obs_mag_i,
                d.obs_mag_i,
                bins=80,
                range=[[-0.5, 2.0], [17, 25.5]],
                cmap="viridis",
            )
            ax.set_title(f"{title} (detected)")
            ax.set_xlabel("r - i (observed)")
        axes[0].set_ylabel("i (observed, AB)")
        axes[0].invert_yaxis()
        save(fig, "cmd_ri_i.png")

    # (obs - true) mean and width vs true magnitude
    fig, axes = plt.subplots(2, len(bands), figsize=(4 * len(bands), 6), sharex=True, squeeze=False)
    for j, b in enumerate(bands):
        t = by_mag[by_mag.band == b]
        x = [float(s.split("-")[0]) + 0.25 for s in t.bin]
        for who, style in (("ref", "k-"), ("emu", "r--")):
            axes[0, j].plot(x, t[f"{who}_median"], style, label=who)
            axes[1, j].plot(x, t[f"{who}_width"], style, label=who)
        axes[0, j].set_title(f"{b} band")
        axes[1, j].set_xlabel(f"true {b} (AB)")
    axes[0, 0].set_ylabel("median (obs - true)")
    axes[1, 0].set_ylabel("width (1.4826 MAD)")
    axes[0, 0].legend()
    save(fig, "dmag_vs_true_mag.png")

    # detection fraction vs true magnitude, per depth bin
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for k, (depth_bin, t) in enumerate(det.groupby("depth_bin", sort=False)):
        x = [float(s.split("-")[0]) + 0.25 for s in t.true_mag_bin]
        color = plt.cm.viridis(k / 5)
        ax.plot(x, t.ref_detected, "-", color=color, label=f"depth {depth_bin}")
        ax.plot(x, t.emu_detected, "--", color=color)
    ax.set_xlabel("true i (AB)")
    ax.set_ylabel("detection fraction (solid: reference, dashed: emulated)")
    ax.legend(fontsize=7)
    save(fig, "detection_vs_true_mag.png")

    # detection fraction vs depth, in slices of true magnitude around the threshold
    fig, ax = plt.subplots(figsize=(6, 4.5))
    band = "i" if "i" in bands else bands[0]
    edges = np.quantile(ref[f"depth_{band}"], np.linspace(0, 1, 9))
    centres = 0.5 * (edges[1:] + edges[:-1])
    for k, (lo, hi) in enumerate(((22.5, 23.5), (23.5, 24.0), (24.0, 24.5), (24.5, 25.5))):
        sel = (ref[f"true_mag_{band}"] >= lo) & (ref[f"true_mag_{band}"] < hi)
        key = pd.cut(ref.loc[sel, f"depth_{band}"], edges, include_lowest=True)
        color = plt.cm.plasma(k / 4)
        for frame, style in ((ref, "-"), (emu, "--")):
            frac = frame.loc[sel, "detected"].astype(float).groupby(key, observed=False).mean()
            ax.plot(
                centres,
                frac.to_numpy(),
                style,
                color=color,
                label=f"{lo}-{hi}" if style == "-" else None,
            )
    ax.set_xlabel(f"depth_{band} (10-sigma AB)")
    ax.set_ylabel("detection fraction (solid: reference, dashed: emulated)")
    ax.legend(title=f"true {band}", fontsize=7)
    save(fig, "detection_vs_depth.png")

    # observed magnitude histograms
    fig, axes = plt.subplots(1, len(bands), figsize=(4 * len(bands), 3.5), squeeze=False)
    for j, b in enumerate(bands):
        bins = np.linspace(16, 27, 90)
        axes[0, j].hist(
            ref.loc[ref.detected, f"obs_mag_{b}"].dropna(),
            bins,
            histtype="step",
            color="k",
            label="reference",
        )
        axes[0, j].hist(
            emu.loc[emu.detected, f"obs_mag_{b}"].dropna(),
            bins,
            histtype="step",
            color="r",
            label="emulated",
        )
        axes[0, j].set_xlabel(f"observed {b} (AB)")
    axes[0, 0].legend()
    save(fig, "obs_mag_hist.png")
    return written


def log_report_to_mlflow(report: dict, out_dir: str | Path) -> None:
    """Log the report's scalar metrics and the report directory to the active MLflow run."""
    import mlflow

    metrics = {
        k.replace("-", "_minus_"): float(v)
        for k, v in report.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v)
    }
    mlflow.log_metrics(metrics)
    mlflow.log_artifacts(str(out_dir), artifact_path="fidelity")
