"""``galray evaluate emulator --model URI --data DIR --out DIR``."""

from __future__ import annotations

import argparse
import json

from galray.cli import group


def register(sub, groups) -> None:
    ev = group(sub, groups, "evaluate", help="score a model against known truth")
    p = ev.add_parser(
        "emulator",
        help="fidelity of an emulator on held-out injections",
        description="Emulate held-out injections (truth and conditions known) and compare them "
        "with the measured ones: KS statistics, (obs - true) in bins, detection fraction, and a "
        "classifier two-sample test.  Writes report.json, CSV tables and PNG plots.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--model", required=True, help="models:/NAME@ALIAS, runs:/ID/PATH or a bundle directory"
    )
    p.add_argument(
        "--data", required=True, help="survey directory (injections/ + maps/) or injection catalog"
    )
    p.add_argument(
        "--maps", default=None, help="condition-map table (default DATA/maps/conditions.parquet)"
    )
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument(
        "--split", default="test", choices=["train", "val", "test", "all"], help="rows to score"
    )
    p.add_argument("--rows", type=int, default=50_000, help="at most this many rows")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the emulated draw and the classifier"
    )
    p.add_argument("--no-mlflow", action="store_true", help="do not log the report to MLflow")
    p.set_defaults(handler=_emulator)


def _emulator(args: argparse.Namespace) -> int:
    from pathlib import Path

    from galray.datasets.reader import TrainingCatalog
    from galray.inference import load_emulator
    from galray.trainers.emulator_job import evaluate_on_split, init_ray

    emulator = load_emulator(args.model)
    data = Path(args.data)
    catalog_path = data / "injections" if (data / "injections").is_dir() else data
    maps = args.maps or data / "maps" / "conditions.parquet"
    catalog = TrainingCatalog(catalog_path, maps, bands=emulator.bands, max_outside_fraction=1.0)
    init_ray()
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    split = None if args.split == "all" else args.split
    report = evaluate_on_split(emulator, catalog, args.out, args.rows, split=split, seed=args.seed)
    if not args.no_mlflow:
        import mlflow

        from galray.evaluation.emulator import log_report_to_mlflow
        from galray.tracking import configure_tracking, get_or_create_experiment

        configure_tracking()
        with mlflow.start_run(
            experiment_id=get_or_create_experiment("galray-evaluation"),
            run_name="evaluate-emulator",
        ):
            mlflow.log_params(
                {"model": args.model, "data": str(data), "split": args.split, "rows": args.rows}
            )
            log_report_to_mlflow(report, args.out)
    keys = ("n_rows", "c2st_auc", "ks_max", "detection_max_abs_diff")
    print(json.dumps({k: report[k] for k in keys}, indent=2))
    print(f"report: {Path(args.out) / 'report.json'}")
    return 0
