"""A synthetic Balrog-style survey with a known transfer function.

Real injection catalogs and survey maps are not public in full, so galray ships a simulator that
produces data of the same shape with a *known* truth, against which every emulator is scored.

``SurveyConfig.spec`` names the survey (a :class:`~galray.datasets.survey.SurveySpec` preset or
YAML file).  This module is the ``riz`` preset's simulator (the default, and the quickstart's),
described below; any other spec is simulated by :mod:`galray.datasets.simulate_spec`, whose
docstring gives its transfer function.  Both write the same layout (see :func:`simulate_survey`);
the shared pieces live in :mod:`galray.datasets.simulate_base`.

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

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from galray.datasets import schema
from galray.datasets.schema import BANDS
from galray.datasets.simulate_base import (
    _DEEP,
    _MAPS,
    _POSITIONS,
    _TRANSFER,
    BIAS_AMPLITUDE,
    DET_THRESHOLD,
    DET_WIDTH,
    NOISE_FLOOR,
    NOISE_SIZE_COEF,
    SurveyConfig,
    _rng,
    _smooth_field,
    blend_probability,
    detection_probability,
    flux_bias_factor,
    footprint_box_pixels,
    half_light_radius,
    noise_sigma,
    sample_magnitudes,
    sample_positions,
    write_survey,
)

__all__ = ["SurveyConfig", "apply_transfer", "noise_sigma", "simulate_deep", "simulate_survey"]

MAG_BRIGHT = 17.0
MAG_FAINT = 26.5
COUNT_SLOPE = 0.32  # dex per magnitude

PSF0 = {"r": 1.08, "i": 1.00, "z": 0.96}
DEPTH0 = {"r": 24.0, "i": 23.55, "z": 22.95}


# --------------------------------------------------------------------------- deep-field truth


def simulate_deep(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Deep-field truth: ``true_mag_{r,i,z}`` (AB), ``true_size`` (arcsec), Sersic n, ellipticity."""
    mag_i = sample_magnitudes(n, rng, COUNT_SLOPE, MAG_BRIGHT, MAG_FAINT)
    red = rng.random(n) < 0.3
    r_i = np.where(red, rng.normal(0.85, 0.12, n), rng.normal(0.30, 0.15, n)) + 0.03 * (mag_i - 22)
    i_z = 0.35 * r_i + rng.normal(0.05, 0.08, n)
    size = half_light_radius(mag_i, rng)
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


# --------------------------------------------------------------------------- transfer function


@dataclass
class TransferResult:
    obs_flux: dict[str, np.ndarray]  # per band, float64, before the detection mask
    sigma: dict[str, np.ndarray]  # per band flux noise
    p_detect: np.ndarray
    detected: np.ndarray


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


class _RizSurvey:
    """The ``riz`` preset's pieces for :func:`write_survey` (this module's transfer function)."""

    def __init__(self, cfg: SurveyConfig) -> None:
        self.cfg = cfg
        self.transfer = {
            "noise_size_coef": NOISE_SIZE_COEF,
            "noise_floor": NOISE_FLOOR,
            "bias_amplitude": BIAS_AMPLITUDE,
            "det_threshold": DET_THRESHOLD,
            "det_width": DET_WIDTH,
        }

    def deep(self) -> dict[str, np.ndarray]:
        deep = simulate_deep(self.cfg.n_deep, _rng(self.cfg.seed, _DEEP))
        return {"id": np.arange(self.cfg.n_deep, dtype=np.int64), **deep}

    def deep_table(self, deep: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return deep

    def maps(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return simulate_condition_maps(self.cfg)

    def shard(self, shard, start, n, deep, footprint, cond_values) -> pa.Table:
        return _injection_shard(self.cfg, shard, start, n, deep, footprint, cond_values)


def simulate_survey(
    out: str | Path, cfg: SurveyConfig, *, overwrite: bool = False, log=print, progress=None
) -> dict:
    """Write a synthetic survey of ``cfg.spec`` to ``out``: the ``riz`` preset with this
    module's simulator, any other spec with :mod:`galray.datasets.simulate_spec`.  Returns the
    manifest.  The layout is :func:`~galray.datasets.simulate_base.write_survey`'s (survey.json,
    simulation.json, deep/, maps/, injections/), built under a temporary name.  ``progress``:
    counts the injections as they are written (:mod:`galray.datasets.progress`)."""
    from galray.datasets.simulate_spec import SpecSurvey
    from galray.datasets.survey import load_spec

    spec = cfg.survey_spec()
    sim = _RizSurvey(cfg) if spec == load_spec("riz") else SpecSurvey(cfg, spec)
    return write_survey(out, cfg, spec, sim, overwrite=overwrite, log=log, progress=progress)
