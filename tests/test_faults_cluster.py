"""Faults of the machinery around galray (issue 16's fault table): a Ray node killed in the
middle of an emulation, and the MLflow tracking server restarted in the middle of a training.

Node: a two-node ``ray.cluster_utils.Cluster`` (head and one worker node, one CPU each) runs
``galray emulate`` with two actors; when some shards are written the worker node is killed
(``Cluster.remove_node(allow_graceful=False)``: its raylet and workers SIGKILLed).  The run must
end -- finished on the head node, or failed so that ``--resume`` finishes it -- with the rows of an
uninterrupted single-node run.

Tracking server: ``mlflow server`` stopped after the first epoch's metrics reach it and
started again on the same port a few seconds later; the training finishes, every epoch's
metrics are in its run and the model is registered.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from galray.emulator.emulate import FAULT_ENV
from galray.emulator.manifest import MANIFEST
from test_emulate_faults import _rows_hash, _run, setup  # noqa: F401  (setup: a fixture)

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.cluster, pytest.mark.timeout(900)]
NODE_CHUNK = 100  # 12 shards per realization: the node dies with work left to do


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_mlflow_server(root: Path, port: int, timeout: float = 120) -> subprocess.Popen:
    """``mlflow server`` on 127.0.0.1:``port`` (sqlite store and proxied artifacts under
    ``root``, kept across restarts), returned once it answers ``/health``."""
    (root / "artifacts").mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "artifacts"),
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return server
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                stop_mlflow_server(server)
                raise RuntimeError(f"no MLflow server on port {port}") from None
            time.sleep(0.5)


def stop_mlflow_server(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (its workers included); SIGKILL if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()


# --------------------------------------------------------------------------- a node dies

NODE_SCRIPT = """
import json, os, signal, subprocess, sys, time
from pathlib import Path
import ray
from ray.cluster_utils import Cluster

model, deep, maps, out, result, chunk = sys.argv[1:7]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
record = {}
try:
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    env = dict(os.environ, RAY_ADDRESS=cluster.address)
    argv = [sys.executable, "-m", "galray.cli", "emulate", "--model", model, "--deep", deep,
            "--maps", maps, "--out", out, "--realizations", "2", "--seed", "5",
            "--chunk-rows", chunk, "--workers", "2"]
    driver = subprocess.Popen(argv, env=env, start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ray.init(address=cluster.address, log_to_driver=False)
    from ray.util.state import list_actors

    def actor_nodes():
        try:
            alive = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
        except Exception as exc:  # the state API is a convenience here, not the test
            return [f"state API: {exc}"]
        return [a.node_id for a in alive if "MapWorker" in (a.class_name or "")]

    deadline, nodes = time.time() + 300, []
    while time.time() < deadline and driver.poll() is None:
        nodes = actor_nodes()
        if len(list(Path(out).glob("part-*.parquet"))) >= 3 and worker.node_id in nodes:
            break
        time.sleep(0.2)
    record["killed_with"] = len(list(Path(out).glob("part-*.parquet")))
    record["actor_on_worker_node"] = worker.node_id in nodes
    record["driver_done_before_kill"] = driver.poll() is not None
    cluster.remove_node(worker, allow_graceful=False)  # SIGKILL: the node is gone
    t0 = time.time()
    try:
        first = driver.communicate(timeout=300)[0]
    except subprocess.TimeoutExpired:
        os.killpg(driver.pid, signal.SIGKILL)
        first = "HUNG\\n" + driver.communicate()[0]
    record |= {"rc": driver.returncode, "first": first, "after_kill_s": time.time() - t0}
    record["shards_after_first"] = len(list(Path(out).glob("part-*.parquet")))
    if driver.returncode != 0:
        resumed = subprocess.run(argv + ["--resume"], env=env, capture_output=True, text=True,
                                 timeout=300)
        record |= {"resume_rc": resumed.returncode, "resumed": resumed.stdout + resumed.stderr}
finally:
    Path(result).write_text(json.dumps(record))
    ray.shutdown()
    cluster.shutdown()
"""


@pytest.fixture(scope="module")
def node_reference(setup, tmp_path_factory, ray_session):  # noqa: F811
    """An uninterrupted single-node run with the node test's shards."""
    out = tmp_path_factory.mktemp("node-reference") / "out"
    _run(setup, out, chunk_rows=NODE_CHUNK)
    return _rows_hash(out)


def test_killed_worker_node_mid_emulation_equals_uninterrupted(
    setup,  # noqa: F811
    node_reference,
    tmp_path,
):
    """The worker node is SIGKILLed with shards done and its actor alive: Ray Data restarts the
    lost actor on the head node and retries its shard; the output equals a single-node run."""
    root, model = setup
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", FAULT_ENV)}
    env["RAY_AUTH_MODE"] = "token"
    (tmp_path / "node.py").write_text(NODE_SCRIPT)
    out, result = tmp_path / "out", tmp_path / "result.json"
    args = [model, root / "survey" / "deep", root / "survey" / "maps", out, result, NODE_CHUNK]
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "node.py"), *map(str, args)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads(result.read_text())
    assert "killed_with" in record, proc.stderr[-3000:]
    assert record["actor_on_worker_node"] and not record["driver_done_before_kill"], record
    assert 3 <= record["killed_with"] < 24, record
    assert not record["first"].startswith("HUNG"), record["first"][-3000:]
    print(
        f"node killed with {record['killed_with']}/24 shards written; the run "
        + ("finished" if record["rc"] == 0 else f"exited {record['rc']} (then --resume)")
        + f" {record['after_kill_s']:.0f} s after the kill"
    )
    if record["rc"] != 0:  # failed cleanly: --resume finishes it
        assert record["resume_rc"] == 0, record["resumed"][-3000:]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["complete"] and manifest["shards"] == 24
    assert _rows_hash(out) == node_reference


# --------------------------------------------------------------------------- the server blinks

RESTART_EPOCHS = 4


@pytest.fixture(scope="module")
def small_survey(tmp_path_factory):
    from galray.datasets.simulate import SurveyConfig, simulate_survey

    out = tmp_path_factory.mktemp("restart") / "survey"
    cfg = SurveyConfig(n_injections=20_000, n_deep=4000, nside=32, seed=4, write_fits_maps=False)
    simulate_survey(out, cfg, log=lambda *_: None)
    return out


def _restart_after_first_epoch(server, port, root, run_dir, events, stop):
    """Once the run's first epoch is checkpointed (its metrics are logged just before), stop
    the server, wait a few seconds and start it again on the same port.  ``events``: when."""
    from galray.training.runs import last_epoch

    while last_epoch(run_dir) < 1:
        if stop.wait(0.1):
            return
    stop_mlflow_server(server[0])
    events["stopped"] = time.time()
    time.sleep(5)
    server[0] = start_mlflow_server(root, port)
    events["restarted"] = time.time()


def test_tracking_server_restart_mid_training_loses_nothing(
    small_survey, tmp_path, ray_session, monkeypatch
):
    """The server goes away after the first epoch and comes back on the same port: MLflow's
    client retries (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``/``_BACKOFF_FACTOR``) carry the epoch
    logger and the driver through; every epoch is in the run and the model is registered."""
    import mlflow

    from galray.config import load_config
    from galray.emulator.config import EmulatorTrainConfig
    from galray.emulator.spec import train_emulator

    port, root = free_port(), tmp_path / "server"
    server = [start_mlflow_server(root, port)]
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    config = Path(__file__).parents[1] / "configs" / "emulator-flow-smoke.yaml"
    sets = {
        "data.survey": str(small_survey),
        "data.simulate_if_missing": "false",
        "epochs": RESTART_EPOCHS,
        "evaluate": "false",  # the report is not what this test is about
        "storage_path": str(tmp_path / "runs"),
        "tracking.experiment": "faults-restart",
        "tracking.registered_name": "faults-restart",
        "tracking.run_name": "blink",
    }
    cfg = load_config(EmulatorTrainConfig, config, [f"{k}={v}" for k, v in sets.items()])
    events: dict[str, float] = {}
    stop = threading.Event()
    watcher = threading.Thread(
        target=_restart_after_first_epoch,
        args=(server, port, root, tmp_path / "runs" / "blink", events, stop),
        daemon=True,
    )
    watcher.start()
    lines: list[str] = []
    started = time.time()
    try:
        result = train_emulator(cfg, log=lines.append)
        events["finished"] = time.time()
        stop.set()
        watcher.join(timeout=180)
        assert "restarted" in events, "the server was never restarted"
        assert events["stopped"] < events["finished"], "the server stopped after training ended"
        client = mlflow.MlflowClient(uri)
        logged = [m.timestamp / 1000 for m in client.get_metric_history(result.run_id, "epoch")]
        print(
            f"server stopped at +{events['stopped'] - started:.0f} s, answering again at "
            f"+{events['restarted'] - started:.0f} s; epochs logged at "
            f"{sorted(round(t - started) for t in logged)} s; finished at "
            f"+{events['finished'] - started:.0f} s"
        )
        assert any(t > events["stopped"] for t in logged)  # logged while the server was away
        run = client.get_run(result.run_id)
        assert run.info.status == "FINISHED"
        once = {"train/job_seconds", "train/max_param_divergence"}  # logged once by design
        per_epoch = [k for k in run.data.metrics if k.startswith(("train/", "val/"))]
        for key in ["epoch", *(k for k in per_epoch if k not in once)]:
            steps = sorted(m.step for m in client.get_metric_history(result.run_id, key))
            assert steps == list(range(1, RESTART_EPOCHS + 1)), (key, steps)
        assert result.registered_uri == "models:/faults-restart@champion"
        version = client.get_model_version_by_alias("faults-restart", "champion")
        assert version.run_id == result.run_id
    finally:
        stop.set()
        watcher.join(timeout=180)
        stop_mlflow_server(server[0])
