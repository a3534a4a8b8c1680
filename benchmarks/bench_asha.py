"""Does ASHA pay?  The same emulator sweep with ASHA early stopping and without (FIFO).

Both sweeps draw the same ``--trials`` configurations (same search space, same search seed) and
train each with the same seed, so a configuration reaches the same metric under both schedulers
(training is deterministic on CPU); FIFO trains every one for ``--epochs`` epochs, ASHA stops
those below the median of their rung (rungs at ``grace * rf**k`` epochs).  Reported per
scheduler:

* best metric: ``val_swd`` of the trial the sweep publishes (the best among those that ran all
  epochs), and its model's classifier two-sample AUC on held-out test rows (0.5 is perfect);
* compute: trial-epochs reported to Tune (the scheduler's decisions), trial-epochs actually
  trained (from the trials' checkpoints: a stopped trial may finish an epoch more before it is
  killed), summed training seconds, and wall time;

and the ratios ASHA / FIFO.  ASHA pays if it spends at most half the compute for a best metric
no worse than FIFO's beyond the epoch-to-epoch noise of the metric (printed as "noise": the
median |change| of val_swd between the last two epochs of FIFO trials).

Usage::

    python benchmarks/bench_asha.py                     # 16 trials x 8 epochs, 150k injections
    python benchmarks/bench_asha.py --trials 8 --epochs 4 --injections 60000   # quick look

Results (2026-11-24, 2-vCPU Intel Xeon VM, no GPU, Ray 2.60.0, torch 2.13 CPU; 150k injections
at nside 64, 16 trials x 8 epochs, 2 concurrent, grace 1, rf 2)::

                                            FIFO      ASHA   ASHA/FIFO
    best val_swd (published trial)        0.0216    0.0216        1.00
    its test c2st AUC                      0.588     0.588        1.00
    trials stopped early                       0        12
    trial-epochs reported                    128        50        0.39
    trial-epochs trained                     128        58        0.45
    training seconds (sum)                    89        56        0.63
    wall seconds                             295       191        0.65
    val_swd noise (median |last - previous epoch|, FIFO trials): 0.0016
    same best configuration: True

Training seconds fall less than trial-epochs because a trial's first epoch is its slowest
(warm-up) and most of ASHA's trial-epochs are first epochs; wall time also holds each trial's
fixed Ray Train start-up (worker group, dataset shard), which early stopping does not save.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from galray.datasets.simulate import SurveyConfig, simulate_survey
from galray.products import get_product
from galray.training.ray_env import init_ray
from galray.tune.results import format_table
from galray.tune.search_space import build_sweep
from galray.tune.sweep import TRIALS_DIR, start_sweep

SEARCH = {
    "optim.lr_generator": {"loguniform": [3.0e-5, 3.0e-3]},
    "optim.lr_critic": {"loguniform": [3.0e-5, 3.0e-3]},
    "optim.batch_size": {"choice": [128, 256, 512]},
    "net.width": {"choice": [32, 64, 128]},
    "net.depth": {"randint": [2, 4]},
    "net.noise_dim": {"choice": [2, 4, 8]},
    "optim.critic_steps": {"choice": [2, 3, 5]},
    "optim.gp_weight": {"loguniform": [1.0, 30.0]},
}


def sweep_config(args, survey: Path, out: Path, scheduler: str) -> dict:
    return {
        "train": {
            "data": {"survey": str(survey)},
            "optim": {"betas": [0.5, 0.9]},
            "scaling": {"num_workers": 1, "cpus_per_worker": args.cpus_per_worker},
            "tracking": {"enabled": False},
            "epochs": args.epochs,
            "eval_rows": 20_000,
            "seed": 0,
            "storage_path": str(out / "runs"),
        },
        "search": SEARCH,
        "tune": {
            "scheduler": scheduler,
            "num_samples": args.trials,
            "max_concurrent_trials": args.concurrent,
            "grace_period": args.grace,
            "reduction_factor": args.rf,
            "seed": args.search_seed,
            "name": f"bench-{scheduler}",
            "storage_path": str(out / "sweeps"),
        },
    }


def trained_epochs(sweep_dir: Path, trial_id: str) -> int:
    """Epochs the trial's Ray Train run finished (its latest checkpoint survives retention)."""
    epochs = [
        json.loads(p.read_text())["epoch"]
        for p in (sweep_dir / TRIALS_DIR / trial_id).glob("checkpoint_*/progress.json")
    ]
    return max(epochs, default=0)


def run(args, survey: Path, out: Path, scheduler: str) -> dict:
    spec = get_product("emulator")
    raw = sweep_config(args, survey, out, scheduler)
    sweep = build_sweep("emulator", spec.config_cls, raw, fixed=spec.fixed)
    t0 = time.perf_counter()
    result = start_sweep(spec, sweep, log=lambda *_: None, verbose=0)
    wall = time.perf_counter() - t0
    print(f"\n{scheduler.upper()}\n{format_table(result)}", flush=True)
    report = result.model.get("report") or {}
    return {
        "result": result,
        "best": result.best.best,
        "best_trial": result.best.trial_id,
        "best_params": result.best.params,
        "c2st_auc": report.get("c2st_auc", float("nan")),
        "epochs_reported": result.trial_epochs,
        "epochs_trained": sum(trained_epochs(Path(result.path), t.trial_id) for t in result.trials),
        "train_seconds": sum(t.train_seconds for t in result.trials),
        "wall_seconds": wall,
        "stopped": sum(t.status == "stopped early" for t in result.trials),
    }


def noise(fifo_result) -> float:
    """Median |val_swd(last epoch) - val_swd(previous epoch)| over FIFO's trials."""
    import pandas as pd

    deltas = []
    for trial in fifo_result.trials:
        progress = Path(fifo_result.path) / trial.trial_id / "progress.csv"
        if progress.exists():
            curve = pd.read_csv(progress)[fifo_result.metric].dropna().to_numpy()
            if curve.size >= 2:
                deltas.append(abs(curve[-1] - curve[-2]))
    return float(np.median(deltas)) if deltas else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--concurrent", type=int, default=2)
    parser.add_argument("--grace", type=int, default=1)
    parser.add_argument("--rf", type=float, default=2.0)
    parser.add_argument("--injections", type=int, default=150_000)
    parser.add_argument("--nside", type=int, default=64)
    parser.add_argument("--cpus-per-worker", type=float, default=0.4)
    parser.add_argument("--search-seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="keep the sweeps here")
    args = parser.parse_args()

    out = args.out or Path(tempfile.mkdtemp(prefix="bench-asha-"))
    out.mkdir(parents=True, exist_ok=True)
    survey = out / "survey"
    if not survey.exists():
        cfg = SurveyConfig(
            n_injections=args.injections,
            n_deep=max(args.injections // 3, 10_000),
            nside=args.nside,
            seed=11,
            write_fits_maps=False,
        )
        simulate_survey(survey, cfg, log=lambda *_: None)
    init_ray()
    print(
        f"{platform.processor() or platform.machine()}, {args.trials} trials x {args.epochs} "
        f"epochs, {args.concurrent} concurrent, ASHA grace {args.grace} rf {args.rf}; "
        f"{args.injections:,} injections; sweeps in {out}",
        flush=True,
    )
    fifo = run(args, survey, out, "fifo")
    asha = run(args, survey, out, "asha")

    rows = [
        ("best val_swd (published trial)", "best", "{:.4f}"),
        ("its test c2st AUC", "c2st_auc", "{:.3f}"),
        ("trials stopped early", "stopped", "{:d}"),
        ("trial-epochs reported", "epochs_reported", "{:d}"),
        ("trial-epochs trained", "epochs_trained", "{:d}"),
        ("training seconds (sum)", "train_seconds", "{:.0f}"),
        ("wall seconds", "wall_seconds", "{:.0f}"),
    ]
    print(f"\n{'':34s}{'FIFO':>10s}{'ASHA':>10s}{'ASHA/FIFO':>12s}")
    for label, key, fmt in rows:
        a, f = asha[key], fifo[key]
        ratio = a / f if f else float("nan")
        print(f"{label:34s}{fmt.format(f):>10s}{fmt.format(a):>10s}{ratio:>12.2f}")
    print(
        f"val_swd noise (median |last - previous epoch|, FIFO trials): {noise(fifo['result']):.4f}"
    )
    same = asha["best_params"] == fifo["best_params"]
    print(f"same best configuration: {same} (FIFO {fifo['best_trial']}, ASHA {asha['best_trial']})")
    summary = {
        k: {kk: vv for kk, vv in v.items() if kk != "result"}
        for k, v in (("fifo", fifo), ("asha", asha))
    }
    (out / "bench_asha.json").write_text(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
