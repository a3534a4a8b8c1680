"""Partial HEALPix maps onto another grid: RING <-> NESTED and a change of nside.

A partial map is held as its defined pixels (int64, ascending) and their values.  :func:`regrid`
puts it on another HEALPix grid:

* same nside, other ordering: every pixel index is converted (:func:`healpy.ring2nest` /
  :func:`healpy.nest2ring`, the index maps :func:`healpy.reorder` applies to a full-sky map) and
  the pixels re-sorted -- exact, no full-sky array;
* other nside: each column is expanded to a full-sky map (``healpy.UNSEEN`` off the footprint)
  and passed through :func:`healpy.ud_grade` (which reorders as asked).  To a finer grid every
  child pixel inherits its parent's value; to a coarser one a pixel is the mean of its defined
  children (``pess=False``: a pixel with at least one defined child is kept).  The pixels kept
  are those where every column is defined.

healpy is imported inside the functions, so unpickling a condition map (in a Ray task) does not
pay for it.
"""

from __future__ import annotations

import numpy as np

from galray.errors import DataError


def describe(nside: int, ordering: str) -> str:
    return f"nside {nside} {ordering}"


def regrid(
    pixels: np.ndarray,
    values: np.ndarray,
    grid_in: tuple[int, str],
    grid_out: tuple[int, str],
    source: str = "<memory>",
) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels, values)`` of a partial map on ``grid_in = (nside, ordering)`` moved onto
    ``grid_out``.  ``values`` is ``[n]`` or ``[n, k]`` (k columns sharing the pixels); the result
    keeps its shape and dtype (an integer map becomes float64).  DataError naming ``source`` if
    nothing is left."""
    import healpy as hp

    (nside_in, order_in), (nside_out, order_out) = grid_in, grid_out
    pixels = np.asarray(pixels, dtype=np.int64)
    values = np.asarray(values)
    if (nside_in, order_in) == (nside_out, order_out):
        return pixels, values
    if nside_in == nside_out:
        convert = hp.ring2nest if order_in == "RING" else hp.nest2ring
        moved = np.asarray(convert(nside_in, pixels), dtype=np.int64)
        order = np.argsort(moved, kind="stable")
        return moved[order], values[order]
    columns = values.reshape(pixels.size, -1)
    dtype = columns.dtype if columns.dtype.kind == "f" else np.dtype(np.float64)
    out_pixels: np.ndarray | None = None
    out_columns = []
    for j in range(columns.shape[1]):
        sky = np.full(hp.nside2npix(nside_in), hp.UNSEEN, dtype=dtype)
        sky[pixels] = columns[:, j]
        graded = hp.ud_grade(
            sky, nside_out, pess=False, order_in=order_in, order_out=order_out, dtype=dtype
        )
        del sky
        if out_pixels is None:
            out_pixels = np.flatnonzero(_defined(graded)).astype(np.int64)
        out_columns.append(graded[out_pixels])
    stacked = np.stack(out_columns, axis=1)
    keep = np.all(_defined(stacked), axis=1)
    out_pixels, stacked = out_pixels[keep], stacked[keep]
    if out_pixels.size == 0:
        raise DataError(
            f"{source}: no pixel left after moving {describe(nside_in, order_in)} to "
            f"{describe(nside_out, order_out)}"
        )
    if values.ndim == 1:
        return out_pixels, np.ascontiguousarray(stacked[:, 0])
    return out_pixels, np.asfortranarray(stacked)


def _defined(values: np.ndarray) -> np.ndarray:
    import healpy as hp

    return ~hp.mask_bad(values) & np.isfinite(values)
