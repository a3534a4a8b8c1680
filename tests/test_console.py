"""The console of a galray command (galray.console): a first line before any heavy import, no
Ray for commands that do not need it, Ray's and MLflow's logs and its workers' output in a log
file (path printed) rather than on the console, ``-v`` bringing them back, no ANSI codes when
piped, and progress as occasional plain lines when piped."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from galray import console

ANSI = re.compile(r"\x1b\[")
HEAVY = ("numpy", "pyarrow", "pandas", "torch", "ray", "mlflow")


def _python(code: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter, stdout and stderr piped (not a terminal)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_COLOR_PREFIX")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{cwd}/mlflow.db"
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# Records, on stdout, the first import of each heavy module -- so the order of stdout's lines
# says whether galray's first line came before them.
IMPORT_SPY = f"""
import sys
HEAVY = {HEAVY!r}
class Spy:
    seen = set()
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in HEAVY and top not in self.seen:
            self.seen.add(top)
            print("IMPORT " + top, flush=True)
        return None
sys.meta_path.insert(0, Spy())
"""


def _run_cli(argv: list[str], cwd: Path) -> list[str]:
    code = (
        IMPORT_SPY
        + f"""
from galray.cli import main
rc = main({argv!r})
print("RC", rc)
print("RAY", "ray" in sys.modules)
"""
    )
    proc = _python(code, cwd)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_first_line_before_heavy_imports_and_no_ray_without_need(tmp_path):
    lines = _run_cli(
        [
            "simulate",
            "survey",
            "--out",
            "sim",
            "--n-injections",
            "400",
            "--n-deep",
            "200",
            "--nside",
            "8",
        ],
        tmp_path,
    )
    assert lines[0] == "galray simulate survey: starting"  # before numpy, pyarrow, ...
    assert "IMPORT numpy" in lines  # the spy works: the command did import numpy, later
    assert lines[-2:] == ["RC 0", "RAY False"]
    assert not any(
        line.startswith(("IMPORT ray", "IMPORT mlflow", "IMPORT torch")) for line in lines
    )
    assert not any(ANSI.search(line) for line in lines)
    # piped progress: plain lines, no carriage return (one shard: the line at the end)
    assert [ln.split(", ")[0] for ln in lines if ln.startswith("injections: 400/")] == [
        "injections: 400/400 row (100%)"
    ]

    maps = sorted((tmp_path / "sim" / "maps" / "fits").glob("*.fits"))
    specs = [f"{m.stem}={m}" for m in maps]
    lines = _run_cli(["ingest", "maps", *specs, "--out", "cond"], tmp_path)
    assert lines[0] == "galray ingest maps: starting"
    assert lines[-2:] == ["RC 0", "RAY False"]
    n = len(specs)
    progress = [ln.split(", ")[0] for ln in lines if ln.startswith("maps read:")]
    assert progress[-1] == f"maps read: {n}/{n} map (100%)" and len(progress) <= 5
    assert not any(ANSI.search(line) or "\r" in line for line in lines)

    lines = _run_cli(
        [
            "-v",
            "simulate",
            "survey",
            "--out",
            "sim-v",
            "--nside",
            "8",
            "--n-injections",
            "300",
            "--n-deep",
            "200",
        ],
        tmp_path,
    )
    assert lines[0] == "galray simulate survey: starting"  # -v is not part of its name
    assert lines[-2:] == ["RC 0", "RAY False"]

    lines = _run_cli(["config", "show", "emulator"], tmp_path)
    assert not lines[0].startswith("galray config")  # quick commands: just their answer
    assert lines[-2:] == ["RC 0", "RAY False"]


RAY_COMMAND = """
import logging, sys
from galray import console
console.start("demo ray", verbose={verbose})
import ray
from galray.training.ray_env import init_ray
init_ray(num_cpus=1)

@ray.remote(num_cpus=0.5)
def work():
    print("\\x1b[31mred worker line\\x1b[0m", flush=True)
    for epoch in (1, 2):
        print(f"[galray] epoch {{epoch}}/2  loss=0.5", flush=True)
    return 1

with console.epoch_progress(2):
    assert ray.get(work.remote()) == 1
    import time
    time.sleep(3.0)  # workers' output reaches the driver asynchronously
logging.getLogger("ray.data").warning("a Ray Data warning")
logging.getLogger("mlflow").warning("an MLflow warning")
print("LOG", console.log_path())
ray.shutdown()
console.finish()
"""


@pytest.mark.timeout(300)
def test_ray_logs_go_to_the_log_file_and_v_brings_them_back(tmp_path):
    proc = _python(RAY_COMMAND.format(verbose=False), tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert not ANSI.search(out)
    lines = proc.stdout.splitlines()
    assert lines[0] == "galray demo ray: starting"
    path = Path(lines[-1].removeprefix("LOG "))
    assert path.parent == tmp_path / "galray-logs"
    assert sum(str(path) in line for line in lines) == 2  # printed once (and by the test)
    # the console: galray's lines and the epochs, nothing of Ray's or MLflow's
    assert "red worker line" not in out
    assert "Started a local Ray instance" not in out
    assert "warning" not in out
    assert [line for line in lines if "epoch" in line] == [
        "epoch 1/2  loss=0.5",
        "epoch 2/2  loss=0.5",
    ]
    assert len(lines) <= 6, lines
    text = path.read_text()
    assert "Started a local Ray instance" in text
    assert "red worker line" in text
    assert "a Ray Data warning" in text and "an MLflow warning" in text
    assert not ANSI.search(text)
    assert "RAY_AUTH_MODE=disabled" not in text

    proc = _python(RAY_COMMAND.format(verbose=True), tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert "red worker line" in out  # Ray's printer is back
    assert "Started a local Ray instance" in out
    assert "a Ray Data warning" in out and "an MLflow warning" in out
    assert "LOG None" in proc.stdout  # verbose: no log file
    assert not re.search(r"\x1b\[\d+m\(", out)  # piped: Ray's prefixes without colour
    assert "RAY_AUTH_MODE=disabled" not in out


def test_plain_progress_when_piped(monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buf)
    with console.progress(200, "emulate", unit="shard") as bar:
        for _ in range(200):
            bar.update(1)
    lines = buf.getvalue().splitlines()
    assert "\r" not in buf.getvalue()
    assert 5 <= len(lines) <= 11  # every 10%, not every update
    assert lines[-1].startswith("emulate: 200/200 shard (100%)")
    assert "ETA" in lines[0]

    buf.truncate(0)
    buf.seek(0)
    with console.progress(10, "quiet", enabled=False) as bar:
        bar.update(10)
    assert buf.getvalue() == ""


def test_epoch_progress_prints_every_tenth_when_piped(monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buf)
    with console.epoch_progress(50) as bar:
        for n in range(1, 51):
            bar.epoch(n, 50, f"epoch {n}/50  loss=1")
    lines = buf.getvalue().splitlines()
    assert lines[0] == "epoch 1/50  loss=1"  # the first, without an ETA yet
    assert lines[-1] == "epoch 50/50  loss=1"
    assert len(lines) <= 12
    assert all("(ETA " in line for line in lines[1:-1])


def test_epoch_eta_is_bounded_by_the_time_budget(monkeypatch):
    """A run of 1000 epochs with a 60 s budget: the ETA is what is left of the budget, not the
    hours the 1000 epochs would take."""
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buf)
    now = [0.0]
    monkeypatch.setattr(console.time, "monotonic", lambda: now[0])
    bar = console.EpochProgress(1000, budget_s=60.0)
    for n in (1, 2):  # 40 s per epoch (a line at least every 30 s)
        now[0] = 40.0 * (n - 1)
        bar.epoch(n, 1000, f"epoch {n}/1000")
    lines = buf.getvalue().splitlines()
    assert lines[1] == "epoch 2/1000  (ETA 20 s)"  # not 998 epochs x 40 s


def test_tune_trials_progress_when_piped(monkeypatch):
    from types import SimpleNamespace

    from galray.tune.sweep import _trial_progress

    buf = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buf)
    callback = _trial_progress(3, "val_loss")
    callback.setup(total_num_samples=4)  # what Tune passes, grid searches expanded
    for i, state in enumerate(["done", "error", "done", "done"]):
        trial = SimpleNamespace(trial_id=f"t{i}", last_result={"val_loss": 0.5 + i})
        hook = callback.on_trial_error if state == "error" else callback.on_trial_complete
        hook(iteration=i, trials=[], trial=trial)
    callback.on_experiment_end(trials=[])
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("trials: 1/4 trial (25%)")
    assert "last: t1 error val_loss=1.5" in lines[1]
    assert lines[-1].startswith("trials: 4/4 trial (100%)")
    assert "last: t3 done val_loss=3.5" in lines[-1]
