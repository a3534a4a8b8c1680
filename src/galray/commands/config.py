"""``galray config show KIND [--config FILE] [--set key=value ...]``: every field of a config
with its type, default and meaning, and the values a config file resolves to; and the
``--dry-run`` of ``galray train`` and ``galray tune`` (the resolved config and the checks a run
would make first, without starting Ray or MLflow)."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from galray.commands.common import add_set, command, group


def register(sub, groups) -> None:
    from galray.products import ALIASES, PRODUCTS

    config = group(sub, groups, "config", help="show every field of galray's configs")
    p = command(config, "show", _show)
    kinds = [*PRODUCTS, *ALIASES, "emulate", "tune"]
    p.add_argument(
        "kind",
        metavar="KIND",
        choices=kinds,
        help=f"which config: {', '.join(kinds)} (sgan is deepfield)",
    )
    p.add_argument("--config", metavar="FILE", help="also show the values this YAML resolves to")
    add_set(p, "override a field, e.g. --set flow.width=128 (repeatable)")
    p.add_argument(
        "--changed", action="store_true", help="only the fields whose value is not the default"
    )
    p.add_argument(
        "--format",
        choices=("text", "yaml", "markdown"),
        default="text",
        help="text: fields with meanings; yaml: the resolved config as a YAML file; markdown: "
        "the docs/config.md table",
    )


def _show(args: argparse.Namespace) -> int:
    r"""Every field of a config: its dotted name, type, default and meaning.

    KIND is a product's training job config (galray train KIND --config FILE), emulate or tune
    (a sweep's tune: section).  With --config FILE and/or --set, also the value of each field
    as resolved -- defaults, then the file, then the overrides, validated as training would --
    with * marking the fields that differ from their default.  The same reference for every
    config is docs/config.md.  Examples:
        galray config show emulator
        galray config show emulator --config configs/emulator-smoke.yaml --changed
        galray config show deepfield --config configs/deepfield-smoke.yaml --set net.pack=4
        galray config show emulator --config configs/emulator-smoke.yaml --format yaml
    """
    import yaml

    from galray.commands.config_docs import render_markdown, render_text, resolve, resolve_kind
    from galray.config import to_dict

    kind = resolve_kind(args.kind)
    given = args.config is not None or bool(args.overrides)
    resolved = resolve(kind, args.config, args.overrides) if given else None
    if args.format == "markdown":
        sys.stdout.write(render_markdown(kind))
    elif args.format == "yaml":
        if resolved is None:
            resolved = resolve(kind, None, [])  # the defaults (a required field is named)
        data = to_dict(resolved)
        sys.stdout.write(
            yaml.safe_dump({kind.section: data} if kind.section else data, sort_keys=False)
        )
    else:
        sys.stdout.write(render_text(kind, resolved, only_changed=args.changed))
    return 0


# --------------------------------------------------------------------------------------------
# --dry-run of train and tune
# --------------------------------------------------------------------------------------------
def add_dry_run(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved config and check the data, storage and CPUs, then exit "
        "(no Ray, no MLflow)",
    )


def _local_cpus() -> int:
    """CPUs a local Ray instance would get (those this process may run on)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_run(spec, cfg, *, extra_cpus: float = 0.0) -> list[tuple[str, str]]:
    """What a run of ``spec`` with ``cfg`` would check before Ray starts, checked now without
    writing anything: ``[(status, line)]``, status ``ok``, ``would`` or ``FAIL``.

    The data as the product opens it (a missing path that the config would simulate is a
    ``would``), where ``storage_path`` would be created, and whether a local Ray instance leaves
    Ray Data a CPU (``extra_cpus``: a Tune trial's own share)."""
    from dataclasses import fields, replace

    from galray.errors import GalrayError
    from galray.training.trainer import DATA_TASK_CPUS

    out: list[tuple[str, str]] = []
    data = cfg.data
    names = {f.name for f in fields(data)}
    simulates = getattr(data, "simulate", None) is not None and (
        getattr(data, "simulate_if_missing", True)
    )
    # the run's own checks, with simulating turned off (so their hints are the run's)
    if "simulate_if_missing" in names:
        probe = replace(cfg, data=replace(data, simulate_if_missing=False))
    elif "simulate" in names:
        probe = replace(cfg, data=replace(data, simulate=None))
    else:
        probe = cfg
    try:
        spec.prepare(probe, lambda _line: None)
        handle = spec.load_data(probe)
        out.append(("ok", f"data: {spec.describe_data(handle)}"))
    except GalrayError as exc:
        text = str(exc) if str(exc).startswith("data") else f"data: {exc}"
        if simulates:
            text = re.sub(r" \(.*\)$", "", text)  # the hint is about a run that would fail
            out.append(("would", f"{text}: the run simulates data.simulate there first"))
        else:
            out.append(("FAIL", text))
    out.append(_storage_check("storage_path", cfg.storage_path))

    scaling = cfg.scaling
    taken = scaling.num_workers * scaling.cpus_per_worker + extra_cpus
    if os.environ.get("RAY_ADDRESS"):
        out.append(("ok", "scaling: a cluster at RAY_ADDRESS runs it (CPUs not checked here)"))
    else:
        total = _local_cpus()
        need = taken + (DATA_TASK_CPUS if spec.reads_data else 0.0)
        status = "ok" if need <= total else "FAIL"
        out.append(
            (
                status,
                f"scaling.cpus_per_worker: {scaling.num_workers} worker(s) x "
                f"{scaling.cpus_per_worker:g} CPUs"
                + (f" + {extra_cpus:g} for the trial" if extra_cpus else "")
                + (f" + {DATA_TASK_CPUS:g} to read the data" if spec.reads_data else "")
                + f" = {need:g} of this machine's {total} CPUs",
            )
        )
        if scaling.use_gpu:
            import torch

            gpus = torch.cuda.device_count()
            want = scaling.num_workers * scaling.gpus_per_worker
            out.append(
                (
                    "ok" if want <= gpus else "FAIL",
                    f"scaling.use_gpu: {want:g} GPU(s) wanted, {gpus} visible",
                )
            )
    return out


def _storage_check(field: str, path: str) -> tuple[str, str]:
    """Whether ``path`` exists as a writable directory or could be created."""
    target = Path(path).resolve()
    if target.exists():
        ok = target.is_dir() and os.access(target, os.W_OK)
        return ("ok" if ok else "FAIL"), f"{field}: {target} exists" + (
            "" if ok else " but is not a writable directory"
        )
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    ok = parent.is_dir() and os.access(parent, os.W_OK)
    return ("ok" if ok else "FAIL"), f"{field}: {target} will be created" + (
        "" if ok else f" ({parent} is not writable)"
    )


def report_checks(checks: list[tuple[str, str]]) -> int:
    """Print the checks (``ok``, ``would``, ``note`` or ``FAIL``); 0 if none failed, else 2 (with
    one error line)."""
    print("\nchecks:")
    for status, line in checks:
        print(f"  {status:5} {line}")
    failed = [line for status, line in checks if status == "FAIL"]
    if failed:
        print(f"galray: error: dry run: {len(failed)} check(s) failed", file=sys.stderr)
        return 2
    print("dry run: nothing started (no Ray, no MLflow)")
    return 0


def dry_run_training(spec, cfg, resume: str | None = None) -> int:
    """``galray train PRODUCT --dry-run``: the resolved config, its changes, the checks."""
    from galray.commands.config_docs import render_text, resolve_kind

    sys.stdout.write(render_text(resolve_kind(spec.name), cfg, only_changed=True))
    checks = check_run(spec, cfg)
    if resume:
        checks.append(("note", f"--resume {resume}: looked up in MLflow when training starts"))
    return report_checks(checks)


def dry_run_sweep(spec, sweep) -> int:
    """``galray tune PRODUCT --dry-run``: the sweep's settings and space, the checks."""
    from galray.commands.config_docs import render_text, resolve_kind

    settings = sweep.settings
    sys.stdout.write(render_text(resolve_kind("tune"), settings))
    print(f"\nsearch space ({len(sweep.space)} fields):")
    for dim in sweep.space:
        print(f"  {dim.path}: {dim.describe()}")
    print()
    sys.stdout.write(render_text(resolve_kind(spec.name), sweep.base, only_changed=True))
    checks = check_run(spec, sweep.base, extra_cpus=settings.trial_cpus)
    epochs = sweep.base.epochs
    if settings.scheduler == "asha" and settings.grace_period > epochs:
        checks.append(
            (
                "FAIL",
                f"tune.grace_period: must be <= train.epochs ({epochs}), got {settings.grace_period}",
            )
        )
    storage = _storage_check("tune.storage_path", settings.storage_path)
    checks.append(storage)
    if settings.name and (Path(settings.storage_path) / settings.name).exists():
        checks.append(
            (
                "FAIL",
                f"tune.name: {Path(settings.storage_path).resolve() / settings.name} exists; "
                "resume it with --resume, or choose another tune.name",
            )
        )
    return report_checks(checks)
