"""``galray quickstart [--out DIR]``: simulate, train, emulate and evaluate in a few minutes."""

from __future__ import annotations

import argparse

from galray.commands.common import command


def register(sub, groups) -> None:
    p = command(sub, "quickstart", _quickstart)
    p.add_argument("--out", default="galray-quickstart", help="where everything is written")
    p.add_argument(
        "--model",
        choices=("flow", "gan"),
        default="flow",
        help="conditional normalizing flow or cWGAN-GP",
    )
    p.add_argument("--epochs", type=int, help="training epochs (default: 12 flow, 16 gan)")


def _quickstart(args: argparse.Namespace) -> int:
    r"""Simulate a small survey, train the emulator, emulate and evaluate (~1 min on CPU).

    The survey has a known transfer function; the emulator trains on a local Ray instance and
    is logged and registered in a local MLflow store; one realization of the survey is emulated
    and scored against the simulator's own measurement of the same galaxies.  Example:
        galray quickstart --out galray-quickstart
    """
    from galray.emulator.quickstart import quickstart

    quickstart(args.out, model=args.model, epochs=args.epochs)
    return 0
