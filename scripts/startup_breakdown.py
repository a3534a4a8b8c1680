"""Where the time before a training's first epoch goes, measured in one real run.

Runs ``galray train emulator --config CONFIG --set epochs=N`` (default: the smoke config, 3
epochs) as a user does, its output piped, with ``python -X importtime`` and ``GALRAY_TIMING=1``,
and prints for each run:

* the seconds from the command's start to its first output line and to its first epoch line;
* each start-up phase, from consecutive marks of that same run: the driver's
  (``galray.console.mark``, in the job's log file: imports, data, run directory, ``ray.init``,
  MLflow run set-up, trainer and datasets built) and rank 0's (``GALRAY_TIMING`` lines of
  ``galray.training.worker``: worker started, shard(s) read, epoch loop, first epoch's steps,
  validation, MLflow logging), plus Ray Train's controller line when Ray prints it;
* the driver's imports by top-level package (``-X importtime`` cumulative microseconds of the
  imports each package's first import did; imports inside functions count where they happen).

With ``--repeat K`` the command runs K times in one working directory (the first run simulates
the smoke survey and creates ``mlflow.db``; later runs reuse both, as a user's second run does)
and the table ends with each phase's median over the runs.  The machine's load moves the
numbers; compare medians measured in one sitting.

    python scripts/startup_breakdown.py --repeat 3 [--workdir /tmp/sb] [--set net.width=64]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOG_PATH = re.compile(r"logs: (\S+\.log)")
DRIVER_MARK = re.compile(r"^(\S+ \S+) INFO galray\.timing: (.+) at [\d.]+ s$")
WORKER_MARK = re.compile(r"\[galray\] timing: (.+) at ([\d.]+)$")
CONTROLLER_UP = re.compile(r"^(\S+ \S+) .*\(TrainController pid=\d+\) Requesting resources")
IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)$")
EPOCH = re.compile(r"^epoch \d+/\d+")

# The phase that ends at each mark (what happened since the previous mark).
PHASES = {
    "first output line": "interpreter start, CLI parse, first line",
    "training imports done": "imports (galray, Ray, MLflow, torch)",
    "data loaded": "data: prepare (simulate if missing) and load",
    "run resolved": "run directory and lock",
    "Ray started": "ray.init (local instance)",
    "MLflow run open": "MLflow: experiment, run, params, tags, input",
    "trainer built (datasets planned)": "trainer and Ray datasets built",
    "Ray Train controller up": "Ray Train controller actor start",
    "worker started": "Ray Train worker group start",
    "shard read": "dataset materialisation (train and val shards)",
    "epoch loop starts": "model build, restore, MLflow client in worker",
    "first epoch's steps done": "first epoch's training steps",
    "epoch 1 validated": "first epoch's validation",
    "epoch 1 logged to MLflow": "first MLflow log from the worker (store init)",
    "first epoch line": "checkpoint, report, line to the driver",
}


def _wall(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def run_once(cmd: list[str], workdir: Path, env: dict) -> dict:
    """One run: the seconds after its start of each mark, and the driver's import times."""
    t_wall = time.time()
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True)
    reader.start()
    marks: dict[str, float] = {}
    lines = 0
    log_file = None
    for line in proc.stdout:
        now = time.monotonic() - t0
        lines += 1
        marks.setdefault("first output line", now)
        if EPOCH.match(line):
            marks.setdefault("first epoch line", now)
        found = LOG_PATH.search(line)
        if found:
            log_file = Path(workdir, found[1])
    proc.wait()
    reader.join()
    if proc.returncode:
        sys.exit(f"the command failed ({proc.returncode}):\n" + "".join(stderr[-20:]))
    if log_file is not None and log_file.is_file():
        for line in log_file.read_text().splitlines():
            if m := DRIVER_MARK.match(line):
                marks.setdefault(m[2], _wall(m[1]) - t_wall)
            elif m := WORKER_MARK.search(line):
                marks[m[1]] = float(m[2]) - t_wall  # the last "shard read" (val) counts
            elif m := CONTROLLER_UP.match(line):
                marks.setdefault("Ray Train controller up", _wall(m[1]) - t_wall)
    end = marks.get("first epoch line", float("inf"))
    marks = {k: v for k, v in marks.items() if v <= end and not k.startswith("first epoch line (")}
    return {"marks": marks, "imports": _imports(stderr), "lines": lines}


def _imports(stderr: list[str]) -> dict[str, float]:
    """Seconds the driver spent importing each root package's own modules (``self`` time
    summed by the first part of the module name; what they import counts for its own package)."""
    by_root: dict[str, float] = {}
    for line in stderr:
        m = IMPORT_LINE.match(line.rstrip("\n"))
        if m:
            root = m[4].split(".")[0]
            by_root[root] = by_root.get(root, 0.0) + int(m[1]) / 1e6
    return by_root


def phases(marks: dict[str, float]) -> dict[str, float]:
    """Seconds of each phase: from the previous mark reached to this one (in time order)."""
    out, last = {}, 0.0
    for name, at in sorted(marks.items(), key=lambda kv: kv[1]):
        out[name] = at - last
        last = at
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "emulator-smoke.yaml"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--workdir", help="where the runs write (default: a new temporary directory)")
    ap.add_argument("--set", action="append", default=[], help="more config overrides")
    args = ap.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="galray-startup-"))
    workdir.mkdir(parents=True, exist_ok=True)
    config = str(Path(args.config).resolve())
    sets = [f"epochs={args.epochs}", *args.set]
    cmd = [sys.executable, "-X", "importtime", "-m", "galray.cli", "train", "emulator"]
    cmd += ["--config", config] + [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "GALRAY_TIMING": "1"}
    env.setdefault("RAY_AUTH_MODE", "token")
    print(f"{' '.join(cmd[3:])}  (in {workdir})")
    runs = []
    for i in range(args.repeat):
        runs.append(run_once(cmd, workdir, env))
        print(f"run {i + 1}: {runs[-1]['lines']} output lines", flush=True)
    _print_table(runs)


def _print_table(runs: list[dict]) -> None:
    per_run = [phases(r["marks"]) for r in runs]
    names = sorted({n for p in per_run for n in p}, key=lambda n: _order(n, runs))
    cols = "".join(f"{f'run {i + 1}':>8}" for i in range(len(runs)))
    print(f"\n{'phase (ends at mark)':56}{cols}{'median':>8}{'share':>7}")
    first_epoch = statistics.median(r["marks"].get("first epoch line", 0.0) for r in runs)
    for name in names:
        values = [p.get(name) for p in per_run]
        med = statistics.median(v for v in values if v is not None)
        label = f"{PHASES.get(name, name)} [{name}]"[:55]
        cells = "".join(f"{v:8.2f}" if v is not None else f"{'-':>8}" for v in values)
        share = f"{med / first_epoch:7.0%}" if first_epoch else ""
        print(f"{label:56}{cells}{med:8.2f}{share}")
    for what in ("first output line", "first epoch line"):
        values = [r["marks"].get(what, float("nan")) for r in runs]
        cells = "".join(f"{v:8.2f}" for v in values)
        print(f"{'seconds to the ' + what:56}{cells}{statistics.median(values):8.2f}")
    print("\ndriver imports by package (-X importtime: own modules' self time, s)")
    roots = sorted(
        {k for r in runs for k in r["imports"]},
        key=lambda k: -statistics.median(r["imports"].get(k, 0.0) for r in runs),
    )
    total = [sum(r["imports"].values()) for r in runs]
    for root in roots[:12]:
        values = [r["imports"].get(root, 0.0) for r in runs]
        cells = "".join(f"{v:8.2f}" for v in values)
        print(f"  {root:54}{cells}{statistics.median(values):8.2f}")
    cells = "".join(f"{v:8.2f}" for v in total)
    print(f"  {'all':54}{cells}{statistics.median(total):8.2f}")


def _order(name: str, runs: list[dict]) -> float:
    return statistics.median(r["marks"][name] for r in runs if name in r["marks"])


if __name__ == "__main__":
    main()
