"""Figures of the deep-field report (:mod:`galray.evaluation.deepfield`): real (black) vs
generated (red) source counts per band with Poisson errors and their ratio below, colour
distributions with the difference below, and cut-outs of both fields.  Written as PNG and PDF
(:func:`galray.evaluation.plots.save_figure`) through :class:`matplotlib.figure.Figure`, no
pyplot state."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from galray.datasets.fitsfield import FieldImage
from galray.evaluation.plots import save_figure

MAG_STEP = 0.25  # mag, counts histogram
COLOUR_EDGES = np.linspace(-1.0, 2.5, 36)
SIDES = (("real", "k"), ("generated", "tab:red"))


def rgb_cutout(image: FieldImage, size: int = 256) -> np.ndarray:
    """The first ``size`` pixels square of ``image`` as an asinh-stretched RGB array."""
    data = image.data[:, :size, :size]
    rgb = data[::-1][:3] if data.shape[0] >= 3 else np.repeat(data[:1], 3, axis=0)
    sigma = 1.4826 * np.median(np.abs(rgb - np.median(rgb)))
    stretched = np.arcsinh(rgb / max(3 * sigma, 1e-12))
    lo, hi = np.percentile(stretched, 1), np.percentile(stretched, 99.8)
    return np.clip((stretched - lo) / max(hi - lo, 1e-12), 0, 1).transpose(1, 2, 0)


def magnitude_counts(real_cat, gen_cat, report: dict, fig: Figure) -> None:
    """Sources per arcmin² per mag in each band (log scale, Poisson errors), the KS p-value in
    the title, the magnitude limit dotted; generated / real below with its error."""
    bands = report["bands"]
    areas = (report["area_real_arcmin2"], report["area_generated_arcmin2"])
    axes = fig.subplots(
        2, len(bands), sharex="col", squeeze=False, gridspec_kw={"height_ratios": [2, 1]}
    )
    for j, b in enumerate(bands):
        mags = np.concatenate([real_cat[f"mag_{b}"], gen_cat[f"mag_{b}"]])
        mags = mags[np.isfinite(mags)]
        if mags.size == 0:
            continue
        edges = np.arange(np.floor(mags.min()), np.ceil(mags.max()) + MAG_STEP, MAG_STEP)
        centres = 0.5 * (edges[1:] + edges[:-1])
        density = []
        for cat, area, (label, colour) in zip((real_cat, gen_cat), areas, SIDES):
            counts, _ = np.histogram(cat[f"mag_{b}"].dropna(), edges)
            scale = 1.0 / (area * MAG_STEP)
            axes[0, j].stairs(counts * scale, edges, color=colour, label=label)
            axes[0, j].errorbar(
                centres, counts * scale, np.sqrt(counts) * scale, fmt="none", color=colour, lw=0.7
            )
            density.append((counts * scale, np.sqrt(counts) * scale))
        (r, r_err), (g, g_err) = density
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = g / r
            ratio_err = ratio * np.hypot(r_err / r, g_err / g)
        axes[1, j].errorbar(centres, ratio, ratio_err, fmt="o", ms=2, color="tab:red")
        axes[1, j].axhline(1.0, color="grey", lw=0.5)
        for ax in axes[:, j]:
            ax.axvline(report["mag_limits"][b], color="grey", ls=":")
        axes[0, j].set_yscale("log")
        axes[1, j].set_xlabel(f"{b} (AB)")
        axes[0, j].set_title(f"KS p = {report[f'ks_p_{b}']:.3g}")
    axes[0, 0].set_ylabel("sources / arcmin² / mag")
    axes[1, 0].set_ylabel("generated / real")
    axes[0, 0].legend()


def colour_distributions(real_cat, gen_cat, report: dict, fig: Figure) -> None:
    """Colours of adjacent bands below the magnitude limits (normalised, Poisson errors), the
    KS p-value in the title; generated - real below."""
    pairs = list(itertools.pairwise(report["bands"]))
    axes = fig.subplots(
        2, len(pairs), sharex="col", squeeze=False, gridspec_kw={"height_ratios": [2, 1]}
    )
    centres = 0.5 * (COLOUR_EDGES[1:] + COLOUR_EDGES[:-1])
    width = np.diff(COLOUR_EDGES)
    limits = report["mag_limits"]
    for j, (b1, b2) in enumerate(pairs):
        density = []
        for cat, (label, colour) in zip((real_cat, gen_cat), SIDES):
            keep = (cat[f"mag_{b1}"] < limits[b1]) & (cat[f"mag_{b2}"] < limits[b2])
            colours = (cat[f"mag_{b1}"] - cat[f"mag_{b2}"])[keep].dropna()
            counts, _ = np.histogram(colours, COLOUR_EDGES)
            scale = 1.0 / (max(counts.sum(), 1) * width)
            axes[0, j].stairs(counts * scale, COLOUR_EDGES, color=colour, label=label)
            axes[0, j].errorbar(
                centres, counts * scale, np.sqrt(counts) * scale, fmt="none", color=colour, lw=0.7
            )
            density.append((counts * scale, np.sqrt(counts) * scale))
        (r, r_err), (g, g_err) = density
        axes[1, j].errorbar(centres, g - r, np.hypot(r_err, g_err), fmt="o", ms=2, color="tab:red")
        axes[1, j].axhline(0.0, color="grey", lw=0.5)
        axes[1, j].set_xlabel(f"{b1} - {b2}")
        axes[0, j].set_title(f"KS p = {report[f'ks_p_{b1}-{b2}']:.3g}")
    axes[0, 0].set_ylabel("normalised density")
    axes[1, 0].set_ylabel("generated - real")
    axes[0, 0].legend()


def deepfield_plots(
    real, generated, real_cat, gen_cat, report: dict, out: Path, title: str | None = None
) -> list[str]:
    """Write ``magnitudes``, ``colours`` (with two bands or more) and ``cutouts`` (PNG + PDF)
    into ``out``; return the PNGs' names."""
    written: list[str] = []
    with warnings.catch_warnings():  # empty histograms of a poor generator are expected
        warnings.simplefilter("ignore", RuntimeWarning)
        n_bands = len(report["bands"])
        figures = {"magnitudes.png": (magnitude_counts, (4 * n_bands, 5))}
        if n_bands >= 2:
            figures["colours.png"] = (colour_distributions, (4 * (n_bands - 1), 5))
        for name, (draw, size) in figures.items():
            fig = Figure(figsize=size)
            draw(real_cat, gen_cat, report, fig)
            if title:
                fig.suptitle(title, fontsize=9)
            save_figure(fig, out, name, written)
        fig = Figure(figsize=(9, 4.5))
        axes = fig.subplots(1, 2)
        for ax, image, label in ((axes[0], real, "real"), (axes[1], generated, "generated")):
            ax.imshow(rgb_cutout(image), origin="lower")
            ax.set_title(label)
            ax.set_axis_off()
        if title:
            fig.suptitle(title, fontsize=9)
        save_figure(fig, out, "cutouts.png", written)
    return written
