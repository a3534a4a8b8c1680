"""PNG figures of the emulator fidelity report: reference (black, solid) vs emulated (red, dashed).

Figures are built with :class:`matplotlib.figure.Figure` and written through the Agg canvas, so
no pyplot state or global backend is touched (safe in workers and notebooks alike).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from galray.io import atomic_path

REF_STYLE = {"color": "k", "linestyle": "-", "label": "reference"}
EMU_STYLE = {"color": "tab:red", "linestyle": "--", "label": "emulated"}


def _save(fig: Figure, out: Path, name: str, written: list[str]) -> None:
    with atomic_path(out / name) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    written.append(name)


def _finite_range(values: np.ndarray, lo: float = 0.5, hi: float = 99.5) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    a, b = np.percentile(values, [lo, hi])
    return (float(a), float(b)) if b > a else (float(a) - 0.5, float(a) + 0.5)


def _cmd_bands(bands: Sequence[str]) -> tuple[str, str]:
    return ("r", "i") if {"r", "i"} <= set(bands) else (bands[0], bands[1])


def colour_magnitude(ref, emu, bands: Sequence[str], fig: Figure) -> None:
    """Observed ``b2`` vs ``b1 - b2`` of detected rows (2D histograms), side by side."""
    b1, b2 = _cmd_bands(bands)
    frames = [(f[f"obs_mag_{b1}"] - f[f"obs_mag_{b2}"], f[f"obs_mag_{b2}"]) for f in (ref, emu)]
    colour = np.concatenate([c.to_numpy() for c, _ in frames])
    mag = np.concatenate([m.to_numpy() for _, m in frames])
    extent = [_finite_range(colour), _finite_range(mag)]
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    for ax, (c, m), title in zip(axes, frames, ("reference", "emulated")):
        ok = np.isfinite(c) & np.isfinite(m)
        ax.hist2d(c[ok], m[ok], bins=80, range=extent, cmap="viridis")
        ax.set_title(f"{title} (detected)")
        ax.set_xlabel(f"{b1} - {b2} (observed)")
    axes[0].set_ylabel(f"{b2} (observed, AB)")
    axes[0].invert_yaxis()


def dmag_vs_true_mag(by_mag: pd.DataFrame, bands: Sequence[str], fig: Figure) -> None:
    """Mean and widths (robust: solid/dashed; std: dotted) of ``obs - true`` per band."""
    axes = fig.subplots(2, len(bands), sharex=True, squeeze=False)
    for j, b in enumerate(bands):
        t = by_mag[by_mag.band == b]
        for who, style in (("ref", REF_STYLE), ("emu", EMU_STYLE)):
            axes[0, j].plot(t.bin_centre, t[f"{who}_mean"], **style)
            axes[1, j].plot(t.bin_centre, t[f"{who}_width"], **style)
            axes[1, j].plot(t.bin_centre, t[f"{who}_std"], color=style["color"], ls=":", lw=1)
        axes[0, j].axhline(0.0, color="grey", lw=0.5)
        axes[0, j].set_title(f"{b} band")
        axes[1, j].set_xlabel(f"true {b} (AB)")
    axes[0, 0].set_ylabel("mean (obs - true), mag")
    axes[1, 0].set_ylabel("width: 1.4826 MAD (std dotted)")
    axes[0, 0].legend(fontsize=8)


def detection_vs_true_mag(det: pd.DataFrame, band: str, fig: Figure) -> None:
    """Detection fraction vs true magnitude, one line pair per depth bin."""
    ax = fig.subplots()
    groups = list(det.groupby("depth_bin", sort=False))
    cmap = colormaps["viridis"]
    for k, (depth_bin, t) in enumerate(groups):
        color = cmap(k / max(len(groups) - 1, 1))
        ax.plot(t.true_mag_centre, t.ref_detected, "-", color=color, label=f"depth {depth_bin}")
        ax.plot(t.true_mag_centre, t.emu_detected, "--", color=color)
    ax.set_xlabel(f"true {band} (AB)")
    ax.set_ylabel("detection fraction (solid: reference, dashed: emulated)")
    ax.legend(fontsize=7)


def detection_vs_depth(det: pd.DataFrame, band: str, fig: Figure, max_lines: int = 5) -> None:
    """Detection fraction vs depth for the true-magnitude bins where detection is partial."""
    ax = fig.subplots()
    partial = det[(det.ref_detected > 0.05) & (det.ref_detected < 0.95)]
    mags = sorted(partial.true_mag_centre.unique())
    if len(mags) > max_lines:
        mags = [mags[int(i)] for i in np.linspace(0, len(mags) - 1, max_lines)]
    cmap = colormaps["plasma"]
    for k, mag in enumerate(mags):
        t = det[det.true_mag_centre == mag].sort_values("depth_centre")
        color = cmap(k / max(len(mags), 1))
        label = f"true {band} {t.true_mag_bin.iloc[0]}"
        ax.plot(t.depth_centre, t.ref_detected, "o-", color=color, label=label)
        ax.plot(t.depth_centre, t.emu_detected, "s--", color=color)
    ax.set_xlabel(f"depth_{band} (10-sigma AB), bin centre")
    ax.set_ylabel("detection fraction (solid: reference, dashed: emulated)")
    if mags:
        ax.legend(fontsize=7)


def magnitude_histograms(ref, emu, bands: Sequence[str], fig: Figure) -> None:
    """Observed magnitudes of detected rows per band."""
    axes = fig.subplots(1, len(bands), squeeze=False)[0]
    for ax, b in zip(axes, bands):
        r, e = ref[f"obs_mag_{b}"].to_numpy(), emu[f"obs_mag_{b}"].to_numpy()
        lo, hi = _finite_range(np.concatenate([r, e]), 0.1, 99.9)
        edges = np.linspace(lo, hi, 80)
        for values, style in ((r, REF_STYLE), (e, EMU_STYLE)):
            ax.hist(values[np.isfinite(values)], edges, histtype="step", **style)
        ax.set_xlabel(f"observed {b} (AB)")
    axes[0].set_ylabel("detected rows per bin")
    axes[0].legend(fontsize=8)


def selection_vs_true_mag(sel: pd.DataFrame, band: str, fig: Figure) -> None:
    """Selected fraction vs true magnitude per depth bin (reference solid, emulated dashed,
    binomial error bars), and the emulated - reference difference with its error below."""
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    groups = list(sel.groupby("depth_bin", sort=False))
    cmap = colormaps["viridis"]
    offset = 0.04  # mag: keep the two sides' error bars apart
    for k, (depth_bin, t) in enumerate(groups):
        color = cmap(k / max(len(groups) - 1, 1))
        x = t.true_mag_centre.to_numpy()
        top.errorbar(
            x - offset,
            t.ref_selected,
            t.ref_err,
            fmt="o-",
            ms=3,
            color=color,
            label=f"depth {depth_bin}",
        )
        top.errorbar(x + offset, t.emu_selected, t.emu_err, fmt="s--", ms=3, color=color)
        bottom.errorbar(x, t["diff"], t.diff_err, fmt="o", ms=3, color=color)
    bottom.axhline(0.0, color="grey", lw=0.5)
    top.set_ylabel("selected fraction\n(solid: reference, dashed: emulated)")
    bottom.set_ylabel("emulated - reference")
    bottom.set_xlabel(f"true {band} (AB)")
    top.legend(fontsize=7)


def redshift_histograms(redshift, fig: Figure, bins: int = 40) -> None:
    """n(z) of the selected galaxies per tomographic bin, reference vs emulated (normalised
    counts), with the mean redshifts marked and their difference in the title."""
    table = redshift.table
    axes = fig.subplots(1, len(table), sharex=True, squeeze=False)[0]
    z = redshift.z
    selected = (redshift.ref_bin >= 0) | (redshift.emu_bin >= 0)
    lo, hi = _finite_range(z[selected] if selected.any() else z, 0.0, 100.0)
    edges = np.linspace(lo, hi, bins + 1)
    for ax, row in zip(axes, table.itertuples()):
        for side, style in (("ref", REF_STYLE), ("emu", EMU_STYLE)):
            values = z[getattr(redshift, f"{side}_bin") == row.bin]
            if values.size:
                ax.hist(values, edges, density=True, histtype="step", **style)
            ax.axvline(
                getattr(row, f"{side}_mean_z"),
                color=style["color"],
                linestyle=style["linestyle"],
                lw=1,
            )
        ax.set_title(
            f"bin {row.bin}: dz = {row.diff_mean_z:+.4f} +- {row.diff_mean_z_err:.4f}",
            fontsize=8,
        )
        ax.set_xlabel("z")
    axes[0].set_ylabel("n(z) of the selection (normalised)")
    axes[0].legend(fontsize=7)


def fidelity_plots(
    ref,
    emu,
    bands: Sequence[str],
    tables: dict,
    out: Path,
    *,
    selection_band: str | None = None,
    redshift=None,
) -> list[str]:
    """Write the report's PNGs into ``out``; return their file names.  ``selection_band``: the
    band of ``tables["selection_by_bin"]``; ``redshift``: the report's
    :class:`~galray.evaluation.selection.RedshiftBins`, if any."""
    det_band = "i" if "i" in bands else bands[0]
    det = tables["detection_by_bin"]
    figures = {}
    if len(bands) >= 2:
        b1, b2 = _cmd_bands(bands)
        figures[f"cmd_{b1}{b2}_{b2}.png"] = (
            lambda fig: colour_magnitude(ref, emu, bands, fig),
            (10, 4.5),
        )
    figures |= {
        "dmag_vs_true_mag.png": (
            lambda fig: dmag_vs_true_mag(tables["dmag_by_true_mag"], bands, fig),
            (4 * len(bands), 6),
        ),
        "detection_vs_true_mag.png": (
            lambda fig: detection_vs_true_mag(det, det_band, fig),
            (6, 4.5),
        ),
        "detection_vs_depth.png": (lambda fig: detection_vs_depth(det, det_band, fig), (6, 4.5)),
        "obs_mag_hist.png": (
            lambda fig: magnitude_histograms(ref, emu, bands, fig),
            (4 * len(bands), 3.5),
        ),
    }
    if "selection_by_bin" in tables:
        band = selection_band or det_band
        figures["selection_vs_true_mag.png"] = (
            lambda fig: selection_vs_true_mag(tables["selection_by_bin"], band, fig),
            (6, 6),
        )
    if redshift is not None and len(redshift.table):
        figures["nz_by_bin.png"] = (
            lambda fig: redshift_histograms(redshift, fig),
            (3.2 * len(redshift.table), 3.5),
        )
    written: list[str] = []
    for name, (draw, size) in figures.items():
        fig = Figure(figsize=size)
        draw(fig)
        _save(fig, out, name, written)
    return written
