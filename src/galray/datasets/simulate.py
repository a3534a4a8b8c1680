"""A synthetic Balrog-style survey with a known transfer function.

Real injection catalogs and survey maps are not public in full, so galray ships a simulator that
produces data of the same shape with a *known* truth, against which every emulator is scored.

Deep-field truth (one row per galaxy)
-------------------------------------
* i-band magnitude ``m_i`` (AB) from number counts rising as ``dN/dm ∝ 10^(COUNT_SLOPE m)``
  (``COUNT_SLOPE`` = 0.32 dex/mag) between ``MAG_BRIGHT`` = 17 and ``MAG_FAINT`` = 26.5.
* colours from two populations (blue 70 %, red 30 %), so r-i is bimodal and i-z follows it:
  ``r-i ~ N(0.30, 0.15)`` (blue) or ``N(0.85, 0.12)`` (red) plus ``0.03 (m_i - 22)``;
  ``i-z = 0.35 (r-i) + N(0.05, 0.08)``.
* half-light radius ``R`` (arcsec) shrinking with magnitude:
  ``log10 R = log10 0.6 - 0.12 (m_i - 22) + N(0, 0.2)``, clipped to [0.05, 5].
* Sersic index (rounded to 0.1: GalSim caches one profile table per index) and ellipticity, for
  the image simulator.

Observing conditions (HEALPix maps over a footprint)
----------------------------------------------------
Smooth, correlated Gaussian random fields ``g`` (unit variance, angular power
``C_l ∝ exp(-(l/30)^2)``, i.e. degree-scale patterns), a shared seeing field and a shared sky
field plus one per band:

* ``psf_fwhm_b = PSF0_b + 0.12 (0.8 g_seeing + 0.6 g_b)``, clipped to [0.75, 1.45] arcsec;
* ``depth_b = DEPTH0_b + 0.3 (0.6 g_sky + 0.8 g_b') - 0.8 (psf_fwhm_b - 1)``, clipped to
  [22.3, 24.7] (10-sigma point-source limiting AB magnitude).

The footprint is a box in ra/dec with holes where a further field falls below -1.6 sigma.

Transfer function (per band b; fluxes at zeropoint 30)
------------------------------------------------------
With true flux ``F = 10^(-0.4 (m - 30))``, point-source noise ``σ_pt = 10^(-0.4 (depth - 30)) / 10``
and the size ratio ``s = R / psf_fwhm``:

* noise, heteroscedastic (set by depth) and inflated by the galaxy's size relative to the PSF,
  with a 1 % calibration floor::

      σ² = σ_pt² (1 + (NOISE_SIZE_COEF · s)²) + (0.01 F)²

* a size/PSF-dependent flux bias (larger galaxies under a sharper PSF lose more flux)::

      μ = F (1 - BIAS_AMPLITUDE · s² / (1 + s²))

* blends: with probability ``p_blend = 0.03 + 0.05 (psf_fwhm_i - 0.75) / 0.7`` (the same for all
  bands of an injection) a neighbour, another deep-field galaxy, adds a fraction
  ``u ~ U(0.05, 0.6)`` of its flux in every band: the bright tail of ``obs - true``;
* ``F_obs = μ + blend + σ ε`` with ``ε ~ N(0, 1)``;
* detection by the S/N of the r+i+z coadd, ``ν = Σ F_obs,b / sqrt(Σ σ_b²)``, with a soft
  threshold ``p_det = 1 / (1 + exp(-(ν - DET_THRESHOLD) / DET_WIDTH))`` (threshold 6, width 0.8):
  selection on the *noisy* flux, so detected faint galaxies are biased bright, as in real data.

Non-detections keep their truth and position (their conditions come from the maps); their
observed fluxes and magnitudes are NaN.  Observed magnitudes are NaN where ``F_obs <= 0``.

Everything is deterministic for a seed: each output shard draws from its own
``numpy.random.SeedSequence([seed, component, shard])`` stream, so the result does not depend on
how many processes write it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from galray.config import require, to_dict
from galray.datasets import schema
from galray.datasets.schema import BANDS
from galray.io import atomic_directory, write_parquet

MAG_BRIGHT = 17.0
MAG_FAINT = 26.5
COUNT_SLOPE = 0.32  # dex per magnitude

PSF0 = {"r": 1.08, "i": 1.00, "z": 0.96}
DEPTH0 = {"r": 24.0, "i": 23.55, "z": 22.95}

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


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


# --------------------------------------------------------------------------- deep-field truth


def simulate_deep(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Deep-field truth: ``true_mag_{r,i,z}`` (AB), ``true_size`` (arcsec), Sersic n, ellipticity."""
    a = COUNT_SLOPE * np.log(10.0)
    u = rng.random(n)
    lo, hi = np.exp(a * MAG_BRIGHT), np.exp(a * MAG_FAINT)
    mag_i = np.log(lo + u * (hi - lo)) / a  # inverse CDF of the truncated exponential

    red = rng.random(n) < 0.3
    r_i = np.where(red, rng.normal(0.85, 0.12, n), rng.normal(0.30, 0.15, n)) + 0.03 * (mag_i - 22)
    i_z = 0.35 * r_i + rng.normal(0.05, 0.08, n)
    log_r = np.log10(0.6) - 0.12 * (mag_i - 22) + rng.normal(0.0, 0.2, n)
    size = np.clip(10.0**log_r, 0.05, 5.0)
    sersic = np.where(red, rng.uniform(2.5, 4.0, n), rng.uniform(0.7, 1.8, n))
    return {
        "true_mag_r": (mag_i + r_i).astype(np.float32),
        "true_mag_i": mag_i.astype(np.float32),
        "true_mag_z": (mag_i - i_z).astype(np.float32),
        "true_size": size.astype(np.float32),
        "sersic_n": np.round(sersic, 1).astype(np.float32),
        "ellipticity": np.clip(rng.rayleigh(0.2, n), 0.0, 0.8).astype(np.float32),
    }


# --------------------------------------------------------------------------- condition maps


def _smooth_field(nside: int, rng: np.random.Generator, ell0: float = 30.0) -> np.ndarray:
    """A full-sky unit-variance Gaussian field (RING order) with ``C_l ∝ exp(-(l/ell0)^2)``."""
    import healpy as hp  # lazy: training configs import this module

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
    import healpy as hp  # lazy: training configs import this module

    theta_lo = np.radians(90.0 - dec_range[1])
    theta_hi = np.radians(90.0 - dec_range[0])
    strip = hp.query_strip(nside, theta_lo, theta_hi, inclusive=False)
    ra, _ = hp.pix2ang(nside, strip, lonlat=True)
    return strip[(ra >= ra_range[0]) & (ra < ra_range[1])]


def simulate_condition_maps(cfg: SurveyConfig) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Footprint pixels (``cfg.ordering``, sorted) and ``{psf_fwhm_b, depth_b}`` float32 arrays."""
    import healpy as hp  # lazy: training configs import this module

    rng = _rng(cfg.seed, _MAPS)
    nside = cfg.nside
    seeing, sky, holes = (_smooth_field(nside, rng) for _ in range(3))
    pix_ring = footprint_box_pixels(nside, cfg.ra_range, cfg.dec_range)
    pix_ring = pix_ring[holes[pix_ring] > -1.6]
    values: dict[str, np.ndarray] = {}
    for b in BANDS:
        g_psf, g_depth = _smooth_field(nside, rng), _smooth_field(nside, rng)
        psf = np.clip(PSF0[b] + 0.12 * (0.8 * seeing + 0.6 * g_psf)[pix_ring], 0.75, 1.45)
        depth = DEPTH0[b] + 0.3 * (0.6 * sky + 0.8 * g_depth)[pix_ring] - 0.8 * (psf - 1.0)
        values[schema.condition("psf_fwhm", b)] = psf.astype(np.float32)
        values[schema.condition("depth", b)] = np.clip(depth, 22.3, 24.7).astype(np.float32)
    pixels = pix_ring if cfg.ordering == "RING" else hp.ring2nest(nside, pix_ring)
    order = np.argsort(pixels)
    return pixels[order].astype(np.int64), {k: v[order] for k, v in values.items()}


# --------------------------------------------------------------------------- positions


def sample_positions(
    n: int, cfg: SurveyConfig, footprint: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` positions uniform on the sphere inside the footprint: (ra, dec, pixel)."""
    import healpy as hp  # lazy: training configs import this module

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


# --------------------------------------------------------------------------- transfer function


@dataclass
class TransferResult:
    obs_flux: dict[str, np.ndarray]  # per band, float64, before the detection mask
    sigma: dict[str, np.ndarray]  # per band flux noise
    p_detect: np.ndarray
    detected: np.ndarray


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


def apply_transfer(
    truth: dict[str, np.ndarray],
    conditions: dict[str, np.ndarray],
    neighbour_flux: dict[str, np.ndarray],
    rng: np.random.Generator,
) -> TransferResult:
    """Measure injected galaxies: see the module docstring for the equations.

    truth: ``true_mag_b`` and ``true_size``; conditions: ``psf_fwhm_b``, ``depth_b`` at each
    galaxy's position; neighbour_flux: per band, the flux of a random other deep galaxy.
    """
    n = truth["true_size"].shape[0]
    size = truth["true_size"].astype(np.float64)
    blended = rng.random(n) < blend_probability(conditions["psf_fwhm_i"].astype(np.float64))
    frac = rng.uniform(0.05, 0.6, n) * blended
    obs, sig = {}, {}
    for b in BANDS:
        flux = schema.mag_to_flux(truth[schema.true_mag(b)].astype(np.float64))
        psf = conditions[schema.condition("psf_fwhm", b)].astype(np.float64)
        depth = conditions[schema.condition("depth", b)].astype(np.float64)
        sig[b] = noise_sigma(flux, size, psf, depth)
        mean = flux * flux_bias_factor(size, psf) + frac * neighbour_flux[b]
        obs[b] = mean + sig[b] * rng.standard_normal(n)
    coadd = sum(obs[b] for b in BANDS) / np.sqrt(sum(sig[b] ** 2 for b in BANDS))
    p_det = detection_probability(coadd)
    detected = rng.random(n) < p_det
    return TransferResult(obs, sig, p_det, detected)


# --------------------------------------------------------------------------- writing a survey


def _injection_shard(
    cfg: SurveyConfig,
    shard: int,
    start: int,
    n: int,
    deep: dict[str, np.ndarray],
    footprint: np.ndarray,
    cond_values: dict[str, np.ndarray],
) -> pa.Table:
    rng = _rng(cfg.seed, _POSITIONS, shard)
    deep_idx = rng.integers(0, cfg.n_deep, n)
    neighbour_idx = rng.integers(0, cfg.n_deep, n)
    ra, dec, pix = sample_positions(n, cfg, footprint, rng)
    row = np.searchsorted(footprint, pix)
    conditions = {k: v[row] for k, v in cond_values.items()}
    truth = {k: deep[k][deep_idx] for k in ("true_mag_r", "true_mag_i", "true_mag_z", "true_size")}
    neighbour = {
        b: schema.mag_to_flux(deep[schema.true_mag(b)][neighbour_idx].astype(np.float64))
        for b in BANDS
    }
    result = apply_transfer(truth, conditions, neighbour, _rng(cfg.seed, _TRANSFER, shard))

    cols: dict[str, np.ndarray] = {
        "id": np.arange(start, start + n, dtype=np.int64),
        "deep_id": deep_idx.astype(np.int64),
        "ra": ra,
        "dec": dec,
        "pixel": pix,
        **truth,
    }
    for b in BANDS:
        flux = np.where(result.detected, result.obs_flux[b], np.nan)
        cols[schema.obs_flux(b)] = flux.astype(np.float32)
    for b in BANDS:
        cols[schema.obs_mag(b)] = schema.flux_to_mag(cols[schema.obs_flux(b)]).astype(np.float32)
    cols["detected"] = result.detected
    cols["p_detect"] = result.p_detect.astype(np.float32)
    meta = schema.healpix_metadata(cfg.nside, cfg.ordering, kind="injections")
    fields = schema.INJECTION_FIELDS | schema.SYNTHETIC_FIELDS
    arrays = [pa.array(cols[name], type=typ) for name, typ in fields.items()]
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields.items(), metadata=meta))


def _write_fits_maps(
    out: Path, cfg: SurveyConfig, pixels: np.ndarray, values: dict[str, np.ndarray]
) -> None:
    """Partial (explicit-pixel) healpy FITS maps, the form survey maps usually arrive in."""
    import healpy as hp  # lazy: training configs import this module

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


def simulate_survey(
    out: str | Path, cfg: SurveyConfig, *, overwrite: bool = False, log=print
) -> dict:
    """Write a synthetic survey to ``out`` (built under a temporary name, renamed when complete).

    Layout::

        out/survey.json              manifest: config, counts, transfer-function constants
        out/deep/part-00000.parquet  deep-field truth
        out/maps/conditions.parquet  footprint pixels -> psf_fwhm_b, depth_b
        out/maps/fits/*.fits         the same maps as partial healpy FITS files
        out/injections/part-*.parquet
    """
    import healpy as hp  # lazy: training configs import this module

    t0 = time.perf_counter()
    out = Path(out)
    with atomic_directory(out, overwrite=overwrite) as tmp:
        deep = simulate_deep(cfg.n_deep, _rng(cfg.seed, _DEEP))
        deep_cols = {"id": np.arange(cfg.n_deep, dtype=np.int64), **deep}
        write_parquet(pa.table(deep_cols), tmp / "deep" / "part-00000.parquet")

        footprint, cond_values = simulate_condition_maps(cfg)
        meta = schema.healpix_metadata(cfg.nside, cfg.ordering, kind="conditions")
        cond_table = pa.table({"pixel": footprint, **cond_values}).replace_schema_metadata(meta)
        write_parquet(cond_table, tmp / "maps" / "conditions.parquet")
        if cfg.write_fits_maps:
            _write_fits_maps(tmp / "maps" / "fits", cfg, footprint, cond_values)
        log(
            f"deep catalog: {cfg.n_deep:,} galaxies; maps: {footprint.size:,} pixels at nside {cfg.nside}"
        )

        n_detected = 0
        n_shards = -(-cfg.n_injections // cfg.shard_rows)
        for shard in range(n_shards):
            start = shard * cfg.shard_rows
            n = min(cfg.shard_rows, cfg.n_injections - start)
            table = _injection_shard(cfg, shard, start, n, deep, footprint, cond_values)
            write_parquet(table, tmp / "injections" / f"part-{shard:05d}.parquet")
            n_detected += int(np.asarray(table["detected"]).sum())

        seconds = time.perf_counter() - t0
        manifest = {
            "kind": "galray.synthetic_survey",
            "config": to_dict(cfg),
            "n_injections": cfg.n_injections,
            "n_detected": n_detected,
            "n_footprint_pixels": int(footprint.size),
            "footprint_area_deg2": float(
                footprint.size * hp.nside2pixarea(cfg.nside, degrees=True)
            ),
            "transfer": {
                "noise_size_coef": NOISE_SIZE_COEF,
                "noise_floor": NOISE_FLOOR,
                "bias_amplitude": BIAS_AMPLITUDE,
                "det_threshold": DET_THRESHOLD,
                "det_width": DET_WIDTH,
            },
            "seconds": round(seconds, 2),
        }
        (tmp / "survey.json").write_text(json.dumps(manifest, indent=2))
    log(
        f"injections: {cfg.n_injections:,} rows in {n_shards} shard(s), "
        f"{n_detected:,} detected ({n_detected / cfg.n_injections:.1%}); "
        f"wrote {out} in {seconds:.1f} s"
    )
    return manifest
