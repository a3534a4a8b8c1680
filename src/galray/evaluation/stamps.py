"""Fidelity of generated galaxy stamps against simulated ones observed through the same PSFs and
noise (``galray evaluate stamps``).

Statistics measured on every stamp (:func:`measure`):

* ``mag``: 30 - 2.5 log10 of the stamp's summed counts (the same noisy estimate on both sides).
* ``hsm_sigma`` (arcsec), ``hsm_e1``, ``hsm_e2``, ``hsm_e``: GalSim's adaptive moments
  (``galsim.hsm.FindAdaptiveMom``) of the PSF-convolved stamp; NaN where HSM fails.
* ``gini``, ``m20``, ``concentration``, ``asymmetry``: statmorph (Rodriguez-Gomez et al. 2019) on
  a segmentation of the stamp (pixels of the 1-pixel-Gaussian-smoothed image above 1.5 sigma of
  its noise, the component under the centre); NaN where statmorph flags the measurement as bad.
  statmorph takes ~0.15 s per 48x48 stamp on one core, so it runs on at most
  ``morphology_rows`` rows.

The report (:func:`stamps_report`): per statistic the KS D between generated and real (and
between a single-Sersic baseline and real) beside the D chance alone reaches at those sample
sizes (:func:`ks_noise_floor`), the median magnitude bias and HSM size ratio, a
cross-fitted classifier two-sample test on the vector of statistics, and on the statistics given
the properties (:func:`c2st_scores`), for the generator and for the baseline with their paired
difference (:func:`c2st_comparison`), and the monotonicity table of the condition sweeps
(:func:`monotonicity`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp, spearmanr

from galray.io import write_json

HSM_COLUMNS = ("hsm_sigma", "hsm_e1", "hsm_e2", "hsm_e")
MORPH_COLUMNS = ("gini", "m20", "concentration", "asymmetry")
RHO_TARGET = 0.95  # Spearman rho every condition sweep should reach
C2ST_FOLDS = 5  # cross-fitting folds of the classifier two-sample test
C2ST_REPEATS = 5  # runs of it averaged (their spread is part of the error)
BEATS_SIGMA = 2.0  # the generator beats the baseline: its AUC lower by this many paired errors


def hsm_moments(images: np.ndarray, pixel_scale: float) -> pd.DataFrame:
    """HSM adaptive moments of each image ``[B, N, N]``: size (arcsec) and distortion."""
    import galsim

    rows = []
    for img in images:
        res = galsim.hsm.FindAdaptiveMom(
            galsim.Image(np.asarray(img, np.float64), scale=pixel_scale), strict=False
        )
        if res.moments_status != 0:
            rows.append((math.nan,) * 4)
            continue
        e1, e2 = res.observed_shape.e1, res.observed_shape.e2
        rows.append((res.moments_sigma * pixel_scale, e1, e2, math.hypot(e1, e2)))
    return pd.DataFrame(rows, columns=list(HSM_COLUMNS))


def segmentation(image: np.ndarray, sigma: float) -> np.ndarray:
    """The source's pixels: the smoothed image above 1.5 sigma of its own noise, the connected
    component under the centre (the largest if the centre is below threshold)."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(image, 1.0)
    # a 1-pixel Gaussian smoothing divides white noise by 2 sqrt(pi)
    labels, n = ndimage.label(smooth > 1.5 * sigma / (2.0 * math.sqrt(math.pi)))
    c = image.shape[0] // 2
    label = labels[c, c] or labels[c - 1, c - 1]
    if not label and n:
        label = int(np.bincount(labels.ravel())[1:].argmax()) + 1
    return (labels == label).astype(np.int32) if label else np.zeros(image.shape, np.int32)


def morphology(images: np.ndarray, sigma: np.ndarray) -> pd.DataFrame:
    """statmorph's Gini, M20, concentration and asymmetry of each image (NaN when flagged)."""
    import warnings

    import statmorph

    rows = []
    for img, s in zip(images, np.broadcast_to(sigma, (len(images),))):
        img = np.asarray(img, np.float64)
        seg = segmentation(img, float(s))
        if seg.sum() < 5:
            rows.append((math.nan,) * 4)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = statmorph.source_morphology(img, seg, weightmap=np.full(img.shape, float(s)))[0]
        ok = m.flag <= 1  # 0 good, 1 suspect, 2+ bad
        values = (m.gini, m.m20, m.concentration, m.asymmetry)
        rows.append(tuple(float(v) if ok else math.nan for v in values))
    return pd.DataFrame(rows, columns=list(MORPH_COLUMNS))


def measure(
    images: np.ndarray,
    sigma: np.ndarray,
    pixel_scale: float,
    *,
    morphology_rows: int | None = None,
    zeropoint: float = 30.0,
) -> pd.DataFrame:
    """The statistics of the module docstring for each image ``[B, N, N]`` with per-pixel noise
    ``sigma [B]`` (statmorph on the first ``morphology_rows`` rows; 0: none; None: all)."""
    flux = np.asarray(images, np.float64).sum(axis=(1, 2))
    out = pd.DataFrame({"mag": zeropoint - 2.5 * np.log10(np.clip(flux, 1e-3, None))})
    out = pd.concat([out, hsm_moments(images, pixel_scale)], axis=1)
    k = len(images) if morphology_rows is None else min(morphology_rows, len(images))
    if k:
        morph = morphology(images[:k], np.asarray(sigma)[:k])
        morph = morph.reindex(range(len(images)))
        out = pd.concat([out, morph], axis=1)
    return out


def ks_statistics(real: pd.DataFrame, other: pd.DataFrame) -> dict[str, float]:
    """KS D per statistic (finite values on both sides; NaN with fewer than 10)."""
    out = {}
    for col in real.columns:
        a, b = real[col].to_numpy(), other[col].to_numpy()
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        out[col] = float(ks_2samp(a, b).statistic) if min(a.size, b.size) >= 10 else math.nan
    return out


def ks_noise_floor(real: pd.DataFrame, other: pd.DataFrame) -> dict[str, float]:
    """Per statistic, the KS D that two samples of the *same* distribution exceed 5 % of the
    time at these sample sizes (finite values; asymptotic, ``1.358 sqrt((n + m) / (n m))``; NaN
    as in :func:`ks_statistics`): the reach of the ``KS D <= 0.1`` target.  statmorph on 50
    stamps of each kind gives 0.27 (a perfect generator's median D: 0.16); on 300, 0.11."""
    out = {}
    for col in real.columns:
        n = int(np.isfinite(real[col].to_numpy()).sum())
        m = int(np.isfinite(other[col].to_numpy()).sum())
        out[col] = 1.358 * math.sqrt((n + m) / (n * m)) if min(n, m) >= 10 else math.nan
    return out


def c2st_scores(
    real: pd.DataFrame,
    other: pd.DataFrame,
    seed: int = 0,
    given: pd.DataFrame | None = None,
    folds: int = C2ST_FOLDS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """A gradient-boosted classifier telling ``other`` (1) from ``real`` (0) by their statistics
    (and ``given``'s columns, the same for both versions of a galaxy: then it tests the
    statistics *given* the properties): out-of-fold (scores, labels, galaxy rows) for every
    galaxy, or None with fewer than 10 galaxies of a class.

    Row ``i`` of both frames is one galaxy (same properties, PSF and noise), and each galaxy
    keeps *one* version -- the real one for a random half of the rows, the other for the rest --
    so the classifier never sees a galaxy's twin and cannot win by pairing.  The galaxies are
    cut into ``folds`` folds; each fold is scored by a classifier trained on the others
    (cross-fitting: every galaxy is scored, by a model that never saw it, which halves the
    variance of one 50/50 split).  The folds are stratified by kind: with folds of unequal
    mixtures, a fold rich in one kind is scored by a classifier trained where that kind was
    scarce, and the pooled AUC of two identical samples falls below 0.5.  Folds and versions
    depend only on ``seed`` and the row count,
    so two calls with the same seed score the same galaxies the same way
    (:func:`galray.evaluation.selection.auc_difference`).
    """
    from sklearn.ensemble import HistGradientBoostingClassifier

    cols = [c for c in real.columns if c in other.columns]
    n = len(real)
    rng = np.random.default_rng(seed)
    pick_other = rng.random(n) < 0.5  # which version of each galaxy is kept
    fold = np.empty(n, np.int64)  # stratified: every fold holds the two kinds in one ratio
    for kind in (False, True):
        rows = rng.permutation(np.flatnonzero(pick_other == kind))
        fold[rows] = np.arange(rows.size) % folds
    if np.bincount(pick_other, minlength=2).min() < 10:
        return None
    x = np.where(pick_other[:, None], other[cols].to_numpy(), real[cols].to_numpy())
    if given is not None:
        x = np.hstack([x, given.to_numpy(np.float64)])
    # statmorph's columns are NaN beyond its rows: keep a column only if every training set has
    # values in it (sklearn's binning of a column of nothing raises)
    finite = np.isfinite(x)
    keep = finite.sum(axis=0) >= 10
    for f in range(folds):
        keep &= finite[fold != f].any(axis=0)
    x, y = x[:, keep], pick_other.astype(float)
    scores = np.empty(n)
    for f in range(folds):
        test = fold == f
        clf = HistGradientBoostingClassifier(
            learning_rate=0.05, max_iter=300, max_leaf_nodes=15, l2_regularization=1.0,
            early_stopping=True, validation_fraction=0.2, n_iter_no_change=30,
            random_state=seed + f,
        )  # fmt: skip
        clf.fit(x[~test], y[~test])
        scores[test] = clf.predict_proba(x[test])[:, 1]
    return scores, y, np.arange(n)


def monotonicity(sweeps: pd.DataFrame) -> pd.DataFrame:
    """Per condition: Spearman rho between the grid value and the mean of the statistic it
    controls, times the expected sign (1: monotone the right way).  ``sweeps``: one row per
    (condition, value, draw) with columns ``condition``, ``value``, ``statistic``, ``sign``,
    ``measured``."""
    rows = []
    for cond, group in sweeps.groupby("condition", sort=False):
        curve = group.groupby("value")["measured"].mean()
        sign = float(group["sign"].iloc[0])
        rho = float(spearmanr(curve.index, curve.to_numpy()).statistic) * sign
        rows.append(
            {
                "condition": cond,
                "statistic": group["statistic"].iloc[0],
                "expected_sign": int(sign),
                "points": len(curve),
                "spearman_rho": rho,
                "monotone": bool(rho >= RHO_TARGET),
            }
        )
    return pd.DataFrame(rows)


def _summary(real: pd.DataFrame, gen: pd.DataFrame, prefix: str, seed: int) -> dict:
    out = {}
    ks = ks_statistics(real, gen)
    out |= {f"{prefix}ks_{k}": v for k, v in ks.items()}
    out[f"{prefix}ks_max"] = float(np.nanmax(list(ks.values())))
    floor = ks_noise_floor(real, gen)
    out |= {f"{prefix}ks_floor95_{k}": v for k, v in floor.items()}
    out[f"{prefix}mag_bias_median"] = float(np.nanmedian(gen["mag"] - real["mag"]))
    out[f"{prefix}hsm_size_ratio_median"] = float(
        np.nanmedian(gen["hsm_sigma"] / real["hsm_sigma"])
    )
    return out


def c2st_comparison(
    real: pd.DataFrame,
    generated: pd.DataFrame,
    baseline: pd.DataFrame,
    seed: int = 0,
    given: pd.DataFrame | None = None,
    suffix: str = "",
    repeats: int = C2ST_REPEATS,
) -> dict:
    """The classifier two-sample test of generated and of baseline stamps against the real ones
    (:func:`c2st_scores`) and the paired difference: keys ``c2st_auc<suffix>``,
    ``baseline_c2st_auc<suffix>`` and ``c2st_auc<suffix>_minus_baseline``, each with ``_err``.

    Each value is the mean over ``repeats`` runs of the test (seeds ``seed``, ``seed + 1``, ...:
    another version kept per galaxy, other folds, other classifier seeds) and its error adds
    the two sources of spread: the galaxies drawn (the bootstrap of each run over them, its
    mean variance) and the test's own randomness (the variance across runs over ``repeats``;
    alone, the bootstrap leaves it out, and it is the larger part for a classifier that finds
    something).  Within a run both classifiers score the same galaxies with the same versions
    kept, and the difference is bootstrapped jointly over them
    (:func:`galray.evaluation.selection.auc_difference`), so what the two share cancels."""
    from sklearn.metrics import roc_auc_score

    from galray.evaluation.selection import auc_bootstrap_error, auc_difference

    names = (f"c2st_auc{suffix}", f"baseline_c2st_auc{suffix}", f"c2st_auc{suffix}_minus_baseline")
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in names}
    for r in range(repeats):
        held = [c2st_scores(real, other, seed + r, given) for other in (generated, baseline)]
        for key, h in zip(names, held):
            if h is not None:
                runs[key].append((float(roc_auc_score(h[1], h[0])), auc_bootstrap_error(*h)))
        if None not in held:
            runs[names[2]].append(auc_difference(*held, seed=seed + r))
    out = {}
    for key, values in runs.items():
        if len(values) < repeats:
            out[key] = out[f"{key}_err"] = math.nan
            continue
        v, e = np.array(values).T
        spread = v.var(ddof=1) / repeats if repeats > 1 else 0.0
        out[key], out[f"{key}_err"] = float(v.mean()), float(math.sqrt(np.mean(e**2) + spread))
    return out


def stamps_report(
    real: pd.DataFrame,
    generated: pd.DataFrame,
    baseline: pd.DataFrame,
    sweeps: pd.DataFrame,
    out_dir: str | Path,
    *,
    seed: int = 0,
    grid_images: dict | None = None,
    extra: dict | None = None,
    properties: pd.DataFrame | None = None,
) -> dict:
    """The report of the module docstring: ``report.json``, ``statistics.csv`` (every stamp's
    statistics, by ``source``), ``monotonicity.csv``, ``sweeps.csv`` and plots in ``out_dir``.

    Keys: ``n_rows``; for the generator ``ks_<stat>``, ``ks_max``, ``ks_floor95_<stat>``
    (:func:`ks_noise_floor`), ``mag_bias_median``,
    ``hsm_size_ratio_median``; the same with ``baseline_`` for the single-Sersic baseline;
    the classifier test on the statistics (:func:`c2st_comparison`: ``c2st_auc``,
    ``baseline_c2st_auc``, ``c2st_auc_minus_baseline``, each with ``_err``) and, with
    ``properties`` (each galaxy's conditions, rows as ``real``'s), the same on the statistics
    given the properties (suffix ``_given_properties``); ``beats_baseline`` (the generator's
    AUC below the baseline's by more than :data:`BEATS_SIGMA` paired errors);
    ``monotonic_rho_<condition>``, ``monotonic_rho_min``; and ``extra``'s keys."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"n_rows": len(real), "seed": seed}
    report |= _summary(real, generated, "", seed)
    report |= _summary(real, baseline, "baseline_", seed)
    report |= c2st_comparison(real, generated, baseline, seed)
    if properties is not None:
        given = properties.reset_index(drop=True).astype(np.float64)
        report |= c2st_comparison(real, generated, baseline, seed, given, "_given_properties")
    diff, err = report["c2st_auc_minus_baseline"], report["c2st_auc_minus_baseline_err"]
    report["beats_baseline"] = bool(diff + BEATS_SIGMA * err < 0)
    table = monotonicity(sweeps)
    for row in table.itertuples():
        report[f"monotonic_rho_{row.condition}"] = row.spearman_rho
    report["monotonic_rho_min"] = float(table.spearman_rho.min())
    report |= extra or {}
    frames = [f.assign(source=s) for f, s in ((real, "real"), (generated, "generated"),
                                              (baseline, "baseline"))]  # fmt: skip
    pd.concat(frames).to_csv(out / "statistics.csv", index=False)
    table.to_csv(out / "monotonicity.csv", index=False)
    sweeps.to_csv(out / "sweeps.csv", index=False)
    from galray.evaluation.stamps_plots import stamps_plots

    stamps_plots(real, generated, baseline, sweeps, out, grid_images=grid_images)
    write_json(report, out / "report.json")
    return report
