"""A synthetic Balrog-style survey for any :class:`~galray.datasets.survey.SurveySpec`.

:mod:`galray.datasets.simulate` simulates the ``riz`` preset; this module every other spec
(``des-y6``, ``lsst``, or a YAML file), with the transfer function below.  Fluxes are at
zeropoint 30 (``F = 10^(-0.4 (m - 30))``), magnitudes AB, sizes in arcsec.

Band constants
--------------
Per wide band b, from surveycodex's survey named like the spec (``des*`` -> DES, ``hsc*`` ->
HSC, anything else -> LSST; a band that survey lacks is looked up in LSST): the effective
wavelength ``λ_b``, the typical PSF FWHM ``PSF0_b``, the sky brightness ``SKY0_b`` (mag/arcsec²)
at the survey's reference airmass ``X0`` and the 10-sigma point-source depth of an ideal
background-limited exposure::

    DEPTH0_b = zp_b - 2.5 log10(10 sqrt(B_b A_b t_b) / t_b),   B_b = 10^(-0.4 (SKY0_b - zp_b))

(``zp_b``: magnitude of 1 e-/s, ``t_b``: total exposure time, ``A_b = π PSF0_b² / (2 ln 2)`` the
noise-equivalent area of a Gaussian PSF).  Deep-only bands need only ``λ_b``: surveycodex, or
:data:`EXTRA_WAVELENGTH_NM` (DECam u, VISTA/VIDEO J, H, Ks).  Galactic extinction
``R_b = A_b / E(B-V)`` is interpolated in log R - log λ through the DES values
:data:`DES_EXTINCTION` (g 3.186, r 2.140, i 1.569, z 1.196, Y 1.048 at the DES wavelengths),
extrapolated along the end segments; the atmospheric extinction is ``k_b = 0.12 (λ_b/600 nm)^-2.5``
mag per airmass.

Deep-field truth
----------------
* ``m_i`` from counts ``dN/dm ∝ 10^(0.35 m)`` in [17, 26.5]
  (:func:`~galray.datasets.simulate_base.sample_magnitudes`).
* redshift ``z ~ Gamma(3, z0(m_i))`` with ``z0 = max(0.0417 m_i - 0.744, 0.03)`` (the
  ``z² exp(-z/z0)`` n(z) of an i-limited sample; fainter galaxies lie further), clipped to
  [0.01, 4]: the whole deep sample peaks near z 0.6 with a tail to ~3.
* type ``t`` in [0, 1] (0 early, 1 starburst): red (``N(0.12, 0.08)``) with probability
  ``0.3 + 0.3 clip((22 - m_i)/5, 0, 1)``, otherwise blue (``N(0.65, 0.18)``).
* colours from a smooth rest-frame SED (AB magnitude at rest wavelength λ, nm)::

      M(λ; t) = -2.5 α(t) log10(λ/550) + D(t) S((400 - λ)/15)
                + 1.5 S((121.6 - λ)/5) + 3 S((91.2 - λ)/3)

  with ``S`` the logistic function, continuum slope ``α = 2.2 - 1.8 t`` (``f_ν ∝ λ^α``),
  4000 Å break ``D = 1.2 - 0.9 t`` mag, and the Lyman-alpha and Lyman-limit breaks; then
  ``m_b = m_i + M(λ_b/(1+z); t) - M(λ_i/(1+z); t) + N(0, 0.05)`` (``m_i`` exact), so colours
  carry redshift.
* ``true_size`` ``R`` as in the riz simulator (``simulate_base.half_light_radius``);
  ``true_T = 2 (R / 1.1774)² ≈ 1.443 R²`` arcsec² (a Gaussian's T for half-light radius R, so
  a spec with either carries the size the noise depends on);
  ``true_G = min(Rayleigh(0.2), 0.799)``.

Observing conditions (HEALPix maps)
-----------------------------------
Unit-variance smooth Gaussian fields ``g`` as in the riz simulator (shared: seeing, sky,
airmass, holes, and ``g_ebv`` with ``C_l ∝ exp(-(l/10)^2)``; per band: psf, airmass, sky,
exposure), footprint and holes as there:

* ``airmass_b = clip(1 + 0.3 exp(0.5 (0.8 g_am + 0.6 g_am,b)), 1, 2)``;
* ``psf_fwhm_b = PSF0_b (airmass_b/X0)^0.6 exp(0.1 (0.8 g_seeing + 0.6 g_psf,b))``, clipped to
  [0.7, 1.6] PSF0_b;
* ``sky_b = SKY0_b + 0.25 (0.6 g_sky + 0.8 g_sky,b) - 0.15 (airmass_b - 1)``, clipped to
  SKY0_b ± 1.5 (lower = brighter);
* ``depth_b = DEPTH0_b + 0.5 (sky_b - SKY0_b) - 2.5 log10(psf_fwhm_b/PSF0_b)
  - k_b (airmass_b - X0) + 0.15 g_exp,b``, clipped to DEPTH0_b ± 1.5: brighter sky, worse
  seeing and higher airmass make it shallower;
* ``ebv = clip(0.05 exp(0.7 g_ebv), 0, 0.15)``.

All are simulated for every spec; the maps hold the ones the spec declares.  Airmass and sky act
on the fluxes only through the depth (correlated inputs that add no information), airmass also
on the flags.  Undeclared quantities are hidden variables, except ``ebv``: without it in the
spec no extinction is applied (a dereddened catalog).

Transfer function (per injection)
---------------------------------
With ``ref`` the i band (else the middle detection band), detection bands ``D`` = r, i, z of the
spec's bands (all bands if it has none of them):

* extinction ``F_b = 10^(-0.4 (m_b - 30)) 10^(-0.4 R_b ebv)``;
* noise ``σ_b = noise_sigma(F_b, R, psf_fwhm_b, depth_b)``, bias ``μ_b = F_b (1 - 0.05 s²/(1+s²))``
  and blends (``p = 0.03 + 0.05 (psf_fwhm_ref - 0.75)/0.7``, a neighbour adds a fraction
  ``u ~ U(0.05, 0.6)`` of its extincted flux) exactly as in the riz simulator;
  ``F_obs,b = μ_b + blend_b + σ_b ε_b``;
* flux error (an estimate) ``obs_flux_err_b = σ_b exp(0.05 ε'_b)``;
* detection: ``ν = Σ_D F_obs / sqrt(Σ_D σ²)``, ``p_det = 1/(1 + exp(-(ν - 6)/0.8))`` for
  ``ν > 0``, else 0;
* ``snr = Σ_D F_obs / sqrt(Σ_D obs_flux_err²)``;
* ``T_psf = 2 (psf_fwhm_ref / 2.355)²``; the measured size, deconvolved::

      T = T_true + u (T_neighbour + 0.5) + 1.5 (T_true + T_psf) / max(snr, 1) ε_T

  (blends look larger; faint galaxies can come out negative); ``size_ratio = T / T_psf``;
* ``flags``: 1 (blend) with probability ``0.005 + 0.5 blended``, else 2 (PSF) with
  ``0.01 + 0.06 clip((psf_fwhm_ref/PSF0_ref - 1)/0.3, 0, 1)``, else 4 (airmass) with
  ``0.005 + 0.03 (airmass_ref - 1)``, else 0: a few per cent, more in bad conditions.

Undetected rows keep truth and position; their measurements are NaN (flags 0).  Deterministic
for a seed, with the riz simulator's SeedSequence streams per component and shard.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from galray.datasets import schema
from galray.datasets import simulate_base as base
from galray.datasets.simulate_base import SurveyConfig
from galray.datasets.survey import SurveySpec
from galray.errors import ConfigError

COUNT_SLOPE = 0.35  # dex per magnitude
MAG_RANGE = (17.0, 26.5)  # as the riz simulator's
EXTRA_WAVELENGTH_NM = {"u": 375.0, "J": 1252.0, "H": 1645.0, "Ks": 2147.0}
DES_EXTINCTION = {"g": 3.186, "r": 2.140, "i": 1.569, "z": 1.196, "Y": 1.048}
T_PER_R2 = 2.0 / 1.1774**2
FLUX_ERR_SCATTER = 0.05
T_NOISE = 1.5
BLEND_T_OFFSET = 0.5
DETECTION_BANDS = ("r", "i", "z")
KNOWN_MORPHOLOGY = ("true_size", "true_T", "true_G")
KNOWN_CONTINUOUS = ("snr", "T", "size_ratio")


@dataclass(frozen=True)
class Band:
    """A wide band's constants (see the module docstring)."""

    wavelength_nm: float
    psf0: float
    sky0: float
    depth0: float
    extinction: float  # R_b = A_b / E(B-V)
    atmosphere: float  # k_b, mag per airmass


def _survey_name(spec: SurveySpec) -> str:
    name = spec.name.lower()
    return "DES" if name.startswith("des") else "HSC" if name.startswith("hsc") else "LSST"


def _filter(survey: str, band: str, fallback: bool = True):
    """surveycodex's (survey, filter) for ``band``: ``survey``'s, else LSST's; (None, None)."""
    import surveycodex  # lazy: imports astropy

    for name in dict.fromkeys((survey, "LSST") if fallback else (survey,)):
        codex = surveycodex.get_survey(name)
        if band in codex.available_filters:
            return codex, codex.get_filter(band)
    return None, None


def wavelength_nm(survey: str, band: str) -> float:
    """``λ_b``: ``survey``'s in surveycodex, else :data:`EXTRA_WAVELENGTH_NM`, else LSST's."""
    _, filt = _filter(survey, band, fallback=False)
    if filt is None and band in EXTRA_WAVELENGTH_NM:
        return EXTRA_WAVELENGTH_NM[band]
    if filt is None:
        _, filt = _filter("LSST", band)
    if filt is None:
        raise ConfigError(f"deep.bands: no effective wavelength known for band {band!r}")
    return float(filt.effective_wavelength.to_value("nm"))


def extinction_coefficient(wavelength: float) -> float:
    """``R(λ)``: log-log interpolation through :data:`DES_EXTINCTION`, linear beyond the ends."""
    nodes = sorted((wavelength_nm("DES", b), r) for b, r in DES_EXTINCTION.items())
    x = np.log([w for w, _ in nodes])
    y = np.log([r for _, r in nodes])
    t = np.log(wavelength)
    if t <= x[0]:
        return float(np.exp(y[0] + (t - x[0]) * (y[1] - y[0]) / (x[1] - x[0])))
    if t >= x[-1]:
        return float(np.exp(y[-1] + (t - x[-1]) * (y[-1] - y[-2]) / (x[-1] - x[-2])))
    return float(np.exp(np.interp(t, x, y)))


def wide_band(survey: str, band: str) -> tuple[Band, float]:
    """The constants of wide band ``band`` and the reference airmass ``X0`` of its survey."""
    codex, filt = _filter(survey, band)
    if filt is None:
        raise ConfigError(f"bands: surveycodex has no {survey} or LSST constants for {band!r}")
    zp = filt.zeropoint.value
    sky = filt.sky_brightness.value
    t = filt.full_exposure_time.to_value("s")
    psf = filt.psf_fwhm.to_value("arcsec")
    rate = 10 ** (-0.4 * (sky - zp)) * np.pi * psf**2 / (2 * np.log(2))  # e-/s in the NEA
    lam = float(filt.effective_wavelength.to_value("nm"))
    depth = float(zp - 2.5 * np.log10(10 * np.sqrt(rate * t) / t))
    constants = Band(lam, psf, sky, depth, extinction_coefficient(lam), 0.12 * (lam / 600) ** -2.5)
    return constants, float(codex.zeropoint_airmass.value)


# --------------------------------------------------------------------------- deep-field truth


def _logistic(x):
    return 1.0 / (1.0 + np.exp(-x))


def sed_magnitude(rest_nm: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``M(λ; t)``, the rest-frame SED of the module docstring (AB mag, arbitrary zero)."""
    alpha, brk = 2.2 - 1.8 * t, 1.2 - 0.9 * t
    return (
        -2.5 * alpha * np.log10(rest_nm / 550.0)
        + brk * _logistic((400.0 - rest_nm) / 15.0)
        + 1.5 * _logistic((121.6 - rest_nm) / 5.0)
        + 3.0 * _logistic((91.2 - rest_nm) / 3.0)
    )


def simulate_deep_spec(
    n: int, wavelengths: dict[str, float], anchor_nm: float, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Deep truth (float32): ``true_mag_<b>`` for ``wavelengths``' bands, ``true_size``,
    ``true_T``, ``true_G``, ``true_z``, ``type``; ``anchor_nm``: the i band's wavelength."""
    mag_i = base.sample_magnitudes(n, rng, COUNT_SLOPE, *MAG_RANGE)
    z0 = np.maximum(0.0417 * mag_i - 0.744, 0.03)
    z = np.clip(rng.gamma(3.0, z0), 0.01, 4.0)
    red = rng.random(n) < 0.3 + 0.3 * np.clip((22.0 - mag_i) / 5.0, 0.0, 1.0)
    kind = np.clip(np.where(red, rng.normal(0.12, 0.08, n), rng.normal(0.65, 0.18, n)), 0, 1)
    anchor = sed_magnitude(anchor_nm / (1 + z), kind)
    out = {}
    for b, lam in wavelengths.items():
        colour = sed_magnitude(lam / (1 + z), kind) - anchor + rng.normal(0.0, 0.05, n)
        out[f"true_mag_{b}"] = mag_i if b == "i" else mag_i + colour
    size = base.half_light_radius(mag_i, rng)
    out["true_size"] = size
    out["true_T"] = T_PER_R2 * size**2
    out["true_G"] = np.minimum(rng.rayleigh(0.2, n), 0.799)
    out["true_z"] = z
    out["type"] = kind
    return {k: v.astype(np.float32) for k, v in out.items()}


# --------------------------------------------------------------------------- condition maps


def simulate_spec_maps(
    cfg: SurveyConfig, bands: dict[str, Band], x0: float
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Footprint pixels (``cfg.ordering``, sorted) and float32 ``psf_fwhm_b, airmass_b, sky_b,
    depth_b`` per band and ``ebv`` (see the module docstring)."""
    import healpy as hp  # lazy

    rng = base._rng(cfg.seed, base._MAPS)
    nside = cfg.nside
    seeing, sky, airmass, holes = (base._smooth_field(nside, rng) for _ in range(4))
    g_ebv = base._smooth_field(nside, rng, ell0=10.0)
    pix = base.footprint_box_pixels(nside, cfg.ra_range, cfg.dec_range)
    pix = pix[holes[pix] > -1.6]
    values = {}
    for b, c in bands.items():
        g_psf, g_am, g_sky, g_exp = (base._smooth_field(nside, rng)[pix] for _ in range(4))
        am = np.clip(1.0 + 0.3 * np.exp(0.5 * (0.8 * airmass[pix] + 0.6 * g_am)), 1.0, 2.0)
        psf = c.psf0 * (am / x0) ** 0.6 * np.exp(0.1 * (0.8 * seeing[pix] + 0.6 * g_psf))
        psf = np.clip(psf, 0.7 * c.psf0, 1.6 * c.psf0)
        sk = c.sky0 + 0.25 * (0.6 * sky[pix] + 0.8 * g_sky) - 0.15 * (am - 1.0)
        sk = np.clip(sk, c.sky0 - 1.5, c.sky0 + 1.5)
        depth = (
            c.depth0
            + 0.5 * (sk - c.sky0)
            - 2.5 * np.log10(psf / c.psf0)
            - c.atmosphere * (am - x0)
            + 0.15 * g_exp
        )
        values[f"psf_fwhm_{b}"] = psf
        values[f"airmass_{b}"] = am
        values[f"sky_{b}"] = sk
        values[f"depth_{b}"] = np.clip(depth, c.depth0 - 1.5, c.depth0 + 1.5)
    values["ebv"] = np.clip(0.05 * np.exp(0.7 * g_ebv[pix]), 0.0, 0.15)
    pixels = pix if cfg.ordering == "RING" else hp.ring2nest(nside, pix)
    order = np.argsort(pixels)
    return pixels[order].astype(np.int64), {
        k: v[order].astype(np.float32) for k, v in values.items()
    }


# --------------------------------------------------------------------------- transfer function


@dataclass
class Measurement:
    """Everything measured of each injection, before the detection mask."""

    obs_flux: dict[str, np.ndarray]
    sigma: dict[str, np.ndarray]
    flux_err: dict[str, np.ndarray]
    snr: np.ndarray
    T: np.ndarray
    size_ratio: np.ndarray
    flags: np.ndarray
    p_detect: np.ndarray
    detected: np.ndarray


def reference_band(bands) -> str:
    detect = detection_bands(bands)
    return "i" if "i" in bands else detect[len(detect) // 2]


def detection_bands(bands) -> list[str]:
    return [b for b in bands if b in DETECTION_BANDS] or list(bands)


def measure(
    truth: dict[str, np.ndarray],
    cond: dict[str, np.ndarray],
    neighbour: dict[str, np.ndarray],
    bands: dict[str, Band],
    rng: np.random.Generator,
    *,
    extinction: bool = True,
) -> Measurement:
    """The transfer function of the module docstring.  truth: ``true_mag_<b>``, ``true_size``,
    ``true_T``; cond: ``psf_fwhm_<b>``, ``depth_<b>``, ``airmass_<b>`` and ``ebv``; neighbour:
    ``flux_<b>`` and ``true_T`` of a random other deep galaxy."""
    f64 = {k: np.asarray(v, dtype=np.float64) for k, v in {**truth, **cond}.items()}
    ref = reference_band(bands)
    n = f64["true_size"].shape[0]
    size = f64["true_size"]
    blended = rng.random(n) < base.blend_probability(f64[f"psf_fwhm_{ref}"])
    frac = rng.uniform(0.05, 0.6, n) * blended
    ebv = f64["ebv"] if extinction else np.zeros(n)
    obs, sig, err = {}, {}, {}
    for b, c in bands.items():
        dim = 10.0 ** (-0.4 * c.extinction * ebv)
        flux = schema.mag_to_flux(f64[f"true_mag_{b}"]) * dim
        psf = f64[f"psf_fwhm_{b}"]
        sig[b] = base.noise_sigma(flux, size, psf, f64[f"depth_{b}"])
        mean = flux * base.flux_bias_factor(size, psf) + frac * neighbour[f"flux_{b}"] * dim
        obs[b] = mean + sig[b] * rng.standard_normal(n)
        err[b] = sig[b] * np.exp(FLUX_ERR_SCATTER * rng.standard_normal(n))
    detect = detection_bands(bands)
    total = sum(obs[b] for b in detect)
    nu = total / np.sqrt(sum(sig[b] ** 2 for b in detect))
    p_det = np.where(nu > 0, base.detection_probability(nu), 0.0)
    detected = rng.random(n) < p_det
    snr = total / np.sqrt(sum(err[b] ** 2 for b in detect))

    t_psf = 2.0 * (f64[f"psf_fwhm_{ref}"] / 2.355) ** 2
    t_true = f64["true_T"]
    sigma_t = T_NOISE * (t_true + t_psf) / np.maximum(snr, 1.0)
    t_obs = t_true + frac * (neighbour["true_T"] + BLEND_T_OFFSET)
    t_obs = t_obs + sigma_t * rng.standard_normal(n)

    u = rng.random((3, n))
    p_psf = 0.01 + 0.06 * np.clip((f64[f"psf_fwhm_{ref}"] / bands[ref].psf0 - 1) / 0.3, 0, 1)
    p_airmass = 0.005 + 0.03 * (f64[f"airmass_{ref}"] - 1.0)
    flags = np.where(
        u[0] < 0.005 + 0.5 * blended,
        1,
        np.where(u[1] < p_psf, 2, np.where(u[2] < p_airmass, 4, 0)),
    )
    return Measurement(obs, sig, err, snr, t_obs, t_obs / t_psf, flags, p_det, detected)


# --------------------------------------------------------------------------- the survey


class SpecSurvey:
    """The pieces :func:`~galray.datasets.simulate_base.write_survey` writes for ``spec``."""

    def __init__(self, cfg: SurveyConfig, spec: SurveySpec) -> None:
        self.cfg, self.spec = cfg, spec
        survey = _survey_name(spec)
        self.bands, x0 = {}, []
        for b in spec.bands:
            self.bands[b], x = wide_band(survey, b)
            x0.append(x)
        self.x0 = float(np.mean(x0))
        self.wavelengths = {b: wavelength_nm(survey, b) for b in spec.deep.bands}
        self.anchor_nm = wavelength_nm(survey, "i")
        cond = spec.conditions
        self.per_band = {q: ("depth" if q == cond.depth else q) for q in cond.per_band}
        unknown = [q for q in self.per_band.values() if q not in ("psf_fwhm", "airmass", "sky")]
        unknown = [q for q in unknown if q != "depth"]
        unknown += [q for q in cond.band_independent if q != "ebv"]
        unknown += [m for m in spec.deep.morphology if m not in KNOWN_MORPHOLOGY]
        unknown += [c for c in spec.outputs.continuous if c not in KNOWN_CONTINUOUS]
        unknown += [f for f in spec.outputs.flags if f != "flags"]
        if unknown:
            raise ConfigError(
                f"spec: the simulator does not know {unknown} (it simulates conditions psf_fwhm, "
                f"airmass, sky, depth and ebv; morphology {list(KNOWN_MORPHOLOGY)}; outputs "
                f"{list(KNOWN_CONTINUOUS)} and flags)"
            )
        self.extinction = "ebv" in cond.band_independent
        self.transfer = {
            "survey_constants": survey,
            "reference_airmass": self.x0,
            "bands": {b: asdict(c) for b, c in self.bands.items()},
            "deep_wavelengths_nm": self.wavelengths,
            "count_slope": COUNT_SLOPE,
            "flux_err_scatter": FLUX_ERR_SCATTER,
            "t_noise": T_NOISE,
            "extinction": self.extinction,
        }

    def deep(self) -> dict[str, np.ndarray]:
        n = self.cfg.n_deep
        rng = base._rng(self.cfg.seed, base._DEEP)
        deep = simulate_deep_spec(n, self.wavelengths, self.anchor_nm, rng)
        return {"id": np.arange(n, dtype=np.int64), **deep}

    def _truth_columns(self) -> list[str]:
        redshift = [self.spec.deep.redshift] if self.spec.deep.redshift else []
        return self.spec.truth_columns + redshift

    def _truth(self, deep: dict[str, np.ndarray], idx=slice(None)) -> dict[str, np.ndarray]:
        z = self.spec.deep.redshift
        return {c: deep["true_z" if c == z else c][idx] for c in self._truth_columns()}

    def deep_table(self, deep: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"id": deep["id"], **self._truth(deep)}

    def maps(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Footprint and the spec's condition columns (all quantities kept for :meth:`shard`)."""
        pixels, values = simulate_spec_maps(self.cfg, self.bands, self.x0)
        self._internal = values
        cols = {
            f"{q}_{b}": values[f"{v}_{b}"] for b in self.bands for q, v in self.per_band.items()
        }
        cols.update({q: values[q] for q in self.spec.conditions.band_independent})
        return pixels, {c: cols[c] for c in self.spec.condition_columns}

    def shard(self, shard, start, n, deep, footprint, cond_values) -> pa.Table:
        cfg, spec = self.cfg, self.spec
        rng = base._rng(cfg.seed, base._POSITIONS, shard)
        deep_idx = rng.integers(0, cfg.n_deep, n)
        nb_idx = rng.integers(0, cfg.n_deep, n)
        ra, dec, pix = base.sample_positions(n, cfg, footprint, rng)
        row = np.searchsorted(footprint, pix)
        cond = {k: v[row] for k, v in self._internal.items()}
        inner = {k: deep[k][deep_idx] for k in ("true_size", "true_T")}
        inner |= {f"true_mag_{b}": deep[f"true_mag_{b}"][deep_idx] for b in self.bands}
        neighbour = {"true_T": deep["true_T"][nb_idx].astype(np.float64)}
        for b in self.bands:
            mag = deep[f"true_mag_{b}"][nb_idx].astype(np.float64)
            neighbour[f"flux_{b}"] = schema.mag_to_flux(mag)
        m = measure(
            inner,
            cond,
            neighbour,
            self.bands,
            base._rng(cfg.seed, base._TRANSFER, shard),
            extinction=self.extinction,
        )
        det = m.detected

        def masked(x):
            return np.where(det, x, np.nan).astype(np.float32)

        cols = {
            "id": np.arange(start, start + n, dtype=np.int64),
            "deep_id": deep_idx.astype(np.int64),
            "ra": ra,
            "dec": dec,
            "pixel": pix,
            **self._truth(deep, deep_idx),
        }
        for b in self.bands:
            cols[f"obs_flux_{b}"] = masked(m.obs_flux[b])
        for b in self.bands:
            cols[f"obs_mag_{b}"] = schema.flux_to_mag(cols[f"obs_flux_{b}"]).astype(np.float32)
        if spec.outputs.flux_err:
            for b in self.bands:
                cols[f"obs_flux_err_{b}"] = masked(m.flux_err[b])
        for name in spec.outputs.continuous:
            cols[f"obs_{name}"] = masked(getattr(m, name))
        for name in spec.outputs.flags:
            cols[f"obs_{name}"] = np.where(det, m.flags, 0).astype(np.int32)
        cols["detected"] = det
        cols["p_detect"] = m.p_detect.astype(np.float32)
        types = {"id": pa.int64(), "deep_id": pa.int64(), "pixel": pa.int64(), "ra": pa.float64()}
        types |= {"dec": pa.float64(), "detected": pa.bool_()}
        types |= {f"obs_{f}": pa.int32() for f in spec.outputs.flags}
        meta = schema.healpix_metadata(cfg.nside, cfg.ordering, kind="injections", bands=spec.bands)
        fields = [(c, types.get(c, pa.float32())) for c in cols]
        arrays = [pa.array(cols[c], type=t) for c, t in fields]
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=meta))
