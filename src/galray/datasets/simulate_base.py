"""What the survey simulators share: the :class:`SurveyConfig`, SeedSequence streams, smooth
HEALPix fields, the footprint, positions, the riz simulator's measurement primitives (noise,
flux bias, blends, detection; documented in :mod:`galray.datasets.simulate`, reused by
:mod:`galray.datasets.simulate_spec`) and the writer of a survey's directory layout.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from galray.config import require, to_dict
from galray.datasets import schema
from galray.datasets.progress import ProgressFactory, counting
from galray.errors import ConfigError
from galray.io import atomic_directory, write_parquet

if TYPE_CHECKING:
    from galray.datasets.survey import SurveySpec

NOISE_SIZE_COEF = 2.0
NOISE_FLOOR = 0.01
BIAS_AMPLITUDE = 0.05
DET_THRESHOLD = 6.0
DET_WIDTH = 0.8

# Streams of the SeedSequence, one per component, so adding one never shifts another.
_DEEP, _MAPS, _POSITIONS, _TRANSFER = 0, 1, 2, 3


@dataclass
class SurveyConfig:
    """What ``galray simulate survey`` writes.

    n_injections: rows of the injection catalog.
    n_deep: galaxies in the deep-field truth catalog (injections draw from it with replacement).
    nside: HEALPix resolution of the condition maps (RING ordering unless ``ordering``).
    ra_range, dec_range: footprint box, degrees.
    shard_rows: rows per injection Parquet shard.
    seed: every random draw (the output is deterministic for a seed).
    write_fits_maps: also write the maps as partial healpy FITS files (the form survey maps
    usually arrive in).
    spec: the survey: a preset name (``riz``, ``des-y6``, ``lsst``) or a SurveySpec YAML file.
    """

    n_injections: int = 200_000
    n_deep: int = 100_000
    nside: int = 512
    ordering: str = "RING"  # RING or NESTED, any case
    seed: int = 0
    ra_range: tuple[float, float] = (0.0, 90.0)
    dec_range: tuple[float, float] = (-60.0, -30.0)
    shard_rows: int = 1_000_000
    write_fits_maps: bool = True
    spec: str = "riz"

    def __post_init__(self) -> None:
        require(self.n_injections > 0, "n_injections", f"must be positive, got {self.n_injections}")
        require(self.n_deep > 0, "n_deep", f"must be positive, got {self.n_deep}")
        require(
            self.nside >= 8 and (self.nside & (self.nside - 1)) == 0,
            "nside",
            f"must be a power of two >= 8, got {self.nside}",
        )
        self.ordering = self.ordering.upper()
        require(
            self.ordering in schema.ORDERINGS,
            "ordering",
            f"must be RING or NESTED, got {self.ordering!r}",
        )
        lo, hi = self.dec_range
        require(
            -90 <= lo < hi <= 90,
            "dec_range",
            f"must satisfy -90 <= lo < hi <= 90, got {self.dec_range}",
        )
        lo, hi = self.ra_range
        require(
            0 <= lo < hi <= 360,
            "ra_range",
            f"must satisfy 0 <= lo < hi <= 360, got {self.ra_range}",
        )
        require(self.shard_rows > 0, "shard_rows", f"must be positive, got {self.shard_rows}")
        self.survey_spec()  # validates

    def survey_spec(self) -> SurveySpec:
        """The :class:`SurveySpec` that ``spec`` names (ConfigError naming ``spec``)."""
        from galray.datasets.survey import load_spec

        try:
            return load_spec(self.spec)
        except ConfigError as exc:
            raise ConfigError(f"spec: {exc}") from None


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


def sample_magnitudes(
    n: int, rng: np.random.Generator, slope: float, bright: float, faint: float
) -> np.ndarray:
    """Magnitudes with counts ``dN/dm ∝ 10^(slope m)`` in [bright, faint]."""
    a = slope * np.log(10.0)
    u = rng.random(n)
    lo, hi = np.exp(a * bright), np.exp(a * faint)
    return np.log(lo + u * (hi - lo)) / a  # inverse CDF of the truncated exponential


def half_light_radius(mag_i: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``log10 R = log10 0.6 - 0.12 (m_i - 22) + N(0, 0.2)`` arcsec, clipped to [0.05, 5]."""
    log_r = np.log10(0.6) - 0.12 * (mag_i - 22) + rng.normal(0.0, 0.2, mag_i.shape[0])
    return np.clip(10.0**log_r, 0.05, 5.0)


def _smooth_field(nside: int, rng: np.random.Generator, ell0: float = 30.0) -> np.ndarray:
    """A full-sky unit-variance Gaussian field (RING order) with ``C_l ∝ exp(-(l/ell0)^2)``."""
    import healpy as hp  # lazy: training configs import this

    lmax = int(min(3 * nside - 1, 6 * ell0))
    ell = np.arange(lmax + 1)
    cl = np.exp(-((ell / ell0) ** 2))
    cl[:2] = 0.0
    size = hp.Alm.getsize(lmax)
    ell_of_alm, m_of_alm = hp.Alm.getlm(lmax, np.arange(size))
    amp = np.sqrt(cl[ell_of_alm] / 2.0)
    alm = (rng.normal(size=size) + 1j * rng.normal(size=size)) * amp
    alm[m_of_alm == 0] = rng.normal(size=(m_of_alm == 0).sum()) * np.sqrt(
        cl[ell_of_alm[m_of_alm == 0]]
    )
    field_map = hp.alm2map(alm, nside, lmax=lmax)
    return (field_map - field_map.mean()) / field_map.std()


def footprint_box_pixels(nside: int, ra_range, dec_range) -> np.ndarray:
    """RING pixels whose centres lie inside the ra/dec box (degrees)."""
    import healpy as hp  # lazy: training configs import this

    theta_lo = np.radians(90.0 - dec_range[1])
    theta_hi = np.radians(90.0 - dec_range[0])
    strip = hp.query_strip(nside, theta_lo, theta_hi, inclusive=False)
    ra, _ = hp.pix2ang(nside, strip, lonlat=True)
    return strip[(ra >= ra_range[0]) & (ra < ra_range[1])]


def sample_positions(
    n: int, cfg: SurveyConfig, footprint: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` positions uniform on the sphere inside the footprint: (ra, dec, pixel)."""
    import healpy as hp  # lazy: training configs import this

    nest = cfg.ordering == "NESTED"
    sin_lo, sin_hi = np.sin(np.radians(cfg.dec_range))
    ra_out, dec_out, pix_out, have = [], [], [], 0
    while have < n:
        m = int((n - have) * 1.3) + 64
        ra = rng.uniform(cfg.ra_range[0], cfg.ra_range[1], m)
        dec = np.degrees(np.arcsin(rng.uniform(sin_lo, sin_hi, m)))
        pix = hp.ang2pix(cfg.nside, ra, dec, lonlat=True, nest=nest)
        idx = np.searchsorted(footprint, pix)
        keep = (idx < footprint.size) & (footprint[np.minimum(idx, footprint.size - 1)] == pix)
        ra_out.append(ra[keep])
        dec_out.append(dec[keep])
        pix_out.append(pix[keep])
        have += int(keep.sum())
    return (
        np.concatenate(ra_out)[:n],
        np.concatenate(dec_out)[:n],
        np.concatenate(pix_out)[:n].astype(np.int64),
    )


def noise_sigma(flux, size, psf_fwhm, depth):
    """Flux noise σ (zeropoint 30) of a galaxy: depth, size/PSF inflation and a 1 % floor."""
    sigma_pt = schema.mag_to_flux(depth) / 10.0
    s = size / psf_fwhm
    return np.sqrt(sigma_pt**2 * (1.0 + (NOISE_SIZE_COEF * s) ** 2) + (NOISE_FLOOR * flux) ** 2)


def flux_bias_factor(size, psf_fwhm):
    """Mean measured / true flux: ``1 - BIAS_AMPLITUDE s²/(1+s²)`` with ``s = size / psf``."""
    s2 = (size / psf_fwhm) ** 2
    return 1.0 - BIAS_AMPLITUDE * s2 / (1.0 + s2)


def blend_probability(psf_fwhm_i):
    return 0.03 + 0.05 * (psf_fwhm_i - 0.75) / 0.7


def detection_probability(coadd_snr):
    return 1.0 / (1.0 + np.exp(-(coadd_snr - DET_THRESHOLD) / DET_WIDTH))


def _write_fits_maps(
    out: Path, cfg: SurveyConfig, pixels: np.ndarray, values: dict[str, np.ndarray]
) -> None:
    """Partial (explicit-pixel) healpy FITS maps, the form survey maps usually arrive in."""
    import healpy as hp  # lazy: training configs import this

    out.mkdir(parents=True, exist_ok=True)
    nest = cfg.ordering == "NESTED"
    for name, vals in values.items():
        full = np.full(hp.nside2npix(cfg.nside), hp.UNSEEN, dtype=np.float32)
        full[pixels] = vals
        hp.write_map(
            str(out / f"{name}.fits"),
            full,
            nest=nest,
            partial=True,
            dtype=np.float32,
            overwrite=True,
        )


def write_survey(
    out: str | Path,
    cfg: SurveyConfig,
    spec: SurveySpec,
    sim,
    *,
    overwrite: bool,
    log,
    progress: ProgressFactory | None = None,
) -> dict:
    """Write ``sim``'s survey to ``out`` (built under a temporary name, renamed when complete);
    ``progress``: counts the injections written (:mod:`galray.datasets.progress`).

    ``sim`` provides ``deep()``, ``deep_table(deep)``, ``maps()``, ``shard(...)`` and a
    ``transfer`` dict of constants.  Layout::

        out/survey.json              the SurveySpec (SurveySpec.save)
        out/simulation.json          manifest: config, counts, transfer-function constants
        out/deep/part-00000.parquet  deep-field truth
        out/maps/conditions.parquet  footprint pixels -> the spec's condition columns
        out/maps/fits/*.fits         the same maps as partial healpy FITS files
        out/injections/part-*.parquet
    """
    import healpy as hp  # lazy

    t0 = time.perf_counter()
    out = Path(out)
    with atomic_directory(out, overwrite=overwrite) as tmp:
        spec.save(tmp)
        deep = sim.deep()
        write_parquet(pa.table(sim.deep_table(deep)), tmp / "deep" / "part-00000.parquet")

        footprint, cond_values = sim.maps()
        meta = schema.healpix_metadata(cfg.nside, cfg.ordering, kind="conditions", bands=spec.bands)
        cond_table = pa.table({"pixel": footprint, **cond_values}).replace_schema_metadata(meta)
        write_parquet(cond_table, tmp / "maps" / "conditions.parquet")
        if cfg.write_fits_maps:
            _write_fits_maps(tmp / "maps" / "fits", cfg, footprint, cond_values)
        log(
            f"{spec.name}: deep catalog: {cfg.n_deep:,} galaxies; "
            f"maps: {footprint.size:,} pixels at nside {cfg.nside}"
        )

        n_detected = 0
        n_shards = -(-cfg.n_injections // cfg.shard_rows)
        with counting(progress, cfg.n_injections, "injections", "row") as step:
            for shard in range(n_shards):
                start = shard * cfg.shard_rows
                n = min(cfg.shard_rows, cfg.n_injections - start)
                table = sim.shard(shard, start, n, deep, footprint, cond_values)
                write_parquet(table, tmp / "injections" / f"part-{shard:05d}.parquet")
                n_detected += int(np.asarray(table["detected"]).sum())
                step(n)

        seconds = time.perf_counter() - t0
        manifest = {
            "kind": "galray.synthetic_survey",
            "survey": spec.name,
            "config": to_dict(cfg),
            "n_injections": cfg.n_injections,
            "n_detected": n_detected,
            "n_footprint_pixels": int(footprint.size),
            "footprint_area_deg2": float(
                footprint.size * hp.nside2pixarea(cfg.nside, degrees=True)
            ),
            "transfer": sim.transfer,
            "seconds": round(seconds, 2),
        }
        (tmp / "simulation.json").write_text(json.dumps(manifest, indent=2))
    log(
        f"injections: {cfg.n_injections:,} rows in {n_shards} shard(s), "
        f"{n_detected:,} detected ({n_detected / cfg.n_injections:.1%}); "
        f"wrote {out} in {seconds:.1f} s"
    )
    return manifest
