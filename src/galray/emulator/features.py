"""How catalog columns become emulator tensors, and back, for any survey spec
(:class:`~galray.datasets.survey.SurveySpec`).

Condition features (the generator's and the detection model's input), standardised: the spec's
truth columns (true magnitudes AB; morphology through its transform, e.g. ``log10 true_size``)
and its condition columns (``psf_fwhm_b``, ``depth_b``, ... per band, then band-independent
ones such as ``ebv``).

Targets: first the flux of every wide band (below), then the spec's other measurements, each
through its transform -- ``log10`` of the flux errors, the spec's transform of each continuous
column -- and each flag column dequantised: its value's index among the values seen in training,
plus uniform noise in [0, 1), decoded by flooring (so a continuous model emits integer flags).

Targets, per band: ``δ_b = lupt(obs_flux_b) - true_mag_b``, where ``lupt`` is the asinh
magnitude (Lupton, Gunn & Szalay 1999) with softening ``SOFTENING_MAG`` (~ the 1-sigma flux of a
deep-field galaxy).  For ``flux >> softening`` it equals the AB magnitude; unlike it, it stays
finite for the zero and negative fluxes that faint detected galaxies do have, so the emulator
models fluxes of either sign and ``obs_mag`` is NaN exactly where the emulated flux is <= 0.

Whitening.  The spread of ``δ_b`` runs over two decades: ~0.014 mag for a galaxy 8 mag brighter
than the survey's depth (a calibration floor), ~1 mag at the detection limit.  Standardised by
one global scale, a bright galaxy's whole distribution is a few hundredths of a unit wide, and a
Wasserstein critic -- whose score is 1-Lipschitz in those units -- barely feels an error in its
width (on the simulated survey a cWGAN-GP made bright galaxies 1.6x too wide; classifier AUC
0.60).  So each band's ``δ_b`` is first whitened by a location and scale that depend on
``x_b = true_mag_b - depth_b``, the galaxy's brightness relative to the 10-sigma limit at its
position -- the quantity that sets a measurement's signal-to-noise in any survey::

    w_b = (δ_b - loc_b(x_b)) / scale_b(x_b)

``loc_b`` is the median and ``scale_b`` the inter-quartile range / 1.349 of the detected
training rows' ``δ_b`` in 0.5-mag bins of ``x_b`` (interpolated linearly between bin centres,
the scale in log; bins with fewer than ``MIN_BIN_ROWS`` rows take their neighbours' values).
Quantiles are read off a histogram on a fixed grid, so ranks can sum theirs and every rank gets
the same whitening.  ``w_b`` is then standardised as before.  Everything else in a row's width
(size, PSF, the blend tail) is left for the networks to learn, now in units where it matters.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from functools import cached_property

import numpy as np

from galray.datasets import schema
from galray.datasets.survey import SurveySpec, legacy_spec
from galray.errors import DataError

SOFTENING_MAG = 26.5
_LN10_25 = np.log(10.0) / 2.5

# Whitening grid: centres of the bins of x = true_mag - depth (mag), and the histogram of δ that
# its quantiles are read from, uniform in asinh(δ / HIST_SOFTENING) over |δ| <= HIST_RANGE mag
# (resolution ~1e-5 mag at δ = 0, ~0.5 % of |δ| beyond 0.01 mag; rows outside count in the
# end bins).
WHITEN_GRID = np.arange(-12.0, 6.0 + 1e-9, 0.5)
HIST_SOFTENING = 1e-3
HIST_RANGE = 10.0
HIST_BINS = 2048
_HIST_U_MAX = float(np.arcsinh(HIST_RANGE / HIST_SOFTENING))
_HIST_U_EDGES = np.linspace(-_HIST_U_MAX, _HIST_U_MAX, HIST_BINS + 1)
MIN_BIN_ROWS = 200
MIN_SCALE = 1e-4  # mag
MAX_FLAG = 1 << 16  # flag values must lie in [0, MAX_FLAG)


def luptitude(flux: np.ndarray, softening_flux: float) -> np.ndarray:
    """asinh magnitude of ``flux`` (zeropoint 30) with softening ``softening_flux``."""
    b = softening_flux
    return schema.FLUX_ZEROPOINT - (np.arcsinh(flux / (2.0 * b)) + np.log(b)) / _LN10_25


def luptitude_to_flux(mu: np.ndarray, softening_flux: float) -> np.ndarray:
    """Inverse of :func:`luptitude`."""
    b = softening_flux
    return 2.0 * b * np.sinh(-(mu - schema.FLUX_ZEROPOINT) * _LN10_25 - np.log(b))


def _histogram_quantiles(counts: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Quartiles (25, 50, 75 %) of a histogram, linear within the bin that holds each."""
    cdf = np.concatenate([[0.0], np.cumsum(counts)]) / counts.sum()
    q = np.array([0.25, 0.5, 0.75])
    hi = np.clip(np.searchsorted(cdf, q, side="left"), 1, len(cdf) - 1)  # cdf[hi-1] < q <= cdf[hi]
    frac = (q - cdf[hi - 1]) / np.maximum(cdf[hi] - cdf[hi - 1], 1e-300)
    return edges[hi - 1] + frac * (edges[hi] - edges[hi - 1])


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
    # whitening (see the module docstring): per band, loc and scale (mag) at the grid's x
    # values; None in emulators saved before whitening existed, which decode without it
    whiten_grid: list[float] | None = None
    whiten_loc: list[list[float]] | None = None
    whiten_scale: list[list[float]] | None = None
    # the survey spec (a dict); None in emulators saved before specs, whose spec is the legacy
    # one of ``bands`` and ``use_size``
    survey: dict | None = None
    # per flag column, the values seen in training (sorted)
    flag_values: dict[str, list[int]] | None = None

    # ------------------------------------------------------------------ construction
    @cached_property
    def spec(self) -> SurveySpec:
        if self.survey is None:
            return legacy_spec(list(self.bands), self.use_size)
        return SurveySpec.from_dict(self.survey, "emulator features")

    @classmethod
    def fit(
        cls,
        columns: Mapping[str, np.ndarray],
        bands: Sequence[str] | SurveySpec = schema.BANDS,
        use_size=True,
        whiten: bool = True,
        reduce: Callable[[np.ndarray], np.ndarray] = lambda x: x,
    ) -> EmulatorFeatures:
        """Standardisation (and whitening) fitted on training rows (targets on the detected
        ones) from moments and histograms.  ``bands``: a :class:`SurveySpec`, or the bands of
        the legacy spec (with ``use_size``).  ``reduce`` sums those over data-parallel ranks (an
        all-reduce), so every rank gets the same encoding whatever the split of rows."""
        spec = bands if isinstance(bands, SurveySpec) else legacy_spec(list(bands), use_size)
        probe = cls(
            list(spec.bands), spec.uses_size, [0.0], [1.0], [0.0], [1.0], survey=spec.to_dict()
        )
        det = np.asarray(columns["detected"], dtype=bool)
        if not reduce(np.array([float(det.sum())]))[0]:
            raise DataError(
                "training data: no detected rows, so observed magnitudes cannot be learned"
            )
        if spec.outputs.flags:
            probe = probe.with_flags(reduce(probe.flag_histogram(columns, det)))
        cond_m = reduce(cls.moments(probe.raw_cond(columns)))
        if whiten:
            probe = probe.with_whitening(reduce(probe.target_histogram(columns, det)))
        target_m = reduce(cls.moments(probe.whitened_target(columns, det)))
        return probe.with_moments(cond_m, target_m)

    @classmethod
    def from_moments(
        cls, bands: Sequence[str], use_size: bool, cond: np.ndarray, target: np.ndarray
    ) -> EmulatorFeatures:
        """From summed moments ``[3, K]`` rows (count, sum, sum of squares) of the raw condition
        and target features -- what ranks add up with one ``all_reduce``."""

        (cm, cs), (tm, ts) = _mean_std(cond), _mean_std(target)
        return cls(list(bands), use_size, cm, cs, tm, ts)

    def with_moments(self, cond: np.ndarray, target: np.ndarray) -> EmulatorFeatures:
        """A copy standardised by summed moments (:meth:`from_moments`), keeping the spec, the
        whitening and the flags; ``target`` holds the moments of :meth:`whitened_target`."""
        (cm, cs), (tm, ts) = _mean_std(cond), _mean_std(target)
        return replace(self, cond_mean=cm, cond_std=cs, target_mean=tm, target_std=ts)

    # ------------------------------------------------------------------ flags
    def flag_histogram(self, columns: Mapping[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
        """``[F, MAX_FLAG]`` counts of each flag column's values on the selected rows."""
        out = np.zeros((len(self.spec.outputs.flags), MAX_FLAG))
        for j, name in enumerate(self.spec.outputs.flags):
            values = np.asarray(columns[f"obs_{name}"])[np.asarray(rows, bool)]
            if len(values) and (values.min() < 0 or values.max() >= MAX_FLAG):
                raise DataError(f"training data: obs_{name} must lie in [0, {MAX_FLAG})")
            out[j] = np.bincount(values.astype(np.int64), minlength=MAX_FLAG)
        return out

    def with_flags(self, histogram: np.ndarray) -> EmulatorFeatures:
        """A copy that dequantises each flag by the values ``histogram`` saw."""
        values = {
            name: np.flatnonzero(histogram[j]).tolist() or [0]
            for j, name in enumerate(self.spec.outputs.flags)
        }
        return replace(self, flag_values=values)

    # ------------------------------------------------------------------ whitening
    @property
    def whitened(self) -> bool:
        return self.whiten_loc is not None

    def brightness(self, columns: Mapping[str, np.ndarray], rows=slice(None)) -> np.ndarray:
        """``[N, Y]`` float64: ``true_mag_b - depth_b`` of the selected rows, what the whitening
        depends on."""
        return np.stack(
            [
                np.asarray(columns[schema.true_mag(b)], np.float64)[rows]
                - np.asarray(columns[depth], np.float64)[rows]
                for b, depth in zip(self.bands, self.spec.depth_columns)
            ],
            axis=1,
        )

    def target_histogram(self, columns: Mapping[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
        """``[Y, G, HIST_BINS]`` counts of the selected rows' ``δ_b`` per bin of the grid of
        ``x_b`` (nearest centre; beyond the grid, the end bin): sums over ranks."""
        rows = np.asarray(rows, dtype=bool)
        delta = self.raw_target(columns, rows)
        x = self.brightness(columns, rows)
        n_grid = len(WHITEN_GRID)
        step = WHITEN_GRID[1] - WHITEN_GRID[0]
        g = np.clip(np.rint((x - WHITEN_GRID[0]) / step), 0, n_grid - 1).astype(np.int64)
        u = np.arcsinh(delta / HIST_SOFTENING)
        k = (u + _HIST_U_MAX) / (2 * _HIST_U_MAX) * HIST_BINS
        k = np.clip(k.astype(np.int64), 0, HIST_BINS - 1)
        out = np.empty((len(self.bands), n_grid, HIST_BINS))
        for j in range(len(self.bands)):
            flat = g[:, j] * HIST_BINS + k[:, j]
            out[j] = np.bincount(flat, minlength=n_grid * HIST_BINS).reshape(n_grid, HIST_BINS)
        return out

    def with_whitening(self, histogram: np.ndarray) -> EmulatorFeatures:
        """A copy whose targets are whitened by the location and scale read off ``histogram``
        (:meth:`target_histogram`, summed over ranks)."""
        loc, scale = [], []
        for j, band in enumerate(self.bands):
            counts = histogram[j]  # [G, HIST_BINS]
            n = counts.sum(1)
            if n.sum() == 0:
                raise DataError(f"training data: no detected rows to whiten band {band}")
            ok = n >= MIN_BIN_ROWS
            if not ok.any():  # too few rows to resolve x: one location and scale for all
                counts = np.repeat(counts.sum(0, keepdims=True), len(n), axis=0)
                ok = np.ones(len(n), bool)
            quant = np.full((len(n), 3), np.nan)
            for i in np.flatnonzero(ok):
                quant[i] = HIST_SOFTENING * np.sinh(_histogram_quantiles(counts[i], _HIST_U_EDGES))
            centre = np.interp(WHITEN_GRID, WHITEN_GRID[ok], quant[ok, 1])
            width = np.maximum((quant[ok, 2] - quant[ok, 0]) / 1.349, MIN_SCALE)
            spread = np.exp(np.interp(WHITEN_GRID, WHITEN_GRID[ok], np.log(width)))
            loc.append(centre.tolist())
            scale.append(spread.tolist())
        return replace(self, whiten_grid=WHITEN_GRID.tolist(), whiten_loc=loc, whiten_scale=scale)

    def _loc_scale(
        self, columns: Mapping[str, np.ndarray], rows=slice(None)
    ) -> tuple[np.ndarray, np.ndarray]:
        """``[N, Y]`` whitening location and scale (mag) of each selected row and band."""
        x = self.brightness(columns, rows)
        grid = np.asarray(self.whiten_grid)
        loc = np.empty_like(x)
        scale = np.empty_like(x)
        for j in range(len(self.bands)):
            loc[:, j] = np.interp(x[:, j], grid, self.whiten_loc[j])
            scale[:, j] = np.exp(np.interp(x[:, j], grid, np.log(self.whiten_scale[j])))
        return loc, scale

    def whitened_target(self, columns: Mapping[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
        """``[n_rows_selected, Y]`` float32: ``δ_b`` of the selected rows, whitened when this
        encoding whitens, then the other measurements (before standardisation)."""
        rows = np.asarray(rows, dtype=bool)
        delta = self.raw_target(columns, rows)
        if self.whitened:
            loc, scale = self._loc_scale(columns, rows)
            delta = ((delta - loc) / scale).astype(np.float32)
        if not self.spec.measured_columns:
            return delta
        return np.concatenate([delta, self.raw_measured(columns, rows)], axis=1)

    @staticmethod
    def moments(x: np.ndarray) -> np.ndarray:
        """``[3, K]``: count, sum and sum of squares of each column of ``x`` (float64)."""
        x = x.astype(np.float64)
        return np.stack([np.full(x.shape[1], x.shape[0], float), x.sum(0), (x * x).sum(0)])

    # ------------------------------------------------------------------ encoding
    @property
    def n_cond(self) -> int:
        return len(self.spec.input_columns)

    @property
    def n_target(self) -> int:
        return len(self.bands) + len(self.spec.measured_columns)

    @property
    def truth_columns(self) -> list[str]:
        """The columns :meth:`decode_target` reads: the true magnitude of each band (and its
        depth, when whitened)."""
        cols = [schema.true_mag(b) for b in self.bands]
        return cols + (self.spec.depth_columns if self.whitened else [])

    @property
    def softening_flux(self) -> float:
        return float(schema.mag_to_flux(self.softening_mag))

    def raw_cond(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        names = self.spec.input_columns
        missing = [c for c in names if c not in columns]
        if missing:
            raise DataError(f"emulator input: missing column(s) {missing}")
        transforms = self.spec.deep.morphology
        out = np.empty((len(columns[names[0]]), len(names)), dtype=np.float32)
        for j, name in enumerate(names):
            col = np.asarray(columns[name], dtype=np.float64)
            out[:, j] = _forward(transforms.get(name, "identity"), col)
        bad = ~np.isfinite(out).all(axis=0)
        if bad.any():
            raise DataError(f"emulator input: non-finite values in {np.array(names)[bad].tolist()}")
        return out

    def raw_target(self, columns: Mapping[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
        """``[n_rows_selected, Y_flux]`` float32: ``δ_b`` of each band (the flux targets)."""
        b = self.softening_flux
        out = np.empty((int(rows.sum()), len(self.bands)), dtype=np.float32)
        for j, band in enumerate(self.bands):
            flux = np.asarray(columns[schema.obs_flux(band)], dtype=np.float64)[rows]
            out[:, j] = luptitude(flux, b) - np.asarray(columns[schema.true_mag(band)])[rows]
        if not np.isfinite(out).all():
            raise DataError("training data: detected rows with non-finite obs_flux_*")
        return out

    def raw_measured(self, columns: Mapping[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
        """``[n_rows_selected, Y - Y_flux]`` float32: the other measurements, transformed
        (flags dequantised with noise from a generator seeded by the row count)."""
        spec, rows = self.spec, np.asarray(rows, bool)
        names = spec.measured_columns
        out = np.empty((int(rows.sum()), len(names)), dtype=np.float32)
        rng = np.random.default_rng(len(out))
        for j, name in enumerate(names):
            col = np.asarray(columns[name])[rows]
            short = name.removeprefix("obs_")
            if short in spec.outputs.flags:
                index = np.searchsorted(self.flag_values[short], col.astype(np.int64))
                out[:, j] = index + rng.random(len(col))
            else:
                transform = spec.outputs.continuous.get(short, "log")  # flux errors: log
                out[:, j] = _forward(transform, col.astype(np.float64))
        bad = ~np.isfinite(out).all(axis=0)
        if bad.any():
            raise DataError(f"training data: detected rows with non-finite {np.array(names)[bad]}")
        return out

    def encode_cond(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """[N, C] float32 standardised condition features."""
        raw = self.raw_cond(columns)
        return (raw - np.float32(self.cond_mean)) / np.float32(self.cond_std)

    def encode_target(self, columns: Mapping[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
        """[n_rows_selected, Y] float32 standardised targets for the selected (detected) rows."""
        raw = self.whitened_target(columns, rows)
        return (raw - np.float32(self.target_mean)) / np.float32(self.target_std)

    def decode_target(
        self, y: np.ndarray, columns: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Standardised generator output [N, Y] -> ``obs_flux_b`` and ``obs_mag_b`` (float32)."""
        b = self.softening_flux
        raw = y.astype(np.float64) * np.float64(self.target_std) + np.float64(self.target_mean)
        n_flux = len(self.bands)
        delta = raw[:, :n_flux]
        if self.whitened:
            loc, scale = self._loc_scale(columns)
            delta = loc + scale * delta
        out: dict[str, np.ndarray] = {}
        for j, band in enumerate(self.bands):
            mu = np.asarray(columns[schema.true_mag(band)], dtype=np.float64) + delta[:, j]
            flux = luptitude_to_flux(mu, b)
            out[schema.obs_flux(band)] = flux.astype(np.float32)
            out[schema.obs_mag(band)] = schema.flux_to_mag(flux).astype(np.float32)
        spec = self.spec
        for j, name in enumerate(spec.measured_columns):
            value = raw[:, n_flux + j]
            short = name.removeprefix("obs_")
            if short in spec.outputs.flags:
                values = np.asarray(self.flag_values[short])
                index = np.clip(np.floor(value), 0, len(values) - 1).astype(np.int64)
                out[name] = values[index].astype(np.int32)
            else:
                transform = spec.outputs.continuous.get(short, "log")
                out[name] = _inverse(transform, value).astype(np.float32)
        return out

    # ------------------------------------------------------------------ persistence
    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> EmulatorFeatures:
        return cls(**json.loads(text))


def _mean_std(moments: np.ndarray) -> tuple[list[float], list[float]]:
    n = np.maximum(moments[0], 1.0)
    mean = moments[1] / n
    std = np.sqrt(np.maximum(moments[2] / n - mean**2, 0.0))
    return mean.tolist(), np.maximum(std, 1e-6).tolist()


def _forward(transform: str, x: np.ndarray) -> np.ndarray:
    """A column as the networks see it: ``log`` is log10 (of at least 1e-3), ``asinh`` asinh."""
    if transform == "log":
        return np.log10(np.maximum(x, 1e-3))
    if transform == "asinh":
        return np.arcsinh(x)
    return x


def _inverse(transform: str, y: np.ndarray) -> np.ndarray:
    if transform == "log":
        return 10.0**y
    if transform == "asinh":
        return np.sinh(y)
    return y
