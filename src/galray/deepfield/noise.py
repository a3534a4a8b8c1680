"""The generator's noise array and how a field is cut into tiles.

Determinism.  The noise of a field is defined cell by cell, independently of any tiling: the
noise-cell grid is divided into blocks of ``NOISE_BLOCK`` x ``NOISE_BLOCK`` cells, and block
``(bi, bj)`` holds ``standard_normal((Z, NOISE_BLOCK, NOISE_BLOCK))`` float32 draws from a PCG64
stream seeded by ``SeedSequence([seed, bi, bj])``.  Any window of cells is assembled from the
blocks it overlaps, so a tile, a whole field and a field of another size (sharing a corner)
see the same noise in the same cells: the same seed gives the same image regardless of tile
size or worker count.

Tiling.  A field of ``H x W`` pixels uses ``ceil(H / s) x ceil(W / s)`` noise cells (``s`` the
upsampling, 16); generation in one pass runs the generator on all of them and keeps the first
``H x W`` pixels.  A tile keeps the pixels ``[y0, y1) x [x0, x1)`` (``y0``, ``x0`` multiples of
``s``) and runs the generator on the cells of those pixels plus a halo of ``before`` cells
before and ``after`` cells after them (:func:`galray.models.sgan.noise_halo`), clipped to the
field's cells.  Every kept pixel then depends only on cells inside the tile's window or outside
the field (zero padding in both cases), so the stitched tiles equal the one-pass image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NOISE_BLOCK = 16  # noise cells per block side


def block_noise(seed: int, channels: int, bi: int, bj: int) -> np.ndarray:
    """The noise of block ``(bi, bj)``: float32 ``[channels, NOISE_BLOCK, NOISE_BLOCK]``."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, bi, bj])))
    return rng.standard_normal((channels, NOISE_BLOCK, NOISE_BLOCK), dtype=np.float32)


def noise_window(seed: int, channels: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """Noise cells ``[r0, r1) x [c0, c1)`` (non-negative): float32 ``[channels, r1-r0, c1-c0]``."""
    if r0 < 0 or c0 < 0 or r1 <= r0 or c1 <= c0:
        raise ValueError(f"bad noise window rows [{r0}, {r1}) columns [{c0}, {c1})")
    out = np.empty((channels, r1 - r0, c1 - c0), dtype=np.float32)
    for bi in range(r0 // NOISE_BLOCK, (r1 - 1) // NOISE_BLOCK + 1):
        for bj in range(c0 // NOISE_BLOCK, (c1 - 1) // NOISE_BLOCK + 1):
            block = block_noise(seed, channels, bi, bj)
            rb0, cb0 = bi * NOISE_BLOCK, bj * NOISE_BLOCK
            ra, rb = max(r0, rb0), min(r1, rb0 + NOISE_BLOCK)
            ca, cb = max(c0, cb0), min(c1, cb0 + NOISE_BLOCK)
            out[:, ra - r0 : rb - r0, ca - c0 : cb - c0] = block[
                :, ra - rb0 : rb - rb0, ca - cb0 : cb - cb0
            ]
    return out


@dataclass(frozen=True)
class Tile:
    """Kept pixels ``[y0, y1) x [x0, x1)`` and the noise cells ``[r0, r1) x [c0, c1)`` that make
    them; the generator's output for the window starts at pixel ``(r0 s, c0 s)``."""

    y0: int
    y1: int
    x0: int
    x1: int
    r0: int
    r1: int
    c0: int
    c1: int

    @property
    def pixels(self) -> int:
        return (self.y1 - self.y0) * (self.x1 - self.x0)


def plan_tiles(
    height: int, width: int, tile: int, upsampling: int, halo: tuple[int, int]
) -> list[Tile]:
    """Tiles of at most ``tile`` x ``tile`` kept pixels covering an ``height x width`` field,
    row by row.  ``tile`` must be a multiple of ``upsampling``; ``halo`` is ``(before, after)``.
    """
    if height < 1 or width < 1:
        raise ValueError(f"field size must be positive, got {height}x{width}")
    if tile < upsampling or tile % upsampling:
        raise ValueError(f"tile must be a positive multiple of {upsampling} pixels, got {tile}")
    before, after = halo
    rows = -(-height // upsampling)
    cols = -(-width // upsampling)
    tiles = []
    for y0 in range(0, height, tile):
        y1 = min(y0 + tile, height)
        r0 = max(0, y0 // upsampling - before)
        r1 = min(rows, (y1 - 1) // upsampling + after + 1)
        for x0 in range(0, width, tile):
            x1 = min(x0 + tile, width)
            c0 = max(0, x0 // upsampling - before)
            c1 = min(cols, (x1 - 1) // upsampling + after + 1)
            tiles.append(Tile(y0, y1, x0, x1, r0, r1, c0, c1))
    return tiles
