"""``jobs/``: one ``ray job submit`` entrypoint for every ``galray`` command, each running exactly
that command (its ``--help`` is the command's)."""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from galray.cli import build_parser

JOBS = Path(__file__).resolve().parents[1] / "jobs"
# entrypoints kept for job definitions written before one entrypoint per command
COMPAT = {"train_sgan": ("train", "sgan"), **{v: (v,) for v in ("simulate", "ingest", "evaluate")}}


def cli_commands() -> list[tuple[str, ...]]:
    """Every leaf command of the CLI, aliases left out: ("train", "emulator"), ("emulate",)."""
    out = []
    for action in build_parser()._subparsers._group_actions:
        for verb, parser in action.choices.items():
            subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
            if not subs:
                out.append((verb,))
                continue
            seen = set()
            for what, child in subs[0].choices.items():
                if id(child) not in seen:  # an alias maps to the same parser
                    seen.add(id(child))
                    out.append((verb, what))
    return out


def job_command(path: Path) -> tuple[str, ...]:
    """The command list a job file passes to ``run``."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "run":
            return tuple(ast.literal_eval(node.args[0]))
    raise AssertionError(f"{path}: no run([...]) call")


def test_every_command_has_exactly_one_job():
    jobs = {p.stem: job_command(p) for p in JOBS.glob("*.py") if not p.name.startswith("_")}
    for stem, command in COMPAT.items():
        assert jobs.pop(stem) == command
    commands = cli_commands()
    assert ("tune", "deepfield") in commands and ("emulate",) in commands
    assert sorted(jobs.values()) == sorted(commands)
    for stem, command in jobs.items():
        assert stem == "_".join(command), f"jobs/{stem}.py runs {command}"


@pytest.mark.parametrize("name", ["train_deepfield", "tune_deepfield", "emulate", "train_sgan"])
def test_job_help_is_the_commands(name):
    command = job_command(JOBS / f"{name}.py")
    command = ("train", "deepfield") if command == ("train", "sgan") else command
    job = subprocess.run(
        [sys.executable, str(JOBS / f"{name}.py"), "--help"], capture_output=True, text=True
    )
    assert job.returncode == 0, job.stderr
    assert f"galray {' '.join(command)}" in job.stdout
