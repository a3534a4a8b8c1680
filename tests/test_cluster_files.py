"""The static cluster definitions: ``cluster/ray-cluster.yaml`` (``ray up``), the KubeRay manifests
in ``cluster/kuberay/`` and ``jobs/runtime_env.yaml`` parse, validate, agree with each other and
with the repository, and keep galray's security defaults (loopback or private addresses, Ray's
token authentication on, no credentials in files).  No cluster is started."""

from __future__ import annotations

import copy
import fnmatch
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "cluster"
JOBS = REPO / "jobs"
RAY_UP = CLUSTER / "ray-cluster.yaml"
KUBERAY = CLUSTER / "kuberay"
RUNTIME_ENV = JOBS / "runtime_env.yaml"
DOCKERFILE = CLUSTER / "Dockerfile"
OPEN_HOSTS = {"0.0.0.0", "::", "[::]", "*", ""}


def _tracked(root: Path, pattern: str) -> list[Path]:
    """Files under ``root`` matching ``pattern``, without runtime state (cluster/.local) or caches."""
    return sorted(
        p
        for p in root.rglob(pattern)
        if p.is_file() and not {".local", "__pycache__"} & set(p.relative_to(root).parts)
    )


YAML_FILES = [*_tracked(CLUSTER, "*.yaml"), RUNTIME_ENV]


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _one(path: Path, kind: str) -> dict:
    found = [d for d in _docs(path) if d.get("kind") == kind]
    assert len(found) == 1, f"{path.name}: expected one {kind}, found {len(found)}"
    return found[0]


def _ray_up() -> dict:
    return yaml.safe_load(RAY_UP.read_text())


def _validate_ray_up(config: dict) -> None:
    """What ``ray up`` does before it talks to the cloud: fill in the provider's defaults, then
    check against ray/autoscaler/ray-schema.json and the launcher's own rules."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def _commands(config: dict, key: str) -> list[str]:
    return [c.replace("\\\n", " ") for c in config.get(key, [])]


def _command_with(commands: list[str], needle: str) -> str:
    found = [c for c in commands if needle in c]
    assert len(found) == 1, f"expected one command running {needle!r}, found {len(found)}"
    return found[0]


def _args_after(command: str, program: str) -> list[str]:
    """The arguments of ``program`` in a shell command line (up to the next ``&&``/``;``/``&``)."""
    for line in command.splitlines():
        if program in line:
            at = line.index(program)
            rest = line[at + len(program) :]
            if line[:at].count("'") % 2:  # inside a single-quoted script (bash -c '...')
                rest = rest.split("'", 1)[0]
            tokens = shlex.split(rest, comments=True)
            stop = next((i for i, t in enumerate(tokens) if t in {"&&", ";", "&", "|"}), None)
            return tokens[:stop]
    raise AssertionError(f"{program!r} not in {command!r}")


def _flag(args: list[str], name: str) -> str | None:
    """Value of ``--name value`` or ``--name=value`` (None when absent)."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _galray_env(config: dict) -> dict[str, str]:
    """The variables the setup commands write to ~/galray.env (what every Ray node starts with)."""
    writer = _command_with(_commands(config, "setup_commands"), "> ~/galray.env")
    return dict(re.findall(r"^export (\w+)=(\S+)$", writer, flags=re.MULTILINE))


# --------------------------------------------------------------------------- every file parses


def test_the_cluster_definitions_exist():
    names = {p.relative_to(CLUSTER).as_posix() for p in YAML_FILES if CLUSTER in p.parents}
    assert {
        "ray-cluster.yaml",
        "kuberay/raycluster.yaml",
        "kuberay/rayjob.yaml",
        "kuberay/mlflow.yaml",
    } <= names


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_yaml_parses(path):
    docs = list(yaml.safe_load_all(path.read_text()))
    real = [d for d in docs if d is not None]
    assert real, f"{path} holds no YAML document"
    assert all(isinstance(d, dict) for d in real)


# --------------------------------------------------------------------------- ray up


def test_ray_up_config_validates_against_rays_schema():
    _validate_ray_up(_ray_up())


def _drop_node_config(c):
    del c["available_node_types"]["gpu"]["node_config"]


@pytest.mark.parametrize(
    "breakage",
    [
        lambda c: c.update(bogus_top_level_key=1),
        lambda c: c.update(max_workers="four"),
        lambda c: c["available_node_types"]["gpu"].update(resources={"GPU": "one"}),
        lambda c: c["available_node_types"]["gpu"].update(min_workers=1.5),
        _drop_node_config,
        lambda c: c.update(head_node_type="no-such-type"),
        lambda c: c.update(worker_start_ray_commands="ray start"),
    ],
    ids=[
        "unknown-key",
        "max-workers-string",
        "gpu-count-string",
        "min-workers-float",
        "no-node-config",
        "unknown-head-type",
        "start-not-a-list",
    ],
)
def test_a_broken_ray_up_config_fails_validation(breakage):
    import jsonschema

    config = _ray_up()
    breakage(config)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        _validate_ray_up(config)


def test_ray_up_has_an_autoscaling_gpu_worker_type_and_a_head_without_cpus_for_work():
    config = _ray_up()
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0
    gpu_types = [
        t
        for name, t in types.items()
        if name != config["head_node_type"] and t["resources"].get("GPU", 0) >= 1
    ]
    assert gpu_types, "no worker node type with a GPU"
    for node_type in gpu_types:
        assert node_type.get("min_workers", 0) == 0
        assert 1 <= node_type["max_workers"] <= config["max_workers"]


def test_ray_up_nodes_start_with_token_auth_shared_storage_and_mlflow():
    config = _ray_up()
    env = _galray_env(config)
    assert env["RAY_AUTH_MODE"] == "token"
    # GALRAY_SHARED is the mount point of the shared file system on every node
    assert env["GALRAY_SHARED"].startswith("/")
    mount = _command_with(_commands(config, "setup_commands"), "mount -t nfs4")
    assert _args_after(mount, "mount -t nfs4")[-1] == env["GALRAY_SHARED"]
    assert env["MLFLOW_TRACKING_URI"].startswith("http://")
    # the token travels to every node from the user's machine, never inside this file
    assert "~/.ray/auth_token" in config["file_mounts"]
    # each `ray start` (head and workers) runs in that environment
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = _command_with(_commands(config, key), "ray start")
        assert start.index("source ~/galray.env") < start.index("ray start"), key


def test_ray_up_head_binds_the_dashboard_to_loopback():
    config = _ray_up()
    start = _command_with(_commands(config, "head_start_ray_commands"), "ray start --head")
    assert _flag(_args_after(start, "ray start"), "--dashboard-host") == "127.0.0.1"


def test_ray_up_mlflow_server_listens_on_a_private_address_with_both_stores():
    config = _ray_up()
    env = _galray_env(config)
    command = _command_with(_commands(config, "head_start_ray_commands"), "mlflow server")
    args = _args_after(command, "bin/mlflow server")  # the invocation, not a ps check
    host = _flag(args, "--host")
    if host and host.startswith("$"):  # a variable of ~/galray.env
        host = env[host.strip("${}")]
    assert host is not None and host not in OPEN_HOSTS
    if host != "127.0.0.1":
        # the head's private address, as Ray sees it (RAY_HEAD_IP on the workers)
        writer = _command_with(_commands(config, "setup_commands"), "> ~/galray.env")
        assert "get_node_ip_address" in writer and "RAY_HEAD_IP" in writer
    # ... which every node's MLFLOW_TRACKING_URI names
    tracking = urlsplit(env["MLFLOW_TRACKING_URI"])
    assert tracking.hostname == host.lower()
    assert str(tracking.port) == _flag(args, "--port")
    assert _flag(args, "--backend-store-uri")
    assert _flag(args, "--artifacts-destination")


# --------------------------------------------------------------------------- KubeRay


def _ray_cluster() -> dict:
    return _one(KUBERAY / "raycluster.yaml", "RayCluster")


def _ray_containers(spec: dict) -> list[dict]:
    """The Ray container (the first, as KubeRay expects) of the head and of every worker group."""
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    return [g["template"]["spec"]["containers"][0] for g in groups]


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _mlflow() -> tuple[dict, dict]:
    path = KUBERAY / "mlflow.yaml"
    return _one(path, "Deployment"), _one(path, "Service")


def test_kuberay_manifests_have_the_expected_kinds():
    def kinds(name):
        return sorted((d["apiVersion"], d["kind"]) for d in _docs(KUBERAY / name))

    assert ("ray.io/v1", "RayCluster") in kinds("raycluster.yaml")
    assert kinds("rayjob.yaml") == [("ray.io/v1", "RayJob")]
    assert {("apps/v1", "Deployment"), ("v1", "Service"), ("v1", "PersistentVolumeClaim")} <= set(
        kinds("mlflow.yaml")
    )


def test_raycluster_autoscales_gpu_workers_with_token_auth():
    import ray

    cluster = _ray_cluster()
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"]["mode"] == "token"
    assert spec["rayVersion"] == ray.__version__  # the Ray galray pins
    assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    gpu_groups = []
    for group in spec["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        if int(limits.get("nvidia.com/gpu", 0)) >= 1:
            gpu_groups.append(group)
            assert group["minReplicas"] == 0
            assert group["maxReplicas"] >= 1
            assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
    assert gpu_groups, "no worker group with an nvidia.com/gpu limit"
    # KubeRay takes rayStartParams as strings only
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())


def test_ray_pods_reach_the_mlflow_service_and_mount_shared_storage():
    deployment, service = _mlflow()
    name, port = service["metadata"]["name"], service["spec"]["ports"][0]["port"]
    claims = {
        d["metadata"]["name"]: d["spec"]["accessModes"]
        for d in _docs(KUBERAY / "raycluster.yaml")
        if d["kind"] == "PersistentVolumeClaim"
    }
    spec = _ray_cluster()["spec"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group, container in zip(groups, _ray_containers(spec)):
        env = _env(container)
        uri = urlsplit(env["MLFLOW_TRACKING_URI"]["value"])
        assert uri.hostname == name or uri.hostname.startswith(
            name + "."
        )  # <name>[.<namespace>...]
        assert uri.port == port
        shared = env["GALRAY_SHARED"]["value"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in group["template"]["spec"]["volumes"]}
        claim = volumes[mounts[shared]]["persistentVolumeClaim"]["claimName"]
        assert "ReadWriteMany" in claims[claim]
        labels = group["template"]["metadata"]["labels"]
        assert labels.get("galray-mlflow-client") == "true"  # admitted by mlflow's NetworkPolicy
    # the Service leads to the Deployment's container port
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    target = service["spec"]["ports"][0]["targetPort"]
    container_ports = pod["spec"]["containers"][0]["ports"]
    assert any(target in (p["containerPort"], p.get("name")) for p in container_ports)


def test_mlflow_server_is_cluster_internal_and_has_both_stores():
    try:  # MLflow's own Host-header check (MLflow 3.5+)
        from mlflow.server.security_utils import is_allowed_host_header
    except ImportError:  # older servers have no check: still hold the config to its intent

        def is_allowed_host_header(allowed, host):
            return any(fnmatch.fnmatch(host, a) if "*" in a else host == a for a in allowed)

    deployment, service = _mlflow()
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert not service["spec"].get("externalIPs")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {k: e.get("value") for k, e in _env(container).items()}
    args = container.get("args", [])
    assert _flag(args, "--backend-store-uri") or env.get("MLFLOW_BACKEND_STORE_URI")
    assert _flag(args, "--artifacts-destination") or env.get("MLFLOW_ARTIFACTS_DESTINATION")
    # MLflow's host check admits the name the Ray pods use, and not any name at all
    allowed = [h.strip() for h in env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")]
    tracking = _env(_ray_containers(_ray_cluster()["spec"])[0])["MLFLOW_TRACKING_URI"]["value"]
    assert is_allowed_host_header(allowed, urlsplit(tracking).netloc)
    assert is_allowed_host_header(allowed, "localhost:5000")  # kubectl port-forward
    assert not is_allowed_host_header(allowed, "mlflow.attacker.example:5000")
    # the network policy admits the Ray pods' label
    policy = _one(KUBERAY / "mlflow.yaml", "NetworkPolicy")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    sources = [f["podSelector"]["matchLabels"] for f in policy["spec"]["ingress"][0]["from"]]
    assert {"galray-mlflow-client": "true"} in sources


def test_all_galray_containers_run_the_image_the_dockerfile_builds():
    import ray

    deployment, _ = _mlflow()
    images = {c["image"] for c in _ray_containers(_ray_cluster()["spec"])}
    images |= {c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]}
    assert len(images) == 1
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG RAY_VERSION=(\S+)$", text, re.MULTILINE)[1] == ray.__version__
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-\S*gpu", text, re.MULTILINE)


def _dotted(config: dict, key: str) -> bool:
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_rayjob_runs_an_existing_entrypoint_and_config_on_the_raycluster():
    job = _one(KUBERAY / "rayjob.yaml", "RayJob")["spec"]
    cluster = _ray_cluster()
    if "clusterSelector" in job:
        assert job["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
        assert not job.get("shutdownAfterJobFinishes")  # never tear down a shared cluster
    else:
        assert job["rayClusterSpec"]["authOptions"]["mode"] == "token"
        assert job["shutdownAfterJobFinishes"] is True
    entrypoint = job["entrypoint"]
    # $VARS expand on the cluster (jobs/_entry.py), not in the submitter pod's shell
    assert "$" not in re.sub(r"'[^']*'", "", entrypoint)
    tokens = shlex.split(entrypoint)
    assert tokens[0] == "python" and (REPO / tokens[1]).is_file()
    assert tokens[1].startswith("jobs/")
    config_path = REPO / _flag(tokens, "--config")
    assert config_path.is_file() and config_path.parent == REPO / "configs"
    config = yaml.safe_load(config_path.read_text())
    for i, token in enumerate(tokens):
        if token == "--set":
            assert _dotted(config, tokens[i + 1].split("=", 1)[0]), tokens[i + 1]
    # the runtime env is jobs/runtime_env.yaml's, with the image's copy of jobs/ and configs/
    runtime_env = yaml.safe_load(job["runtimeEnvYAML"])
    assert runtime_env["env_vars"] == yaml.safe_load(RUNTIME_ENV.read_text())["env_vars"]
    workdir = runtime_env["working_dir"]
    for sub in ("jobs", "configs"):
        copy_line = rf"^COPY (--\S+ )*{sub} {re.escape(workdir)}/{sub}$"
        assert re.search(copy_line, DOCKERFILE.read_text(), re.MULTILINE), sub


# --------------------------------------------------------------------------- security


_SECRET_ASSIGNMENT = re.compile(
    r"""(?ix) [\w.-]*? (password|passwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key)
    ["']? \s* [:=] \s* ["']? (?P<value>[^\s"',}\])]+)"""
)
_URI_PASSWORD = re.compile(r"://[^/\s:@'\"]+:(?P<value>[^/\s@'\"]+)@")
_KEY_MATERIAL = [
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key ids
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36}\b"),  # GitHub tokens
]


def _is_reference(value: str) -> bool:
    """A value that names where a secret lives, or prose, rather than being one: $VAR, ${VAR},
    $(VAR), a template, a <placeholder>, a path, `code`, a function call, environment variable
    names, a short word."""
    return (
        value.startswith(("$", "{{", "<", "~/", "/", "./", "`"))
        or value.endswith("(")
        or re.fullmatch(r"[A-Z][A-Z0-9_]*(/[A-Z][A-Z0-9_]*)*", value) is not None
        or len(value) < 6
    )


def _credentials_in(text: str) -> list[str]:
    found = [m.group(0) for p in _KEY_MATERIAL for m in p.finditer(text)]
    for pattern in (_SECRET_ASSIGNMENT, _URI_PASSWORD):
        found += [m.group(0) for m in pattern.finditer(text) if not _is_reference(m["value"])]
    return found


@pytest.mark.parametrize(
    "text",
    [
        "password: hunter2",
        '  "db_password": "s3cr3t"',
        "export AWS_SECRET_ACCESS_KEY=abcdEFGH1234",
        "RAY_AUTH_TOKEN=0123456789abcdef",
        "token: 'x1y2z3'",
        "backend: postgresql://mlflow:s3cr3t@db:5432/mlflow",
        "key_id: " + "AKIA" + "Q" * 16,
        "-----BEGIN RSA " + "PRIVATE KEY-----",
    ],
)
def test_the_credential_scan_finds_credentials(text):
    assert _credentials_in(text)


@pytest.mark.parametrize(
    "text",
    [
        "- name: MLFLOW_DB_PASSWORD",
        "secretKeyRef: {name: galray-mlflow-db, key: password}",
        "value: postgresql://mlflow:$(MLFLOW_DB_PASSWORD)@db:5432/mlflow",
        '"~/.ray/auth_token": "~/.ray/auth_token"',
        'export RAY_AUTH_TOKEN="$(kubectl get secret galray -o jsonpath=...)"',
        "authOptions: {mode: token}",
        "--from-literal=password=<password>",
    ],
)
def test_the_credential_scan_passes_references(text):
    assert not _credentials_in(text)


@pytest.mark.parametrize(
    "path",
    [*_tracked(CLUSTER, "*"), *_tracked(JOBS, "*")],
    ids=lambda p: p.relative_to(REPO).as_posix(),
)
def test_no_credentials_in_cluster_or_job_files(path):
    text = path.read_text()
    assert not _credentials_in(text), f"{path}: looks like a credential"
    assert not re.search(r"RAY_AUTH_MODE\W{1,3}disabled", text), f"{path}: token auth turned off"


def test_no_kubernetes_secret_values_in_the_manifests():
    for path in _tracked(CLUSTER, "*.yaml"):
        for doc in _docs(path):
            assert doc.get("kind") != "Secret", f"{path}: Secrets are created by users, not here"
    # every secret-looking env var of a container is taken from a Secret
    deployment, _ = _mlflow()
    containers = [
        *_ray_containers(_ray_cluster()["spec"]),
        *deployment["spec"]["template"]["spec"]["containers"],
    ]
    secret_like = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$", re.IGNORECASE)
    for container in containers:
        for name, entry in _env(container).items():
            if secret_like.search(name):
                assert "value" not in entry and "secretKeyRef" in entry["valueFrom"], name
            if name == "RAY_AUTH_MODE":
                assert entry.get("value") == "token"


def test_no_service_is_opened_to_the_outside_by_default():
    for path in _tracked(CLUSTER, "*.yaml"):
        for doc in _docs(path):
            if doc.get("kind") == "Service":
                assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", path
            if doc.get("kind") == "RayCluster":
                assert doc["spec"]["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
    text = RAY_UP.read_text()
    assert not re.search(r"--(dashboard-)?host[= ]+0\.0\.0\.0", text)


# --------------------------------------------------------------------------- the docs


_REPO_PATH = re.compile(r"(?<![\w/$.-])(?:cluster|jobs|configs)/[\w.-]+(?:/[\w.-]+)*")


@pytest.mark.parametrize(
    "path",
    [REPO / "README.md", RAY_UP, *_tracked(KUBERAY, "*.yaml"), DOCKERFILE, RUNTIME_ENV],
    ids=lambda p: p.relative_to(REPO).as_posix(),
)
def test_files_named_in_the_cluster_docs_exist(path):
    named = {m.rstrip(".") for m in _REPO_PATH.findall(path.read_text())}
    missing = sorted(n for n in named if ".local" not in n and not (REPO / n).exists())
    assert not missing, f"{path.name} names files that do not exist: {missing}"
