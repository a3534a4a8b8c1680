"""The conditional flow's exact likelihood of measured outputs, in the units they are measured in.

The flow models the standardised targets ``y`` of :class:`~galray.emulator.features.
EmulatorFeatures`; every continuous output ``x`` reaches its target through a monotonic map of
its own, so ``log p(x) = log p_flow(y) + sum_j log |dy_j / dx_j|``:

* ``obs_flux_b``: ``y = ((lupt(x) - true_mag_b - loc_b) / scale_b - mean) / std``, where
  ``|d lupt / dx| = 1 / (0.4 ln 10 sqrt(x^2 + 4 b^2))`` (asinh magnitude with softening flux
  ``b``) and ``loc_b``, ``scale_b`` the whitening at the row's ``true_mag_b - depth_b``;
* a ``log`` output: ``y = (log10 x - mean) / std`` (``1 / (x ln 10)``; the decoder's
  ``10**y`` is a bijection onto ``x > 0``, so the density uses the exact log10, not the
  encoder's floor at 1e-3);
* ``asinh``: ``1 / sqrt(1 + x^2)``; ``identity``: 1; each divided by its ``std``.

A flag is dequantised (its value's index plus uniform noise), and decoding floors the flow's
value and clips it to the values seen in training, so a flag value ``v_k`` is the interval
``[k, k+1)`` of the flow's (unstandardised) coordinate, ``(-inf, 1)`` for the first value and
``[n-1, inf)`` for the last.  The flow's density is integrated over that interval by
Gauss-Legendre quadrature (the unit cell, plus the open-ended tail of an end value through
``t -> a +- t / (1 - t)``), jointly with the continuous outputs, so the result is a density in the continuous outputs and a probability
in the flags.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch

from galray.datasets import schema
from galray.emulator.features import _LN10_25, luptitude
from galray.errors import DataError

_LN10 = np.log(10.0)


def log_likelihood(
    emulator,
    rows: Mapping[str, np.ndarray] | pd.DataFrame,
    measured: Mapping[str, np.ndarray] | pd.DataFrame | None,
    *,
    detection: bool,
    points: int,
) -> np.ndarray:
    """:meth:`galray.emulator.bundle.Emulator.log_prob` (see there)."""
    if points < 1:
        raise ValueError(f"log_prob: flag_points must be >= 1, got {points}")
    columns = _columns(rows)
    if measured is not None:
        columns |= _columns(measured)
    features, spec = emulator.features, emulator.spec
    cond_np = features.encode_cond(columns)
    n = cond_np.shape[0]
    if "detected" in columns:
        scored = np.asarray(columns["detected"], dtype=bool)
    elif detection:
        raise DataError("log_prob: detection=True needs a 'detected' column in measured")
    else:
        scored = np.ones(n, bool)
    names = spec.flux_columns + spec.measured_columns
    missing = [c for c in names if c not in columns]
    if missing:
        raise DataError(f"log_prob: missing measured column(s) {missing}")
    out = np.full(n, np.nan)
    rows_idx = np.flatnonzero(scored)
    y, log_jac, flag_nodes = _targets(features, columns, rows_idx)
    device = emulator.device
    cond = torch.from_numpy(cond_np[rows_idx]).to(device)
    out[rows_idx] = log_jac + _flow_log_prob(emulator, y, cond, flag_nodes, points)
    if detection:
        dtype = emulator.dtype  # the precision sample() draws detection with
        with torch.inference_mode():
            logit = emulator._blocks(
                lambda r: emulator.detection(
                    torch.from_numpy(cond_np[r]).to(device), dtype
                ).float(),
                n,
            )
        logit = logit.double().cpu()
        log_det = torch.nn.functional.logsigmoid(logit).numpy()
        log_miss = torch.nn.functional.logsigmoid(-logit).numpy()
        out = np.where(scored, out + log_det, log_miss)
    return out


def _columns(frame) -> dict[str, np.ndarray]:
    if isinstance(frame, pd.DataFrame):
        return {c: frame[c].to_numpy() for c in frame.columns}
    if not isinstance(frame, Mapping):
        raise DataError(
            f"log_prob: expected a DataFrame or a mapping of columns, got {type(frame).__name__}"
        )
    return {k: np.asarray(v) for k, v in frame.items()}


def _targets(features, columns: dict, rows: np.ndarray):
    """(standardised targets [n, Y] float64 with NaN in flag dimensions, log-Jacobian [n] of
    the continuous outputs, flag intervals: list of (dimension, lo [n], hi [n], std))."""
    spec = features.spec
    mean, std = np.asarray(features.target_mean), np.asarray(features.target_std)
    n_flux = len(features.bands)
    y = np.empty((len(rows), features.n_target))
    log_jac = np.zeros(len(rows))
    b = features.softening_flux
    if features.whitened:
        loc, scale = features._loc_scale(columns, rows)
    for j, band in enumerate(features.bands):
        flux = _finite(columns, schema.obs_flux(band), rows)
        delta = luptitude(flux, b) - np.asarray(columns[schema.true_mag(band)], np.float64)[rows]
        log_jac -= np.log(_LN10_25 * np.sqrt(flux * flux + 4 * b * b))
        if features.whitened:
            delta = (delta - loc[:, j]) / scale[:, j]
            log_jac -= np.log(scale[:, j])
        y[:, j] = (delta - mean[j]) / std[j]
        log_jac -= np.log(std[j])
    flags = []
    for k, name in enumerate(spec.measured_columns):
        j = n_flux + k
        short = name.removeprefix("obs_")
        x = _finite(columns, name, rows)
        if short in spec.outputs.flags:
            values = np.asarray(features.flag_values[short])
            index = np.searchsorted(values, x.astype(np.int64)).astype(np.float64)
            seen = np.isin(x, values)  # a value never seen in training: probability 0
            index[~seen] = np.nan
            flags.append((j, index, len(values), mean[j], std[j]))
            y[:, j] = np.nan
            continue
        transform = spec.outputs.continuous.get(short, "log")  # flux errors: log
        if transform == "log":
            with np.errstate(divide="ignore", invalid="ignore"):
                raw = np.log10(x)
                log_jac -= np.log(x * _LN10)  # NaN for x < 0, -inf density for x = 0
            bad = x <= 0
            raw[bad], log_jac[bad] = 0.0, -np.inf
        elif transform == "asinh":
            raw = np.arcsinh(x)
            log_jac -= 0.5 * np.log1p(x * x)
        else:
            raw = x
        y[:, j] = (raw - mean[j]) / std[j]
        log_jac -= np.log(std[j])
    return y, log_jac, flags


def _finite(columns: dict, name: str, rows: np.ndarray) -> np.ndarray:
    x = np.asarray(columns[name], dtype=np.float64)[rows]
    if not np.isfinite(x).all():
        raise DataError(
            f"log_prob: non-finite {name} in rows to score (pass 'detected' to leave "
            "non-detected rows out)"
        )
    return x


def _interval_nodes(index: np.ndarray, n_values: int, points: int):
    """Nodes (the flow's unstandardised coordinate) and log-weights ``[n, 3P]`` integrating over
    the interval that decodes to flag value number ``index`` (NaN: none): Gauss-Legendre on the
    unit cell ``[k, k+1)`` where dequantised values lie, and on the open-ended tails that the
    first and last values also take (``a -+ t / (1 - t)``, t in (0, 1))."""
    t, w = np.polynomial.legendre.leggauss(points)
    u, w = (t + 1) / 2, w / 2  # on (0, 1)
    k = index[:, None]
    stretch, log_dstretch = u / (1 - u), -2 * np.log1p(-u)
    with np.errstate(divide="ignore", invalid="ignore"):
        left = np.where(k == 0, np.log(w) + log_dstretch, -np.inf)
        right = np.where(k == n_values - 1, np.log(w) + log_dstretch, -np.inf)
        nodes = np.concatenate([k + u, k - stretch, k + 1 + stretch], axis=1)
        logw = np.concatenate([np.broadcast_to(np.log(w), nodes[:, :points].shape), left, right], 1)
    logw = np.where(np.isnan(nodes), -np.inf, logw)
    return np.nan_to_num(nodes, nan=0.0), logw


def _flow_log_prob(emulator, y: np.ndarray, cond: torch.Tensor, flags, points: int) -> np.ndarray:
    """log of the flow's density at ``y``, integrated over each flag's interval: [n] float64."""
    n = len(y)
    if not flags:
        logp = _log_prob_blocks(emulator, torch.from_numpy(y).float(), cond)
        return logp.double().cpu().numpy()
    per_flag = []
    for j, index, n_values, mean, std in flags:
        nodes, logw = _interval_nodes(index, n_values, points)
        per_flag.append((j, (nodes - mean) / std, logw - np.log(std)))
    combos = list(itertools.product(range(3 * points), repeat=len(flags)))
    terms = np.empty((n, len(combos)))
    for c, combo in enumerate(combos):
        yc = y.copy()
        logw = np.zeros(n)
        for (j, ys, lw), p in zip(per_flag, combo):
            yc[:, j] = ys[:, p]
            logw += lw[:, p]
        use = np.isfinite(logw)
        terms[:, c] = -np.inf
        if use.any():
            y_use = torch.from_numpy(yc[use]).float()
            logp = _log_prob_blocks(emulator, y_use, cond[torch.from_numpy(use)]).double()
            terms[use, c] = logp.cpu().numpy() + logw[use]
    top = terms.max(axis=1, keepdims=True)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return (safe + np.log(np.exp(terms - safe).sum(axis=1, keepdims=True)))[:, 0]


@torch.inference_mode()
def _log_prob_blocks(emulator, y: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    y = y.to(cond.device)
    return emulator._blocks(lambda r: emulator.generator.log_prob(y[r], cond[r]), len(y))
