"""Score a measurement yardstick on the test split of its stamps (``galray evaluate estimator``
and the end of ``galray train estimator``).

For each test stamp (at most ``rows``) the CNN measures every parameter with an uncertainty.  On
the single-Sersic population, the first ``bound_rows`` of them also get their Cramér–Rao bound
(:mod:`galray.estimator.bound`: the inverse Fisher matrix of the pixel likelihood of the very
GalSim model that drew them) and the first ``fit_rows`` a maximum-likelihood fit of that model
(:mod:`galray.estimator.fit`).  Per parameter and optimal-S/N bin:

* ``bias`` and ``rmse`` of the CNN and of the fit, in the parameter's units (a flux relative to
  the true flux);
* ``bias_over_bound`` = mean(error / bound) and ``rmse_over_bound`` = sqrt(mean((error /
  bound)^2)), each galaxy's error in units of its own bound (1: as good as any unbiased
  estimator; a biased one can go below), with bootstrap standard errors;
* the CNN's coverage: the fraction of errors within its 1-sigma (nominal 68.3 %) and 1.96-sigma
  (95 %) uncertainty, with binomial errors;

``estimator_bins.csv`` labels its rows ``cnn`` (every measured test stamp: bias, RMSE, coverage),
``cnn_vs_bound`` (the CNN on the bounded stamps), ``fit`` and ``cnn_fit_rows`` (the fit and the
CNN on the same fitted stamps, both against the bound);
* seconds per galaxy of the CNN, the bound and the fit.

Targets (in the note and the README): at S/N >= 50, the CNN's rmse_over_bound <= 1.5 for flux
and radius, <= 2 for index and shear; coverage within 5 points of nominal.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from galray.datasets.stamps import read_manifest, read_stamps
from galray.errors import DataError
from galray.estimator.bundle import EstimatorModel
from galray.estimator.config import EstimatorEvalConfig
from galray.io import write_json

NOMINAL = {"cov68": 0.6827, "cov95": 0.9500}
Z95 = 1.959964
RMSE_TARGETS = {"flux": 1.5, "hlr": 1.5, "sersic_n": 2.0, "g1": 2.0, "g2": 2.0}
HIGH_SNR = 50.0
BOOTSTRAP = 200


def _errors(names: list[str], estimate: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """estimate - truth per parameter; a flux's relative to the true flux."""
    err = estimate - truth
    for k, name in enumerate(names):
        if name == "flux":
            err[:, k] = err[:, k] / truth[:, k]
    return err


def _rms(x: np.ndarray, axis=None) -> float:
    return np.sqrt(np.mean(np.square(x), axis=axis))


def _bootstrap_se(values: np.ndarray, seed: int = 0) -> float:
    """Bootstrap standard error of the RMS of ``values`` (scipy.stats.bootstrap)."""
    from scipy.stats import bootstrap

    if len(values) < 3:
        return float("nan")
    result = bootstrap((values,), _rms, n_resamples=BOOTSTRAP, vectorized=True,
                       method="percentile", random_state=seed)  # fmt: skip
    return float(result.standard_error)


def bin_table(
    names: list[str],
    snr: np.ndarray,
    edges: list[float],
    err: np.ndarray,
    sigma_pred: np.ndarray | None,
    bound: np.ndarray | None,
    who: str,
) -> pd.DataFrame:
    """One row per (parameter, S/N bin) of ``who``'s errors ``err [rows, P]``: bias, rmse,
    against the bound (when given) and coverage (when ``sigma_pred`` is given)."""
    rows = []
    if edges:
        bins = [(edges[i], edges[i + 1]) for i in range(len(edges) - 1)] + [(HIGH_SNR, np.inf)]
    else:  # no S/N known (the rich population): one bin of every row
        bins = [(-np.inf, np.inf)]
    for lo, hi in bins:
        m = (snr >= lo) & (snr < hi) if edges else np.ones(len(snr), bool)
        if not edges:
            label = "all"
        elif np.isinf(hi):  # the summary bin of the targets
            label = f">={lo:g}"
        else:  # an open last bin (1e9) reads "100+"
            label = f"{lo:g}+" if hi >= 1e6 else f"{lo:g}-{hi:g}"
        for k, name in enumerate(names):
            row = {"estimator": who, "param": name, "snr_bin": label, "n": int(m.sum())}
            e = err[m, k]
            if len(e):
                row |= {"bias": float(e.mean()), "rmse": float(_rms(e))}
                row["rmse_se"] = _bootstrap_se(e)
            if bound is not None and len(e):
                ratio = e / bound[m, k]
                ok = np.isfinite(ratio)
                ratio = ratio[ok]
                row["bound_rms"] = float(_rms(bound[m, k][ok])) if ok.any() else float("nan")
                if len(ratio):
                    row["bias_over_bound"] = float(ratio.mean())
                    row["bias_over_bound_se"] = float(ratio.std() / np.sqrt(len(ratio)))
                    row["rmse_over_bound"] = float(_rms(ratio))
                    row["rmse_over_bound_se"] = _bootstrap_se(ratio)
            if sigma_pred is not None and len(e):
                z = np.abs(e / sigma_pred[m, k])
                for key, limit in (("cov68", 1.0), ("cov95", Z95)):
                    p = float((z < limit).mean())
                    row[key] = p
                    row[f"{key}_se"] = float(np.sqrt(p * (1 - p) / len(z)))
            rows.append(row)
    return pd.DataFrame(rows)


def _truth(test: dict, names: list[str], index=slice(None)) -> np.ndarray:
    return np.stack([np.asarray(test[n], np.float64)[index] for n in names], axis=1)


def evaluate_estimator(
    model: EstimatorModel,
    stamps: str,
    out_dir,
    cfg: EstimatorEvalConfig,
    *,
    log=print,
) -> dict:
    """The report of the module docstring on the test split of ``stamps``; writes
    ``report.json``, ``estimator_bins.csv`` and the plots to ``out_dir``."""
    manifest = read_manifest(stamps)
    if manifest["size"] != model.size or abs(manifest["pixel_scale"] - model.pixel_scale) > 1e-9:
        raise DataError(
            f'{stamps}: stamps of {manifest["size"]} px at {manifest["pixel_scale"]}"/px, the '
            f'estimator reads {model.size} px at {model.pixel_scale}"/px'
        )
    names = model.names
    missing = [n for n in names if n not in manifest.get("columns", [])]
    if missing:
        raise DataError(f"{stamps}: no column {missing[0]!r}, which the estimator measures")
    population = manifest.get("population", "rich")
    extra = ["snr", "psf_fwhm"] if population == "sersic" else []
    columns = ["stamp", "psf", "noise_sigma", *names, *extra]
    test = read_stamps(stamps, split="test", columns=sorted(set(columns)))
    test = {k: v[: cfg.rows] for k, v in test.items()}
    n_rows = len(test["id"])
    if n_rows == 0:
        raise DataError(f"{stamps}: the test split (id % 10 == 9) is empty")
    log(f"evaluating the estimator on {n_rows} test stamps of {stamps}")
    t0 = time.perf_counter()
    measured = model.measure(test["stamp"], test["psf"], test["noise_sigma"])
    cnn_seconds = (time.perf_counter() - t0) / n_rows
    estimate = np.array(measured[names], dtype=np.float64)
    sigma_pred = np.array(measured[[f"{n}_err" for n in names]], dtype=np.float64)
    truth = _truth(test, names)
    err = _errors(names, estimate, truth)
    for k, name in enumerate(names):
        if name == "flux":
            sigma_pred[:, k] = sigma_pred[:, k] / truth[:, k]
    snr = np.asarray(test["snr"], np.float64) if "snr" in test else np.full(n_rows, np.inf)
    edges = cfg.snr_bins if "snr" in test else []

    report: dict = {"n_rows": n_rows, "population": population, "measured": names}
    report["seconds_per_galaxy_cnn"] = cnn_seconds
    tables = [bin_table(names, snr, edges, err, sigma_pred, None, "cnn")]
    if population == "sersic" and cfg.bound_rows:
        tables += _against_bound(model, test, manifest, names, err, snr, edges, cfg, report, log)
    table = pd.concat(tables, ignore_index=True)
    report |= _headline(table, names)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "estimator_bins.csv", index=False)
    from galray.evaluation.estimator_plots import plot_estimator

    plot_estimator(table, out, NOMINAL, RMSE_TARGETS)
    write_json(report, out / "report.json")
    return report


def _against_bound(model, test, manifest, names, err, snr, edges, cfg, report, log) -> list:
    """The bound on the first ``bound_rows`` test stamps and the fit on the first ``fit_rows``;
    their bin tables (CNN and fit against the bound)."""
    from galray.datasets.sersic import PARAMS
    from galray.estimator.bound import sersic_bounds
    from galray.estimator.fit import fit_sersic

    if list(names) != list(PARAMS):
        log(f"the bound needs the estimator to measure {', '.join(PARAMS)}: skipped")
        return []
    nb = min(cfg.bound_rows, len(snr))
    sub = {k: v[:nb] for k, v in test.items()}
    log(f"Cramér-Rao bounds of {nb} test galaxies ({cfg.workers} worker(s))")
    t0 = time.perf_counter()
    bounds = sersic_bounds(sub, manifest["config"], workers=cfg.workers)
    report["seconds_per_galaxy_bound"] = (time.perf_counter() - t0) * cfg.workers / max(nb, 1)
    crb = np.asarray(bounds["crb"], np.float64)
    truth = _truth(test, names, slice(0, nb))
    crb[:, 0] = crb[:, 0] / truth[:, 0]  # a flux's bound relative to the flux, as its error
    tables = [bin_table(names, snr[:nb], edges, err[:nb], None, crb, "cnn_vs_bound")]
    nf = min(cfg.fit_rows, nb)
    if nf:
        log(f"maximum-likelihood fits of {nf} test galaxies ({cfg.workers} worker(s))")
        fit_in = {k: v[:nf] for k, v in test.items()}
        fits = fit_sersic(fit_in, manifest["config"], workers=cfg.workers)
        report["seconds_per_galaxy_fit"] = float(np.mean(fits["seconds"]))
        fit_est = np.asarray(fits["estimate"], np.float64)
        report["fit_success_fraction"] = float(np.mean(fits["success"]))
        fit_err = _errors(names, fit_est, truth[:nf])
        tables.append(bin_table(names, snr[:nf], edges, fit_err, None, crb[:nf], "fit"))
        cnn_same = bin_table(names, snr[:nf], edges, err[:nf], None, crb[:nf], "cnn_fit_rows")
        tables.append(cnn_same)
    return tables


def _headline(table: pd.DataFrame, names: list[str]) -> dict:
    """The S/N >= 50 numbers of the report (or, with no S/N known, those over every row) and
    whether they meet the targets."""
    out: dict = {}
    high = table[table.snr_bin.isin([f">={HIGH_SNR:g}", "all"])]
    meets = True
    for name in names:
        cnn = high[high.estimator.isin(["cnn", "cnn_vs_bound"]) & (high.param == name)]
        for _, row in cnn.iterrows():
            if row["snr_bin"] == "all":  # no S/N known: the CNN's bias and RMSE over all rows
                out[f"bias_{name}"], out[f"rmse_{name}"] = float(row["bias"]), float(row["rmse"])
            for key in ("cov68", "cov95"):
                if key in row and pd.notna(row[key]):
                    out[f"{key}_{name}"] = float(row[key])
                    meets &= abs(row[key] - NOMINAL[key]) <= 0.05
            if "rmse_over_bound" in row and pd.notna(row["rmse_over_bound"]):
                out[f"rmse_over_bound_{name}"] = float(row["rmse_over_bound"])
                out[f"rmse_over_bound_{name}_se"] = float(row["rmse_over_bound_se"])
                out[f"bias_over_bound_{name}"] = float(row["bias_over_bound"])
                meets &= row["rmse_over_bound"] <= RMSE_TARGETS.get(name, np.inf)
        fit = high[(high.estimator == "fit") & (high.param == name)]
        for _, row in fit.iterrows():
            if "rmse_over_bound" in row and pd.notna(row["rmse_over_bound"]):
                out[f"fit_rmse_over_bound_{name}"] = float(row["rmse_over_bound"])
                out[f"fit_bias_over_bound_{name}"] = float(row["bias_over_bound"])
    if any(k.startswith("rmse_over_bound_") for k in out):
        out["meets_targets"] = bool(meets)
    return out
