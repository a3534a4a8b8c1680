"""Figures of the estimator report (PNG at 200 dpi and PDF): per parameter, RMSE over the
Cramér–Rao bound against S/N for the CNN and the likelihood fit (with bootstrap error bars and
the targets), and the CNN's coverage of its 1- and 1.96-sigma uncertainties against nominal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from galray.io import atomic_path

STYLES = {"cnn_vs_bound": ("tab:red", "o", "CNN"), "fit": ("tab:blue", "s", "likelihood fit")}


def _save(fig: Figure, out: Path, stem: str) -> None:
    for fmt, dpi in (("png", 200), ("pdf", None)):
        with atomic_path(out / f"{stem}.{fmt}") as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=fmt)


def _bins(table: pd.DataFrame) -> list[str]:
    """The S/N bins in table order, without the summary bin ``>=50``."""
    labels = list(dict.fromkeys(table.snr_bin))
    return [b for b in labels if not b.startswith(">=")]


def plot_estimator(table: pd.DataFrame, out: Path, nominal: dict, targets: dict) -> None:
    """``estimator_vs_bound`` (if the table has bounds; ``targets``: parameter -> the RMSE
    over bound aimed for) and ``estimator_coverage`` (``nominal``: ``cov68``/``cov95`` -> the
    nominal fraction)."""
    params = list(dict.fromkeys(table.param))
    bins = _bins(table)
    x = np.arange(len(bins))
    if "rmse_over_bound" in table:
        fig = Figure(figsize=(3.0 * len(params), 2.8))
        for k, name in enumerate(params):
            ax = fig.add_subplot(1, len(params), k + 1)
            for who, (color, marker, label) in STYLES.items():
                rows = table[(table.estimator == who) & (table.param == name)]
                rows = rows.set_index("snr_bin").reindex(bins)
                if rows["rmse_over_bound"].notna().any():
                    ax.errorbar(x, rows["rmse_over_bound"], yerr=rows["rmse_over_bound_se"],
                                color=color, marker=marker, label=label, capsize=2)  # fmt: skip
            ax.axhline(1.0, color="k", lw=0.8)
            if name in targets:
                ax.axhline(targets[name], color="k", ls="--", lw=0.8)
            ax.set_xticks(x, bins, rotation=45, fontsize=7)
            ax.set_title(name)
            ax.set_xlabel("optimal S/N")
            if k == 0:
                ax.set_ylabel("RMSE / Cramér–Rao bound")
                ax.legend(fontsize=7)
        _save(fig, out, "estimator_vs_bound")
    cnn = table[(table.estimator == "cnn") & table.get("cov68", pd.Series(dtype=float)).notna()]
    if len(cnn):
        fig = Figure(figsize=(3.0 * len(params), 2.8))
        for k, name in enumerate(params):
            ax = fig.add_subplot(1, len(params), k + 1)
            rows = cnn[cnn.param == name].set_index("snr_bin").reindex(bins)
            for key, ls in (("cov68", "-"), ("cov95", "--")):
                ax.errorbar(x, rows[key], yerr=rows[f"{key}_se"], color="tab:red", ls=ls,
                            marker="o", capsize=2, label=key)  # fmt: skip
                ax.axhline(nominal[key], color="k", lw=0.8, ls=ls)
            ax.set_xticks(x, bins, rotation=45, fontsize=7)
            ax.set_ylim(0.4, 1.02)
            ax.set_title(name)
            ax.set_xlabel("optimal S/N")
            if k == 0:
                ax.set_ylabel("fraction within the predicted interval")
                ax.legend(fontsize=7)
        _save(fig, out, "estimator_coverage")
