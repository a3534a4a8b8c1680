"""What every ``galray`` command module shares: the verb's group parser, the ``--config/--set``
options, size parsing and the end-of-training summary."""

from __future__ import annotations

import argparse
import re

from galray.errors import ConfigError

# the headline numbers of each product's report, printed after training and tuning
FIDELITY_KEYS = (
    "c2st_auc",
    "ks_max",
    "detection_max_abs_diff",
    "ks_p_min",
    "median_dmag_max",
    "count_ratio",
)


def group(sub, groups: dict, name: str, help: str):
    """The ``galray NAME ...`` group parser (created once, shared by modules)."""
    if name not in groups:
        p = sub.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".")
        groups[name] = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    return groups[name]


def add_config_options(p: argparse.ArgumentParser, example: str) -> None:
    """``--config FILE`` and repeatable ``--set KEY=VALUE``."""
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config field, e.g. --set {example} (repeatable)",
    )


def parse_size(text: str, option: str = "--size") -> tuple[int, int]:
    """``N`` or ``HxW`` (also ``H,W``) -> (height, width)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[x,X*]\s*(\d+))?\s*", str(text))
    if not m:
        raise ConfigError(f"{option}: expected N or HxW pixels, got {text!r}")
    h = int(m[1])
    w = int(m[2]) if m[2] else h
    if h < 1 or w < 1:
        raise ConfigError(f"{option}: sizes must be positive, got {text!r}")
    return h, w


def fidelity_line(report: dict) -> str:
    """The report's headline numbers on one line."""
    shown = [
        f"{key}={report[key]:.3f}"
        for key in FIDELITY_KEYS
        if isinstance(report.get(key), int | float) and not isinstance(report.get(key), bool)
    ]
    return "  ".join(shown) or "see the report"


def print_training_result(result, tracking_enabled: bool) -> None:
    """Where a finished training run's model, checkpoint and report are."""
    from galray.tracking import tracking_uri

    print()
    epoch = result.metrics.get("epoch")
    print(f"training finished in {result.seconds:.0f} s" + (f" (epoch {epoch})" if epoch else ""))
    print(f"  MLflow run:     {result.run_id}")
    print(f"  model:          {result.model_uri}")
    print(f"  bundle:         {result.bundle_path}")
    if result.registered_uri:
        print(f"  registered as:  {result.registered_uri}")
    print(f"  checkpoint:     {result.checkpoint_path}")
    if result.report:
        rows = result.report.get("n_rows")
        where = f"test split, {rows:,} rows" if isinstance(rows, int) else "against the data"
        print(f"  fidelity ({where}): {fidelity_line(result.report)}")
        print(f"  report:         {result.report_dir}")
    if tracking_enabled:
        print(f"  browse runs:    mlflow ui --backend-store-uri {tracking_uri()}")
