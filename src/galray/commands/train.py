"""``galray train emulator --config FILE [--set key=value ...]``."""

from __future__ import annotations

import argparse

from galray.cli import group


def register(sub, groups) -> None:
    train = group(sub, groups, "train", help="train a model with Ray Train")
    p = train.add_parser(
        "emulator",
        help="train the transfer-function emulator (cWGAN-GP or conditional flow, + detection "
        "model)",
        description="Train the emulator on an injection catalog; logs to MLflow and registers "
        "the model.  Example: galray train emulator --config configs/emulator-smoke.yaml "
        "--set epochs=5",
    )
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set optim.batch_size=1024 (repeatable)",
    )
    p.set_defaults(handler=_emulator)


def _emulator(args: argparse.Namespace) -> int:
    from galray.config import load_config
    from galray.trainers.emulator import EmulatorTrainConfig
    from galray.trainers.emulator_job import train_emulator

    cfg = load_config(EmulatorTrainConfig, args.config, args.overrides)
    result = train_emulator(cfg)
    print()
    print(f"training finished in {result.seconds:.0f} s")
    print(f"  MLflow run:     {result.run_id}")
    print(f"  model:          {result.model_uri}")
    print(f"  bundle:         {result.bundle_path}")
    if result.registered_uri:
        print(f"  registered as:  {result.registered_uri}")
    print(f"  checkpoint:     {result.checkpoint_path}")
    if result.report:
        r = result.report
        print(
            f"  fidelity (test split, {r['n_rows']:,} rows): c2st_auc={r['c2st_auc']:.3f}  "
            f"ks_max={r['ks_max']:.3f}  detection_max_abs_diff={r['detection_max_abs_diff']:.3f}"
        )
        print(f"  report:         {result.report_dir}")
    if cfg.tracking.enabled:
        from galray.tracking import tracking_uri

        print(f"  browse runs:    mlflow ui --backend-store-uri {tracking_uri()}")
    return 0
