"""``galray train PRODUCT --config FILE [--set key=value ...]`` for every product."""

from __future__ import annotations

import argparse

from galray.commands.common import add_config, group, per_product, print_trained


def register(sub, groups) -> None:
    train = group(sub, groups, "train", help="train a model with Ray Train")
    for p in per_product(
        train,
        _train,
        help="train {summary}",
        description="Train {summary}.\n\n{about}  Example:\n"
        "    galray train {name} --config configs/{name}-smoke.yaml --set epochs=5",
    ):
        add_config(p, "optim.batch_size=256")


def _train(args: argparse.Namespace) -> int:
    r"""Train a product's model with Ray Train, log and register it in MLflow, and score it."""
    from galray.config import load_config
    from galray.products import get_product
    from galray.training.job import run_training

    spec = get_product(args.product)
    cfg = load_config(spec.config_cls, args.config, args.overrides)
    result = run_training(spec, cfg)
    print_trained(result, cfg.tracking.enabled)
    return 0
