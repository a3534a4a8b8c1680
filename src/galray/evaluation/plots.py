"""Figures of the emulator fidelity report: reference (black, solid) vs emulated (red, dashed),
with error bars and a residual panel (emulated - reference) under each comparison.

Figures are built with :class:`matplotlib.figure.Figure` and written through the Agg canvas, so
no pyplot state or global backend is touched (safe in workers and notebooks alike).  Each is
written twice (:func:`save_figure`): a PNG at :data:`PNG_DPI` and a PDF beside it (for papers;
the 2D histograms inside are rasterised at the same resolution).  ``title`` (the model, its
version, the rows and the seed) goes above each figure.

Errors: a mean's is std / sqrt(n); a robust width's (1.4826 MAD) 1.166 width / sqrt(n) and a
standard deviation's std / sqrt(2 n) (their large-n values for Gaussian data); a fraction's
binomial; a histogram count's Poisson.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from galray.io import atomic_path

REF_STYLE = {"color": "k", "linestyle": "-", "label": "reference"}
EMU_STYLE = {"color": "tab:red", "linestyle": "--", "label": "emulated"}
PNG_DPI = 200
MAD_WIDTH_ERR = 1.166  # sd of 1.4826 MAD over sigma, times sqrt(n), for Gaussian data
PULL_LIMIT = 4.0  # colour range of residual maps, sigma


def save_figure(fig: Figure, out: Path, name: str, written: list[str] | None = None) -> None:
    """Write ``fig`` as ``out/name`` (PNG, :data:`PNG_DPI`) and the same name with ``.pdf``,
    atomically; ``name`` is appended to ``written``."""
    for target, fmt in ((name, "png"), (str(Path(name).with_suffix(".pdf")), "pdf")):
        with atomic_path(out / target) as tmp:
            fig.savefig(tmp, dpi=PNG_DPI, bbox_inches="tight", format=fmt)
    if written is not None:
        written.append(name)


def plot_title(model: str | None, n_rows: int | None, seed: int | None) -> str:
    """``"<model> | N = 12,345 rows | seed 0"`` (the parts known)."""
    parts = [model] if model else []
    if n_rows is not None:
        parts.append(f"N = {n_rows:,} rows")
    if seed is not None:
        parts.append(f"seed {seed}")
    return " | ".join(parts)


def _finite_range(values: np.ndarray, lo: float = 0.5, hi: float = 99.5) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    a, b = np.percentile(values, [lo, hi])
    return (float(a), float(b)) if b > a else (float(a) - 0.5, float(a) + 0.5)


def _cmd_bands(bands: Sequence[str]) -> tuple[str, str]:
    return ("r", "i") if {"r", "i"} <= set(bands) else (bands[0], bands[1])


def colour_magnitude(ref, emu, bands: Sequence[str], fig: Figure, bins: int = 80) -> None:
    """Observed ``b2`` vs ``b1 - b2`` of detected rows: 2D histograms of both frames on one
    logarithmic colour scale (colour bar: rows per bin), and their residual in units of its
    Poisson noise, ``(emu - ref) / sqrt(emu + ref)``."""
    b1, b2 = _cmd_bands(bands)
    frames = [(f[f"obs_mag_{b1}"] - f[f"obs_mag_{b2}"], f[f"obs_mag_{b2}"]) for f in (ref, emu)]
    colour = np.concatenate([c.to_numpy() for c, _ in frames])
    mag = np.concatenate([m.to_numpy() for _, m in frames])
    extent = [_finite_range(colour), _finite_range(mag)]
    counts = []
    for c, m in frames:
        c, m = c.to_numpy(), m.to_numpy()
        ok = np.isfinite(c) & np.isfinite(m)
        h, x_edges, y_edges = np.histogram2d(c[ok], m[ok], bins=bins, range=extent)
        counts.append(h.T)  # [mag, colour]
    norm = LogNorm(vmin=1.0, vmax=max(1.0, max(h.max() for h in counts)))
    axes = fig.subplots(1, 3, sharex=True, sharey=True)
    for ax, h, title in zip(axes, counts, ("reference", "emulated")):
        mesh = ax.pcolormesh(
            x_edges, y_edges, np.ma.masked_less(h, 1), norm=norm, cmap="viridis", rasterized=True
        )
        ax.set_title(f"{title} (detected)")
    fig.colorbar(mesh, ax=list(axes[:2]), label="detected rows per bin (log scale)", pad=0.02)
    total = counts[0] + counts[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        pull = np.ma.masked_invalid((counts[1] - counts[0]) / np.sqrt(total))
    mesh = axes[2].pcolormesh(
        x_edges, y_edges, pull, cmap="RdBu_r", vmin=-PULL_LIMIT, vmax=PULL_LIMIT, rasterized=True
    )
    axes[2].set_title("residual")
    fig.colorbar(mesh, ax=axes[2], label="(emulated - reference) / sqrt(sum)", pad=0.02)
    for ax in axes:
        ax.set_xlabel(f"{b1} - {b2} (observed)")
    axes[0].set_ylabel(f"{b2} (observed, AB)")
    axes[0].invert_yaxis()


def _floats(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with its numeric columns as float64, empty bins NaN (a table built from Arrow
    data holds nullable columns, whose ``pd.NA`` matplotlib cannot draw)."""
    out = table.copy()
    for name in out.columns:
        column = out[name]
        if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
            out[name] = column.to_numpy(dtype=float, na_value=np.nan)
    return out


def _mean_err(t: pd.DataFrame, who: str) -> np.ndarray:
    return (t[f"{who}_std"] / np.sqrt(t[f"{who}_count"].clip(lower=1))).to_numpy(float)


def _width_err(t: pd.DataFrame, who: str) -> np.ndarray:
    return (MAD_WIDTH_ERR * t[f"{who}_width"] / np.sqrt(t[f"{who}_count"].clip(lower=1))).to_numpy(
        float
    )


def dmag_vs_true_mag(by_mag: pd.DataFrame, bands: Sequence[str], fig: Figure) -> None:
    """Mean (top) and widths (middle; robust: markers, std: dotted) of ``obs - true`` per band
    with their errors, and the emulated - reference differences of both (bottom)."""
    axes = fig.subplots(
        3, len(bands), sharex=True, squeeze=False, gridspec_kw={"height_ratios": [2, 2, 1.3]}
    )
    offset = 0.04  # mag: keep the two sides' error bars apart
    by_mag = _floats(by_mag)
    for j, b in enumerate(bands):
        t = by_mag[by_mag.band == b]
        x = t.bin_centre.to_numpy(float)
        for k, (who, style) in enumerate((("ref", REF_STYLE), ("emu", EMU_STYLE))):
            dx = (2 * k - 1) * offset
            axes[0, j].errorbar(x + dx, t[f"{who}_mean"], _mean_err(t, who), ms=3, fmt="o", **style)
            axes[1, j].errorbar(
                x + dx, t[f"{who}_width"], _width_err(t, who), ms=3, fmt="o", **style
            )
            std_err = t[f"{who}_std"] / np.sqrt(2 * t[f"{who}_count"].clip(lower=1))
            axes[1, j].errorbar(
                x + dx, t[f"{who}_std"], std_err, color=style["color"], ls=":", lw=1
            )
        mean_diff = t.emu_mean - t.ref_mean
        mean_err = np.hypot(_mean_err(t, "ref"), _mean_err(t, "emu"))
        width_diff = t.emu_width - t.ref_width
        width_err = np.hypot(_width_err(t, "ref"), _width_err(t, "emu"))
        axes[2, j].errorbar(x - offset, mean_diff, mean_err, fmt="o", ms=3, label="mean")
        axes[2, j].errorbar(x + offset, width_diff, width_err, fmt="s", ms=3, label="width")
        for row in (0, 2):
            axes[row, j].axhline(0.0, color="grey", lw=0.5)
        axes[0, j].set_title(f"{b} band")
        axes[2, j].set_xlabel(f"true {b} (AB)")
    axes[0, 0].set_ylabel("mean (obs - true), mag")
    axes[1, 0].set_ylabel("width: 1.4826 MAD\n(std dotted), mag")
    axes[2, 0].set_ylabel("emulated - reference")
    axes[0, 0].legend(fontsize=8)
    axes[2, 0].legend(fontsize=7)


def _detection_err(det: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binomial errors of the reference and emulated fractions (0 for a side that averages
    probabilities: ``attrs["compared"]``) and of their difference."""
    compared = det.attrs.get("compared", ["detected", "detected"])
    n = det["count"].clip(lower=1).to_numpy(float)
    errs = []
    for side, source in zip(("ref", "emu"), compared):
        p = det[f"{side}_detected"].to_numpy(float)
        errs.append(np.sqrt(p * (1 - p) / n) if source == "detected" else np.zeros_like(p))
    return errs[0], errs[1], np.hypot(errs[0], errs[1])


def detection_vs_true_mag(det: pd.DataFrame, band: str, fig: Figure) -> None:
    """Detection fraction vs true magnitude with binomial errors, one line pair per depth bin,
    and the emulated - reference difference below."""
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    det = _floats(det)
    groups = list(det.groupby("depth_bin", sort=False))
    cmap = colormaps["viridis"]
    ref_err, emu_err, diff_err = _detection_err(det)
    for k, (depth_bin, t) in enumerate(groups):
        color = cmap(k / max(len(groups) - 1, 1))
        rows = det.index.get_indexer(t.index)
        x = t.true_mag_centre.to_numpy(float)
        top.errorbar(
            x, t.ref_detected, ref_err[rows], fmt="-", color=color, label=f"depth {depth_bin}"
        )
        top.errorbar(x, t.emu_detected, emu_err[rows], fmt="--", color=color)
        bottom.errorbar(
            x, t.emu_detected - t.ref_detected, diff_err[rows], fmt="o", ms=3, color=color
        )
    bottom.axhline(0.0, color="grey", lw=0.5)
    bottom.set_xlabel(f"true {band} (AB)")
    top.set_ylabel("detection fraction\n(solid: reference, dashed: emulated)")
    bottom.set_ylabel("emulated - reference")
    top.legend(fontsize=7)


def detection_vs_depth(det: pd.DataFrame, band: str, fig: Figure, max_lines: int = 5) -> None:
    """Detection fraction vs depth (binomial errors) for the true-magnitude bins where
    detection is partial, and the emulated - reference difference below."""
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    det = _floats(det)
    partial = det[(det.ref_detected > 0.05) & (det.ref_detected < 0.95)]
    mags = sorted(partial.true_mag_centre.unique())
    if len(mags) > max_lines:
        mags = [mags[int(i)] for i in np.linspace(0, len(mags) - 1, max_lines)]
    cmap = colormaps["plasma"]
    ref_err, emu_err, diff_err = _detection_err(det)
    for k, mag in enumerate(mags):
        t = det[det.true_mag_centre == mag].sort_values("depth_centre")
        rows = det.index.get_indexer(t.index)
        color = cmap(k / max(len(mags), 1))
        label = f"true {band} {t.true_mag_bin.iloc[0]}"
        x = t.depth_centre.to_numpy(float)
        top.errorbar(x, t.ref_detected, ref_err[rows], fmt="o-", ms=3, color=color, label=label)
        top.errorbar(x, t.emu_detected, emu_err[rows], fmt="s--", ms=3, color=color)
        bottom.errorbar(
            x, t.emu_detected - t.ref_detected, diff_err[rows], fmt="o", ms=3, color=color
        )
    bottom.axhline(0.0, color="grey", lw=0.5)
    bottom.set_xlabel(f"depth_{band} (10-sigma AB), bin centre")
    top.set_ylabel("detection fraction\n(solid: reference, dashed: emulated)")
    bottom.set_ylabel("emulated - reference")
    if mags:
        top.legend(fontsize=7)


def magnitude_histograms(ref, emu, bands: Sequence[str], fig: Figure) -> None:
    """Observed magnitudes of detected rows per band (log counts, Poisson errors), and the
    residual per bin in units of its Poisson noise below."""
    axes = fig.subplots(
        2, len(bands), sharex="col", squeeze=False, gridspec_kw={"height_ratios": [2, 1]}
    )
    for j, b in enumerate(bands):
        r, e = ref[f"obs_mag_{b}"].to_numpy(), emu[f"obs_mag_{b}"].to_numpy()
        lo, hi = _finite_range(np.concatenate([r, e]), 0.1, 99.9)
        edges = np.linspace(lo, hi, 61)
        centres = 0.5 * (edges[1:] + edges[:-1])
        counts = []
        for values, style in ((r, REF_STYLE), (e, EMU_STYLE)):
            h, _ = np.histogram(values[np.isfinite(values)], edges)
            axes[0, j].stairs(h, edges, **style)
            axes[0, j].errorbar(centres, h, np.sqrt(h), fmt="none", color=style["color"], lw=0.7)
            counts.append(h.astype(float))
        axes[0, j].set_yscale("log")
        with np.errstate(invalid="ignore", divide="ignore"):
            pull = (counts[1] - counts[0]) / np.sqrt(counts[0] + counts[1])
        axes[1, j].errorbar(centres, pull, np.ones_like(pull), fmt="o", ms=2, color="tab:red")
        axes[1, j].axhline(0.0, color="grey", lw=0.5)
        axes[1, j].set_xlabel(f"observed {b} (AB)")
    axes[0, 0].set_ylabel("detected rows per bin")
    axes[1, 0].set_ylabel("(emu - ref) / sqrt(sum)")
    axes[0, 0].legend(fontsize=8)


def selection_vs_true_mag(sel: pd.DataFrame, band: str, fig: Figure) -> None:
    """Selected fraction vs true magnitude per depth bin (reference solid, emulated dashed,
    binomial error bars), and the emulated - reference difference with its error below."""
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    sel = _floats(sel)
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
            if values.size:  # normalised counts with Poisson errors
                h, _ = np.histogram(values, edges)
                scale = 1.0 / (max(h.sum(), 1) * np.diff(edges))
                ax.stairs(h * scale, edges, **style)
                centres = 0.5 * (edges[1:] + edges[:-1])
                ax.errorbar(
                    centres, h * scale, np.sqrt(h) * scale, fmt="none", color=style["color"], lw=0.7
                )
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
    title: str | None = None,
) -> list[str]:
    """Write the report's figures into ``out`` (PNG and PDF, :func:`save_figure`); return the
    PNGs' file names.  ``selection_band``: the band of ``tables["selection_by_bin"]``;
    ``redshift``: the report's :class:`~galray.evaluation.selection.RedshiftBins`, if any;
    ``title``: above every figure (:func:`plot_title`)."""
    det_band = "i" if "i" in bands else bands[0]
    det = tables["detection_by_bin"]
    figures = {}
    if len(bands) >= 2:
        b1, b2 = _cmd_bands(bands)
        figures[f"cmd_{b1}{b2}_{b2}.png"] = (
            lambda fig: colour_magnitude(ref, emu, bands, fig),
            (15, 4.5),
        )
    figures |= {
        "dmag_vs_true_mag.png": (
            lambda fig: dmag_vs_true_mag(tables["dmag_by_true_mag"], bands, fig),
            (4 * len(bands), 8),
        ),
        "detection_vs_true_mag.png": (
            lambda fig: detection_vs_true_mag(det, det_band, fig),
            (6, 6),
        ),
        "detection_vs_depth.png": (lambda fig: detection_vs_depth(det, det_band, fig), (6, 6)),
        "obs_mag_hist.png": (
            lambda fig: magnitude_histograms(ref, emu, bands, fig),
            (4 * len(bands), 5),
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
        if title:
            fig.suptitle(title, fontsize=9)
        save_figure(fig, out, name, written)
    return written
