"""A multi-node Ray cluster and an MLflow tracking server on this one machine, for testing.

    python cluster/local.py up [--state-dir DIR] [--workers 2] [--cpus-per-worker 1]
    python cluster/local.py status [--state-dir DIR]
    python cluster/local.py down [--state-dir DIR]

``up`` starts a Ray head node (no CPUs of its own by default: job drivers and the Train controller
live there, the work goes to the workers), ``--workers`` worker "nodes" (each its own raylet with
its own resources), and ``mlflow server`` (SQLite backend store and proxied artifact store under
DIR/mlflow).  Every port is picked free at start-up, Ray's temp dir is unique, so several local
clusters (and other Ray instances) can share the machine.  The addresses go to ``DIR/state.env``
(``source`` it) and ``DIR/state.json`` (with the pid of every process started).

``down`` stops exactly what ``up`` started: each recorded process and its descendants, by pid
(checked against the recorded start time), never other Ray instances (``ray stop`` would stop
every Ray process of the machine).  The MLflow store and DIR/shared are kept.

Security: the dashboard / job server and MLflow listen on 127.0.0.1 only (the end-to-end test
checks it); Ray's token authentication stays on (``RAY_AUTH_MODE=token``; the token is Ray's own,
``~/.ray/auth_token`` unless ``RAY_AUTH_TOKEN``/``RAY_AUTH_TOKEN_PATH`` say otherwise).  Ray's
client server (on 127.0.0.1 and the node's address) and its internal gRPC ports (GCS, raylets,
object managers, workers; all interfaces) are bound by Ray itself -- it has no switch for that --
and accept only requests carrying the token.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_STATE_DIR = REPO / "cluster" / ".local"
HOST = "127.0.0.1"
STATE_JSON = "state.json"
STATE_ENV = "state.env"
NODE_ATTEMPTS = 3
MARKER = "GALRAY_LOCAL_CLUSTER"  # in the environment of every process the nodes start


# --------------------------------------------------------------------------- helpers


def _psutil():
    try:
        import psutil
    except ImportError:  # Ray vendors psutil and puts it on sys.path when imported
        importlib.import_module("ray")
        import psutil
    return psutil


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports that are free on every interface right now."""
    sockets, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("", 0))
            sockets.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in sockets:
            s.close()
    return ports


def _executable(name: str) -> str:
    """``name`` from this interpreter's environment (the venv galray lives in), else PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        sys.exit(f"local cluster: cannot find the {name!r} executable next to {sys.executable}")
    return found


def _read_state(state_dir: Path) -> dict | None:
    path = state_dir / STATE_JSON
    return json.loads(path.read_text()) if path.exists() else None


def _write_state(state_dir: Path, state: dict) -> None:
    tmp = state_dir / (STATE_JSON + ".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(state_dir / STATE_JSON)


def _forget(state_dir: Path) -> None:
    (state_dir / STATE_ENV).unlink(missing_ok=True)
    (state_dir / STATE_JSON).unlink(missing_ok=True)


def _process(record: dict):
    """The live process a state record names, or None (gone, or the pid was reused)."""
    psutil = _psutil()
    try:
        proc = psutil.Process(record["pid"])
        if abs(proc.create_time() - record["create_time"]) > 1.0:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except psutil.Error:
        return None


def _record(proc: subprocess.Popen, name: str, log: Path, **extra) -> dict:
    psutil = _psutil()
    return {
        "name": name,
        "pid": proc.pid,
        "create_time": psutil.Process(proc.pid).create_time(),
        "log": str(log),
        **extra,
    }


def _start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    """Start ``cmd`` in a session of its own (a Ctrl-C in the caller's terminal does not reach
    it), output to ``log``."""
    with open(log, "ab") as out:
        out.write(f"$ {shlex.join(cmd)}\n".encode())
        out.flush()
        return subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(REPO),
        )


def _tail(path: str | Path, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait(what: str, ready, watched: list[tuple[subprocess.Popen, Path]], timeout: float) -> None:
    """Poll ``ready()`` until true; fail early (with the end of its log) if a watched process
    exits, or after ``timeout`` seconds (with the end of the first log)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ready():
                return
        except Exception:
            pass
        for proc, log in watched:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{what}: {log.stem} exited with code {proc.returncode}; end of {log}:\n"
                    + _tail(log)
                )
        if time.monotonic() > deadline:
            log = watched[0][1]
            raise RuntimeError(
                f"{what}: not ready after {timeout:.0f} s; end of {log}:\n" + _tail(log)
            )
        time.sleep(0.5)


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200


def _alive_nodes(dashboard: str) -> int:
    from ray.util.state import list_nodes

    nodes = list_nodes(address=dashboard, filters=[("state", "=", "ALIVE")], timeout=10)
    return len(nodes)


def _child_named(pid: int, name: str, timeout: float = 30.0) -> int | None:
    """Pid of the child process ``name`` (e.g. the raylet) of ``pid``."""
    psutil = _psutil()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            for child in psutil.Process(pid).children(recursive=True):
                try:
                    if child.name() == name:
                        return child.pid
                except psutil.Error:
                    continue
        except psutil.Error:
            return None
        time.sleep(0.2)
    return None


# --------------------------------------------------------------------------- up


def _node_ports() -> dict[str, int]:
    agent_http, agent_grpc, runtime_env, metrics, node_manager, object_manager = _free_ports(6)
    return {
        "dashboard_agent_listen_port": agent_http,
        "dashboard_agent_grpc_port": agent_grpc,
        "runtime_env_agent_port": runtime_env,
        "metrics_export_port": metrics,
        "node_manager_port": node_manager,
        "object_manager_port": object_manager,
    }


def _ray_start_args(ports: dict[str, int], cpus: float, temp_dir: str) -> list[str]:
    args = [f"--{k.replace('_', '-')}={v}" for k, v in ports.items()]
    return [
        *args,
        f"--num-cpus={cpus:g}",
        "--num-gpus=0",
        # workers bind ports the OS picks: no fixed range to collide with other Ray instances
        "--min-worker-port=0",
        "--max-worker-port=0",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        "--block",
    ]


def up(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    state = _read_state(state_dir)
    if state is not None:
        alive = [p["name"] for p in state["processes"] if _process(p) is not None]
        if alive:
            sys.exit(
                f"local cluster in {state_dir} is up ({', '.join(alive)} running): run "
                f"`cluster/local.sh down --state-dir {state_dir}` first"
            )
        print(f"local cluster: clearing the stale state of a previous run in {state_dir}")
        _stop(state, quiet=True)
        _forget(state_dir)
    for sub in ("logs", "shared", "mlflow/artifacts"):
        (state_dir / sub).mkdir(parents=True, exist_ok=True)
    (state_dir / STATE_ENV).unlink(missing_ok=True)

    gcs_port, dashboard_port, client_port, mlflow_port = _free_ports(4)
    # The nodes' Ray temp dirs go under this one.  Unix sockets live there: keep the path short
    # (108-byte limit).
    temp_dir = tempfile.mkdtemp(prefix="galray-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
    dashboard = f"http://{HOST}:{dashboard_port}"
    tracking_uri = f"http://{HOST}:{mlflow_port}"
    shared = state_dir / "shared"
    state = {
        "state_dir": str(state_dir),
        "ray_temp_dir": temp_dir,
        "gcs_address": f"{HOST}:{gcs_port}",
        "dashboard": dashboard,
        "client_address": f"ray://{HOST}:{client_port}",
        "mlflow_tracking_uri": tracking_uri,
        "shared": str(shared),
        "processes": [],
    }
    _write_state(state_dir, state)

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["RAY_AUTH_MODE"] = "token"  # never "disabled": the CLI clients need the same setting
    # What every job driver and worker inherits from its raylet: the tracking server and the
    # folder every node can read and write (here, trivially, one local folder).
    node_env = env | {"MLFLOW_TRACKING_URI": tracking_uri, "GALRAY_SHARED": str(shared)}
    # A job's entrypoint (`python jobs/...`) is found on the PATH the nodes start with: make it
    # this interpreter (the environment galray is installed in), as a cluster's setup would,
    # also when `up` runs from a shell whose virtualenv is not activated
    bin_dir = str(Path(sys.executable).parent)
    node_env["PATH"] = os.pathsep.join(
        [bin_dir, *(p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir)]
    )
    # `down` means now: no 30 s drain of a throwaway node (Ray's default on SIGTERM)
    node_env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    # Ray code that looks for "the" local cluster (no address given) finds several when other
    # Ray instances run on this machine: point it at this one
    node_env["RAY_ADDRESS"] = f"{HOST}:{gcs_port}"
    node_env[MARKER] = temp_dir
    logs = state_dir / "logs"
    ray = _executable("ray")

    def launch(name: str, cmd: list[str], proc_env: dict) -> tuple[subprocess.Popen, Path]:
        log = logs / f"{name}.log"
        proc = _start(cmd, proc_env, log)
        state["processes"].append(_record(proc, name, log))
        _write_state(state_dir, state)  # recorded at once: `down` finds it even if `up` dies
        return proc, log

    def ray_node(name: str, start_args: list[str], cpus: float, ready, short: str) -> None:
        """Start a Ray node; retried because `ray start` gives a raylet 30 s to register, which a
        machine busy with other work can exceed."""
        for attempt in range(NODE_ATTEMPTS):
            # its own temp dir per node (and attempt), as on separate machines: sharing one, a
            # node's runtime-env agent deletes working-dir copies another node's job still uses
            node_temp = f"{temp_dir}/{short}{attempt}"
            cmd = [ray, "start", *start_args, *_ray_start_args(_node_ports(), cpus, node_temp)]
            proc, log = launch(name, cmd, node_env)
            try:
                _wait(name, ready, [(proc, log)], args.timeout)
                state["processes"][-1]["raylet_pid"] = _child_named(proc.pid, "raylet")
                _write_state(state_dir, state)
                return
            except RuntimeError as exc:
                if proc.poll() is None or attempt == NODE_ATTEMPTS - 1:
                    raise
                print(f"local cluster: {name} failed to start, retrying: {exc}", file=sys.stderr)
                failed = state["processes"].pop()
                leftovers = {"processes": [failed], "ray_temp_dir": node_temp}
                _stop(leftovers, grace=5, quiet=True, keep_logs=True)
                _write_state(state_dir, state)

    try:
        mlflow_cmd = [
            _executable("mlflow"),
            "server",
            "--host",
            HOST,
            "--port",
            str(mlflow_port),
            "--backend-store-uri",
            f"sqlite:///{state_dir / 'mlflow' / 'mlflow.db'}",
            "--artifacts-destination",
            str(state_dir / "mlflow" / "artifacts"),
            "--workers",
            "1",
        ]
        mlflow = launch("mlflow", mlflow_cmd, env)
        head_args = [
            "--head",
            f"--port={gcs_port}",
            f"--dashboard-host={HOST}",
            f"--dashboard-port={dashboard_port}",
            f"--ray-client-server-port={client_port}",
            "--include-dashboard=true",
        ]
        ray_node(
            "ray-head",
            head_args,
            args.head_cpus,
            lambda: _http_ok(f"{dashboard}/api/gcs_healthz") and _alive_nodes(dashboard) >= 1,
            "h",
        )
        for i in range(args.workers):
            ray_node(
                f"ray-worker-{i + 1}",
                [f"--address={HOST}:{gcs_port}"],
                args.cpus_per_worker,
                lambda n=i + 2: _alive_nodes(dashboard) >= n,
                f"w{i + 1}",
            )
        _wait("MLflow server", lambda: _http_ok(f"{tracking_uri}/health"), [mlflow], args.timeout)
    except BaseException as exc:
        print(f"local cluster: start-up failed, stopping what was started: {exc}", file=sys.stderr)
        _stop(state, quiet=True, keep_logs=True)
        _forget(state_dir)
        print(f"local cluster: Ray's logs are kept in {temp_dir}", file=sys.stderr)
        raise SystemExit(1) from None

    _write_state(state_dir, state)
    env_lines = {
        "RAY_AUTH_MODE": "token",
        # `ray job submit/status/logs` read RAY_API_SERVER_ADDRESS (RAY_ADDRESS is left alone:
        # a local `ray.init()` in this shell would try to join the cluster)
        "RAY_API_SERVER_ADDRESS": dashboard,
        "GALRAY_RAY_GCS_ADDRESS": f"{HOST}:{gcs_port}",
        "MLFLOW_TRACKING_URI": tracking_uri,
        "GALRAY_SHARED": str(shared),
        "GALRAY_LOCAL_STATE": str(state_dir),
    }
    (state_dir / STATE_ENV).write_text(
        "# written by cluster/local.py up; source it\n"
        + "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env_lines.items())
    )
    print(
        f"local Ray cluster up: head ({args.head_cpus:g} CPUs) + {args.workers} worker node(s) "
        f"({args.cpus_per_worker:g} CPUs each)"
    )
    print(f"  dashboard / jobs:  {dashboard}")
    print(f"  Ray GCS:           {HOST}:{gcs_port}")
    print(f"  MLflow:            {tracking_uri}")
    print(f"  shared folder:     {shared}")
    print(f"  logs:              {logs}  and {temp_dir}/*/session_latest/logs")
    print(f"  use it:            source {state_dir / STATE_ENV}")
    return 0


# --------------------------------------------------------------------------- down


def _tree(records: list[dict]) -> list:
    """The live processes of ``records`` and all their descendants."""
    psutil = _psutil()
    found = {}
    for record in records:
        proc = _process(record)
        if proc is None:
            continue
        found[proc.pid] = proc
        try:
            for child in proc.children(recursive=True):
                found[child.pid] = child
        except psutil.Error:
            pass
    return list(found.values())


def _marked(temp_dir: str) -> list:
    """Processes that name the cluster's unique Ray temp dir in their command line (Ray's own
    daemons) or carry it as ``GALRAY_LOCAL_CLUSTER`` in their environment (everything the nodes
    started, job drivers included): found even if orphaned before ``down`` saw the tree."""
    psutil = _psutil()
    out = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(temp_dir in part for part in proc.info["cmdline"] or ()):
                out.append(proc)
            elif proc.environ().get(MARKER) == temp_dir:
                out.append(proc)
        except psutil.Error:
            continue
    return out


def _stop(state: dict, *, grace: float = 15.0, quiet: bool = False, keep_logs: bool = False) -> int:
    """SIGTERM what ``state`` started, wait up to ``grace`` seconds, then SIGKILL whatever of
    it (descendants included) is left.  Returns the number of processes that needed SIGKILL."""
    psutil = _psutil()
    records = state["processes"]
    temp_dir = state.get("ray_temp_dir")

    def everything() -> dict:
        found = {p.pid: p for p in _tree(records)}
        if temp_dir:
            found.update({p.pid: p for p in _marked(temp_dir)})
        return found

    tree = everything()
    leaders = []
    for record in records:
        proc = _process(record)
        if proc is None:
            continue
        if not quiet:
            print(f"stopping {record['name']} (pid {proc.pid})")
        try:
            proc.send_signal(signal.SIGTERM)
            leaders.append(proc)
        except psutil.Error:
            continue
    psutil.wait_procs(leaders, timeout=grace)
    tree.update(everything())  # a second look: children started while the first ones stopped
    _, alive = psutil.wait_procs(list(tree.values()), timeout=2)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    if temp_dir and os.path.isdir(temp_dir) and not keep_logs:
        shutil.rmtree(temp_dir, ignore_errors=True)
    return len(alive)


def down(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    state = _read_state(state_dir)
    if state is None:
        print(f"local cluster: nothing to stop in {state_dir} (no {STATE_JSON})")
        return 0
    killed = _stop(state)
    _forget(state_dir)
    extra = f" ({killed} process(es) needed SIGKILL)" if killed else ""
    print(f"local cluster stopped{extra}; MLflow store and shared folder kept in {state_dir}")
    return 0


def status(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    state = _read_state(state_dir)
    if state is None:
        print(f"local cluster: not up in {state_dir}")
        return 1
    print(f"dashboard: {state['dashboard']}   MLflow: {state['mlflow_tracking_uri']}")
    up_count = 0
    for record in state["processes"]:
        alive = _process(record) is not None
        up_count += alive
        print(f"  {record['name']:<14} pid {record['pid']:<8} {'up' if alive else 'DOWN'}")
    return 0 if up_count == len(state["processes"]) else 1


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        default=os.environ.get("GALRAY_LOCAL_STATE", str(DEFAULT_STATE_DIR)),
        help="where state.env, logs, the MLflow store and the shared folder live "
        "(default: $GALRAY_LOCAL_STATE, else cluster/.local)",
    )
    parser = argparse.ArgumentParser(prog="cluster/local.sh", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("up", parents=[common], help="start the head, the worker nodes and MLflow")
    p.add_argument("--workers", type=int, default=2, help="worker nodes")
    p.add_argument(
        "--cpus-per-worker",
        type=float,
        default=2.0,
        help="logical CPUs each worker node offers (scheduling slots, not cores: 2 lets one node "
        "hold a Train worker and Ray Data's 1-CPU tasks after the other node is lost)",
    )
    p.add_argument("--head-cpus", type=float, default=0.0, help="CPUs the head node offers")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each part")
    p.set_defaults(handler=up)
    p = sub.add_parser("down", parents=[common], help="stop exactly what `up` started")
    p.set_defaults(handler=down)
    p = sub.add_parser("status", parents=[common], help="which of the started processes run")
    p.set_defaults(handler=status)
    args = parser.parse_args(argv)
    # This process asks the dashboard whether the nodes are up: with the token, like any client.
    # Set before Ray is imported (Ray reads it once).
    os.environ["RAY_AUTH_MODE"] = "token"
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
