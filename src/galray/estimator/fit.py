"""Maximum-likelihood fit of the single-Sersic model to each stamp: the classical estimator the
yardstick's CNN is compared with, next to the Cramér–Rao bound (:mod:`galray.estimator.bound`).

Under white Gaussian noise of known sigma (counts per pixel) the likelihood is maximal where
``sum((stamp - m(theta))^2) / sigma^2`` is minimal, ``m`` the noiseless model of
:func:`galray.datasets.sersic.observe` (a sheared Sersic profile through the Moffat PSF and the
pixel).  Estimates are in :data:`~galray.datasets.sersic.PARAMS` order: flux (counts, zeropoint
30), ``sersic_n``, ``hlr`` (arcsec, before the shear), ``g1``, ``g2`` (reduced shear).

Choices, and why:

* :func:`scipy.optimize.least_squares` (trust-region reflective) on the whitened residuals
  ``(stamp - m) / sigma``: the problem is a small nonlinear least squares with box bounds, which
  TRF solves with Gauss-Newton steps (a handful of iterations from a decent start) while staying
  inside the bounds; a general minimiser would need the Hessian it gets for free here.
* Parameters as fitted: ``flux``, ``n``, ``log hlr`` and the conformal shear ``eta`` (``|g| =
  tanh(|eta| / 2)``, same direction), all boxed.  Every point of the box is a valid galaxy
  (``|g| < 1`` even in its corners, ``|g| <= 0.9`` along the axes), so no penalty is needed.
* The Sersic index on a grid (:data:`N_GRID`): a new index costs GalSim a profile table
  (measured: ~1.5 ms at n = 0.4, 8 ms at 2, 70 ms at 4, 200 ms at 6, against ~1-3 ms for a
  draw with a cached one), so by default the model at ``n`` is the linear interpolation of the
  images at the two grid indices around it (on 100 galaxies of the population: 1.6x faster on
  average, 2.3x in the median, than a continuous index).
  At a grid index it is exactly ``observe``'s image; between, the interpolation error is
  ``N_GRID^2 / 8`` times the image's second derivative in ``n``: measured at mid-grid, 4e-6 of
  the image's norm at n = 0.5 and less at larger n, where a model error only matters above
  ~1 / (S/N) ~ 2e-3.  Its ``n`` column of the Jacobian is exact and
  free (the two bracketing images' difference).  ``interpolate=False`` fits the continuous
  index instead (``benchmarks/bench_estimator.py`` compares the two).
* The start does not use the truth: flux from the stamp's sum, size and shear from GalSim's
  adaptive moments (:func:`galsim.hsm.FindAdaptiveMom`) with the PSF's moments subtracted,
  ``n = 2``; where the moments fail (faint or odd stamps), the PSF's size and zero shear.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

import numpy as np

from galray.datasets import sersic
from galray.estimator.bound import geometry_of

N_GRID = 0.01  # Sersic-index spacing of the interpolated model (the simulated galaxies' grid)
N_MARGIN = 0.05  # the fitted index stays this far inside GalSim's [0.3, 6.2]
ETA_MAX = 2.0 * math.atanh(0.9)  # |eta| along an axis <-> |g| = 0.9
SHAPE_STEP = 0.01  # forward-difference step of log hlr and eta in the Jacobian
# The fit's cost barrier: GalSim sizes its FFT to hold 99.5% of the profile's flux, which for a
# high-index, large, strongly sheared profile reaches thousands of pixels per side (~1 s a
# draw, against ~1 ms for a typical galaxy).  Faint stamps can lead the fit there; a trial
# point needing more than this is rejected as if it raised chi^2 (the trust region shrinks).
# The population's largest profiles (n = 4, hlr = 1", |g| = 0.6 on 0.2" pixels) need ~500;
# a draw at 768 costs ~60 ms.
MAX_FFT_SIZE = 768
REFUSED_RESIDUAL = 1e6  # per pixel, in sigma: a cost no reachable point comes near
START_N = 2.0
MAX_START_SHEAR = 0.5


def g_of_eta(eta1: float, eta2: float) -> tuple[float, float]:
    """Reduced shear of a conformal shear: ``|g| = tanh(|eta| / 2)``, same direction."""
    eta = math.hypot(eta1, eta2)
    ratio = 0.5 if eta < 1e-12 else math.tanh(0.5 * eta) / eta
    return eta1 * ratio, eta2 * ratio


def eta_of_g(g1: float, g2: float) -> tuple[float, float]:
    """The inverse of :func:`g_of_eta`."""
    g = math.hypot(g1, g2)
    ratio = 2.0 if g < 1e-12 else 2.0 * math.atanh(g) / g
    return g1 * ratio, g2 * ratio


class TooCostly(Exception):
    """A trial point whose profile is far larger than the stamp (see :data:`MAX_FFT_SIZE`)."""


class SersicModel:
    """The noiseless stamp of one galaxy as a function of the fitted parameters ``p = (flux, n,
    log hlr, eta1, eta2)`` and its Jacobian, for one PSF and stamp geometry.  ``n_grid``: the
    index spacing of the interpolated model, ``None`` for a continuous index.  The images of
    the last point are kept, since least_squares asks for the Jacobian where it just evaluated
    the residuals.  ``draws`` counts GalSim draws."""

    def __init__(self, psf_fwhm: float, geometry: tuple[int, float, float], n_grid=N_GRID):
        import galsim

        self.size, self.scale, beta = geometry
        self.psf = galsim.Moffat(beta=beta, fwhm=float(psf_fwhm))
        self.n_grid = n_grid
        self.draws = 0
        self._last: tuple[bytes, tuple] | None = None

    def unit(
        self, n: float, log_hlr: float, eta1: float, eta2: float, *, check: bool = False
    ) -> np.ndarray:
        """The flux-1 image ``[size * size]`` (float64) of one shape.  ``check``: raise
        :class:`TooCostly` instead of drawing a profile whose FFT would exceed
        :data:`MAX_FFT_SIZE` pixels per side."""
        import galsim

        g1, g2 = g_of_eta(eta1, eta2)
        gal = galsim.Convolve(sersic.galaxy(1.0, n, math.exp(log_hlr), g1, g2), self.psf)
        if check and gal.getGoodImageSize(self.scale) > MAX_FFT_SIZE:
            raise TooCostly
        self.draws += 1
        image = gal.drawImage(nx=self.size, ny=self.size, scale=self.scale, dtype=np.float64)
        return image.array.ravel()

    def _bracket(self, n: float) -> tuple[float, float, float]:
        h = self.n_grid
        lo = min(math.floor(n / h + 1e-9) * h, sersic.N_LIMITS[1] - h)
        return round(lo, 6), round(lo + h, 6), (n - lo) / h

    def _shape(self, p: np.ndarray) -> tuple:
        """(U, dU/dn, node index used for the other columns) at ``p``, cached."""
        key = p.tobytes()
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        _, n, log_hlr, eta1, eta2 = p
        if self.n_grid is None:
            unit = self.unit(n, log_hlr, eta1, eta2, check=True)
            step = N_GRID if n + N_GRID <= sersic.N_LIMITS[1] else -N_GRID
            d_n = (self.unit(n + step, log_hlr, eta1, eta2) - unit) / step
            out = (unit, d_n, n, unit)
        else:
            lo, hi, w = self._bracket(n)
            u_lo = self.unit(lo, log_hlr, eta1, eta2, check=True)
            u_hi = self.unit(hi, log_hlr, eta1, eta2)
            near = (lo, u_lo) if w < 0.5 else (hi, u_hi)
            out = (u_lo + w * (u_hi - u_lo), (u_hi - u_lo) / self.n_grid, *near)
        self._last = (key, out)
        return out

    def image(self, p: np.ndarray) -> np.ndarray:
        """The model stamp ``[size * size]`` at ``p``."""
        return p[0] * self._shape(p)[0]

    def jacobian(self, p: np.ndarray) -> np.ndarray:
        """``d image / d p`` ``[size * size, 5]``: flux and index columns exact (of the
        interpolated model), the others by forward differences at the nearer grid index (an
        approximate Jacobian only slows Gauss-Newton; the solution is the residuals' own)."""
        unit, d_n, n_near, u_near = self._shape(p)
        flux, _, log_hlr, eta1, eta2 = p
        cols = [unit, flux * d_n]
        for j in range(3):
            moved = [log_hlr, eta1, eta2]
            moved[j] += SHAPE_STEP
            cols.append(flux * (self.unit(n_near, *moved) - u_near) / SHAPE_STEP)
        return np.stack(cols, axis=1)


# ---------------------------------------------------------------------- one galaxy


def initial_guess(
    stamp: np.ndarray, sigma: float, psf_fwhm: float, geometry: tuple[int, float, float]
) -> np.ndarray:
    """A starting point ``(flux, n, hlr, g1, g2)`` from the stamp alone (never the truth): the
    summed counts (at least ``sigma`` per pixel side), GalSim's adaptive moments of the stamp
    less those of the PSF for the size (a Gaussian's ``hlr = 1.1774 sigma``) and the shear
    (the observed one, undiluted by the PSF, at most :data:`MAX_START_SHEAR`), ``n = 2``."""
    import galsim

    size, scale, beta = geometry
    flux = max(float(np.sum(stamp, dtype=np.float64)), sigma * size)
    psf = galsim.Moffat(beta=beta, fwhm=float(psf_fwhm)).drawImage(nx=size, ny=size, scale=scale)
    psf_moments = galsim.hsm.FindAdaptiveMom(psf, strict=False)
    gal = galsim.hsm.FindAdaptiveMom(
        galsim.Image(np.asarray(stamp, np.float64), scale=scale), strict=False
    )
    hlr, g1, g2 = 0.5 * psf_fwhm, 0.0, 0.0
    if gal.moments_status == 0 and psf_moments.moments_status == 0:
        t_obs, t_psf = gal.moments_sigma**2, psf_moments.moments_sigma**2
        t_gal = max(t_obs - t_psf, 0.04 * t_psf)
        hlr = 1.1774 * math.sqrt(t_gal) * scale
        dilution = t_obs / t_gal
        g1, g2 = gal.observed_shape.g1 * dilution, gal.observed_shape.g2 * dilution
        g = math.hypot(g1, g2)
        if g > MAX_START_SHEAR:
            g1, g2 = g1 * MAX_START_SHEAR / g, g2 * MAX_START_SHEAR / g
    hlr = float(np.clip(hlr, 0.05, 0.25 * size * scale))
    return np.array([flux, START_N, hlr, g1, g2])


def parameter_box(geometry: tuple[int, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of the fitted parameters ``(flux, n, log hlr, eta1, eta2)``: flux >= 0, ``n``
    :data:`N_MARGIN` inside GalSim's range, hlr from 0.02" to a quarter of the stamp's side
    (larger profiles would need FFTs far beyond the stamp), ``|eta_i| <= ETA_MAX``."""
    size, scale, _ = geometry
    lo, hi = sersic.N_LIMITS
    lower = np.array([0.0, lo + N_MARGIN, math.log(0.02), -ETA_MAX, -ETA_MAX])
    upper = np.array([np.inf, hi - N_MARGIN, math.log(0.25 * size * scale), ETA_MAX, ETA_MAX])
    return lower, upper


def fit_galaxy(
    stamp: np.ndarray,
    sigma: float,
    psf_fwhm: float,
    geometry: tuple[int, float, float],
    *,
    interpolate: bool = True,
    max_nfev: int = 200,
) -> dict:
    """The maximum-likelihood ``(flux, n, hlr, g1, g2)`` of one stamp ``[size, size]`` (counts)
    with noise ``sigma`` per pixel.  Returns ``estimate``, ``start``, ``success`` (converged
    with no parameter pinned at its bound), ``nfev`` (residual evaluations), ``draws`` (GalSim
    draws, Jacobians included), ``refused`` (trial points past :data:`MAX_FFT_SIZE`), ``chi2``
    and ``seconds``."""
    from scipy.optimize import least_squares

    t0 = time.perf_counter()
    model = SersicModel(psf_fwhm, geometry, N_GRID if interpolate else None)
    data = np.asarray(stamp, np.float64).ravel()
    start = initial_guess(stamp, sigma, psf_fwhm, geometry)
    lower, upper = parameter_box(geometry)
    p0 = np.array([start[0], start[1], math.log(start[2]), *eta_of_g(start[3], start[4])])
    p0 = np.clip(p0, lower, upper)

    refused = 0

    def residual(p):
        nonlocal refused
        try:
            return (model.image(p) - data) / sigma
        except TooCostly:
            refused += 1
            return np.full(data.shape, REFUSED_RESIDUAL)

    def jacobian(p):
        return model.jacobian(p) / sigma

    res = least_squares(
        residual,
        p0,
        jac=jacobian,
        bounds=(lower, upper),
        method="trf",
        x_scale="jac",
        ftol=1e-10,
        xtol=1e-10,
        gtol=1e-10,
        max_nfev=max_nfev,
    )
    flux, n, log_hlr, eta1, eta2 = res.x
    estimate = np.array([flux, n, math.exp(log_hlr), *g_of_eta(eta1, eta2)])
    return {
        "estimate": estimate,
        "start": start,
        "success": bool(res.success and not np.any(res.active_mask)),
        "nfev": int(res.nfev),
        "draws": model.draws,
        "refused": refused,
        "chi2": float(2.0 * res.cost),
        "seconds": time.perf_counter() - t0,
    }


# ---------------------------------------------------------------------- a table of galaxies


def _fit_chunk(rows: list[tuple], geometry, interpolate: bool) -> list[dict]:
    return [fit_galaxy(s, sig, fwhm, geometry, interpolate=interpolate) for s, sig, fwhm in rows]


def fit_sersic(
    table: Mapping[str, np.ndarray],
    cfg_like,
    *,
    image: str = "stamp",
    workers: int = 1,
    chunk: int = 8,
    interpolate: bool = True,
) -> dict[str, np.ndarray]:
    """Fit every galaxy of a Sersic stamps ``table`` (columns of
    :func:`galray.datasets.stamps.read_stamps`: ``image`` -- ``stamp``, or ``noiseless`` to
    check the fit -- ``noise_sigma``, ``psf_fwhm``) observed with ``cfg_like``'s geometry
    (:func:`~galray.estimator.bound.geometry_of`).

    Returns ``estimate [rows, 5]`` (:data:`PARAMS` order), its columns ``fit_<param>``,
    ``start [rows, 5]``, ``success``, ``nfev``, ``draws``, ``refused``, ``chi2``, ``seconds`` (wall time of
    each galaxy's fit in its process) and ``id`` when the table has one.  ``workers > 1``:
    processes fitting chunks of ``chunk`` galaxies side by side; every fit depends only on its
    own stamp, so the result does not depend on ``workers`` or ``chunk``."""
    geometry = geometry_of(cfg_like)
    missing = [c for c in (image, "psf_fwhm", "noise_sigma") if c not in table]
    if missing:
        raise ValueError(f"Sersic table: missing column(s) {', '.join(missing)}")
    stamps = np.asarray(table[image])
    sigma = np.asarray(table["noise_sigma"], np.float64)
    fwhm = np.asarray(table["psf_fwhm"], np.float64)
    rows = [(stamps[k], float(sigma[k]), float(fwhm[k])) for k in range(len(stamps))]
    chunks = [rows[a : a + chunk] for a in range(0, len(rows), chunk)]
    if workers <= 1 or len(chunks) <= 1:
        done = [r for c in chunks for r in _fit_chunk(c, geometry, interpolate)]
    else:
        from concurrent.futures import ProcessPoolExecutor

        args = ([geometry] * len(chunks), [interpolate] * len(chunks))
        with ProcessPoolExecutor(min(workers, len(chunks))) as pool:
            done = [r for c in pool.map(_fit_chunk, chunks, *args) for r in c]
    out = {
        "estimate": np.array([d["estimate"] for d in done]).reshape(len(rows), 5),
        "start": np.array([d["start"] for d in done]).reshape(len(rows), 5),
    }
    for key, dtype in (("success", bool), ("nfev", int), ("draws", int), ("refused", int)):
        out[key] = np.array([d[key] for d in done], dtype=dtype)
    for key in ("chi2", "seconds"):
        out[key] = np.array([d[key] for d in done], dtype=np.float64)
    for i, name in enumerate(sersic.PARAMS):
        out[f"fit_{name}"] = out["estimate"][:, i]
    if "id" in table:
        out["id"] = np.asarray(table["id"])
    return out
