"""Deterministic train/val/test split by injection id.

A row's split depends only on its ``id`` and a ``salt``: the pair is hashed with the splitmix64
finaliser to a uniform number in [0, 1), which is compared with the cumulative split fractions.
The split of a row is therefore the same however the catalog is sharded, ordered or read in
parallel, the three splits are disjoint and together cover the catalog, and a new ``salt`` draws
an independent split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from galray.config import require

SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.9, 0.05, 0.05)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_TO_UNIT = 2.0**-53


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 output function applied elementwise to uint64 ``x`` (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


def split_uniform(ids: np.ndarray, salt: int = 0) -> np.ndarray:
    """A uniform float64 in [0, 1) per id, a pure function of ``(id, salt)``."""
    key = splitmix64(np.array([salt], dtype=np.int64).view(np.uint64))[0]
    hashed = splitmix64(np.asarray(ids, dtype=np.int64).view(np.uint64) ^ key)
    return (hashed >> np.uint64(11)).astype(np.float64) * _TO_UNIT


@dataclass(frozen=True)
class SplitSpec:
    """How rows are assigned to splits.

    fractions: (train, val, test) shares, each in [0, 1], summing to 1.
    salt: any integer; a different salt draws an independent split of the same ids.
    """

    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    salt: int = 0

    def __post_init__(self) -> None:
        fractions = tuple(float(f) for f in self.fractions)
        require(
            len(fractions) == 3, "fractions", f"needs 3 values (train, val, test), got {fractions}"
        )
        require(
            all(0.0 <= f <= 1.0 for f in fractions),
            "fractions",
            f"each must lie in [0, 1], got {fractions}",
        )
        require(
            abs(sum(fractions) - 1.0) < 1e-9, "fractions", f"must sum to 1, got {sum(fractions)}"
        )
        require(
            isinstance(self.salt, int | np.integer),
            "salt",
            f"must be an integer, got {self.salt!r}",
        )
        object.__setattr__(self, "fractions", fractions)

    def codes(self, ids: np.ndarray) -> np.ndarray:
        """Split index per id (0 train, 1 val, 2 test) as int8."""
        u = split_uniform(ids, self.salt)
        train, val, _ = self.fractions
        # The last edge is 1.0 exactly, so no id falls through when fractions round.
        edges = np.array([train, train + val], dtype=np.float64)
        return np.searchsorted(edges, u, side="right").astype(np.int8)

    def mask(self, ids: np.ndarray, split: str) -> np.ndarray:
        """Boolean mask of the ids that belong to ``split`` ("train", "val" or "test")."""
        return self.codes(ids) == split_index(split)


def split_index(split: str) -> int:
    """Position of ``split`` in :data:`SPLITS`; ConfigError naming the field otherwise."""
    require(split in SPLITS, "split", f"must be one of {SPLITS} or None, got {split!r}")
    return SPLITS.index(split)


def split_counts(ids: Sequence[int] | np.ndarray, spec: SplitSpec) -> dict[str, int]:
    """Number of ids in each split."""
    counts = np.bincount(spec.codes(np.asarray(ids)), minlength=len(SPLITS))
    return {name: int(n) for name, n in zip(SPLITS, counts)}
