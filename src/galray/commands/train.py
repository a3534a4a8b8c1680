"""``galray train PRODUCT --config FILE [--set key=value ...]`` for every product."""

from __future__ import annotations

import argparse

from galray.commands.common import add_config_options, group, print_training_result

HELP = {
    "emulator": (
        "train the transfer-function emulator (cWGAN-GP or conditional flow, + detection model)",
        "Train the emulator on an injection catalog; logs to MLflow, registers the model and "
        "scores it on the test split.",
        "configs/emulator-flow-smoke.yaml",
        "optim.batch_size=1024",
    ),
    "deepfield": (
        "train the deep-field generator (Spatial GAN) on a multi-band FITS image",
        "Train the SGAN on random crops of a deep field; logs to MLflow, registers the generator "
        "and compares a generated field with the image by source extraction.",
        "configs/sgan-smoke.yaml",
        "optim.batch_size=64",
    ),
}
ALIASES = {"deepfield": ["sgan"]}


def register(sub, groups) -> None:
    from galray.products import PRODUCTS

    train = group(sub, groups, "train", help="train a model with Ray Train")
    for name in PRODUCTS:
        short, long, config, example = HELP[name]
        p = train.add_parser(
            name,
            aliases=ALIASES.get(name, []),
            help=short,
            description=f"{long}  Example: galray train {name} --config {config} --set epochs=5",
        )
        add_config_options(p, example)
        p.set_defaults(handler=_train, product=name)


def _train(args: argparse.Namespace) -> int:
    from galray.config import load_config
    from galray.products import get_product
    from galray.training.job import run_training

    spec = get_product(args.product)
    cfg = load_config(spec.config_cls, args.config, args.overrides)
    result = run_training(spec, cfg)
    print_training_result(result, cfg.tracking.enabled)
    return 0
