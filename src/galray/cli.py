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
    "galray.commands.config",
)

DESCRIPTION = """\
Generative emulators of astronomical survey data on Ray: simulate or ingest survey data, train
a product's model with Ray Train (tune it with Ray Tune), track and register it in MLflow, then
evaluate it against known truth and generate or emulate data at scale."""

EPILOG = """\
examples:
    galray quickstart --out galray-quickstart
    galray train emulator --config configs/emulator-smoke.yaml --set epochs=5
    galray config show emulator --config configs/emulator-smoke.yaml
    galray train emulator --config configs/emulator-smoke.yaml --dry-run

environment:
  MLFLOW_TRACKING_URI  where runs and models are tracked (default: sqlite:///./mlflow.db)
  RAY_ADDRESS          run on this Ray cluster (default: start a local instance, loopback only)
  RAY_AUTH_MODE        token: the CLI of a token-authenticated Ray cluster (Ray 2.60)
  GALRAY_SHARED        storage every node of a cluster reads and writes ('$GALRAY_SHARED/runs'
                       in jobs/ arguments expands on the cluster)
  GALRAY_CACHE         models downloaded from a registry (default: ~/.cache/galray)

docs: README.md, docs/ (config.md: every config field; data.md: bringing your own data);
each command's own help: galray COMMAND --help"""


def build_parser() -> argparse.ArgumentParser:
    from galray.commands.common import HelpFormatter, add_group_examples

    parser = argparse.ArgumentParser(
        prog="galray", description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print Ray's and MLflow's own logs here (default: into galray-logs/, path printed)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(sub, groups)
    add_group_examples(parser)
    return parser


def _version() -> str:
    from galray import __version__

    return f"galray {__version__}"


# commands that print nothing before their result (no "starting" line, no log file)
QUICK_COMMANDS = ("config",)


def main(argv: list[str] | None = None) -> int:
    from galray import console

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command not in QUICK_COMMANDS and not getattr(args, "dry_run", False):
        console.start(_command_name(sys.argv[1:] if argv is None else argv), verbose=args.verbose)
    try:
        return int(args.handler(args) or 0)
    except GalrayError as exc:
        print(f"galray: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("galray: interrupted", file=sys.stderr)
        return 130
    finally:
        console.finish()


def _command_name(argv: list[str]) -> str:
    """The command's words (``train emulator``), for its first line and log file."""
    skip = {"-v", "--verbose"}
    words = []
    for a in argv:
        if a in skip:
            continue
        if a.startswith("-"):
            break
        words.append(a)
    return " ".join(words[:2])


if __name__ == "__main__":
    sys.exit(main())
