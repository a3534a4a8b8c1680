"""Score a stamp generator against simulated stamps of the test split (``galray evaluate
stamps`` and the end of ``galray train stamps``).

Every test stamp (known properties, PSF image and noise) is matched by

* a **generated** galaxy: the model's intrinsic image for the stamp's properties, convolved with
  the stamp's PSF image (:func:`~galray.datasets.stamps.convolve_same`, the forward model of
  training) plus white noise of the stamp's sigma;
* a **single-Sersic baseline**: a Sersic profile with the stamp's magnitude, half-light radius
  and ellipticity (random angle) and index ``n = 1 + 3 <B/T>(z)`` -- the population's mean bulge
  fraction at that z (:mod:`galray.datasets.stamps`), so the baseline knows what a parametric
  fit would learn about profiles -- drawn and observed the same way.

The three sets are measured alike and compared (:func:`galray.evaluation.stamps.stamps_report`).
Monotonicity: along a grid of each condition (its 5th to 95th percentile over the test stamps;
the others at their training mean) the same ``sweep_draws`` latent draws are decoded at every point,
observed through the median PSF and noise, and the statistic the condition controls is measured
(:data:`SWEEPS`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from galray.datasets.stamps import (
    PROPERTIES,
    convolve_same,
    draw_intrinsic,
    flux_of,
    read_manifest,
    read_stamps,
)
from galray.evaluation.stamps import measure, stamps_report
from galray.stamps.bundle import StampModel
from galray.stamps.config import StampEvalConfig

# condition -> (the statistic it controls, the sign of the expected trend)
SWEEPS = {
    "mag": ("mag", 1),
    "hlr": ("hsm_sigma", 1),
    "z": ("concentration", -1),  # bulges fade with z (and knots grow)
    "ellipticity": ("hsm_e", 1),
}


def observe(intrinsic: np.ndarray, psf: np.ndarray, sigma: np.ndarray, seed: int) -> np.ndarray:
    """Intrinsic images through their PSF images plus white noise of ``sigma`` per image."""
    rng = np.random.default_rng(seed)
    clean = convolve_same(intrinsic.astype(np.float64), psf.astype(np.float64))
    return clean + rng.normal(size=clean.shape).astype(np.float32) * sigma[:, None, None]


def sersic_baseline(props: dict[str, np.ndarray], size: int, pixel_scale: float, seed: int):
    """Intrinsic single-Sersic images of the rows of ``props`` (see the module docstring)."""
    import galsim

    rng = np.random.default_rng(seed)
    angles = rng.uniform(0.0, 180.0, len(props["mag"]))
    out = np.empty((len(angles), size, size), np.float32)
    for k in range(len(angles)):
        bulge = 0.675 * math.exp(-1.5 * float(props["z"][k]))
        n = round(1.0 + 3.0 * bulge, 1)
        profile = galsim.Sersic(n, half_light_radius=float(props["hlr"][k]))
        profile = profile.withFlux(float(flux_of(props["mag"][k]))).shear(
            e=float(props["ellipticity"][k]), beta=angles[k] * galsim.degrees
        )
        out[k] = draw_intrinsic(profile, size, pixel_scale)
    return out


def sweep_values(values: np.ndarray, name: str, points: int) -> np.ndarray:
    """``points`` grid values of condition ``name`` from the 5th to the 95th percentile of
    ``values`` (the population's; evenly spaced, in log10 for ``hlr``).  Percentiles, not the
    range: 0.95 of ``z``'s range was 1.9, above which 1 % of the training galaxies lie (fewer at
    the mean magnitude), and 0.05 of ``hlr``'s was 0.12", below all but a few: the sweeps
    measured the model where it had nothing to learn from."""
    v = np.asarray(values, np.float64)
    if name == "hlr":
        return 10 ** np.linspace(*np.percentile(np.log10(v), [5.0, 95.0]), points)
    return np.linspace(*np.percentile(v, [5.0, 95.0]), points)


def run_sweeps(
    model: StampModel,
    cfg: StampEvalConfig,
    psf: np.ndarray,
    sigma: float,
    seed: int,
    props: dict[str, np.ndarray],
):
    """The sweeps' measurements (one row per condition, value and draw) and an image per grid
    point (the first draw) for the plots; grids from the percentiles of ``props`` (the test
    stamps' properties, :func:`sweep_values`)."""
    cond = model.conditions
    centre = {
        n: (10**m if n == "hlr" else m) for n, m in zip(cond.names, cond.mean)
    }  # the training mean (of log10 for hlr)
    rows, grid = [], {}
    draws = cfg.sweep_draws
    for name in PROPERTIES:
        statistic, sign = SWEEPS[name]
        values = sweep_values(props[name], name, cfg.sweep_points)
        firsts = []
        for value in values:
            table = {n: np.full(draws, centre[n]) for n in cond.names}
            table[name] = np.full(draws, value)
            images = model.generate(pd.DataFrame(table), seed=seed)  # same draws at each value
            firsts.append(images[0])
            psfs = np.broadcast_to(psf, images.shape)
            observed = observe(images, psfs, np.full(draws, sigma), seed + 1)
            morph = None if statistic in ("mag", "hsm_sigma", "hsm_e") else draws
            stats = measure(observed, np.full(draws, sigma), model.pixel_scale,
                            morphology_rows=morph or 0)  # fmt: skip
            for v in stats[statistic]:
                rows.append((name, float(value), statistic, sign, float(v)))
        grid[name] = (values, np.stack(firsts))
    columns = ["condition", "value", "statistic", "sign", "measured"]
    return pd.DataFrame(rows, columns=columns), grid


def evaluate_model(
    model: StampModel,
    stamps: str,
    out_dir,
    cfg: StampEvalConfig,
    *,
    seed: int = 0,
    estimator=None,
    log=print,
) -> dict:
    """The report of the module docstring on at most ``cfg.rows`` test stamps of ``stamps``.
    ``estimator``: a measurement yardstick (``names``, ``measure(stamp, psf, sigma)``, such as
    :class:`galray.estimator.bundle.EstimatorModel`) applied to the real and generated stamps
    (:mod:`galray.evaluation.judge`; ``judge.csv`` and ``judge_*`` keys)."""
    manifest = read_manifest(stamps)
    if manifest["size"] != model.size or abs(manifest["pixel_scale"] - model.pixel_scale) > 1e-9:
        from galray.errors import DataError

        raise DataError(
            f'{stamps}: stamps of {manifest["size"]} px at {manifest["pixel_scale"]}"/px, the '
            f'model makes {model.size} px at {model.pixel_scale}"/px'
        )
    test = read_stamps(stamps, split="test", columns=["stamp", "psf", "noise_sigma", *PROPERTIES])
    test = {k: v[: cfg.rows] for k, v in test.items()}
    props = {n: test[n] for n in PROPERTIES}
    sigma, psf = test["noise_sigma"].astype(np.float32), test["psf"]
    log(f"evaluating on {len(sigma)} test stamps of {stamps}")
    generated = observe(model.generate(pd.DataFrame(props), seed=seed), psf, sigma, seed + 1)
    baseline = sersic_baseline(props, model.size, model.pixel_scale, seed + 2)
    baseline = observe(baseline, psf, sigma, seed + 3)
    kw = {"morphology_rows": cfg.morphology_rows}
    real_stats = measure(test["stamp"], sigma, model.pixel_scale, **kw)
    gen_stats = measure(generated, sigma, model.pixel_scale, **kw)
    base_stats = measure(baseline, sigma, model.pixel_scale, **kw)
    if not cfg.morphology_rows:
        real_stats, gen_stats, base_stats = (
            f.dropna(axis=1, how="all") for f in (real_stats, gen_stats, base_stats)
        )
    median_fwhm_psf = psf[np.argsort(np.abs(psf.max((1, 2)) - np.median(psf.max((1, 2)))))[0]]
    sweeps, grid = run_sweeps(model, cfg, median_fwhm_psf, float(np.median(sigma)), seed, props)
    extra = real_trends(props, real_stats)
    if estimator is not None:
        extra |= _judge(estimator, test["stamp"], generated, psf, sigma, props, out_dir, log)
    return stamps_report(
        real_stats,
        gen_stats,
        base_stats,
        sweeps,
        out_dir,
        seed=seed,
        grid_images=grid,
        extra=extra,
        properties=pd.DataFrame(props),
    )


def _judge(estimator, real, generated, psf, sigma, props, out_dir, log) -> dict:
    """The estimator on real and generated stamps (:func:`galray.evaluation.judge.
    judge_generated`), over the properties it measures that the generator is conditioned on."""
    from pathlib import Path

    from galray.errors import DataError
    from galray.evaluation.judge import judge_generated

    names = [n for n in estimator.names if n in props]
    if not names:
        raise DataError(
            f"--estimator measures {', '.join(estimator.names)}, none of the generator's "
            f"conditions ({', '.join(props)}); use one trained on the rich stamp population"
        )
    log(f"measuring real and generated stamps with the estimator ({', '.join(names)})")
    real_est = estimator.measure(real, psf, sigma)
    gen_est = estimator.measure(generated.astype(np.float32), psf, sigma)
    table, flat = judge_generated(names, real_est, gen_est, props)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "judge.csv", index=False)
    return flat


def real_trends(props: dict[str, np.ndarray], stats: pd.DataFrame) -> dict[str, float]:
    """The simulator's own trend of each sweep's statistic with its condition, across the real
    test stamps (Spearman rho times the expected sign; the other properties vary too, so this is
    the reference for the sign, not a target): ``real_trend_rho_<condition>``."""
    from scipy.stats import spearmanr

    out = {}
    for name, (statistic, sign) in SWEEPS.items():
        if statistic not in stats:
            continue
        x, y = np.asarray(props[name]), stats[statistic].to_numpy()
        ok = np.isfinite(y)
        if ok.sum() >= 10:
            out[f"real_trend_rho_{name}"] = float(spearmanr(x[ok], y[ok]).statistic) * sign
    return out
