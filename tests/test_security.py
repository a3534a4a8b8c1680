"""What galray exposes and what it trusts: a local Ray instance listens on 127.0.0.1 only (its
Prometheus metrics included); tensors load with ``torch.load(weights_only=True)``; a logged model
is code plus JSON and tensors, no pickle."""

from __future__ import annotations

import ast
import contextlib
import ipaddress
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from galray.emulator.registry import log_emulator
from galray.tracking import get_or_create_experiment
from test_tracking import input_rows, tiny_emulator

SRC = Path(__file__).resolve().parent.parent / "src"


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _listening(ray) -> dict:
    """Every listening socket of the Ray instance this process runs (driver, GCS, raylet,
    dashboard, agents, workers: the processes naming its session and theirs) after a task has
    run, with the metrics export port and the node address."""
    import psutil  # Ray's dependency

    ray.get(ray.remote(lambda: 1).remote())
    node = ray._private.worker._global_node
    session = Path(node.get_session_dir_path()).name
    me = psutil.Process()
    pids = {me.pid}
    for proc in me.children(recursive=True):  # GCS, raylet, dashboard; agents and workers
        with contextlib.suppress(psutil.Error):  # under them rename themselves ray::...
            if any(session in arg for arg in proc.cmdline()):
                pids |= {proc.pid} | {p.pid for p in proc.children(recursive=True)}
    listening = [
        [c.laddr.ip, c.laddr.port, psutil.Process(c.pid).name()]
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.pid in pids
    ]
    return {"listening": listening, "metrics": node.metrics_export_port,
            "node_ip": node.node_ip_address}  # fmt: skip


def test_local_ray_listens_on_loopback_only(ray_session):
    """The session's instance, started by galray's init_ray as every local galray run starts
    one (tests/conftest.py), listens on 127.0.0.1 only."""
    found = _listening(ray_session)
    listening = found["listening"]
    assert len(listening) >= 5, listening  # GCS, raylet, dashboard, agents, worker: seen at all
    exposed = [entry for entry in listening if not _loopback(entry[0])]
    assert not exposed, f"listening beyond 127.0.0.1: {exposed}"
    assert found["node_ip"] == "127.0.0.1"
    metrics = [entry for entry in listening if entry[1] == found["metrics"]]
    assert metrics, f"metrics export port {found['metrics']} not listening: {listening}"


@pytest.mark.parametrize("where", ["loopback", "everywhere", "nowhere"])
def test_a_driver_joins_a_loopback_instance_where_it_listens(where):
    """RAY_ADDRESS=127.0.0.1:PORT is joined as a local-only node when the GCS there listens on
    loopback only (a galray instance: Ray would otherwise look for it on the routable address,
    where nothing listens -- tests/test_train_resume.py drives a training through such a join),
    and as Ray joins it when it listens everywhere too (``ray start --head``).  Other addresses
    are Ray's to resolve."""
    import socket

    from galray.training.ray_env import _loopback_only

    server = socket.socket()
    server.bind(("127.0.0.1" if where == "loopback" else "0.0.0.0", 0))
    port = server.getsockname()[1]
    if where != "nowhere":
        server.listen()
    try:
        for host in ("127.0.0.1", "localhost"):
            assert _loopback_only(f"{host}:{port}") is (where != "everywhere")
        for address in (f"10.0.0.5:{port}", "auto", f"ray://127.0.0.1:{port}", "head:6379"):
            assert not _loopback_only(address)
    finally:
        server.close()


# ---------------------------------------------------------------------- torch.load
def _torch_loads_without_weights_only(path: Path) -> list[int]:
    """Lines of ``path`` calling ``torch.load`` (or ``load`` imported from torch) without a
    literal ``weights_only=True``."""
    text = path.read_text()
    if "load" not in text:
        return []
    tree = ast.parse(text, filename=str(path))
    aliases = {"torch.load"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "torch":
            aliases |= {a.asname or a.name for a in node.names if a.name == "load"}
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        if name not in aliases:
            continue
        flag = next((k.value for k in node.keywords if k.arg == "weights_only"), None)
        if not (isinstance(flag, ast.Constant) and flag.value is True):
            bad.append(node.lineno)
    return bad


def test_every_torch_load_in_src_is_weights_only():
    found = {
        str(p.relative_to(SRC)): lines
        for p in sorted(SRC.rglob("*.py"))
        if (lines := _torch_loads_without_weights_only(p))
    }
    assert not found, f"torch.load without weights_only=True: {found}"
    assert any("torch.load" in p.read_text() for p in SRC.rglob("*.py"))  # the scan sees them


def test_weights_only_scan_catches_each_form(tmp_path):
    cases = {
        "torch.load(f)": True,
        "torch.load(f, weights_only=False)": True,
        "torch.load(f, weights_only=flag)": True,
        "torch.load(f, map_location='cpu', weights_only=True)": False,
    }
    for call, flagged in cases.items():
        path = tmp_path / "m.py"
        path.write_text(f"import torch\nx = {call}\n")
        assert bool(_torch_loads_without_weights_only(path)) == flagged, call
    path.write_text("from torch import load as tload\nx = tload(f)\n")
    assert _torch_loads_without_weights_only(path) == [2]


# ---------------------------------------------------------------------- MLflow model
@pytest.fixture
def logged_model(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    emulator = tiny_emulator(seed=2)
    bundle = emulator.save(tmp_path / "bundle")
    with mlflow.start_run(experiment_id=get_or_create_experiment("galray security")):
        ref = log_emulator(bundle, registered_name=None, alias=None)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref.model_uri))
    return emulator, ref, local


def test_logged_model_holds_no_pickle_and_loads_with_pickle_disallowed(logged_model, monkeypatch):
    emulator, ref, local = logged_model
    files = [p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()]
    pickled = [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))]
    assert not pickled, pickled
    (code,) = [(local / f).read_text() for f in files if f.endswith(".py")]  # models from code
    assert "from galray.emulator.registry import EmulatorPyfunc" in code
    assert "mlflow.models.set_model(EmulatorPyfunc())" in code
    # MLflow refuses to unpickle a model when told so; galray's model needs no unpickling
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    rows = pd.DataFrame(input_rows(n=20))
    predicted = mlflow.pyfunc.load_model(ref.model_uri).predict(rows, params={"seed": 4})
    expected = emulator.sample(rows, seed=4)
    for key, values in expected.items():
        np.testing.assert_array_equal(predicted[key].to_numpy(), values, err_msg=key)
