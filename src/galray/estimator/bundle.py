"""A trained measurement yardstick as one object: per-parameter estimates and uncertainties of
galaxy stamps; save, load.

A saved estimator is a directory (a "bundle")::

    estimator.json  format version, network config, the targets (names, transforms, training
                    mean and spread), the uncertainty calibration, pixel scale (arcsec), stamp
                    size, the stamp population it was trained on, training provenance
    net.pt          state dict of the CNN (the EMA weights when kept)

MLflow stores the same directory as the ``bundle`` artifact of a logged pyfunc model
(:mod:`galray.estimator.registry`).  Loading a bundle imports no trainer and no Ray.

``calibration``: per parameter, the factor the network's uncertainties are multiplied by, fitted
on the validation split at export so that error / uncertainty has unit RMS there (1 when not
calibrated).  A stamp of another size or pixel scale than the training stamps is refused.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from galray.errors import DataError
from galray.io import load_weights_bundle, save_weights_bundle
from galray.models.estimator import Estimator, EstimatorNetConfig, Targets

BUNDLE_FORMAT = "galray.estimator"
BUNDLE_VERSION = 1
BUNDLE_META = "estimator.json"
BUNDLE_WEIGHTS = "net.pt"


class EstimatorModel:
    """Measures galaxy stamps: ``measure(stamp, psf, sigma)`` -> a table of estimates and their
    1-sigma uncertainties (``<param>`` and ``<param>_err``).

    pixel_scale: arcsec per pixel of the stamps.  population: the stamp population it was trained
    on (``sersic`` or ``rich``).  calibration: see the module docstring."""

    def __init__(
        self,
        net: Estimator,
        targets: Targets,
        pixel_scale: float,
        population: str,
        calibration: list[float] | None = None,
        info: dict | None = None,
    ):
        self.net = net.eval().requires_grad_(False)
        self.targets = targets
        self.pixel_scale = float(pixel_scale)
        self.population = population
        self.calibration = list(calibration or [1.0] * len(targets.names))
        self.info = dict(info or {})

    @property
    def size(self) -> int:
        return self.net.cfg.size

    @property
    def names(self) -> list[str]:
        return list(self.targets.names)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device: str | torch.device) -> EstimatorModel:
        self.net.to(device)
        return self

    def _check(self, stamp: np.ndarray, psf: np.ndarray, sigma: np.ndarray) -> None:
        n = self.size
        if stamp.ndim != 3 or stamp.shape[1:] != (n, n):
            raise DataError(f"stamp: expected [rows, {n}, {n}] images, got shape {stamp.shape}")
        if psf.shape != stamp.shape:
            raise DataError(f"psf: shape {psf.shape} differs from the stamps' {stamp.shape}")
        if sigma.shape != (len(stamp),):
            raise DataError(f"noise_sigma: expected {len(stamp)} values, got shape {sigma.shape}")
        if not (np.all(np.isfinite(sigma)) and np.all(sigma > 0)):
            raise DataError("noise_sigma: every value must be finite and positive")
        bad = ~np.isfinite(stamp).all(axis=(1, 2))
        if bad.any():
            raise DataError(f"stamp: row {int(np.flatnonzero(bad)[0])} has non-finite pixels")

    @torch.no_grad()
    def raw(self, stamp, psf, sigma, batch_size: int = 1024):
        """Standardised ``(mu, log_var, log10 scale)`` numpy arrays (uncalibrated)."""
        stamp = np.asarray(stamp, np.float32)
        psf = np.asarray(psf, np.float32)
        sigma = np.asarray(sigma, np.float32).reshape(-1)
        self._check(stamp, psf, sigma)
        outs = []
        for a in range(0, len(stamp), batch_size):
            part = [torch.from_numpy(np.array(x[a : a + batch_size])) for x in (stamp, psf, sigma)]
            outs.append([t.cpu() for t in self.net(*(p.to(self.device) for p in part))])
        return tuple(torch.cat(parts) for parts in zip(*outs))

    def measure(self, stamp, psf, sigma, batch_size: int = 1024) -> pd.DataFrame:
        """Estimates and 1-sigma uncertainties, one row per stamp: columns ``<param>`` and
        ``<param>_err`` for each measured parameter (in the stamp table's units)."""
        mu, log_var, log_scale = self.raw(stamp, psf, sigma, batch_size)
        values, errors = self.targets.inverse(mu, log_var, log_scale)
        errors = errors * torch.tensor(self.calibration, dtype=errors.dtype)
        out = {}
        for k, name in enumerate(self.names):
            out[name] = values[:, k].double().numpy()
            out[f"{name}_err"] = errors[:, k].double().numpy()
        return pd.DataFrame(out)

    def calibrate(self, stamp, psf, sigma, truth: np.ndarray) -> list[float]:
        """Fit :attr:`calibration` on stamps of known ``truth`` ``[rows, P]``: per parameter the
        RMS of (standardised error / predicted uncertainty); returns it."""
        mu, log_var, log_scale = self.raw(stamp, psf, sigma)
        target = self.targets.standardise(torch.as_tensor(truth, dtype=mu.dtype), log_scale)
        z = (mu - target) * torch.exp(-0.5 * log_var)
        self.calibration = [float(v) for v in z.pow(2).mean(0).sqrt()]
        return self.calibration

    # ------------------------------------------------------------------ persistence
    def meta(self) -> dict:
        return {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "net": asdict(self.net.cfg),
            "targets": asdict(self.targets),
            "calibration": self.calibration,
            "pixel_scale": self.pixel_scale,
            "population": self.population,
            "info": self.info,
        }

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        return save_weights_bundle(
            path, BUNDLE_META, self.meta(), BUNDLE_WEIGHTS, self.net, overwrite=overwrite
        )

    @classmethod
    def from_meta(cls, meta: dict, state: dict[str, torch.Tensor]) -> EstimatorModel:
        net = Estimator(EstimatorNetConfig(**meta["net"]))
        net.load_state_dict(state)
        return cls(
            net,
            Targets(**meta["targets"]),
            meta["pixel_scale"],
            meta["population"],
            meta.get("calibration"),
            meta.get("info"),
        )

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> EstimatorModel:
        meta, weights = BUNDLE_META, BUNDLE_WEIGHTS
        label = "estimator"
        model = load_weights_bundle(
            path, meta, weights, BUNDLE_FORMAT, BUNDLE_VERSION, label, cls.from_meta
        )
        return model.to(device)
