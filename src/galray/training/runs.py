"""The life of one training run on the driver: which run it is (new, or an interrupted one
continued with ``--resume``), its directory and lock, its MLflow run, and how it ends.

A run lives in ``<storage_path>/<name>/`` (``name``: ``tracking.run_name``, else
``<bundle_dir>-<first 8 characters of the run id>``, which is also its MLflow run name), beside
Ray Train's checkpoints, the bundle and the report::

    galray-train.json   product, name, run id, tracking URI, status and the config last started
    .driver.lock        locked (flock) by the driver while it runs: a live run from a dead one

Resume (:func:`resolve` with ``resume``): the run is an MLflow run id or name in
``tracking.experiment`` (without tracking: a run name under ``storage_path``).  Refused, before
Ray starts, with one line: a run whose driver still holds the lock, a run that finished, and a
config whose network shape (the product's ``shape_fields``) differs from the run's.  Ray Train
then resumes the worker group from the latest checkpoint in that directory and the MLflow run is
reopened, so per-epoch metrics continue at the next epoch.

Ending (:func:`driver_run`): SIGTERM is turned into ``KeyboardInterrupt``; an interrupted run is
ended KILLED, one that raised FAILED, one that returned FINISHED -- in MLflow and in
``galray-train.json`` -- never left RUNNING.  A driver killed outright (SIGKILL, a lost node)
leaves its run RUNNING; ``--resume`` (or a new run of that name) finds its lock free and says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from galray.config import to_dict
from galray.errors import ConfigError, OutputExistsError
from galray.training.config import TrainJobConfig

STATE_FILE = "galray-train.json"
LOCK_FILE = ".driver.lock"
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train's record of its checkpoints
TAG_RUN_DIR = "galray.run_dir"
TAG_PRODUCT = "galray.product"
TAG_RESUME_CHANGES = "galray.resume_changes"


@dataclass
class RunTarget:
    """What :func:`resolve` decided: a new run (``run_id`` None) or the run to continue."""

    name: str | None
    directory: Path | None
    run_id: str | None = None
    status: str | None = None
    recorded: dict[str, str] | None = None  # the run's config, flattened (resume only)
    stale: list[str] = field(default_factory=list)  # MLflow runs left RUNNING under that name


@dataclass
class DriverRun:
    """The run being trained: its name and directory, MLflow run (``tracked``) and id."""

    name: str
    directory: Path
    run_id: str
    tracked: bool
    resumed: bool
    mlflow_info: dict


def flat_config(cfg: TrainJobConfig | dict) -> dict[str, str]:
    """The config as ``{"net.width": "128"}`` (as its MLflow params and ``galray-train.json``
    hold it)."""
    from galray.tracking import flatten_params

    return flatten_params(cfg if isinstance(cfg, dict) else to_dict(cfg))


def shape_differences(fields, recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    """``"key old -> new"`` for every field under one of ``fields`` (dotted prefixes) whose
    value differs between two flattened configs."""

    def shaped(key: str) -> bool:
        return any(key == f or key.startswith(f + ".") for f in fields)

    keys = sorted(k for k in recorded.keys() | current.keys() if shaped(k))
    return [
        f"{k} {recorded.get(k, '(unset)')} -> {current.get(k, '(unset)')}"
        for k in keys
        if recorded.get(k) != current.get(k)
    ]


# ----------------------------------------------------------------------------- the directory


def read_state(directory: Path) -> dict | None:
    path = directory / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _write_state(directory: Path, state: dict) -> None:
    tmp = directory / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(directory / STATE_FILE)


def lock_holder(directory: Path) -> str | None:
    """Who holds the run's driver lock (``pid N on HOST``), or None if nobody does."""
    path = directory / LOCK_FILE
    if not path.is_file():
        return None
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return f.read().strip() or "another process"
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


def _acquire_lock(directory: Path):
    f = open(directory / LOCK_FILE, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise ConfigError(
            f"tracking.run_name: run {directory.name} is being trained now ({holder})"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}")
    f.flush()
    return f


def last_epoch(directory: Path) -> int:
    """The epoch of the run's latest checkpoint (0: none yet)."""
    path = directory / SNAPSHOT_FILE
    if not path.is_file():
        return 0
    latest = json.loads(path.read_text()).get("latest_checkpoint_result") or {}
    return int((latest.get("metrics") or {}).get("epoch", 0))


def _has_run(directory: Path) -> bool:
    return (directory / STATE_FILE).is_file() or (directory / SNAPSHOT_FILE).is_file()


# ----------------------------------------------------------------------------- resolve


def resolve(spec, cfg: TrainJobConfig, storage: Path, resume: str | None, log) -> RunTarget:
    """Which run ``cfg`` trains: a new one, or (``resume``: a run id or name) the interrupted
    run to continue.  Reads only; every refusal is a one-line :class:`ConfigError` (or
    :class:`OutputExistsError`) raised before Ray starts."""
    if resume is None:
        return _new_target(cfg, storage)
    if cfg.tracking.enabled:
        target = _tracked_target(cfg, storage, resume)
    else:
        directory = storage / resume
        state = read_state(directory)
        if state is None:
            raise ConfigError(
                f"--resume: no run {resume!r} under {storage} (no {STATE_FILE}; without "
                "tracking, --resume takes the run name)"
            )
        target = RunTarget(resume, directory, state["run_id"], state.get("status"))
    state = read_state(target.directory)
    if state is not None:
        if state.get("product") not in (None, spec.name):
            raise ConfigError(
                f"--resume: run {target.name} trained {state['product']}, not {spec.name}"
            )
        target.recorded = flat_config(state["config"])
        target.status = target.status or state.get("status")
    holder = lock_holder(target.directory)
    if holder is not None:
        raise ConfigError(f"--resume: run {target.name} is being trained now ({holder})")
    if target.status == "FINISHED":
        raise ConfigError(
            f"--resume: run {target.name} finished; nothing to resume (start a new run)"
        )
    if target.recorded is not None:
        diff = shape_differences(spec.shape_fields, target.recorded, flat_config(cfg))
        if diff:
            raise ConfigError(
                f"--resume: the config does not match run {target.name}'s checkpoints: "
                f"{'; '.join(diff)} (the networks' shape must stay; start a new run instead)"
            )
    epoch = last_epoch(target.directory)
    left = " (left RUNNING by a driver that is gone)" if target.status == "RUNNING" else ""
    where = f"after epoch {epoch}" if epoch else "from epoch 1 (no checkpoint yet)"
    log(f"resuming run {target.name}{left}, {where}: {target.directory}")
    return target


def _new_target(cfg: TrainJobConfig, storage: Path) -> RunTarget:
    name = cfg.tracking.run_name
    if not name:
        return RunTarget(None, None)
    directory = storage / name
    target = RunTarget(name, directory)
    if cfg.tracking.enabled:
        target.stale = [r.info.run_id for r in _runs_named(cfg.tracking.experiment, name)]
    if _has_run(directory):
        holder = lock_holder(directory)
        status = (read_state(directory) or {}).get("status")
        if holder is not None:
            how = f"is being trained now ({holder}); choose another tracking.run_name"
        elif status == "FINISHED":
            how = "finished; choose another tracking.run_name"
        else:
            gone = " (left RUNNING by a driver that is gone)" if status == "RUNNING" else ""
            how = (
                f"was interrupted{gone}; continue it with --resume {name}, or choose another "
                "tracking.run_name"
            )
        raise OutputExistsError(f"tracking.run_name: run {name} in {directory} {how}")
    for run_id in target.stale:
        other = _tags_run_dir(run_id)
        if other is not None and lock_holder(other) is not None:
            raise OutputExistsError(
                f"tracking.run_name: run {name} is being trained now ({lock_holder(other)})"
            )
    return target


def _client():
    from mlflow.tracking import MlflowClient

    from galray.tracking import configure_tracking

    return MlflowClient(configure_tracking())


def _runs_named(experiment: str, name: str, status: str = "RUNNING") -> list:
    client = _client()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    quoted = name.replace("'", "\\'")
    where = f"attributes.run_name = '{quoted}'"
    if status:
        where += f" and attributes.status = '{status}'"
    return client.search_runs([exp.experiment_id], filter_string=where, max_results=50)


def _tags_run_dir(run_id: str) -> Path | None:
    value = _client().get_run(run_id).data.tags.get(TAG_RUN_DIR)
    return Path(value) if value else None


def _tracked_target(cfg: TrainJobConfig, storage: Path, resume: str) -> RunTarget:
    from mlflow.exceptions import MlflowException

    client = _client()
    run = None
    with contextlib.suppress(MlflowException):
        run = client.get_run(resume)
    if run is None:
        named = _runs_named(cfg.tracking.experiment, resume, status="")
        if not named:
            raise ConfigError(
                f"--resume: no MLflow run with id or name {resume!r} in experiment "
                f"{cfg.tracking.experiment!r} ({client.tracking_uri})"
            )
        named = [r for r in named if TAG_RUN_DIR in r.data.tags] or named
        if len(named) > 1:
            ids = ", ".join(r.info.run_id for r in named[:5])
            raise ConfigError(
                f"--resume: {len(named)} runs are named {resume!r} ({ids}); give the run id"
            )
        run = named[0]
    tags = run.data.tags
    if TAG_RUN_DIR not in tags and not _has_run(storage / run.info.run_name):
        raise ConfigError(
            f"--resume: MLflow run {run.info.run_id} was not started by galray train "
            f"(no {TAG_RUN_DIR} tag, no {storage / run.info.run_name})"
        )
    directory = Path(tags.get(TAG_RUN_DIR) or storage / run.info.run_name)
    target = RunTarget(run.info.run_name, directory, run.info.run_id, run.info.status)
    if read_state(directory) is None:  # a run from before galray-train.json: its params
        target.recorded = dict(run.data.params) or None
    return target


# ----------------------------------------------------------------------------- the run


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def driver_run(spec, cfg: TrainJobConfig, target: RunTarget, storage: Path, log) -> Iterator:
    """Open (or reopen) the run ``target`` names and yield its :class:`DriverRun`; end it
    FINISHED, KILLED (interrupted: SIGINT, SIGTERM) or FAILED (an exception), in MLflow and in
    its directory, and release its lock."""
    resumed = target.run_id is not None
    lock = None
    if target.directory is not None:  # named: lock before touching MLflow
        target.directory.mkdir(parents=True, exist_ok=True)
        lock = _acquire_lock(target.directory)
    tracked, mlflow_info, uri = cfg.tracking.enabled, {}, None
    try:
        if tracked:
            import mlflow

            from galray import tracking

            uri = tracking.configure_tracking()
            if resumed:
                run = mlflow.start_run(run_id=target.run_id)
            else:
                experiment_id = tracking.get_or_create_experiment(cfg.tracking.experiment)
                run = mlflow.start_run(experiment_id=experiment_id, run_name=target.name)
            run_id = run.info.run_id
            mlflow_info = {"tracking_uri": uri, "run_id": run_id}
        else:
            run_id = target.run_id or uuid.uuid4().hex
        name = target.name or f"{spec.bundle_dir}-{run_id[:8]}"
        directory = target.directory or storage / name
        if lock is None:
            directory.mkdir(parents=True, exist_ok=True)
            lock = _acquire_lock(directory)
    except BaseException:
        if lock is not None:
            lock.close()
        if tracked and mlflow.active_run() is not None:
            mlflow.end_run("FAILED" if not resumed else target.status or "FAILED")
        raise
    state = {
        "product": spec.name,
        "name": name,
        "run_id": run_id,
        "tracking_uri": uri,
        "status": "RUNNING",
        "config": to_dict(cfg),
    }
    status = "FAILED"
    restore = None
    try:
        _write_state(directory, state)
        if tracked:
            mlflow.set_tags({TAG_RUN_DIR: str(directory), TAG_PRODUCT: spec.name})
            mlflow.set_tag("mlflow.runName", name)
            _log_config(spec, cfg, target, log)
            for stale in target.stale:
                mlflow.MlflowClient(uri).set_terminated(stale, "KILLED")
                log(f"MLflow run {stale} ({name}) was left RUNNING by a dead driver: ended KILLED")
        if threading.current_thread() is threading.main_thread():
            restore = signal.signal(signal.SIGTERM, _interrupt)
        yield DriverRun(name, directory, run_id, tracked, resumed, mlflow_info)
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit):
        # SystemExit: Ray Train's own SIGINT handler exits after aborting the workers
        status = "KILLED"
        raise KeyboardInterrupt from None
    finally:
        if restore is not None:
            signal.signal(signal.SIGTERM, restore)
        if status != "FINISHED":
            how = "interrupted" if status == "KILLED" else "failed"
            log(
                f"training {how}; continue it with: galray train {spec.name} --config ... "
                f"--resume {name}"
            )
        _end(directory, state, status, tracked, log)
        lock.close()


def _end(directory: Path, state: dict, status: str, tracked: bool, log) -> None:
    with contextlib.suppress(OSError):
        _write_state(directory, state | {"status": status})
    if tracked:
        import mlflow

        try:
            mlflow.end_run(status)
        except Exception as exc:  # the tracking server may be gone; the run dir says it
            log(f"could not end the MLflow run as {status}: {str(exc).splitlines()[0]}")


def _log_config(spec, cfg: TrainJobConfig, target: RunTarget, log) -> None:
    """A new run logs its config as params (those its model uses: ``spec.params``); a resumed
    one logs the params it lacks and records which fields changed in a tag (MLflow params
    cannot change)."""
    import mlflow

    params = spec.params(cfg)
    if target.run_id is None:
        mlflow.log_params(params)
        return
    logged = mlflow.get_run(target.run_id).data.params
    missing = {k: v for k, v in params.items() if k not in logged}
    if missing:
        mlflow.log_params(missing)
    changed = [f"{k} {logged[k]} -> {v}" for k, v in params.items() if logged.get(k, v) != v]
    if changed:
        mlflow.set_tag(TAG_RESUME_CHANGES, "; ".join(changed)[:5000])
        log(f"resumed with changed fields: {'; '.join(changed)}")
