"""A trained stamp generator as one object: galaxy light profiles for given properties, as arrays
or as ``galsim.InterpolatedImage`` profiles; save, load.

A saved generator is a directory (a "bundle")::

    stamps.json     format version, network config, the conditions (names, transforms, training
                    mean, spread and range), pixel scale (arcsec), stamp size, AB zeropoint,
                    training provenance
    vae.pt          state dict of the VAE and its flow prior (the EMA weights when kept)

MLflow stores the same directory as the ``bundle`` artifact of a logged pyfunc model
(:mod:`galray.stamps.registry`).  Loading a bundle imports no trainer and no Ray.

Input tables (pandas, pyarrow, astropy, a dict of arrays or a numpy structured array) need the
columns ``mag`` (AB, zeropoint 30), ``hlr`` (intrinsic half-light radius, arcsec, > 0), ``z`` and
``ellipticity``.  A missing column, a non-finite value or a non-positive ``hlr`` raises
:class:`~galray.errors.DataError` naming the column (and the row).  A value outside the range the
model was trained on is **clipped** to that range with one warning per column naming the column,
the number of rows and the range: a generator has no basis to extrapolate, and a clipped galaxy
keeps its magnitude (its flux is always the one asked for).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from galray.datasets.stamps import PROPERTIES, flux_of
from galray.errors import DataError
from galray.io import load_weights_bundle, save_weights_bundle
from galray.models.stamps import StampNetConfig, StampVAE

BUNDLE_FORMAT = "galray.stamps"
BUNDLE_VERSION = 2  # 2: measured orientation (no angle outputs), decoder envelope (net.envelope)
BUNDLE_META = "stamps.json"
BUNDLE_WEIGHTS = "vae.pt"
LOG_COLUMNS = ("hlr",)  # conditions the networks see as log10


class PropertyRangeWarning(UserWarning):
    """Properties outside the training range were clipped to it."""


@dataclass
class Conditions:
    """How table columns become the networks' standardised conditions.

    names: the property columns, in order.  mean / std: of the (log10 for ``hlr``) values over the
    training stamps.  low / high: the training range in the columns' own units.
    """

    names: list[str]
    mean: list[float]
    std: list[float]
    low: list[float]
    high: list[float]

    @classmethod
    def fit(cls, columns: dict[str, np.ndarray], names=PROPERTIES) -> Conditions:
        raw = np.stack([np.asarray(columns[n], np.float64) for n in names], axis=1)
        enc = cls._transform(raw, names)
        return cls(
            list(names),
            enc.mean(0).tolist(),
            np.maximum(enc.std(0), 1e-6).tolist(),
            raw.min(0).tolist(),
            raw.max(0).tolist(),
        )

    @staticmethod
    def _transform(raw: np.ndarray, names) -> np.ndarray:
        out = raw.astype(np.float64).copy()
        for j, name in enumerate(names):
            if name in LOG_COLUMNS:
                out[:, j] = np.log10(out[:, j])
        return out

    def encode(self, raw: np.ndarray) -> np.ndarray:
        """Raw values ``[B, n]`` (checked, clipped) -> standardised float32 ``[B, n]``."""
        enc = self._transform(raw, self.names)
        return ((enc - np.asarray(self.mean)) / np.asarray(self.std)).astype(np.float32)

    def read(self, table, *, clip: bool = True) -> np.ndarray:
        """The property columns of ``table`` as ``[B, n]`` float64, checked (see the module
        docstring) and clipped to the training range."""
        available = _column_names(table)
        missing = [n for n in self.names if n not in available]
        if missing:
            raise DataError(
                f"stamp properties: missing column(s) {missing}; the model needs "
                f"{', '.join(self.names)}"
            )
        raw = np.stack([np.asarray(table[n], dtype=np.float64).reshape(-1) for n in self.names], 1)
        for j, name in enumerate(self.names):
            bad = np.flatnonzero(~np.isfinite(raw[:, j]))
            if bad.size:
                raise DataError(f"{name}: {bad.size} non-finite value(s), first at row {bad[0]}")
        bad = np.flatnonzero(raw[:, self.names.index("hlr")] <= 0) if "hlr" in self.names else []
        if len(bad):
            value = raw[bad[0], self.names.index("hlr")]
            raise DataError(f"hlr: sizes must be positive (arcsec), got {value:g} at row {bad[0]}")
        if clip:
            for j, name in enumerate(self.names):
                lo, hi = self.low[j], self.high[j]
                out = (raw[:, j] < lo) | (raw[:, j] > hi)
                if out.any():
                    warnings.warn(
                        f"{name}: {int(out.sum())} value(s) outside the training range "
                        f"[{lo:.4g}, {hi:.4g}] clipped to it",
                        PropertyRangeWarning,
                        stacklevel=3,
                    )
                    raw[:, j] = np.clip(raw[:, j], lo, hi)
        return raw


def _column_names(table) -> set[str]:
    for attr in ("column_names", "colnames"):
        if hasattr(table, attr):
            return set(getattr(table, attr))
    if hasattr(table, "columns"):
        return {str(c) for c in table.columns}
    if isinstance(table, np.ndarray) and table.dtype.names:
        return set(table.dtype.names)
    if isinstance(table, dict):
        return set(table)
    raise DataError(f"stamp properties: expected a table with named columns, got {type(table)}")


class StampModel:
    """Generates intrinsic (pre-PSF) galaxy images for given properties.

    pixel_scale: arcsec per pixel of the images (the training stamps').  zeropoint: AB magnitude
    of a flux of 1 (30).  The images include the pixel response of ``pixel_scale`` (as the
    training stamps' intrinsic images do): draw the profiles at that scale with
    ``method='no_pixel'``.
    """

    def __init__(
        self,
        vae: StampVAE,
        conditions: Conditions,
        pixel_scale: float,
        zeropoint: float = 30.0,
        info: dict | None = None,
    ):
        self.vae = vae.eval().requires_grad_(False)
        self.conditions = conditions
        self.pixel_scale = float(pixel_scale)
        self.zeropoint = float(zeropoint)
        self.info = dict(info or {})

    @property
    def net(self) -> StampNetConfig:
        return self.vae.cfg

    @property
    def size(self) -> int:
        return self.net.size

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def to(self, device: str | torch.device) -> StampModel:
        self.vae.to(device)
        return self

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def profiles(self, raw: np.ndarray, seed: int, batch_size: int = 1024) -> np.ndarray:
        """Unit-flux intrinsic images ``[B, N, N]`` (float32) of checked raw properties ``[B,
        n]``; row ``i`` depends on ``seed`` and ``i`` only."""
        cond = torch.from_numpy(self.conditions.encode(raw))
        # one row of draws per galaxy (code, then orientation), filled in order (numpy's normal
        # stream, unlike torch's vectorised one, does not depend on how many are drawn), so row
        # i depends on (seed, i) only
        rng = np.random.default_rng(int(seed))
        noise = torch.from_numpy(rng.standard_normal((len(raw), self.net.latent_dim + 1)))
        noise = noise.float()
        eps = noise[:, :-1]
        angle = torch.special.ndtr(noise[:, -1]) * math.pi  # isotropic: uniform on [0, pi)
        out = np.empty((len(raw), self.size, self.size), np.float32)
        for a in range(0, len(raw), batch_size):
            c = cond[a : a + batch_size].to(self.device)
            e = eps[a : a + batch_size].to(self.device)
            t = angle[a : a + batch_size].to(self.device)
            out[a : a + batch_size] = self.vae.generate(c, e, t).float().cpu().numpy()
        return out

    def generate(self, table, seed: int = 0) -> np.ndarray:
        """Intrinsic images ``[B, N, N]`` in counts (zeropoint 30) of ``table``'s rows."""
        raw = self.conditions.read(table)
        flux = flux_of(raw[:, self.conditions.names.index("mag")])
        return self.profiles(raw, seed) * flux[:, None, None].astype(np.float32)

    def sample(self, table, seed: int = 0) -> list:
        """One ``galsim.InterpolatedImage`` per row of ``table``: the intrinsic profile, its flux
        set from ``mag`` (zeropoint 30) and its pixel scale the model's, ready to convolve with
        any PSF.  The same ``seed`` gives the same galaxies."""
        import galsim

        raw = self.conditions.read(table)
        flux = flux_of(raw[:, self.conditions.names.index("mag")])
        images = self.profiles(raw, seed)
        return [
            galsim.InterpolatedImage(
                galsim.Image(img.astype(np.float64), scale=self.pixel_scale), flux=float(f)
            )
            for img, f in zip(images, flux)
        ]

    # ------------------------------------------------------------------ persistence
    def meta(self) -> dict:
        return {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "net": asdict(self.net),
            "conditions": asdict(self.conditions),
            "pixel_scale": self.pixel_scale,
            "zeropoint": self.zeropoint,
            "info": self.info,
        }

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        return save_weights_bundle(
            path, BUNDLE_META, self.meta(), BUNDLE_WEIGHTS, self.vae, overwrite=overwrite
        )

    @classmethod
    def from_meta(cls, meta: dict, state: dict[str, torch.Tensor]) -> StampModel:
        vae = StampVAE(StampNetConfig(**meta["net"]))
        vae.load_state_dict(state)
        return cls(
            vae,
            Conditions(**meta["conditions"]),
            meta["pixel_scale"],
            meta.get("zeropoint", 30.0),
            meta.get("info"),
        )

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> StampModel:
        meta, weights = BUNDLE_META, BUNDLE_WEIGHTS
        label = "stamp generator"
        model = load_weights_bundle(
            path, meta, weights, BUNDLE_FORMAT, BUNDLE_VERSION, label, cls.from_meta
        )
        return model.to(device)
