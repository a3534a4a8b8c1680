"""The Cramér–Rao bound of the single-Sersic population: the smallest standard deviation any
unbiased estimator of a galaxy's parameters can reach from one noisy stamp, the floor the
yardstick's CNN and likelihood fit (:mod:`galray.estimator.fit`) are judged against.

Under white Gaussian noise of known sigma per pixel (counts), the Fisher information of
parameters ``theta`` about a stamp whose noiseless image is ``m(theta)`` is

    F_ij = sum_pixels (dm/dtheta_i) (dm/dtheta_j) / sigma^2 = (J^T J)_ij / sigma^2,

and the bound on parameter ``i`` is ``sqrt((F^-1)_ii)`` in that parameter's own units
(:func:`cramer_rao`).  :func:`fisher_matrix` takes ``J`` from finite differences of any renderer;
:func:`sersic_bounds` applies it to :func:`galray.datasets.sersic.observe`'s model with the
parameters in :data:`~galray.datasets.sersic.PARAMS` order: flux (counts, zeropoint 30),
``sersic_n``, ``hlr`` (arcsec, before the shear), ``g1``, ``g2`` (reduced shear).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from galray.datasets import sersic

# Finite-difference steps of the Sersic parameters.  The index step stays on the simulated
# galaxies' 0.01 grid so n +- step reuses GalSim's cached Sersic tables (a new index costs a
# table build).  hlr moves by 1%: GalSim picks its FFT grid from the profile's size, and the
# image jumps by ~1e-4 of its flux where that choice changes, which a tiny step would turn into
# a wrong derivative; at 1% the jump is <= 2% of the change and the O(step^2) truncation ~1e-4.
N_STEP = 0.05
HLR_REL_STEP = 0.01
SHEAR_STEP = 0.01
FLUX_REL_STEP = 0.01  # the image is linear in flux: any step is exact


# the model the data, the bound and the fit share (drawn in float64)
render_sersic = sersic.observe


def fisher_matrix(
    render: Callable[[np.ndarray], np.ndarray],
    theta: Sequence[float],
    sigma: float,
    steps: Sequence[float],
    limits: Sequence[tuple[float, float]] | None = None,
) -> np.ndarray:
    """Fisher matrix ``[p, p]`` of parameters ``theta`` under white Gaussian noise of ``sigma``
    per pixel, ``J^T J / sigma^2``, ``J`` by central differences of ``render(theta)`` (the
    noiseless image, any shape) with ``steps[i]`` on parameter ``i``.  A parameter whose
    ``theta +- step`` would leave ``limits[i] = (low, high)`` is differenced one-sidedly, still
    to second order (``(-3 m0 + 4 m(+h) - m(+2h)) / 2h`` or its mirror)."""
    theta = np.asarray(theta, dtype=np.float64)
    steps = np.asarray(steps, dtype=np.float64)
    if theta.ndim != 1 or steps.shape != theta.shape:
        raise ValueError(
            f"theta and steps must be 1-d of one length, got {theta.shape}, {steps.shape}"
        )
    if not np.all(steps > 0):
        raise ValueError(f"steps must be positive, got {steps}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")

    def at(i: int, offset: float) -> np.ndarray:
        t = theta.copy()
        t[i] += offset
        return np.asarray(render(t), dtype=np.float64).ravel()

    columns = []
    centre = None
    for i, h in enumerate(steps):
        lo, hi = limits[i] if limits is not None else (-math.inf, math.inf)
        if theta[i] - h >= lo and theta[i] + h <= hi:
            columns.append((at(i, h) - at(i, -h)) / (2 * h))
            continue
        if centre is None:
            centre = at(0, 0.0)
        sign = 1.0 if theta[i] + 2 * h <= hi else -1.0
        if theta[i] + sign * 2 * h < lo or theta[i] + sign * 2 * h > hi:
            raise ValueError(f"parameter {i}: step {h} does not fit inside {lo, hi} at {theta[i]}")
        d = -3 * centre + 4 * at(i, sign * h) - at(i, sign * 2 * h)
        columns.append(sign * d / (2 * h))
    jac = np.stack(columns, axis=1)  # [pixels, p]
    return jac.T @ jac / sigma**2


def cramer_rao(fisher: np.ndarray, rcond: float = 1e-10) -> np.ndarray:
    """Per-parameter Cramér–Rao bound ``sqrt(diag(F^-1))`` of a Fisher matrix ``[p, p]``.

    A singular ``F`` leaves some parameters unidentifiable (a zero-flux galaxy has no shape; two
    parameters that change the image the same way): their bound is ``inf``, and every other
    parameter's comes from the pseudo-inverse on the identifiable subspace.  Singularity is
    judged on the correlation form ``F_ij / sqrt(F_ii F_jj)`` (independent of the parameters'
    units): an eigenvalue below ``rcond`` times the largest is a null direction, and a parameter
    with a weight above 1e-6 in one is unidentifiable."""
    fisher = np.asarray(fisher, dtype=np.float64)
    if fisher.ndim != 2 or fisher.shape[0] != fisher.shape[1]:
        raise ValueError(f"the Fisher matrix must be square, got shape {fisher.shape}")
    if not np.all(np.isfinite(fisher)):
        raise ValueError("the Fisher matrix has non-finite entries")
    fisher = 0.5 * (fisher + fisher.T)
    out = np.full(len(fisher), np.inf)
    scale = np.sqrt(np.clip(np.diag(fisher), 0.0, None))
    live = np.flatnonzero(scale > 0)  # a parameter the image does not depend on: inf
    if live.size == 0:
        return out
    corr = fisher[np.ix_(live, live)] / np.outer(scale[live], scale[live])
    values, vectors = np.linalg.eigh(corr)
    null = values < rcond * values.max()
    unidentified = (np.abs(vectors[:, null]) > 1e-6).any(axis=1)
    keep = 1.0 / np.where(null, np.inf, values)
    cov = (vectors * keep) @ vectors.T
    bound = np.sqrt(np.clip(np.diag(cov), 0.0, None)) / scale[live]
    out[live] = np.where(unidentified, np.inf, bound)
    return out


# ---------------------------------------------------------------------- the Sersic population


def geometry_of(cfg_like) -> tuple[int, float, float]:
    """``(size, pixel_scale, psf_beta)`` of a :class:`~galray.datasets.stamps.StampSimConfig`,
    its dict, or a stamps manifest (whose ``config`` holds them)."""
    if isinstance(cfg_like, Mapping):
        cfg = cfg_like.get("config", cfg_like)
        get = cfg.__getitem__
    else:
        get = lambda key: getattr(cfg_like, key)  # noqa: E731
    try:
        return int(get("size")), float(get("pixel_scale")), float(get("psf_beta"))
    except (KeyError, AttributeError) as exc:
        raise ValueError(f"stamp geometry: missing {exc} (size, pixel_scale, psf_beta)") from None


def sersic_steps(theta: Sequence[float]) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Finite-difference steps and limits of one Sersic parameter vector (:data:`PARAMS`)."""
    flux, hlr = float(theta[0]), float(theta[2])
    steps = np.array(
        [FLUX_REL_STEP * abs(flux), N_STEP, HLR_REL_STEP * hlr, SHEAR_STEP, SHEAR_STEP]
    )
    if steps[0] == 0:
        steps[0] = 1.0  # a zero-flux galaxy: the flux column is exact for any step
    g_max = 1.0 - SHEAR_STEP  # |g| < 1 for GalSim; a one-sided step past it goes inward
    limits = [
        (-math.inf, math.inf),
        sersic.N_LIMITS,
        (0.0, math.inf),
        (-g_max, g_max),
        (-g_max, g_max),
    ]
    return steps, limits


def sersic_fisher(theta, sigma: float, psf_fwhm: float, geometry: tuple[int, float, float]):
    """Fisher matrix ``[5, 5]`` (:data:`PARAMS` order) and noiseless image of one galaxy."""
    size, scale, beta = geometry
    steps, limits = sersic_steps(theta)

    def render(t):
        return render_sersic(t, psf_fwhm, size, scale, beta)

    return fisher_matrix(render, theta, sigma, steps, limits), render(np.asarray(theta, float))


def _bounds_chunk(rows: list[tuple], geometry) -> list[tuple[np.ndarray, np.ndarray, float]]:
    out = []
    for theta, sigma, fwhm in rows:
        fisher, image = sersic_fisher(theta, sigma, fwhm, geometry)
        snr = float(sersic.optimal_snr(image, sigma))
        out.append((fisher, cramer_rao(fisher), snr))
    return out


def sersic_bounds(
    table: Mapping[str, np.ndarray],
    cfg_like,
    *,
    workers: int = 1,
    chunk: int = 16,
) -> dict[str, np.ndarray]:
    """The Cramér–Rao bound of every galaxy of a Sersic stamps ``table`` (columns of
    :func:`galray.datasets.stamps.read_stamps`: the parameters, ``psf_fwhm``, ``noise_sigma``)
    observed with ``cfg_like``'s geometry (:func:`geometry_of`).

    Returns ``crb [rows, 5]`` (:data:`PARAMS` order, each in its parameter's units; ``inf``
    where the Fisher matrix leaves a parameter unidentifiable), ``crb_<param>`` (its columns),
    ``fisher [rows, 5, 5]``, ``snr`` (optimal S/N of the model image) and ``id`` when the table
    has one.  ``workers > 1``: processes bounding chunks of ``chunk`` galaxies side by side,
    in index order so each process builds each Sersic table once (the result does not depend
    on it)."""
    geometry = geometry_of(cfg_like)
    missing = [c for c in (*sersic.PARAMS, "psf_fwhm", "noise_sigma") if c not in table]
    if missing:
        raise ValueError(f"Sersic table: missing column(s) {', '.join(missing)}")
    theta = np.stack([np.asarray(table[p], np.float64) for p in sersic.PARAMS], axis=1)
    sigma = np.asarray(table["noise_sigma"], np.float64)
    fwhm = np.asarray(table["psf_fwhm"], np.float64)
    order = np.argsort(theta[:, 1], kind="stable")
    rows = [(theta[k], sigma[k], fwhm[k]) for k in order]
    chunks = [rows[a : a + chunk] for a in range(0, len(rows), chunk)]
    if workers <= 1 or len(chunks) <= 1:
        done = [r for c in chunks for r in _bounds_chunk(c, geometry)]
    else:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(workers, len(chunks))) as pool:
            done = [r for c in pool.map(_bounds_chunk, chunks, [geometry] * len(chunks)) for r in c]
    count = len(rows)
    out = {
        "fisher": np.empty((count, 5, 5)),
        "crb": np.empty((count, 5)),
        "snr": np.empty(count),
    }
    for k, (fisher, crb, snr) in zip(order, done, strict=True):
        out["fisher"][k], out["crb"][k], out["snr"][k] = fisher, crb, snr
    for i, name in enumerate(sersic.PARAMS):
        out[f"crb_{name}"] = out["crb"][:, i]
    if "id" in table:
        out["id"] = np.asarray(table["id"])
    return out
