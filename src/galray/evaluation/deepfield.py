"""Fidelity of generated deep fields: detect sources in real and generated images with identical
settings and compare what is found (Smith & Geach 2019, section 3).

Detection (``sep``, SExtractor's algorithms as a library), the same on every image:

* each band's background is estimated on a ``background_box`` px mesh (median-filtered over
  ``background_filter`` meshes) and subtracted;
* the detection image is the pixel-wise mean of the background-subtracted bands; a source is at
  least ``min_area`` (5) connected pixels above ``threshold`` times the detection image's global
  background rms, after sep's default 3x3 smoothing, deblended at ``deblend_cont``;
* sources closer than ``edge`` pixels to a border are dropped (and the border is left out of
  the area), since the generator's output near a field's edge sees zero padding;
* photometry in every band through the same aperture, fixed on the detection image: the Kron
  ellipse ``kron_factor`` x the Kron radius ("auto" magnitudes), or a circle of ``min_radius``
  pixels where that ellipse would be smaller (SExtractor's rule);
* magnitudes ``m = ZP_b - 2.5 log10(flux)`` (AB) with each band's zeropoint: the file's
  ``MAGZERO`` (galray writes the training image's into every generated file: 31.4 for nJy
  pixels) unless one is given; non-positive fluxes give NaN.

Comparison (``report.json``), per band ``b``:

* ``ks_p_<b>``: two-sided KS p-value of the magnitudes of sources brighter than the band's
  magnitude limit (given, or the real catalog's turnover: the peak of its 0.25-mag histogram
  smoothed over three bins, roughly the completeness limit), as in the paper;
* ``median_dmag_<b>``: median magnitude of all detections, generated - real.  (Below a fixed
  limit a steep count slope makes a magnitude shift nearly invisible to the KS test; the
  median of all detections and the counts below the limit expose it.)
* ``count_ratio_<b>``: sources per arcmin² brighter than the limit, generated / real;
  ``count_ratio_detected``: all detections per arcmin², generated / real.

Colours of adjacent bands (both below their limits): ``ks_p_<b1>-<b2>``,
``median_dcolour_<b1>-<b2>``.  Summary keys: ``ks_p_min``, ``median_dmag_max`` (largest
absolute median difference), ``count_ratio`` (of the per-band and all-detection ratios, the one
farthest from 1), ``meets_targets`` (``ks_p_min >= 0.05``, ``median_dmag_max <= 0.05``,
``|count_ratio - 1| <= 0.1``).

Sample variance sets a floor: two independent realizations of the same 2048² synthetic field
(~4 arcmin², a few hundred detections) differ by several hundredths of a magnitude in median
and several per cent in counts, so fields of ~15 arcmin² or more are needed to test the
targets.  Even there the floor is close to the targets: two independent 4096² fields (16.5
arcmin², ~2000 detections each) differ by 0.04-0.05 mag in median and 4-5 % in counts.  So
the report states each statistic's sampling error: ``median_dmag_err_<b>`` (bootstrap standard
error of the difference of medians, both catalogs resampled) and ``count_ratio_err_<b>``
(Poisson), and ``median_dmag_max_sigma``, the largest ``|median_dmag_<b>| / err``: a miss at
one or two sigma may be the real field's own noise; pooling several generated fields
(``--generated A B ...``) shrinks the generated side's share.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy.stats import ks_2samp

from galray.config import require
from galray.datasets.fitsfield import FieldImage
from galray.errors import DataError
from galray.io import write_json, write_parquet

REPORT_NAME = "report.json"
TARGETS = {"ks_p_min": 0.05, "median_dmag_max": 0.05, "count_ratio_tolerance": 0.10}


@dataclass
class DetectionSettings:
    """The source-extraction settings applied identically to every image (module docstring).

    threshold: in units of the detection image's background rms.  min_area: pixels.
    deblend_cont: sep's deblending contrast.  background_box / background_filter: the
    background mesh (px) and its median filter (meshes).  kron_factor: the Kron aperture scale.
    min_radius: the smallest aperture radius (px).  edge: border pixels left out.
    """

    threshold: float = 3.0
    min_area: int = 5
    deblend_cont: float = 0.005
    background_box: int = 64
    background_filter: int = 3
    kron_factor: float = 2.5
    min_radius: float = 3.5
    edge: int = 16

    def __post_init__(self) -> None:
        require(self.threshold > 0, "threshold", f"must be positive, got {self.threshold}")
        require(self.min_area >= 1, "min_area", f"must be >= 1, got {self.min_area}")
        require(0 < self.deblend_cont <= 1, "deblend_cont", "must be in (0, 1]")
        require(self.background_box >= 8, "background_box", "must be >= 8 pixels")
        require(self.background_filter >= 1, "background_filter", "must be >= 1")
        require(self.kron_factor > 0, "kron_factor", "must be positive")
        require(self.min_radius > 0, "min_radius", "must be positive")
        require(self.edge >= 0, "edge", f"must be >= 0, got {self.edge}")


# --------------------------------------------------------------------------- extraction


def resolve_zeropoints(
    image: FieldImage, override: float | None, fallback: Sequence[float | None] | None = None
) -> list[float]:
    """Each band's zeropoint: ``override``, else the file's, else ``fallback``'s."""
    out = []
    for c, band in enumerate(image.bands):
        zp = override if override is not None else image.zeropoints[c]
        if zp is None and fallback is not None:
            zp = fallback[c]
        if zp is None:
            raise DataError(
                f"{image.path}: band {band} has no zeropoint keyword (MAGZERO, ZEROPNT, ...); "
                "give one with --zeropoint"
            )
        out.append(float(zp))
    return out


def extract_sources(
    image: FieldImage, zeropoints: Sequence[float], settings: DetectionSettings | None = None
) -> pd.DataFrame:
    """Detect and measure the sources of ``image`` (module docstring): one row per source with
    ``x``, ``y`` (0-based pixels), shape, ``kron_radius``, ``flux_<b>`` and ``mag_<b>``."""
    import sep

    s = settings or DetectionSettings()
    data = np.ascontiguousarray(image.data, dtype=np.float32)
    c, h, w = data.shape
    if min(h, w) <= 2 * s.edge + s.min_area:
        raise DataError(f"{image.path}: {h}x{w} pixels is too small to evaluate")
    box = min(s.background_box, h, w)
    bands = []
    for k in range(c):
        bkg = sep.Background(
            data[k], bw=box, bh=box, fw=s.background_filter, fh=s.background_filter
        )
        bands.append(data[k] - bkg.back())
    detection = np.ascontiguousarray(np.mean(bands, axis=0), dtype=np.float32)
    rms = sep.Background(
        detection, bw=box, bh=box, fw=s.background_filter, fh=s.background_filter
    ).globalrms
    sep.set_extract_pixstack(max(300_000, 2 * h * w // 10))
    sep.set_sub_object_limit(4096)
    objects = sep.extract(
        detection, s.threshold, err=rms, minarea=s.min_area, deblend_cont=s.deblend_cont
    )
    x, y = objects["x"], objects["y"]
    inside = (x >= s.edge) & (x <= w - 1 - s.edge) & (y >= s.edge) & (y <= h - 1 - s.edge)
    objects = objects[inside]
    x, y = objects["x"], objects["y"]
    a = np.maximum(objects["a"], 1e-3)
    b = np.minimum(np.maximum(objects["b"], 1e-3), a)
    # sep returns theta in float32: an object elongated along y can come back as pi/2 rounded
    # up, outside the [-pi/2, pi/2] its aperture functions accept
    theta = np.clip(objects["theta"].astype(np.float64), -np.pi / 2, np.pi / 2)
    frame = {"x": x, "y": y, "a": a, "b": b, "theta": theta, "npix": objects["npix"]}
    if len(objects) == 0:
        frame["kron_radius"] = np.empty(0)
        for band in image.bands:
            frame[f"flux_{band}"] = frame[f"mag_{band}"] = np.empty(0)
        return pd.DataFrame(frame)
    kron, _ = sep.kron_radius(detection, x, y, a, b, theta, 6.0)
    kron = np.where(np.isfinite(kron) & (kron > 0), kron, 0.0)
    circle = s.kron_factor * kron * np.sqrt(a * b) < s.min_radius
    frame["kron_radius"] = kron
    for k, band in enumerate(image.bands):
        img = np.ascontiguousarray(bands[k], dtype=np.float32)
        flux = np.empty(len(x))
        if (~circle).any():
            flux[~circle], _, _ = sep.sum_ellipse(
                img, x[~circle], y[~circle], a[~circle], b[~circle], theta[~circle],
                s.kron_factor * kron[~circle], subpix=1,
            )  # fmt: skip
        if circle.any():
            flux[circle], _, _ = sep.sum_circle(img, x[circle], y[circle], s.min_radius, subpix=5)
        frame[f"flux_{band}"] = flux
        with np.errstate(divide="ignore", invalid="ignore"):
            frame[f"mag_{band}"] = np.where(
                flux > 0, zeropoints[k] - 2.5 * np.log10(np.where(flux > 0, flux, 1.0)), np.nan
            )
    return pd.DataFrame(frame)


# --------------------------------------------------------------------------- comparison


def turnover_magnitude(mags: np.ndarray, width: float = 0.25) -> float:
    """The peak of the histogram of ``mags`` (``width``-mag bins, smoothed over three bins)."""
    mags = mags[np.isfinite(mags)]
    if mags.size < 10:
        return float(np.nanmax(mags)) if mags.size else float("nan")
    edges = np.arange(np.floor(mags.min()), np.ceil(mags.max()) + width, width)
    counts, edges = np.histogram(mags, edges)
    smooth = np.convolve(counts, np.ones(3) / 3.0, mode="same")
    k = int(np.argmax(smooth))
    return float(0.5 * (edges[k] + edges[k + 1]))


def _ks_p(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if min(a.size, b.size) == 0:
        # one side found nothing the other did: as different as samples get
        return 0.0 if max(a.size, b.size) >= 5 else float("nan")
    return float(ks_2samp(a, b).pvalue)


def _nan_extreme(pick, values: list[float]) -> float:
    """``pick`` (min or max) of the finite values; NaN if any is NaN (a band with no sources
    to compare must not pass unnoticed) or there are none."""
    if not values or not all(np.isfinite(v) for v in values):
        return float("nan")
    return float(pick(values))


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b > 0 else float("nan")


BOOTSTRAP_RESAMPLES = 400


def _median_diff(real: np.ndarray, gen: np.ndarray, *, err: bool = False):
    """Median of ``gen`` - median of ``real`` (finite values); with ``err``, also its bootstrap
    standard error (both samples resampled, fixed seed: a report is reproducible)."""
    real, gen = real[np.isfinite(real)], gen[np.isfinite(gen)]
    diff = float(np.median(gen) - np.median(real)) if real.size and gen.size else float("nan")
    if not err:
        return diff
    if real.size < 2 or gen.size < 2:
        return diff, float("nan")
    rng = np.random.default_rng(0)
    shape = (BOOTSTRAP_RESAMPLES,)
    diffs = np.median(rng.choice(gen, shape + gen.shape), axis=1) - np.median(
        rng.choice(real, shape + real.shape), axis=1
    )
    return diff, float(np.std(diffs, ddof=1))


def compare_catalogs(
    real: pd.DataFrame,
    real_area: float,
    generated: pd.DataFrame,
    generated_area: float,
    bands: Sequence[str],
    mag_limits: dict[str, float] | float | None = None,
) -> dict:
    """The report's statistics (module docstring) for two source catalogs; areas in arcmin²."""
    bands = list(bands)
    if mag_limits is None or isinstance(mag_limits, int | float):
        fixed = None if mag_limits is None else float(mag_limits)
        mag_limits = {
            b: fixed if fixed is not None else turnover_magnitude(real[f"mag_{b}"].to_numpy())
            for b in bands
        }
    report: dict = {
        "bands": bands,
        "n_real": len(real),
        "n_generated": len(generated),
        "area_real_arcmin2": real_area,
        "area_generated_arcmin2": generated_area,
        "density_real": len(real) / real_area if real_area > 0 else float("nan"),
        "density_generated": (
            len(generated) / generated_area if generated_area > 0 else float("nan")
        ),
        "mag_limits": {b: float(v) for b, v in mag_limits.items()},
    }
    report["count_ratio_detected"] = _ratio(report["density_generated"], report["density_real"])
    for b in bands:
        lim = mag_limits[b]
        r = real[f"mag_{b}"].to_numpy()
        g = generated[f"mag_{b}"].to_numpy()
        report[f"median_dmag_{b}"], report[f"median_dmag_err_{b}"] = _median_diff(r, g, err=True)
        r, g = r[r < lim], g[g < lim]
        report[f"n_real_{b}"], report[f"n_generated_{b}"] = int(r.size), int(g.size)
        report[f"ks_p_{b}"] = _ks_p(r, g)
        ratio = _ratio(g.size / generated_area, r.size / real_area)
        report[f"count_ratio_{b}"] = ratio
        report[f"count_ratio_err_{b}"] = (
            ratio * float(np.sqrt(1.0 / r.size + 1.0 / g.size)) if r.size and g.size else np.nan
        )
    for b1, b2 in itertools.pairwise(bands):
        key = f"{b1}-{b2}"
        cols = []
        for frame in (real, generated):
            keep = (frame[f"mag_{b1}"] < mag_limits[b1]) & (frame[f"mag_{b2}"] < mag_limits[b2])
            cols.append((frame[f"mag_{b1}"] - frame[f"mag_{b2}"])[keep].to_numpy())
        report[f"ks_p_{key}"] = _ks_p(*cols)
        report[f"median_dcolour_{key}"] = _median_diff(*cols)
    pairs = [f"ks_p_{b1}-{b2}" for b1, b2 in itertools.pairwise(bands)]
    report["ks_p_min"] = _nan_extreme(min, [report[f"ks_p_{b}"] for b in bands])
    report["median_dmag_max"] = _nan_extreme(max, [abs(report[f"median_dmag_{b}"]) for b in bands])
    report["median_dmag_max_sigma"] = _nan_extreme(
        max,
        [_ratio(abs(report[f"median_dmag_{b}"]), report[f"median_dmag_err_{b}"]) for b in bands],
    )
    report["colour_ks_p_min"] = _nan_extreme(min, [report[k] for k in pairs])
    ratios = [report["count_ratio_detected"]] + [report[f"count_ratio_{b}"] for b in bands]
    if all(np.isfinite(r) for r in ratios):
        # farthest from 1 in log: a ratio of 0 (nothing found) is the worst of all
        report["count_ratio"] = max(ratios, key=lambda r: np.inf if r <= 0 else abs(np.log(r)))
    else:
        report["count_ratio"] = float("nan")
    report["targets"] = dict(TARGETS)
    report["meets_targets"] = bool(
        report["ks_p_min"] >= TARGETS["ks_p_min"]
        and report["median_dmag_max"] <= TARGETS["median_dmag_max"]
        and abs(report["count_ratio"] - 1.0) <= TARGETS["count_ratio_tolerance"]
    )
    return report


def _check_compatible(real: FieldImage, generated: Sequence[FieldImage]) -> None:
    for g in generated:
        if g.data.shape[0] != real.data.shape[0]:
            raise DataError(
                f"{g.path}: holds {g.data.shape[0]} band(s) {g.bands}, but the real field "
                f"{real.path} holds {real.data.shape[0]} {real.bands}"
            )


def deepfield_report(
    real: FieldImage,
    generated: Sequence[FieldImage],
    out_dir: str | Path,
    *,
    settings: DetectionSettings | None = None,
    mag_limit: float | None = None,
    zeropoint: float | None = None,
    pixel_scale: float | None = None,
    plots: bool = True,
    title: str | None = None,
) -> dict:
    """Extract sources from ``real`` and every ``generated`` field (their catalogs and areas are
    pooled), compare them, and write ``report.json``, both catalogs (Parquet) and plots (PNG and
    PDF, :mod:`galray.evaluation.deepfield_plots`; ``title`` above each, e.g. the generator's
    name, version and seed)."""
    settings = settings or DetectionSettings()
    generated = list(generated)
    if not generated:
        raise DataError("no generated field given")
    _check_compatible(real, generated)
    for image in [real, *generated]:
        if pixel_scale is not None:
            image.pixel_scale = pixel_scale
        elif image.pixel_scale is None:
            image.pixel_scale = real.pixel_scale
        if image.pixel_scale is None:
            raise DataError(f"{image.path}: pixel scale unknown (no WCS); give --pixel-scale")
    real_zp = resolve_zeropoints(real, zeropoint)
    real_cat = extract_sources(real, real_zp, settings)
    gen_cats, gen_area = [], 0.0
    for k, image in enumerate(generated):
        cat = extract_sources(image, resolve_zeropoints(image, zeropoint, real_zp), settings)
        cat.columns = [_rename(col, image.bands, real.bands) for col in cat.columns]
        gen_cats.append(cat.assign(image=k))
        gen_area += image.area_arcmin2(settings.edge)
    gen_cat = pd.concat(gen_cats, ignore_index=True)
    report = compare_catalogs(
        real_cat, real.area_arcmin2(settings.edge), gen_cat, gen_area, real.bands, mag_limit
    )
    report.update(
        real=real.path,
        generated=[g.path for g in generated],
        zeropoints=dict(zip(real.bands, real_zp)),
        detection=asdict(settings),
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(
        pa.Table.from_pandas(real_cat, preserve_index=False), out / "real_sources.parquet"
    )
    write_parquet(
        pa.Table.from_pandas(gen_cat, preserve_index=False), out / "generated_sources.parquet"
    )
    if plots:
        from galray.evaluation.deepfield_plots import deepfield_plots

        report["plots"] = deepfield_plots(real, generated[0], real_cat, gen_cat, report, out, title)
    else:
        report["plots"] = []
    write_json(report, out / REPORT_NAME)
    return report


def _rename(column: str, bands: list[str], real_bands: list[str]) -> str:
    """A generated catalog's band columns under the real field's band names (by position)."""
    for prefix in ("flux_", "mag_"):
        if column.startswith(prefix) and column[len(prefix) :] in bands:
            return prefix + real_bands[bands.index(column[len(prefix) :])]
    return column
