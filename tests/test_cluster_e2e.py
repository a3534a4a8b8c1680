"""End to end on a local multi-node cluster (``cluster/local.py``): jobs submitted with
``ray job submit``, tracked by an MLflow server over HTTP, and a training job that loses the
worker node it trains on.

One cluster for the module: a head (0 CPUs: job drivers and the Train controller), two worker
nodes and an MLflow server, all on free ports of 127.0.0.1 and a temp dir of their own, so other
Ray instances on the machine are neither used nor disturbed.  Ray is driven only through its CLI
in subprocesses (with ``RAY_AUTH_MODE=token``, as a user would); nothing here joins the cluster.
Whatever happens, ``down`` runs at the end -- and a watchdog process runs it if pytest itself dies
(pytest-timeout ends the process without running fixture teardown).

About 3-4 minutes on 2 cores: ~20 s to start, a small training job (~45 s), an emulation job
(~15 s), a training job that loses a node (~90 s: Ray needs ~30 s to declare the node dead).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
LOCAL = REPO / "cluster" / "local.py"
BIN = Path(sys.executable).parent
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}

# A small simulated survey on the cluster's shared folder, written by whichever training job runs
# first (data.simulate in configs/emulator-smoke.yaml); both jobs train on it.
N_DEEP = 10_000
SURVEY = [
    "data.survey=$GALRAY_SHARED/smoke-survey",
    "data.simulate.n_injections=60000",
    f"data.simulate.n_deep={N_DEEP}",
    "data.simulate.nside=32",
    "storage_path=$GALRAY_SHARED/runs",
    # fractional CPU shares: Train worker and Ray Data tasks must fit on one 2-CPU node
    "scaling.cpus_per_worker=0.5",
    "eval_rows=5000",
]
EPOCH_LINE = re.compile(r"\(RayTrainWorker pid=(\d+)[^)]*\)\S*\s+\[galray\] epoch (\d+)/(\d+)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")

# Runs `down` when the pytest process that started it goes away without doing so itself.
WATCHDOG = """
import os, subprocess, sys, time
parent = int(sys.argv[1])
while os.getppid() == parent:
    time.sleep(1)
subprocess.run([sys.executable, sys.argv[2], "down", "--state-dir", sys.argv[3]],
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
"""


def _psutil():
    try:
        import psutil
    except ImportError:  # Ray vendors psutil and puts it on sys.path when imported
        importlib.import_module("ray")
        import psutil
    return psutil


# --------------------------------------------------------------------------- cluster helpers


class Cluster:
    """The state ``up`` wrote, and the CLI clients pointed at it."""

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.state = json.loads((state_dir / "state.json").read_text())
        self.env_vars = {}
        for line in (state_dir / "state.env").read_text().splitlines():
            if line.startswith("export "):
                key, _, value = line[len("export ") :].partition("=")
                self.env_vars[key] = shlex.split(value)[0]
        drop = ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "RAY_API_SERVER_ADDRESS")
        self.env = {k: v for k, v in os.environ.items() if k not in drop} | self.env_vars
        self.dashboard = self.state["dashboard"]
        self.tracking_uri = self.state["mlflow_tracking_uri"]
        self.shared = Path(self.state["shared"])

    def nodes(self) -> dict[str, dict]:
        return {p["name"]: p for p in self.state["processes"] if p["name"].startswith("ray-")}

    def ray(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "ray"), *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def submit(self, submission_id: str, entrypoint: list[str]) -> None:
        out = self.ray(
            "job", "submit", "--no-wait", "--submission-id", submission_id,
            "--working-dir", str(REPO), "--runtime-env", "jobs/runtime_env.yaml",
            "--", *entrypoint,
        )  # fmt: skip
        assert out.returncode == 0, f"ray job submit failed:\n{out.stdout}\n{out.stderr}"

    def job(self, submission_id: str) -> dict:
        out = self.ray(
            "list", "jobs", "--format", "json", "--address", self.dashboard,
            "--filter", f"submission_id={submission_id}",
        )  # fmt: skip
        assert out.returncode == 0, f"ray list jobs failed:\n{out.stdout}\n{out.stderr}"
        (job,) = json.loads(out.stdout)
        return job

    def logs(self, submission_id: str) -> str:
        try:
            out = self.ray("job", "logs", submission_id, timeout=60)
        except subprocess.TimeoutExpired:
            return "(ray job logs timed out)"
        return ANSI.sub("", out.stdout + out.stderr)

    def wait(self, submission_id: str, timeout: float, every: float = 3.0) -> dict:
        t0 = time.monotonic()
        deadline = t0 + timeout
        while True:
            job = self.job(submission_id)
            if job["status"] in TERMINAL:
                print(f"{submission_id}: {job['status']} after {time.monotonic() - t0:.0f} s")
                return job
            if time.monotonic() > deadline:
                self.ray("job", "stop", submission_id)
                pytest.fail(
                    f"job {submission_id} still {job['status']} after {timeout:.0f} s; "
                    f"its logs:\n{self.logs(submission_id)}"
                )
            time.sleep(every)

    def assert_succeeded(self, submission_id: str, job: dict) -> str:
        logs = self.logs(submission_id)
        assert job["status"] == "SUCCEEDED", (
            f"job {submission_id} ended {job['status']} ({job.get('message')}); its logs:\n{logs}"
        )
        return logs

    def actors(self, job_id: str) -> dict[str, list[dict]]:
        """The live actors of a job, by class name."""
        out = self.ray(
            "list", "actors", "--format", "json", "--detail", "--address", self.dashboard,
            "--filter", "state=ALIVE", "--filter", f"job_id={job_id}",
        )  # fmt: skip
        assert out.returncode == 0, f"ray list actors failed:\n{out.stdout}\n{out.stderr}"
        by_class: dict[str, list[dict]] = {}
        for actor in json.loads(out.stdout):
            by_class.setdefault(actor["class_name"], []).append(actor)
        return by_class

    def node_of(self, pid: int) -> str | None:
        """Which node (state.json name) a Ray worker process belongs to: the node whose raylet
        is its ancestor."""
        psutil = _psutil()
        raylets = {p["raylet_pid"]: name for name, p in self.nodes().items()}
        try:
            for parent in psutil.Process(pid).parents():
                if parent.pid in raylets:
                    return raylets[parent.pid]
        except psutil.Error:
            return None
        return None


def _alive(record: dict) -> bool:
    psutil = _psutil()
    try:
        proc = psutil.Process(record["pid"])
        same = abs(proc.create_time() - record["create_time"]) <= 1.0
        return same and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _leftovers(state: dict) -> list[str]:
    """Processes ``up`` started (recorded pids, raylets) or that carry the cluster's unique temp
    dir in their command line, still running."""
    psutil = _psutil()
    left = [f"{p['name']} (pid {p['pid']})" for p in state["processes"] if _alive(p)]
    for p in state["processes"]:
        pid = p.get("raylet_pid")
        if pid and psutil.pid_exists(pid):
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    left.append(f"raylet of {p['name']} (pid {pid})")
            except psutil.Error:
                pass
    temp_dir = state["ray_temp_dir"]
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(temp_dir in part for part in proc.info["cmdline"] or ()):
                if proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{' '.join(proc.info['cmdline'])[:120]} (pid {proc.pid})")
        except psutil.Error:
            continue
    return left


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state_dir = tmp_path_factory.mktemp("local-cluster")
    local = [sys.executable, str(LOCAL)]
    watchdog = subprocess.Popen(
        [sys.executable, "-c", WATCHDOG, str(os.getpid()), str(LOCAL), str(state_dir)],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
    )
    state = None
    try:
        up = subprocess.run(
            [*local, "up", "--state-dir", str(state_dir), "--workers", "2"],
            capture_output=True,
            text=True,
            timeout=420,
        )
        if (state_dir / "state.json").exists():
            state = json.loads((state_dir / "state.json").read_text())
        assert up.returncode == 0, f"local cluster up failed:\n{up.stdout}\n{up.stderr}"
        c = Cluster(state_dir)
        state = c.state
        assert set(c.nodes()) == {"ray-head", "ray-worker-1", "ray-worker-2"}
        assert all(p.get("raylet_pid") for p in c.nodes().values()), state
        yield c
    finally:
        down = subprocess.run(
            [*local, "down", "--state-dir", str(state_dir)],
            capture_output=True,
            text=True,
            timeout=180,
        )
        watchdog.kill()
        watchdog.wait()
        assert down.returncode == 0, f"local cluster down failed:\n{down.stdout}\n{down.stderr}"
        if state is not None:
            # `down` stops exactly what `up` started: none of it is left (a second look after a
            # moment: a process that was exiting may still show)
            left = _leftovers(state)
            deadline = time.monotonic() + 10
            while left and time.monotonic() < deadline:
                time.sleep(0.5)
                left = _leftovers(state)
            assert not left, f"still running after down: {left}"
            assert not Path(state["ray_temp_dir"]).exists()


def _non_loopback_ipv4() -> list[str]:
    psutil = _psutil()
    return [
        a.address
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family == socket.AF_INET and not a.address.startswith("127.")
    ]


def _mlflow_client(c: Cluster):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=c.tracking_uri, registry_uri=c.tracking_uri)


LOG_FILE = re.compile(r"Ray's and MLflow's logs: (\S+\.log)")


def _epoch_lines(logs: str) -> list[tuple[int, int, int]]:
    """``(worker pid, epoch, epochs)`` of each ``[galray] epoch k/N`` line, in order, without the
    duplicates Ray's log forwarding adds.  The console shows epochs without the worker's pid;
    the driver's log file (its path is in the job's output) keeps Ray's prefixed lines."""
    text = logs
    for m in LOG_FILE.finditer(logs):
        if Path(m.group(1)).is_file():
            text += "\n" + Path(m.group(1)).read_text()
    out = []
    for m in EPOCH_LINE.finditer(text):
        entry = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
        if entry not in out:
            out.append(entry)
    return out


def _checkpoint_epoch(run_dir: Path) -> int:
    """The highest epoch of a checkpoint written under ``run_dir`` so far (0: none)."""
    best = 0
    for progress in run_dir.glob("checkpoint_*/progress.json"):
        try:
            best = max(best, int(json.loads(progress.read_text())["epoch"]))
        except (OSError, ValueError, KeyError):
            continue  # being written or deleted right now
    return best


# --------------------------------------------------------------------------- tests


def test_dashboard_and_mlflow_listen_on_loopback_only(cluster):
    psutil = _psutil()
    recorded = {p["name"]: p for p in cluster.state["processes"]}
    ours = {
        "ray-head": {recorded["ray-head"]["pid"]},
        "mlflow": {recorded["mlflow"]["pid"]},
    }
    for name, pids in ours.items():
        proc = psutil.Process(recorded[name]["pid"])
        pids.update(child.pid for child in proc.children(recursive=True))
    for what, url, owner in [
        ("dashboard / job server", cluster.dashboard, "ray-head"),
        ("MLflow", cluster.tracking_uri, "mlflow"),
    ]:
        port = int(url.rsplit(":", 1)[1])
        assert url.startswith("http://127.0.0.1:")
        listening = [
            conn
            for conn in psutil.net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port
        ]
        assert listening, f"nothing listens on the {what} port {port}"
        assert all(conn.pid in ours[owner] for conn in listening if conn.pid), listening
        assert {conn.laddr.ip for conn in listening} == {"127.0.0.1"}, listening
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        for ip in _non_loopback_ipv4():
            with pytest.raises(OSError), socket.create_connection((ip, port), timeout=5):
                pass


def test_train_register_and_emulate_through_ray_jobs(cluster):
    """``ray job submit`` a smoke training, find its run and registered model in MLflow over
    HTTP, then ``ray job submit`` an emulation with that model URI and read its shards."""
    name, epochs = "e2e-smoke", 3
    train_id = f"e2e-train-{uuid.uuid4().hex[:8]}"
    sets = [*SURVEY, f"epochs={epochs}", f"tracking.registered_name={name}"]
    sets += [f"tracking.run_name={name}", "tracking.alias=champion"]
    entry = ["python", "jobs/train_emulator.py", "--config", "configs/emulator-smoke.yaml"]
    cluster.submit(train_id, [*entry, *(arg for s in sets for arg in ("--set", s))])
    job = cluster.wait(train_id, timeout=240)
    logs = cluster.assert_succeeded(train_id, job)
    run_match = re.search(r"MLflow run ([0-9a-f]{32})", logs)
    assert run_match, logs
    assert f"registered as:  models:/{name}@champion" in logs, logs
    assert [e for _, e, _ in _epoch_lines(logs)] == list(range(1, epochs + 1)), logs

    client = _mlflow_client(cluster)
    run = client.get_run(run_match.group(1))
    assert run.info.status == "FINISHED", logs
    assert run.info.run_name == name
    assert run.data.params["epochs"] == str(epochs)
    assert "test/c2st_auc" in run.data.metrics  # the fidelity report on the test split
    for metric in ("epoch", "val/ks_max", "train/wasserstein"):
        history = client.get_metric_history(run.info.run_id, metric)
        assert sorted(m.step for m in history) == list(range(1, epochs + 1)), (metric, history)
    version = client.get_model_version_by_alias(name, "champion")
    assert version.run_id == run.info.run_id
    assert version.status == "READY"

    emulate_id = f"e2e-emulate-{uuid.uuid4().hex[:8]}"
    cluster.submit(
        emulate_id,
        [
            "python", "jobs/emulate.py", "--model", f"models:/{name}@champion",
            "--deep", "$GALRAY_SHARED/smoke-survey/deep",
            "--maps", "$GALRAY_SHARED/smoke-survey/maps",
            "--out", "$GALRAY_SHARED/emulated", "--realizations", "2", "--seed", "1",
        ],
    )  # fmt: skip
    job = cluster.wait(emulate_id, timeout=180)
    logs = cluster.assert_succeeded(emulate_id, job)
    out = cluster.shared / "emulated"
    n_deep = pq.read_table(cluster.shared / "smoke-survey" / "deep").num_rows
    assert n_deep == N_DEEP
    table = pq.read_table(out)
    assert table.num_rows == 2 * n_deep, logs
    assert set(table.column_names) >= {
        "id", "deep_id", "realization", "ra", "dec", "pixel", "true_size", "detected",
        *(f"{q}_{b}" for q in ("true_mag", "psf_fwhm", "depth", "obs_flux", "obs_mag") for b in "riz"),
    }  # fmt: skip
    frame = table.select(["id", "deep_id", "realization", "detected"]).to_pandas()
    assert not frame.duplicated(["id", "realization"]).any()
    assert sorted(frame.realization.unique()) == [0, 1]
    deep_ids = set(pq.read_table(cluster.shared / "smoke-survey" / "deep", columns=["id"])["id"])
    for _, part in frame.groupby("realization"):  # each deep galaxy placed once per realization
        assert len(part) == n_deep and set(part.deep_id) == {i.as_py() for i in deep_ids}
    assert 0.01 < frame.detected.mean() < 0.99
    manifest = json.loads((out / "_emulation.json").read_text())
    assert manifest["complete"], manifest


@pytest.mark.cluster  # ~2 min; a worker's death on one node is in test_emulator_train
def test_training_survives_losing_its_worker_node(cluster):
    """SIGKILL the raylet of the worker node the Train worker runs on, mid-training: the job
    still succeeds, the worker group restarts on the other node from a checkpoint (no epoch
    trained from scratch), and the model is registered."""
    psutil = _psutil()
    name, epochs = "e2e-fault", 20
    submission_id = f"e2e-fault-{uuid.uuid4().hex[:8]}"
    sets = [*SURVEY, f"epochs={epochs}", "max_failures=2", "evaluate=false"]
    sets += [f"tracking.registered_name={name}", f"tracking.run_name={name}"]
    entry = ["python", "jobs/train_emulator.py", "--config", "configs/emulator-smoke.yaml"]
    cluster.submit(submission_id, [*entry, *(arg for s in sets for arg in ("--set", s))])
    run_dir = cluster.shared / "runs" / name

    def fail(why: str) -> None:
        cluster.ray("job", "stop", submission_id)
        pytest.fail(f"{why}; the job's logs:\n{cluster.logs(submission_id)}")

    # 1. the first checkpoint: the worker group is up; find where its parts run
    deadline, last_status = time.monotonic() + 200, 0.0
    while _checkpoint_epoch(run_dir) < 1:
        if time.monotonic() - last_status > 5:
            last_status = time.monotonic()
            if (job := cluster.job(submission_id))["status"] in TERMINAL:
                fail(f"job ended {job['status']} before its first checkpoint")
        if time.monotonic() > deadline:
            fail("no checkpoint after 200 s")
        time.sleep(0.2)
    job = cluster.job(submission_id)
    job_id, driver_pid = job["job_id"], int(job["driver_info"]["pid"])
    actors = cluster.actors(job_id)
    (worker,) = actors["RayTrainWorker"]
    (controller,) = actors["TrainController"]
    victim = cluster.node_of(worker["pid"])
    assert victim in ("ray-worker-1", "ray-worker-2"), (victim, worker)
    # the driver and the Train controller live on the head (0 CPUs): losing a worker node
    # leaves them running, and the job can recover
    assert cluster.node_of(controller["pid"]) == "ray-head", controller
    assert cluster.node_of(driver_pid) == "ray-head"

    # 2. a checkpoint of epoch >= 2 exists: even resuming one checkpoint early (as Ray Train may
    # after a node loss) skips epoch 1.  Kill the node's raylet.
    while (done := _checkpoint_epoch(run_dir)) < 2:
        if time.monotonic() > deadline:
            fail("no second checkpoint after 200 s")
        time.sleep(0.1)
    raylet = psutil.Process(cluster.nodes()[victim]["raylet_pid"])
    assert raylet.name() == "raylet"
    raylet.send_signal(signal.SIGKILL)
    raylet.wait(timeout=10)
    assert done < epochs, "training finished before the kill: give it more epochs"
    time.sleep(1.0)  # the node's workers exit once their raylet is gone
    written = _checkpoint_epoch(run_dir)  # the last checkpoint the lost worker wrote

    # 3. the job recovers: a new worker group on the surviving node, then success
    survivor = ({"ray-worker-1", "ray-worker-2"} - {victim}).pop()
    restarted_on, deadline = None, time.monotonic() + 240
    while (job := cluster.job(submission_id))["status"] not in TERMINAL:
        if restarted_on is None:
            try:
                for actor in cluster.actors(job_id).get("RayTrainWorker", []):
                    if actor["pid"] != worker["pid"]:
                        restarted_on = cluster.node_of(actor["pid"]) or "?"
            except (AssertionError, ValueError, subprocess.TimeoutExpired):
                pass  # the state API may be busy with the lost node
        if time.monotonic() > deadline:
            fail("job not finished 240 s after the kill")
        time.sleep(3)
    logs = cluster.assert_succeeded(submission_id, job)
    assert restarted_on in (None, survivor), (restarted_on, survivor)

    lines = _epoch_lines(logs)
    print(f"killed {victim} after epoch {written}; restarted on {restarted_on}; epochs: {lines}")
    pids = list(dict.fromkeys(pid for pid, _, _ in lines))
    assert len(pids) == 2 and pids[0] == worker["pid"], f"{lines}\n{logs}"
    before = [e for pid, e, _ in lines if pid == pids[0]]
    after = [e for pid, e, _ in lines if pid == pids[1]]
    # (the lost node's last lines may never reach the driver: its log monitor died with it)
    assert before == list(range(1, len(before) + 1)), f"{lines}\n{logs}"
    # resumed from a checkpoint, not from scratch, and went on to the end
    assert 2 <= after[0] <= max(written, before[-1]) + 1, f"{lines}\n{logs}"
    assert after == list(range(after[0], epochs + 1)), f"{lines}\n{logs}"

    client = _mlflow_client(cluster)
    version = client.get_model_version_by_alias(name, "champion")
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == name
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "epoch")]
    assert set(steps) == set(range(1, epochs + 1)), steps
    assert steps.count(1) == 1, steps  # epoch 1 was trained once
    assert f"registered as:  models:/{name}@champion" in logs
