"""The measurement yardstick's speed: galaxies per second of the CNN (one torch thread, batches
of 1024; ``--model URI`` for a trained one, else an untrained network of
``configs/estimator-cpu.yaml``'s shape: the same arithmetic), of the Cramér–Rao bound and of the
maximum-likelihood fit (with the Sersic index interpolated between cached GalSim tables, and
with a continuous index, measured in the same run) on simulated single-Sersic stamps; with
``--accuracy``, also the bound's medians and the fit's RMSE over the bound at S/N >= 50.

    python benchmarks/bench_estimator.py                     # 100 galaxies, one process
    python benchmarks/bench_estimator.py --rows 400 --workers 2 --accuracy

Rates are per wall-second of the whole table (process start-up included when ``--workers`` >
1) and, for the fit, the median seconds of one galaxy's fit in its process.  Each estimator is
one entry of :data:`ESTIMATORS` (name -> callable(table, cfg, workers) returning its output);
the CNN's timing is one more entry.

Results (2026-11-29, 2-vCPU Intel Xeon VM shared with other jobs, load ~2; GalSim 2.8.5,
scipy 1.17; the ``--population sersic`` defaults: 32x32 stamps of 0.2", S/N ~5-500):

    --rows 100 (seed 0), 1 process       galaxies/s   median s/fit   max s/fit
    bound                                   20.6
    fit (n interpolated)                     1.36 *       0.13          13.5
    fit (n continuous)                       0.86         0.30          12.2
    (* 1.56/s with the FFT barrier at 768 rather than 1024 pixels, the value kept)

    --rows 200 --model (the trained configs/estimator-cpu.yaml CNN), 1 process, chrt -f 10:
    cnn 1,585 galaxies/s (0.63 ms), bound 22.2/s (45 ms), fit (n interpolated) 1.67/s (median
    0.12 s, max 7.3 s, 95% converged): the CNN is 72x the bound and 950x the fit.

    --rows 400 --seed 1 --workers 2: bound 43.5/s, fit 3.57/s (median 0.14 s, max 11 s, 95%
    converged off the box's bounds).  The slow tail is faint stamps (S/N < 20) whose fit
    wanders to high index and size, where GalSim's tables and FFTs cost 10-100x a typical draw.
    At S/N >= 50 (205 galaxies), median bound: flux 72.6 counts (2.9% of the flux), n 0.27,
    hlr 0.022" (4.5%), g1 0.022, g2 0.022; the fit's RMSE / bound: flux 0.99, n 0.96, hlr
    1.00, g1 0.98, g2 1.06 (the fit is efficient there; ~5% standard error), 99.5% converged.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from galray.datasets.sersic import PARAMS
from galray.datasets.stamps import SERSIC_DEFAULTS, StampSimConfig, read_stamps, simulate_stamps
from galray.estimator.bound import sersic_bounds
from galray.estimator.fit import fit_sersic


def _bound(table, cfg, workers):
    return sersic_bounds(table, cfg, workers=workers)


def _fit_interpolated(table, cfg, workers):
    return fit_sersic(table, cfg, workers=workers, interpolate=True)


def _fit_continuous(table, cfg, workers):
    return fit_sersic(table, cfg, workers=workers, interpolate=False)


CNN: dict = {}  # "model": the EstimatorModel main() loads or builds


def _cnn(table, cfg, workers):
    import torch

    if CNN["model"].device.type == "cpu":
        torch.set_num_threads(1)
    frame = CNN["model"].measure(table["stamp"], table["psf"], table["noise_sigma"])
    return {"estimate": frame.to_numpy()}


def cnn_model(uri: str | None):
    """The estimator ``uri`` names, or an untrained one shaped as configs/estimator-cpu.yaml."""
    if uri:
        import galray.estimator

        return galray.estimator.load(uri)
    from galray.estimator.bundle import EstimatorModel
    from galray.models.estimator import Estimator, EstimatorNetConfig, Targets

    net = Estimator(EstimatorNetConfig(size=32, n_targets=5, channels=(16, 32, 64), hidden=256))
    transforms = ["logflux", "linear", "log", "linear", "linear"]
    return EstimatorModel(
        net, Targets(list(PARAMS), transforms, [0.0] * 5, [1.0] * 5), 0.2, "sersic"
    )


# name -> callable(table, cfg, workers) -> output dict
ESTIMATORS: dict[str, Callable] = {
    "cnn": _cnn,
    "bound": _bound,
    "fit (n interpolated)": _fit_interpolated,
    "fit (n continuous)": _fit_continuous,
}


def simulate(rows: int, seed: int, workers: int, root: Path) -> tuple[dict, StampSimConfig]:
    """``rows`` galaxies of the Sersic population (all splits) and their config."""
    cfg = StampSimConfig(n=rows, population="sersic", seed=seed, shard_rows=max(1, rows // 2))
    for key, value in SERSIC_DEFAULTS.items():
        setattr(cfg, key, value)
    cfg.__post_init__()
    simulate_stamps(root / "stamps", cfg, workers=workers, log=lambda *_: None)
    return read_stamps(root / "stamps"), cfg


def time_all(table, cfg, workers: int, names: list[str]) -> dict[str, tuple[float, dict]]:
    """Wall seconds and output of each estimator in ``names`` on the whole table."""
    out = {}
    for name in names:
        t0 = time.perf_counter()
        result = ESTIMATORS[name](table, cfg, workers)
        out[name] = (time.perf_counter() - t0, result)
    return out


def print_speed(timings: dict, rows: int, workers: int) -> None:
    print(f"\n{rows} galaxies, {workers} process(es)")
    print(f"{'estimator':24s} {'galaxies/s':>11s} {'s/galaxy':>9s} {'median fit s':>13s} extra")
    base = None
    for name, (seconds, result) in timings.items():
        rate = rows / seconds
        base = base or rate
        extra = ""
        median = ""
        if "seconds" in result:
            median = f"{np.median(result['seconds']):.3f}"
            extra = (
                f"success {np.mean(result['success']):.0%}, median draws "
                f"{np.median(result['draws']):.0f}, max s/galaxy {np.max(result['seconds']):.2f}"
            )
        ratio = f"  ({rate / base:.2f}x {next(iter(timings))})" if rate != base else ""
        print(f"{name:24s} {rate:11.2f} {seconds / rows:9.3f} {median:>13s} {extra}{ratio}")


def print_accuracy(table, bounds: dict, fits: dict | None, min_snr: float) -> None:
    """Median bound per parameter at S/N >= ``min_snr`` and the fit's RMSE / bound there."""
    keep = bounds["snr"] >= min_snr
    truth = np.stack([np.asarray(table[p], np.float64) for p in PARAMS], axis=1)
    print(f"\nS/N >= {min_snr:g}: {keep.sum()} of {len(keep)} galaxies")
    print(f"{'param':10s} {'median CRB':>12s} {'median CRB/value':>17s} {'fit RMSE/CRB':>13s}")
    for i, name in enumerate(PARAMS):
        crb = bounds["crb"][keep, i]
        rel = np.median(crb / np.abs(truth[keep, i])) if name in ("flux", "hlr") else np.nan
        ratio = np.nan
        if fits is not None:
            err = (fits["estimate"][keep, i] - truth[keep, i]) / crb
            ratio = float(np.sqrt(np.mean(err**2)))
        print(f"{name:10s} {np.median(crb):12.4g} {rel:17.4g} {ratio:13.3f}")
    if fits is not None:
        print(f"fit success at S/N >= {min_snr:g}: {np.mean(fits['success'][keep]):.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", choices=sorted(ESTIMATORS), default=None)
    ap.add_argument("--accuracy", action="store_true", help="CRB medians and fit RMSE/CRB")
    ap.add_argument("--min-snr", type=float, default=50.0)
    ap.add_argument("--model", help="a trained estimator (default: an untrained one, same speed)")
    ap.add_argument("--device", default="cpu", help="the CNN's device: cpu, cuda or auto")
    args = ap.parse_args()
    names = args.only or list(ESTIMATORS)
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    CNN["model"] = cnn_model(args.model).to(device)
    print(f"CNN on {device}")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        table, cfg = simulate(args.rows, args.seed, args.workers, Path(tmp))
        print(f"simulated {args.rows} Sersic stamps in {time.perf_counter() - t0:.1f} s")
    timings = time_all(table, cfg, args.workers, names)
    print_speed(timings, args.rows, args.workers)
    if args.accuracy:
        bounds = timings["bound"][1] if "bound" in timings else _bound(table, cfg, args.workers)
        fits = timings.get("fit (n interpolated)", (None, None))[1]
        print_accuracy(table, bounds, fits, args.min_snr)


if __name__ == "__main__":
    main()
