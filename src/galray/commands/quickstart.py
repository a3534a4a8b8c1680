"""``galray quickstart [--out DIR]``: simulate, train, emulate and evaluate in a few minutes."""

from __future__ import annotations

import argparse


def register(sub, groups) -> None:
    p = sub.add_parser(
        "quickstart",
        help="simulate a small survey, train the emulator, emulate and evaluate (~1 min on CPU)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default="galray-quickstart", help="where everything is written")
    p.add_argument(
        "--model",
        choices=("flow", "gan"),
        default="flow",
        help="conditional normalizing flow or cWGAN-GP",
    )
    p.add_argument("--epochs", type=int, help="training epochs (default: 12 flow, 16 gan)")
    p.set_defaults(handler=_quickstart)


def _quickstart(args: argparse.Namespace) -> int:
    from galray.emulator.quickstart import quickstart

    quickstart(args.out, model=args.model, epochs=args.epochs)
    return 0
