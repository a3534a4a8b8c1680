"""A synthetic multi-band deep field rendered with GalSim: the XDF's stand-in for the SGAN.

What is drawn (units: arcsec, AB magnitudes, pixel values in nJy per pixel, so ``ZP = 31.4``)
----------------------------------------------------------------------------------------
* Galaxies at uniform random positions (no clustering), ``density`` per arcmin² brighter than
  ``mag_faint`` in i.  Their i magnitudes follow number counts ``dN/dm ∝ 10^(0.32 m)`` from 17 to
  26.5 (the survey simulator's deep catalog, :func:`galray.datasets.simulate.simulate_deep`) and
  flatten to ``10^(faint_slope m)`` beyond, down to ``mag_faint`` (29 by default), as deep
  counts do.
* Colours, half-light radii, Sersic indices (rounded to 0.1, so GalSim reuses its profile tables)
  and ellipticities come from ``simulate_deep``.  Galaxies moved to fainter magnitudes keep their
  colours and shrink along the catalog's size-magnitude relation, ``R ∝ 10^(-0.12 m)``.
* Each band is convolved with its own Moffat PSF (``beta`` = 3, FWHM ``psf_fwhm``) and sampled on
  a ``pixel_scale`` (0.06") grid.
* Sky noise is Gaussian and white, with the per-pixel sigma that makes ``depth`` the 5-sigma
  limiting magnitude in a circular aperture of radius ``depth_aperture`` (0.1"); deep fields are
  sky-dominated, so source Poisson noise is left out.

Outputs: a FITS file (empty primary HDU with the config, one HDU per band with a TAN WCS centred
on ``(ra, dec)``, ``BUNIT = 'nJy'``, ``MAGZERO = 31.4``) and its true source catalog
``FILE.catalog.parquet``: id, pixel position ``x``, ``y`` (0-based, ``x`` the column), ``ra``,
``dec`` (deg), ``mag_<b>`` (AB), ``flux_<b>`` (nJy), ``drawn_flux_<b>`` (the part of the flux that
landed inside the image), ``half_light_radius`` (arcsec), ``sersic_n``, ``ellipticity``,
``position_angle`` (deg).  Everything is deterministic for a seed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from galray.config import require, to_dict
from galray.datasets.fitsfield import NJY_ZEROPOINT, FieldImage, write_field
from galray.datasets.progress import ProgressFactory, counting
from galray.datasets.simulate import COUNT_SLOPE, MAG_FAINT, simulate_deep
from galray.io import write_parquet

MAX_STAMP = 512  # pixels: the largest postage stamp one galaxy is drawn into


@dataclass
class DeepFieldConfig:
    """What ``galray simulate deepfield`` draws (see the module docstring for the model).

    size: pixels per side (square) unless ``height``/``width`` are given.  height / width:
    pixels (default: ``size``).  pixel_scale: arcsec.
    bands / psf_fwhm (arcsec) / depth (5-sigma AB in a ``depth_aperture``-radius aperture): one
    per band.  depth_aperture: radius of the depth's aperture, arcsec.  density: galaxies per
    arcmin² brighter than ``mag_faint`` (i band).  mag_faint: the faintest galaxies drawn, AB
    (i band).  faint_slope: dex per magnitude of the counts fainter than 26.5.
    ra, dec: image centre (deg; default the XDF's).  seed: every random draw (the image is
    deterministic for a seed).
    """

    size: int = 2048
    height: int | None = None
    width: int | None = None
    pixel_scale: float = 0.06
    bands: tuple[str, ...] = ("r", "i", "z")
    psf_fwhm: tuple[float, ...] = (0.09, 0.10, 0.11)
    depth: tuple[float, ...] = (29.2, 29.0, 28.7)
    depth_aperture: float = 0.1
    density: float = 350.0
    mag_faint: float = 29.0
    faint_slope: float = 0.2
    ra: float = 53.1625
    dec: float = -27.7914
    seed: int = 0

    def __post_init__(self) -> None:
        self.height = self.height or self.size
        self.width = self.width or self.size
        require(self.height >= 16, "height", f"must be >= 16 pixels, got {self.height}")
        require(self.width >= 16, "width", f"must be >= 16 pixels, got {self.width}")
        require(self.pixel_scale > 0, "pixel_scale", f"must be positive, got {self.pixel_scale}")
        n = len(self.bands)
        require(n >= 1 and len(set(self.bands)) == n, "bands", "must be distinct band names")
        self.bands = tuple(self.bands)
        for name in ("psf_fwhm", "depth"):
            values = tuple(float(v) for v in getattr(self, name))
            require(len(values) == n, name, f"needs one value per band ({n}), got {values}")
            setattr(self, name, values)
        require(all(v > 0 for v in self.psf_fwhm), "psf_fwhm", "must be positive (arcsec)")
        require(self.depth_aperture > 0, "depth_aperture", "must be positive (arcsec)")
        require(self.density > 0, "density", f"must be positive, got {self.density}")
        require(
            MAG_FAINT <= self.mag_faint <= 32,
            "mag_faint",
            f"must be in [{MAG_FAINT}, 32], got {self.mag_faint}",
        )
        require(0 < self.faint_slope <= 0.6, "faint_slope", "must be in (0, 0.6] dex/mag")
        require(-90 <= self.dec <= 90, "dec", f"must be in [-90, 90], got {self.dec}")

    @property
    def area_arcmin2(self) -> float:
        return self.height * self.width * (self.pixel_scale / 60.0) ** 2

    def sky_sigma(self) -> np.ndarray:
        """Per-pixel noise sigma of each band, nJy."""
        radius_pix = self.depth_aperture / self.pixel_scale
        flux_5sigma = 10.0 ** (-0.4 * (np.asarray(self.depth) - NJY_ZEROPOINT))
        return flux_5sigma / 5.0 / math.sqrt(math.pi * radius_pix**2)


def catalog_path(image_path: str | Path) -> Path:
    """Where the true catalog of ``FILE.fits`` lives: ``FILE.catalog.parquet``."""
    image_path = Path(image_path)
    stem = image_path.name.removesuffix(".gz").removesuffix(".fits").removesuffix(".fit")
    return image_path.with_name(f"{stem}.catalog.parquet")


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, 0xD33F, stream]))


def faint_extended_mags(n: int, cfg: DeepFieldConfig, rng: np.random.Generator) -> np.ndarray:
    """i magnitudes from counts with slope ``COUNT_SLOPE`` to 26.5, ``faint_slope`` beyond."""
    a1, a2 = COUNT_SLOPE * np.log(10.0), cfg.faint_slope * np.log(10.0)
    lo, mid, hi = 17.0, MAG_FAINT, cfg.mag_faint
    # dN/dm = exp(a1 m) below mid, exp(a1 mid) exp(a2 (m - mid)) above: continuous at mid
    w1 = (np.exp(a1 * mid) - np.exp(a1 * lo)) / a1
    w2 = np.exp(a1 * mid) * (np.expm1(a2 * (hi - mid)) / a2 if hi > mid else 0.0)
    bright = rng.random(n) < w1 / (w1 + w2)
    u = rng.random(n)
    m_bright = np.log(np.exp(a1 * lo) + u * (np.exp(a1 * mid) - np.exp(a1 * lo))) / a1
    m_faint = mid + np.log1p(u * np.expm1(a2 * (hi - mid))) / a2 if hi > mid else m_bright
    return np.where(bright, m_bright, m_faint)


def draw_catalog(cfg: DeepFieldConfig) -> dict[str, np.ndarray]:
    """The galaxies of the field (truth only; see the module docstring)."""
    rng = _rng(cfg.seed, 0)
    n = int(rng.poisson(cfg.density * cfg.area_arcmin2))
    deep = simulate_deep(n, rng)
    mag_i = faint_extended_mags(n, cfg, rng)
    shift = mag_i - deep["true_mag_i"].astype(np.float64)
    out: dict[str, np.ndarray] = {"id": np.arange(n, dtype=np.int64)}
    out["x"] = rng.uniform(-0.5, cfg.width - 0.5, n)
    out["y"] = rng.uniform(-0.5, cfg.height - 0.5, n)
    for b in cfg.bands:
        # bands beyond the deep catalog's r, i, z take the nearest one's colour
        source = f"true_mag_{b}" if f"true_mag_{b}" in deep else "true_mag_i"
        out[f"mag_{b}"] = deep[source].astype(np.float64) + shift
    out["half_light_radius"] = np.clip(deep["true_size"] * 10.0 ** (-0.12 * shift), 0.02, 5.0)
    out["sersic_n"] = deep["sersic_n"].astype(np.float64)
    out["ellipticity"] = deep["ellipticity"].astype(np.float64)
    out["position_angle"] = rng.uniform(0.0, 180.0, n)
    return out


def field_wcs(cfg: DeepFieldConfig):
    """TAN projection (an ``astropy.wcs.WCS``) centred on (ra, dec), north up, east left,
    ``pixel_scale`` arcsec."""
    from astropy.wcs import WCS  # lazy: training configs import this module

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [cfg.ra, cfg.dec]
    wcs.wcs.crpix = [(cfg.width + 1) / 2.0, (cfg.height + 1) / 2.0]
    wcs.wcs.cdelt = [-cfg.pixel_scale / 3600.0, cfg.pixel_scale / 3600.0]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.radesys = "ICRS"
    return wcs


def _stamp_size(radius_arcsec: float, sersic_n: float, psf_fwhm: float, scale: float) -> int:
    # enough half-light radii to hold most of the light of steep and shallow profiles alike
    reach = (6.0 + 2.0 * sersic_n) * radius_arcsec + 3.0 * psf_fwhm
    return int(min(MAX_STAMP, max(24, 2 * math.ceil(reach / scale) + 1)))


def render(
    cfg: DeepFieldConfig, catalog: dict[str, np.ndarray], step=None
) -> tuple[np.ndarray, dict]:
    """Noise-free images ``[C, H, W]`` (nJy/pixel) and the flux drawn inside them per band;
    ``step(1)`` after each galaxy if given (progress)."""
    import galsim

    h, w = cfg.height, cfg.width
    images = [galsim.ImageF(w, h, scale=cfg.pixel_scale) for _ in cfg.bands]
    psfs = [galsim.Moffat(beta=3.0, fwhm=f) for f in cfg.psf_fwhm]
    gsparams = galsim.GSParams(maximum_fft_size=16384)
    n = catalog["id"].size
    drawn = {b: np.zeros(n) for b in cfg.bands}
    for k in range(n):
        radius = float(catalog["half_light_radius"][k])
        sersic_n = float(catalog["sersic_n"][k])
        profile = galsim.Sersic(sersic_n, half_light_radius=radius, gsparams=gsparams).shear(
            e=float(catalog["ellipticity"][k]),
            beta=float(catalog["position_angle"][k]) * galsim.degrees,
        )
        # GalSim images are 1-based: pixel centre (1, 1) is numpy's [0, 0]
        centre = galsim.PositionD(catalog["x"][k] + 1.0, catalog["y"][k] + 1.0)
        for c, b in enumerate(cfg.bands):
            flux = 10.0 ** (-0.4 * (catalog[f"mag_{b}"][k] - NJY_ZEROPOINT))
            size = _stamp_size(radius, sersic_n, cfg.psf_fwhm[c], cfg.pixel_scale)
            final = galsim.Convolve(profile.withFlux(flux), psfs[c])
            stamp = final.drawImage(nx=size, ny=size, scale=cfg.pixel_scale, center=centre)
            overlap = stamp.bounds & images[c].bounds
            if overlap.isDefined():
                images[c][overlap] += stamp[overlap]
                drawn[b][k] = float(stamp[overlap].array.sum())
        if step is not None:
            step(1)
    return np.stack([im.array for im in images]).astype(np.float32), drawn


def simulate_deepfield(
    out: str | Path,
    cfg: DeepFieldConfig | None = None,
    *,
    log=print,
    progress: ProgressFactory | None = None,
) -> tuple[Path, Path]:
    """Render the field of ``cfg`` to ``out`` (FITS) and its catalog; returns both paths.
    ``progress``: counts the galaxies rendered (:mod:`galray.datasets.progress`)."""
    cfg = cfg or DeepFieldConfig()
    out = Path(out)
    catalog = draw_catalog(cfg)
    log(
        f"rendering {catalog['id'].size} galaxies in {len(cfg.bands)} bands on a "
        f"{cfg.height}x{cfg.width} grid ({cfg.area_arcmin2:.2f} arcmin²)"
    )
    with counting(progress, catalog["id"].size, "galaxies", "galaxy") as step:
        clean, drawn = render(cfg, catalog, step)
    sigma = cfg.sky_sigma()
    noise = _rng(cfg.seed, 1).standard_normal(clean.shape, dtype=np.float32)
    data = clean + noise * sigma.astype(np.float32)[:, None, None]
    image = FieldImage(
        data=data,
        bands=list(cfg.bands),
        zeropoints=[NJY_ZEROPOINT] * len(cfg.bands),
        wcs_header=field_wcs(cfg).to_header(),
        pixel_scale=cfg.pixel_scale,
        bunit="nJy",
    )
    primary = {
        "ORIGIN": "galray simulate deepfield",
        "GRSEED": cfg.seed,
        "PIXSCALE": (cfg.pixel_scale, "arcsec per pixel"),
        "NGAL": catalog["id"].size,
    }
    for c, b in enumerate(cfg.bands):
        primary[f"PSF_{b.upper()[:4]}"] = (cfg.psf_fwhm[c], f"Moffat FWHM, arcsec, band {b}")
        primary[f"SKY_{b.upper()[:4]}"] = (float(sigma[c]), f"noise sigma, nJy/pixel, band {b}")
    write_field(out, image, primary=primary)

    ra, dec = field_wcs(cfg).all_pix2world(catalog["x"], catalog["y"], 0)
    columns = dict(catalog)
    columns["ra"], columns["dec"] = ra, dec
    for b in cfg.bands:
        columns[f"flux_{b}"] = 10.0 ** (-0.4 * (catalog[f"mag_{b}"] - NJY_ZEROPOINT))
        columns[f"drawn_flux_{b}"] = drawn[b]
    meta = {
        "galray.kind": "deepfield-truth",
        "galray.image": out.name,
        "galray.zeropoint": str(NJY_ZEROPOINT),
        "galray.config": json.dumps(to_dict(cfg)),
    }
    table = pa.table({k: np.asarray(v) for k, v in columns.items()})
    cat = write_parquet(table.replace_schema_metadata(meta), catalog_path(out))
    log(f"wrote {out} and {cat}")
    return out, cat
