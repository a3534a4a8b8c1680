"""Intensity scaling between an image's physical units and the generator's (0, 1) range.

The generator ends in a sigmoid, so the images it learns from are mapped into (0, 1) first and
everything it generates is mapped back, into the input's units (e.g. nJy per pixel), with the
exact inverse.  Per band ``b``, with pixel value ``x``:

``asinh`` (default)::

    u = asinh(x / s_b),   y = (u - asinh(lo_b / s_b)) / (asinh(hi_b / s_b) - asinh(lo_b / s_b))

``s_b`` (the softening) is ``softening`` times the band's noise sigma, measured as 1.4826 times
the median absolute deviation of its pixels: the stretch is linear within the noise, so the
noise and faint galaxies keep a good share of (0, 1), and logarithmic for bright sources, so
their cores still fit.

``linear`` (the paper's choice)::

    y = (x - lo_b) / (hi_b - lo_b)

``lo_b`` and ``hi_b`` are the band's ``clip_low`` and ``clip_high`` percentiles (0.01 and 99.99
by default: the paper clips each channel at its 99.99th percentile); training pixels outside them
are clipped.  ``y`` is then squeezed into ``[margin, 1 - margin]`` (``margin`` 0.001) so the
sigmoid never has to saturate to reach the clipped extremes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from galray.config import check_choices, require


@dataclass
class IntensityConfig:
    """How images are scaled for the generator (see the module docstring).

    kind: ``asinh`` or ``linear``.  clip_low / clip_high: percentiles of each band that map to
    the ends of the range.  softening: the asinh softening in units of the band's noise sigma.
    margin: distance kept from 0 and 1.
    """

    kind: Literal["asinh", "linear"] = "asinh"
    clip_low: float = 0.01
    clip_high: float = 99.99
    softening: float = 1.0
    margin: float = 0.001

    def __post_init__(self) -> None:
        check_choices(self)
        require(
            0 <= self.clip_low < self.clip_high <= 100,
            "clip_low",
            f"need 0 <= clip_low < clip_high <= 100, got {self.clip_low}, {self.clip_high}",
        )
        require(self.softening > 0, "softening", f"must be positive, got {self.softening}")
        require(0 <= self.margin < 0.25, "margin", f"must be in [0, 0.25), got {self.margin}")


@dataclass
class IntensityScaling:
    """A fitted per-band scaling: ``forward`` (physical -> (0, 1)) and its exact ``inverse``."""

    kind: str
    low: list[float]
    high: list[float]
    softening: list[float]
    margin: float = 0.001
    noise_sigma: list[float] = field(default_factory=list)

    @classmethod
    def fit(
        cls, data: np.ndarray, cfg: IntensityConfig | None = None, max_pixels: int = 4_000_000
    ) -> IntensityScaling:
        """Fit to ``data`` ``[C, H, W]`` (a regular subsample of at most ``max_pixels`` per band)."""
        cfg = cfg or IntensityConfig()
        c = data.shape[0]
        flat = data.reshape(c, -1)
        step = max(1, flat.shape[1] // max_pixels)
        sample = np.asarray(flat[:, ::step], dtype=np.float64)
        low = np.percentile(sample, cfg.clip_low, axis=1)
        high = np.percentile(sample, cfg.clip_high, axis=1)
        median = np.median(sample, axis=1, keepdims=True)
        sigma = 1.4826 * np.median(np.abs(sample - median), axis=1)
        sigma = np.where(sigma > 0, sigma, np.maximum(high - low, 1e-12) * 1e-3)
        high = np.where(high > low, high, low + 1e-12)
        return cls(
            kind=cfg.kind,
            low=low.tolist(),
            high=high.tolist(),
            softening=(cfg.softening * sigma).tolist(),
            margin=cfg.margin,
            noise_sigma=sigma.tolist(),
        )

    def _stretch(self, x: np.ndarray, c: int) -> np.ndarray:
        if self.kind == "asinh":
            return np.arcsinh(x / self.softening[c])
        return x

    def _ends(self, c: int) -> tuple[float, float]:
        lo, hi = self._stretch(np.array([self.low[c], self.high[c]]), c)
        return float(lo), float(hi)

    def forward(self, data: np.ndarray, clip: bool = True) -> np.ndarray:
        """Physical ``[C, ...]`` -> float32 in ``[margin, 1 - margin]`` (clipped if ``clip``)."""
        data = np.asarray(data, dtype=np.float64)
        out = np.empty(data.shape, dtype=np.float32)
        for c in range(data.shape[0]):
            lo, hi = self._ends(c)
            y = (self._stretch(data[c], c) - lo) / (hi - lo)
            if clip:
                y = np.clip(y, 0.0, 1.0)
            out[c] = self.margin + (1.0 - 2.0 * self.margin) * y
        return out

    def inverse(self, scaled: np.ndarray) -> np.ndarray:
        """``forward``'s inverse: scaled ``[..., C, H, W]`` (channel axis -3) -> physical float32."""
        scaled = np.asarray(scaled, dtype=np.float64)
        out = np.empty(scaled.shape, dtype=np.float32)
        for c in range(scaled.shape[-3]):
            lo, hi = self._ends(c)
            y = (scaled[..., c, :, :] - self.margin) / (1.0 - 2.0 * self.margin)
            u = lo + y * (hi - lo)
            out[..., c, :, :] = np.sinh(u) * self.softening[c] if self.kind == "asinh" else u
        return out

    def inverse_torch(self, scaled):
        """:meth:`inverse` for a float32 torch tensor ``[..., C, H, W]`` on any device (float32
        arithmetic: within ~1e-6 of the float64 inverse relative to the band's range)."""
        import torch

        out = torch.empty_like(scaled, dtype=torch.float32)
        for c in range(scaled.shape[-3]):
            lo, hi = self._ends(c)
            y = (scaled[..., c, :, :].float() - self.margin) / (1.0 - 2.0 * self.margin)
            u = lo + y * (hi - lo)
            out[..., c, :, :] = torch.sinh(u) * self.softening[c] if self.kind == "asinh" else u
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> IntensityScaling:
        return cls(**data)
