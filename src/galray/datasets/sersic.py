"""Single-Sersic galaxy stamps with known truth: the population on which the measurement
yardstick (:mod:`galray.estimator`) is compared with the Cramér–Rao bound and a likelihood fit
(``galray simulate stamps --population sersic``).

A galaxy is one sheared Sersic profile, ``galsim.Sersic(n, half_light_radius=hlr, flux)
.shear(g1=g1, g2=g2)``, convolved with a Moffat PSF and GalSim's pixel, drawn on the stamp's
``size x size`` grid (centred as GalSim centres even-sized images) -- :func:`observe`, the one
model the data, the bound and the fit share -- plus white Gaussian noise of known sigma.
Per galaxy, from its own random stream (independent of sharding):

* ``mag`` uniform in ``mag_range`` (zeropoint 30), ``flux = 10^(0.4 (30 - mag))``;
* ``sersic_n`` uniform in ``sersic_n_range``, rounded to :data:`N_STEP` (GalSim builds a profile
  table per index; galaxies are drawn in index order so each table is built once per shard);
* ``hlr`` log-uniform in ``hlr_range`` (arcsec, before the shear);
* ``g1, g2`` normal with ``shear_sigma``, ``|g| < 0.6``;
* PSF FWHM uniform in ``psf_fwhm_range``, noise sigma uniform in ``noise_range``.

Columns: the parameters, ``psf_fwhm``, ``noise_sigma``, ``snr`` (the optimal, matched-filter
signal-to-noise ``sqrt(sum(model^2)) / sigma``), and images ``stamp`` (noisy), ``noiseless``
(the model image; training adds fresh noise to it) and ``psf``.
"""

from __future__ import annotations

import math

import numpy as np

from galray.datasets.psf import psf_image

PARAMS = ("flux", "sersic_n", "hlr", "g1", "g2")  # what the yardstick measures, in this order
N_STEP = 0.01  # Sersic index grid of the simulated galaxies
MAX_SHEAR = 0.6
N_LIMITS = (0.3, 6.2)  # the indices GalSim's Sersic supports


def _rng(seed: int, galaxy: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, 0x5E25, galaxy]))


def draw_population(ids: np.ndarray, cfg) -> dict[str, np.ndarray]:
    """The parameters of galaxies ``ids`` (``cfg``: a :class:`~galray.datasets.stamps.
    StampSimConfig` with ``population='sersic'``)."""
    keys = "mag sersic_n hlr g1 g2 psf_fwhm noise_sigma noise_seed".split()
    out = {k: np.empty(len(ids)) for k in keys}
    for row, galaxy in enumerate(ids):
        r = _rng(cfg.seed, int(galaxy))
        u = r.random(5)
        g1, g2 = r.normal(0.0, cfg.shear_sigma, 2)
        while math.hypot(g1, g2) >= MAX_SHEAR:
            g1, g2 = r.normal(0.0, cfg.shear_sigma, 2)
        (m0, m1), (n0, n1), (h0, h1) = cfg.mag_range, cfg.sersic_n_range, cfg.hlr_range
        (p0, p1), (s0, s1) = cfg.psf_fwhm_range, cfg.noise_range
        values = {
            "mag": m0 + u[0] * (m1 - m0),
            "sersic_n": round((n0 + u[1] * (n1 - n0)) / N_STEP) * N_STEP,
            "hlr": h0 * (h1 / h0) ** u[2],
            "g1": g1,
            "g2": g2,
            "psf_fwhm": p0 + u[3] * (p1 - p0),
            "noise_sigma": s0 + u[4] * (s1 - s0),
            "noise_seed": int(r.integers(1, 2**31 - 1)),
        }
        for k, v in values.items():
            out[k][row] = v
    out["flux"] = 10.0 ** (0.4 * (30.0 - out["mag"]))
    return out


def galaxy(flux: float, n: float, hlr: float, g1: float, g2: float):
    """The intrinsic GalSim profile of one parameter vector (:data:`PARAMS` order)."""
    import galsim

    profile = galsim.Sersic(n=float(n), half_light_radius=float(hlr), flux=float(flux))
    return profile.shear(g1=float(g1), g2=float(g2))


def observe(theta, psf_fwhm: float, size: int, pixel_scale: float, beta: float) -> np.ndarray:
    """The noiseless stamp (float64 ``[size, size]``) of parameters ``theta`` (:data:`PARAMS`
    order) through a Moffat PSF and the pixel: what the data, the bound and the fit share."""
    import galsim

    psf = galsim.Moffat(beta=beta, fwhm=float(psf_fwhm))
    # float64: GalSim's default float32 rounds at ~1e-7 of the peak, which the bound's finite
    # differences and the fit's convergence test would see
    image = galsim.Convolve(galaxy(*theta), psf).drawImage(
        nx=size, ny=size, scale=pixel_scale, dtype=np.float64
    )
    return image.array


def optimal_snr(noiseless: np.ndarray, sigma) -> np.ndarray:
    """Matched-filter signal-to-noise of model images ``[..., N, N]`` under white noise."""
    power = np.sqrt(np.sum(np.square(noiseless, dtype=np.float64), axis=(-2, -1)))
    return power / np.asarray(sigma, dtype=np.float64)


def render(ids: np.ndarray, cfg, step=None) -> dict[str, np.ndarray]:
    """Stamps, noiseless images, PSF images and parameters of galaxies ``ids``; ``step(1)``
    after each galaxy if given (progress)."""
    p = draw_population(ids, cfg)
    n, s, scale = len(ids), cfg.size, cfg.pixel_scale
    noiseless = np.empty((n, s, s), np.float64)
    stamps = np.empty((n, s, s), np.float32)
    psfs = np.empty((n, s, s), np.float32)
    for k in np.argsort(p["sersic_n"], kind="stable"):  # one GalSim table per index
        theta = [p[name][k] for name in PARAMS]
        noiseless[k] = observe(theta, p["psf_fwhm"][k], s, scale, cfg.psf_beta)
        noise = np.random.default_rng(int(p["noise_seed"][k])).normal(
            0.0, p["noise_sigma"][k], (s, s)
        )
        stamps[k] = noiseless[k] + noise
        psfs[k] = psf_image(p["psf_fwhm"][k], s, scale, cfg.psf_beta)
        if step is not None:
            step(1)
    out = {"id": np.asarray(ids, np.int64), "stamp": stamps, "psf": psfs}
    out["noiseless"] = noiseless.astype(np.float32)
    out |= {k: v for k, v in p.items() if k != "noise_seed"}
    out["snr"] = optimal_snr(noiseless, p["noise_sigma"])
    return out
