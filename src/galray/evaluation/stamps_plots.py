"""PNG figures of the stamp report: statistics of real (black), generated (red) and
single-Sersic baseline (blue) stamps; the monotonicity sweeps as curves and as image grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from galray.io import atomic_path

STYLES = {
    "real": {"color": "k", "linestyle": "-"},
    "generated": {"color": "tab:red", "linestyle": "--"},
    "baseline": {"color": "tab:blue", "linestyle": ":"},
}


def _save(fig: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")


def statistic_histograms(frames: dict[str, pd.DataFrame], path: Path) -> None:
    cols = list(frames["real"].columns)
    ncol = 4
    nrow = -(-len(cols) // ncol)
    fig = Figure(figsize=(3.2 * ncol, 2.6 * nrow))
    for k, col in enumerate(cols):
        ax = fig.add_subplot(nrow, ncol, k + 1)
        real = frames["real"][col].to_numpy()
        real = real[np.isfinite(real)]
        if real.size < 2:
            continue
        lo, hi = np.percentile(real, [1, 99])
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 30)
        for name, frame in frames.items():
            v = frame[col].to_numpy()
            ax.hist(v[np.isfinite(v)], bins=bins, histtype="step", density=True, label=name,
                    **STYLES[name])  # fmt: skip
        ax.set_xlabel(col)
    fig.axes[0].legend(fontsize=7)
    _save(fig, path)


def sweep_curves(sweeps: pd.DataFrame, path: Path) -> None:
    conditions = list(dict.fromkeys(sweeps["condition"]))
    fig = Figure(figsize=(3.2 * len(conditions), 2.8))
    for k, cond in enumerate(conditions):
        g = sweeps[sweeps.condition == cond]
        curve = g.groupby("value")["measured"].agg(["mean", "std", "count"])
        ax = fig.add_subplot(1, len(conditions), k + 1)
        err = curve["std"] / np.sqrt(curve["count"])
        ax.errorbar(curve.index, curve["mean"], yerr=err, marker="o", color="tab:red")
        ax.set_xlabel(cond)
        ax.set_ylabel(g["statistic"].iloc[0])
    _save(fig, path)


def image_grid(grid_images: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    """One row per condition: a generated galaxy (same draw) at each grid value."""
    conditions = list(grid_images)
    npts = max(len(v[0]) for v in grid_images.values())
    fig = Figure(figsize=(1.2 * npts, 1.3 * len(conditions)))
    for r, cond in enumerate(conditions):
        values, images = grid_images[cond]
        vmax = float(np.percentile(images, 99.9))
        for c, (value, img) in enumerate(zip(values, images)):
            ax = fig.add_subplot(len(conditions), npts, r * npts + c + 1)
            ax.imshow(np.arcsinh(img / (0.02 * vmax + 1e-12)), origin="lower", cmap="gray_r")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{cond}={value:.3g}", fontsize=6)
    _save(fig, path)


def stamps_plots(real, generated, baseline, sweeps, out: Path, grid_images=None) -> list[str]:
    """Write ``statistics.png``, ``sweeps.png`` and (given images) ``sweep_images.png``."""
    statistic_histograms(
        {"real": real, "generated": generated, "baseline": baseline}, out / "statistics.png"
    )
    sweep_curves(sweeps, out / "sweeps.png")
    written = ["statistics.png", "sweeps.png"]
    if grid_images:
        image_grid(grid_images, out / "sweep_images.png")
        written.append("sweep_images.png")
    return written
