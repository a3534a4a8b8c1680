"""The rational-quadratic spline inverse of :mod:`galray.models.flow` as one fused numba loop.

The torch inverse (``flow._rqs_inverse``) makes about twenty passes over ``[B, N, K]``
temporaries (squash, exp, cumsum, normalise, pad, compare, gather, the quadratic's terms).  This
kernel makes two: per row, the knots of each element's spline and its bin (the cumulative sums
are sequential); then, over all elements at once and branch-free so that it vectorises, the
quadratic -- with the derivatives evaluated only at the two knots of each element's bin.  On a
2-vCPU EPYC (AVX-512), 8192 rows x 2 features x 8 bins: 50-70 ns per element against 140-180
for the torch path (2.6x); a tiled variant that vectorises the cumulative sums across rows was
no faster.

It follows the torch path operation by operation in float32 -- the logits squashed into
``|l| < |log slope| / 2``, ``exp`` without max subtraction, the cumulative sum accumulated in
float64 and rounded to float32 (as torch's CPU ``cumsum`` does), the knots scaled by ``2 bound``
times the reciprocal of the last sum (as torch evaluates a scalar divided by a tensor), the
stable root of the quadratic, the identity outside ``[-bound, bound]`` -- so the two agree to
float32 rounding.  What differs is ``exp``: torch's (SLEEF, vectorised) and this file's (below;
vectorisable, which the C library's is not) are both within 1 ulp of the exact value, and
disagree by 1 ulp on about 10 % of inputs; a spline's inverse can magnify that where it is
steep, as it magnifies torch's own rounding.  tests/test_flow.py checks both against the exact
(float64) inverse and zuko's.

Compiled on first use and cached on disk (``cache=True``: numba's cache beside this file, or
the user's cache directory where that is read-only): a process's first call costs ~2 s when it
compiles and ~0.35 s when it loads the cache (plus ~0.2 s to import numba), once per Ray worker.
numba is imported on that first use, so a process that never samples a flow on a CPU (a GAN's
emulation workers) never imports it.  Without numba, :data:`AVAILABLE` is false and the flow
keeps the torch path.
"""

from __future__ import annotations

import functools
import importlib.util
import math

import numpy as np

AVAILABLE = importlib.util.find_spec("numba") is not None  # else the flow samples through torch

_F1, _F2, _F4 = np.float32(1.0), np.float32(2.0), np.float32(4.0)
# exp(x) = 2^n exp(r), n = round(x / ln 2), r = x - n ln 2 in [-ln 2 / 2, ln 2 / 2]: ln 2 split
# in two (Cody and Waite) so that n ln 2 is exact; exp(r) by its Taylor series to r^7 (truncation
# < 6e-9 relative, below float32's half ulp); 2^n from a table (|n| <= 10 on the squashed
# logits' range, |x| < |log slope|)
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI, _LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)
_TAYLOR = tuple(np.float32(1 / math.factorial(i)) for i in range(7, -1, -1))  # 1/7! ... 1/0!
_POW2 = np.ldexp(np.float32(1.0), np.arange(-32, 32)).astype(np.float32)  # 2^(i - 32)


_inline_exp = None  # _exp jitted to inline into the kernel (set on first use, :func:`_compiled`)


def _exp(x):  # pragma: no cover - jitted
    """``exp(x)`` of a float32, within 1 ulp, branch-free (so a loop of it vectorises)."""
    n = np.floor(x * _LOG2E + np.float32(0.5))
    r = (x - n * _LN2_HI) - n * _LN2_LO
    c7, c6, c5, c4, c3, c2, c1, c0 = _TAYLOR
    p = ((((((c7 * r + c6) * r + c5) * r + c4) * r + c3) * r + c2) * r + c1) * r + c0
    return p * _POW2[(np.int64(n) + 32) & 63]  # a NaN's index is masked into the table


def _rqs_inverse_into(
    y, sel, params, bins, out, bound, squash_wh, log_slope
):  # pragma: no cover - jitted
    """``out[:, sel[j]] = inverse(y[:, sel[j]])`` for each ``j``: ``y``, ``out`` [B, F]
    float32, ``sel`` [N] int64; ``params`` [B, >= N (3K - 1)] float32, each row the width logits
    of the N features (K each), their height logits, then their K - 1 derivative logits
    (unconstrained, as ``flow._plan`` orders them); float32 scalars ``bound``, ``squash_wh``
    (``2 / log slope``, rounded once as torch rounds a Python scalar) and ``log_slope``.
    ``out`` may be a view of another array; it is written only at ``sel``.

    Two loops: per row, the knots and each element's bin (the cumulative sums are sequential);
    then, over all elements at once and without branches (so it vectorises), the quadratic."""
    n_rows, n_sel = params.shape[0], sel.shape[0]
    n_wh, size = 2 * n_sel * bins, params.shape[0] * sel.shape[0]
    e = np.empty(n_wh, dtype=np.float32)
    xs = np.empty(bins + 1, dtype=np.float32)
    ys = np.empty(bins + 1, dtype=np.float32)
    # per element: its value, its bin's knots, its knots' derivative logits (0 at the ends,
    # where the derivative is 1 = exp(0)), whether it lies inside the spline's range
    scratch = np.empty((7, size), dtype=np.float32)
    yv, x0, x1, y0, y1, l0, l1 = (
        scratch[0],
        scratch[1],
        scratch[2],
        scratch[3],
        scratch[4],
        scratch[5],
        scratch[6],
    )
    inside = np.empty(size, dtype=np.bool_)
    for i in range(n_rows):
        for m in range(n_wh):  # torch: exp(wh / (1 - (2 / log_slope) * |wh|)), vectorised
            w = params[i, m]
            e[m] = _inline_exp(w / (_F1 - squash_wh * np.abs(w)))
        for j in range(n_sel):
            # the widths' knots (xs) and the heights' (ys), cumulative sums accumulated in
            # float64 as torch's CPU cumsum accumulates float32
            wbase, hbase = j * bins, (n_sel + j) * bins
            acc_x = acc_y = 0.0
            for q in range(bins):
                acc_x += np.float64(e[wbase + q])
                acc_y += np.float64(e[hbase + q])
                xs[q + 1] = np.float32(acc_x)
                ys[q + 1] = np.float32(acc_y)
            # torch: (2 * bound) / c[..., -1:], a scalar over a tensor: a reciprocal, then x
            scale_x = (_F1 / xs[bins]) * (_F2 * bound)
            scale_y = (_F1 / ys[bins]) * (_F2 * bound)
            for q in range(1, bins + 1):
                xs[q] = xs[q] * scale_x - bound
                ys[q] = ys[q] * scale_y - bound
            xs[0] = ys[0] = -bound
            m = i * n_sel + j
            v = y[i, sel[j]]
            count = 0
            for q in range(bins + 1):
                count += ys[q] < v
            k = min(max(count - 1, 0), bins - 1)
            yv[m], inside[m] = v, 1 <= count <= bins  # NaN: count 0, outside
            x0[m], x1[m], y0[m], y1[m] = xs[k], xs[k + 1], ys[k], ys[k + 1]
            base = n_wh + j * (bins - 1) - 1  # this feature's derivative logits, from knot 1
            l0[m] = params[i, base + k] if k > 0 else np.float32(0.0)
            l1[m] = params[i, base + k + 1] if k < bins - 1 else np.float32(0.0)
    for m in range(size):  # the quadratic, branch-free
        d0 = _inline_exp(l0[m] / (_F1 - np.abs(l0[m]) / log_slope))
        d1 = _inline_exp(l1[m] / (_F1 - np.abs(l1[m]) / log_slope))
        dy = y1[m] - y0[m]
        s = dy / (x1[m] - x0[m])
        r = yv[m] - y0[m]
        t = d0 + d1 - _F2 * s
        a = dy * (s - d0) + r * t
        b = dy * d0 - r * t
        c = -s * r
        u = _F2 * c / (-b - np.sqrt(b * b - _F4 * a * c))  # the stable root
        x = x0[m] + u * (x1[m] - x0[m])
        yv[m] = x if inside[m] else yv[m]  # the identity outside the spline's range
    for i in range(n_rows):
        for j in range(n_sel):
            out[i, sel[j]] = yv[i * n_sel + j]


@functools.cache
def _compiled() -> tuple:
    """The jitted ``(exp, rqs_inverse_into)``, numba imported on first use."""
    import numba

    # no fastmath, so no reassociation or fused multiply-adds that would part the kernel from
    # torch's arithmetic; error_model="numpy": a division by zero is IEEE's inf or nan, as in
    # torch, not a raise (whose per-division checks also kept the loops from vectorising)
    global _inline_exp
    _inline_exp = numba.njit(inline="always", error_model="numpy")(_exp)

    def jit(func, **options):
        try:
            return numba.njit(cache=True, error_model="numpy", **options)(func)
        except RuntimeError:  # no writable cache directory anywhere: compile in each process
            return numba.njit(error_model="numpy", **options)(func)

    # nogil: a caller's other threads (Ray's, pyarrow's) run meanwhile
    return jit(_exp), jit(_rqs_inverse_into, nogil=True)


def exp(x: np.float32) -> np.float32:
    """The kernel's ``exp`` of one float32 (compiled; for tests)."""
    return _compiled()[0](x)


def rqs_inverse_into(y, sel, params, bins, out, bound, squash_wh, log_slope) -> None:
    """The compiled :func:`_rqs_inverse_into`, its arrays' shapes checked first (numba does not
    check indices: a mismatch would read or write beyond an array, not raise)."""
    rows, width = params.shape
    if (
        y.ndim != 2
        or out.shape != y.shape
        or y.shape[0] != rows
        or sel.ndim != 1
        or width < sel.shape[0] * (3 * bins - 1)
        or (sel.size and not (0 <= sel.min() and sel.max() < y.shape[1]))
        or bins < 1
    ):
        raise ValueError(
            f"rqs_inverse_into: y {y.shape}, out {out.shape}, sel {sel.shape}, params "
            f"{params.shape} for {bins} bins do not fit together"
        )
    _compiled()[1](y, sel, params, bins, out, bound, squash_wh, log_slope)
