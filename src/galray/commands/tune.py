"""``galray tune PRODUCT --config FILE [--set key=value ...]`` and ``--resume PATH``."""

from __future__ import annotations

import argparse

from galray.commands.common import add_set, fidelity_line, group, per_product
from galray.commands.config import add_dry_run


def register(sub, groups) -> None:
    tune = group(sub, groups, "tune", help="search hyperparameters with Ray Tune (ASHA)")
    for p in per_product(
        tune,
        _tune,
        help="search the hyperparameters of {summary}",
        description="Run a Ray Tune sweep of {summary}: the search space lives in the config's "
        "search: section, ASHA stops poor trials early, MLflow gets a parent run with one child "
        "run per trial, and the best model is registered.  Example:\n"
        "    galray tune {name} --config configs/tune-{name}-smoke.yaml --set tune.num_samples=4\n"
        "An interrupted sweep continues with: galray tune {name} --resume SWEEP_DIR",
    ):
        source = p.add_mutually_exclusive_group(required=True)
        source.add_argument("--config", help="sweep YAML (see configs/tune-*.yaml)")
        source.add_argument(
            "--resume", metavar="PATH", help="continue the interrupted sweep in directory PATH"
        )
        add_set(
            p,
            "override a field: train.epochs=4, tune.num_samples=8, "
            "'search.net.width={choice: [64, 128]}' (repeatable; not with --resume)",
        )
        add_dry_run(p)


def _tune(args: argparse.Namespace) -> int:
    r"""Search a product's hyperparameters with Ray Tune (ASHA) and register the best model."""
    from galray.commands.config import dry_run_sweep
    from galray.errors import ConfigError
    from galray.products import get_product
    from galray.tune.search_space import load_sweep
    from galray.tune.sweep import resume_sweep, start_sweep

    spec = get_product(args.product)
    if args.resume:
        if args.dry_run:
            raise ConfigError("--dry-run: checks a new sweep's --config, not a --resume")
        if args.overrides:
            raise ConfigError("--set: a resumed sweep keeps its config; --set is not allowed")
        result = resume_sweep(args.resume, product=spec.name)
    else:
        sweep = load_sweep(
            spec.name, spec.config_cls, args.config, args.overrides, fixed=spec.fixed
        )
        if args.dry_run:
            return dry_run_sweep(spec, sweep)
        result = start_sweep(spec, sweep)
    return print_summary(result)


def print_summary(result) -> int:
    """The trials table and where the sweep's results are; 1 if no trial left a model."""
    from galray.tune.results import format_table

    print()
    print(format_table(result))
    print()
    n_stopped = sum(t.status == "stopped early" for t in result.trials)
    print(
        f"sweep {result.name} finished in {result.seconds:.0f} s: {len(result.trials)} trials "
        f"({n_stopped} stopped early), {result.trial_epochs} trial-epochs"
    )
    print(f"  directory:      {result.path}")
    if result.parent_run_id:
        print(f"  MLflow run:     {result.parent_run_id} (one child run per trial)")
    if result.interrupted:
        print(f"  interrupted: continue with galray tune {result.product} --resume {result.path}")
        return 130
    if result.best is None:
        print("  no trial produced a checkpoint")
        return 1
    print(f"  best trial:     {result.best.trial_id}  {result.metric}={result.best.best:.4f}")
    model = result.model
    print(f"  model:          {model.get('model_uri')}")
    if model.get("registered_uri"):
        print(f"  registered as:  {model['registered_uri']}")
    report = model.get("report")
    if report:
        print(f"  fidelity:       {fidelity_line(report)}  ({model.get('report_dir')})")
    return 0
