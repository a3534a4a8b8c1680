"""``galray train PRODUCT --config FILE [--set key=value ...] [--resume RUN]`` for every
product."""

from __future__ import annotations

import argparse

from galray.commands.common import add_config, group, per_product, print_trained
from galray.commands.config import add_dry_run


def register(sub, groups) -> None:
    train = group(sub, groups, "train", help="train a model with Ray Train")
    for p in per_product(
        train,
        _train,
        help="train {summary}",
        description="Train {summary}.\n\n{about}  Example:\n"
        "    galray train {name} --config configs/{name}-smoke.yaml --set epochs=5\n\n"
        "An interrupted run (Ctrl-C, SIGTERM, a failure; MLflow shows it KILLED or FAILED) "
        "continues with the same config and --resume RUN: the same MLflow run, from its latest "
        "checkpoint, metrics from the next epoch.  Fields that do not shape the networks "
        "(epochs, time_budget_s, ...) may change; a changed network shape is refused.  A new "
        "run may not reuse the tracking.run_name of an existing one.  Data paths that do not "
        "exist are an error unless data.simulate_if_missing is true (the smoke and CPU "
        "configs), which simulates the synthetic data data.simulate describes there.",
    ):
        add_config(p, "optim.batch_size=256")
        p.add_argument(
            "--resume",
            metavar="RUN",
            help="continue the interrupted run RUN (MLflow run id or run name; without "
            "tracking, the run name under storage_path) from its latest checkpoint",
        )
        add_dry_run(p)


def _train(args: argparse.Namespace) -> int:
    r"""Train a product's model with Ray Train, log and register it in MLflow, and score it."""
    from galray.commands.config import dry_run_training
    from galray.config import load_config
    from galray.products import get_product

    spec = get_product(args.product)
    cfg = load_config(spec.config_cls, args.config, args.overrides)
    if args.dry_run:
        return dry_run_training(spec, cfg, args.resume)
    import galray

    result = galray.train(args.product, cfg, resume=args.resume)  # the Python entry point
    print_trained(result, cfg.tracking.enabled)
    return 0
