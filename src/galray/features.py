"""How catalog columns become emulator tensors, and back.

Condition features (the generator's and the detection model's input), standardised:
``true_mag_b`` (AB), ``log10 true_size`` (arcsec, if the model uses size), ``psf_fwhm_b`` (arcsec)
and ``depth_b`` (AB) for every band.

Targets, per band: ``lupt(obs_flux_b) - true_mag_b``, standardised, where ``lupt`` is the asinh
magnitude (Lupton, Gunn & Szalay 1999) with softening ``SOFTENING_MAG`` (~ the 1-sigma flux of a
deep-field galaxy).  For ``flux >> softening`` it equals the AB magnitude; unlike it, it stays
finite for the zero and negative fluxes that faint detected galaxies do have, so the emulator
models fluxes of either sign and ``obs_mag`` is NaN exactly where the emulated flux is <= 0.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from galray.datasets import schema
from galray.errors import DataError

SOFTENING_MAG = 26.5
_LN10_25 = np.log(10.0) / 2.5


def luptitude(flux: np.ndarray, softening_flux: float) -> np.ndarray:
    """asinh magnitude of ``flux`` (zeropoint 30) with softening ``softening_flux``."""
    b = softening_flux
    return schema.FLUX_ZEROPOINT - (np.arcsinh(flux / (2.0 * b)) + np.log(b)) / _LN10_25


def luptitude_to_flux(mu: np.ndarray, softening_flux: float) -> np.ndarray:
    """Inverse of :func:`luptitude`."""
    b = softening_flux
    return 2.0 * b * np.sinh(-(mu - schema.FLUX_ZEROPOINT) * _LN10_25 - np.log(b))


@dataclass
class EmulatorFeatures:
    """Column order and standardisation of the emulator's inputs and outputs."""

    bands: list[str]
    use_size: bool
    cond_mean: list[float]
    cond_std: list[float]
    target_mean: list[float]
    target_std: list[float]
    softening_mag: float = SOFTENING_MAG

    # ------------------------------------------------------------------ construction
    @staticmethod
    def cond_columns(bands: Sequence[str], use_size: bool) -> list[str]:
        cols = [schema.true_mag(b) for b in bands]
        if use_size:
            cols.append("true_size")
        return cols + schema.condition_columns(bands)

    @classmethod
    def fit(
        cls, columns: Mapping[str, np.ndarray], bands: Sequence[str] = schema.BANDS, use_size=True
    ) -> EmulatorFeatures:
        """Standardisation fitted on training rows (targets on the detected ones)."""
        probe = cls(list(bands), use_size, [0.0], [1.0], [0.0], [1.0])
        cond = probe.raw_cond(columns)
        det = np.asarray(columns["detected"], dtype=bool)
        if not det.any():
            raise DataError(
                "training data: no detected rows, so observed magnitudes cannot be learned"
            )
        target = probe.raw_target(columns, det)
        return cls(
            list(bands),
            use_size,
            cond.mean(0).tolist(),
            np.maximum(cond.std(0), 1e-6).tolist(),
            target.mean(0).tolist(),
            np.maximum(target.std(0), 1e-6).tolist(),
        )

    @classmethod
    def from_moments(
        cls, bands: Sequence[str], use_size: bool, cond: np.ndarray, target: np.ndarray
    ) -> EmulatorFeatures:
        """From summed moments ``[3, K]`` rows (count, sum, sum of squares) of the raw condition
        and target features -- what ranks add up with one ``all_reduce``."""

        def mean_std(mom):
            n = np.maximum(mom[0], 1.0)
            mean = mom[1] / n
            std = np.sqrt(np.maximum(mom[2] / n - mean**2, 0.0))
            return mean.tolist(), np.maximum(std, 1e-6).tolist()

        (cm, cs), (tm, ts) = mean_std(cond), mean_std(target)
        return cls(list(bands), use_size, cm, cs, tm, ts)

    @staticmethod
    def moments(x: np.ndarray) -> np.ndarray:
        """``[3, K]``: count, sum and sum of squares of each column of ``x`` (float64)."""
        x = x.astype(np.float64)
        return np.stack([np.full(x.shape[1], x.shape[0], float), x.sum(0), (x * x).sum(0)])

    # ------------------------------------------------------------------ encoding
    @property
    def n_cond(self) -> int:
        return len(self.cond_columns(self.bands, self.use_size))

    @property
    def n_target(self) -> int:
        return len(self.bands)

    @property
    def truth_columns(self) -> list[str]:
        """The columns :meth:`decode_target` reads: the true magnitude of each band."""
        return [schema.true_mag(b) for b in self.bands]

    @property
    def softening_flux(self) -> float:
        return float(schema.mag_to_flux(self.softening_mag))

    def raw_cond(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        names = self.cond_columns(self.bands, self.use_size)
        missing = [c for c in names if c not in columns]
        if missing:
            raise DataError(f"emulator input: missing column(s) {missing}")
        out = np.empty((len(columns[names[0]]), len(names)), dtype=np.float32)
        for j, name in enumerate(names):
            col = np.asarray(columns[name], dtype=np.float64)
            out[:, j] = np.log10(np.maximum(col, 1e-3)) if name == "true_size" else col
        bad = ~np.isfinite(out).all(axis=0)
        if bad.any():
            raise DataError(f"emulator input: non-finite values in {np.array(names)[bad].tolist()}")
        return out

    def raw_target(self, columns: Mapping[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
        b = self.softening_flux
        out = np.empty((int(rows.sum()), len(self.bands)), dtype=np.float32)
        for j, band in enumerate(self.bands):
            flux = np.asarray(columns[schema.obs_flux(band)], dtype=np.float64)[rows]
            out[:, j] = luptitude(flux, b) - np.asarray(columns[schema.true_mag(band)])[rows]
        if not np.isfinite(out).all():
            raise DataError("training data: detected rows with non-finite obs_flux_*")
        return out

    def encode_cond(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """[N, C] float32 standardised condition features."""
        raw = self.raw_cond(columns)
        return (raw - np.float32(self.cond_mean)) / np.float32(self.cond_std)

    def encode_target(self, columns: Mapping[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
        """[n_rows_selected, Y] float32 standardised targets for the selected (detected) rows."""
        raw = self.raw_target(columns, np.asarray(rows, dtype=bool))
        return (raw - np.float32(self.target_mean)) / np.float32(self.target_std)

    def decode_target(
        self, y: np.ndarray, columns: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Standardised generator output [N, Y] -> ``obs_flux_b`` and ``obs_mag_b`` (float32)."""
        b = self.softening_flux
        delta = y.astype(np.float64) * np.float64(self.target_std) + np.float64(self.target_mean)
        out: dict[str, np.ndarray] = {}
        for j, band in enumerate(self.bands):
            mu = np.asarray(columns[schema.true_mag(band)], dtype=np.float64) + delta[:, j]
            flux = luptitude_to_flux(mu, b)
            out[schema.obs_flux(band)] = flux.astype(np.float32)
            out[schema.obs_mag(band)] = schema.flux_to_mag(flux).astype(np.float32)
        return out

    # ------------------------------------------------------------------ persistence
    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> EmulatorFeatures:
        return cls(**json.loads(text))
