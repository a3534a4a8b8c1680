"""The ``galray`` command line.

Each area registers its subcommands from a module in :mod:`galray.commands`; a command's handler
receives the parsed ``argparse.Namespace`` and returns an exit code.  User errors
(:class:`~galray.errors.GalrayError`) print one clear line and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from galray.errors import GalrayError

# One module per verb, each defining ``register(subparsers, groups)``; the commands' own
# imports happen inside their handlers, so ``galray --help`` is fast.
COMMAND_MODULES = (
    "galray.commands.simulate",
    "galray.commands.ingest",
    "galray.commands.train",
    "galray.commands.evaluate",
    "galray.commands.generate",
    "galray.commands.emulate",
    "galray.commands.tune",
    "galray.commands.quickstart",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="galray",
        description="Generative emulators of astronomical survey data on Ray.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(sub, groups)
    return parser


def _version() -> str:
    from galray import __version__

    return f"galray {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except GalrayError as exc:
        print(f"galray: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("galray: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
