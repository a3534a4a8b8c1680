"""Training that resumes, and data that is simulated only when asked (issue 16).

Faults: the driver killed by SIGTERM (its MLflow run ends KILLED; ``--resume`` continues it in
the same run at the next epoch); a worker dying with no restarts left (FAILED; a new run of
that name is refused; a run left RUNNING by a driver killed outright is resumed and says so; a
run whose driver still holds its lock is refused); a changed network shape (one line naming
the fields); a mistyped data path (one line naming the field, nothing simulated).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import mlflow
import pytest
import yaml

from galray.cli import main
from galray.config import load_config
from galray.datasets.deepfield import DeepFieldConfig, simulate_deepfield
from galray.deepfield.config import DeepFieldTrainConfig
from galray.deepfield.spec import SPEC as DEEPFIELD
from galray.emulator.config import EmulatorTrainConfig
from galray.emulator.spec import SPEC as EMULATOR
from galray.errors import ConfigError, OutputExistsError
from galray.training import runs
from galray.training.job import run_training

# debug-width SGAN on a 128 px field: an epoch takes a fraction of a second on one CPU
TINY = {
    "net": {
        "noise_channels": 8,
        "gen_channels": [8, 8, 8, 8],
        "stride1_layers": 1,
        "critic_channels": [8, 8, 16, 16, 16],
    },
    "optim": {"batch_size": 4, "crop_sizes": [32], "batches_per_epoch": 2},
    "scaling": {"num_workers": 1, "cpus_per_worker": 1},
    "tracking": {"experiment": "resume-test", "registered_name": ""},
    "sample_every": 0,
    "evaluate": False,
}


@pytest.fixture(scope="module")
def tracking_store(tmp_path_factory):
    """One MLflow store for the module (creating one costs seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture
def tracking(tracking_store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_store)


def _write_config(tmp_path, **top) -> str:
    doc = {
        **TINY,
        "data": {
            "image": str(tmp_path / "field.fits"),
            "simulate_if_missing": True,
            "simulate": {"size": 128, "seed": 2, "density": 600},
        },
        "storage_path": str(tmp_path / "runs"),
        **top,
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def _runs_named(name: str):
    return mlflow.MlflowClient().search_runs(
        [mlflow.get_experiment_by_name("resume-test").experiment_id],
        filter_string=f"attributes.run_name = '{name}'",
    )


def _epochs_logged(run_id: str) -> list[int]:
    return sorted({m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "epoch")})


def _cfg(config, *sets) -> DeepFieldTrainConfig:
    return load_config(DeepFieldTrainConfig, config, ["tracking.run_name=killed", *sets])


def _quiet(*_) -> None:
    pass


@pytest.mark.ray
@pytest.mark.slow
def test_killed_driver_ends_killed_and_resume_continues_the_same_run(tmp_path, tracking, ray_join):
    """SIGTERM to the driver after its first checkpoint: MLflow says KILLED (not RUNNING), and
    --resume continues the same MLflow run at the next epoch.  On the way: a new run may not
    take the name, a changed network shape and a run whose driver holds the lock are refused,
    and a run left RUNNING (a driver killed outright) is resumed and says so."""
    config = _write_config(tmp_path, epochs=100_000)
    cmd = [sys.executable, "-m", "galray.cli", "train", "deepfield", "--config", config]
    cmd += ["--set", "tracking.run_name=killed"]
    run_dir = tmp_path / "runs" / "killed"
    proc = subprocess.Popen(
        cmd,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, **ray_join),  # a driver on a running cluster
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline and runs.last_epoch(run_dir) < 1 and proc.poll() is None:
            time.sleep(0.2)
        assert runs.last_epoch(run_dir) >= 1, proc.stdout.read() if proc.poll() else "no ckpt"
        proc.send_signal(signal.SIGTERM)  # the driver only, as a scheduler would
        output, _ = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever of it is left
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == 130, output
    assert "simulating a synthetic deep field there (data.simulate_if_missing)" in output
    assert "--resume killed" in output
    (killed,) = _runs_named("killed")
    assert killed.info.status == "KILLED"
    assert runs.read_state(run_dir)["status"] == "KILLED"
    done = runs.last_epoch(run_dir)

    # a new run may not take the name (Ray Train would silently restore its checkpoint)
    with pytest.raises(OutputExistsError, match="--resume killed"):
        run_training(DEEPFIELD, _cfg(config), log=_quiet)
    # another network shape: one line naming each differing field
    with pytest.raises(ConfigError) as err:
        sets = ("net.noise_channels=4", "net.gen_channels=[16, 8, 8, 8]", "epochs=9")
        run_training(DEEPFIELD, _cfg(config, *sets), resume="killed", log=_quiet)
    message = str(err.value)
    assert "\n" not in message and "epochs" not in message
    assert "net.gen_channels [8, 8, 8, 8] -> [16, 8, 8, 8]; net.noise_channels 8 -> 4" in message
    # a driver still holding the run's lock
    lock = runs._acquire_lock(run_dir)
    try:
        with pytest.raises(ConfigError, match="being trained now"):
            run_training(DEEPFIELD, _cfg(config), resume="killed", log=_quiet)
    finally:
        lock.close()
    assert mlflow.MlflowClient().get_run(killed.info.run_id).info.status == "KILLED"

    # as if the driver had been SIGKILLed: MLflow still says RUNNING, the lock is free
    mlflow.MlflowClient().update_run(killed.info.run_id, status="RUNNING")
    lines: list[str] = []
    cfg = _cfg(config, f"epochs={done + 2}")
    result = run_training(DEEPFIELD, cfg, resume="killed", log=lines.append)
    assert any(
        f"resuming run killed (left RUNNING by a driver that is gone), after epoch {done}" in x
        for x in lines
    ), lines
    assert result.run_id == killed.info.run_id and len(_runs_named("killed")) == 1
    assert result.metrics["epoch"] == done + 2
    run = mlflow.MlflowClient().get_run(killed.info.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[runs.TAG_RESUME_CHANGES] == f"epochs 100000 -> {done + 2}"
    assert _epochs_logged(killed.info.run_id) == list(range(1, done + 3))
    with pytest.raises(ConfigError, match="finished; nothing to resume"):
        run_training(DEEPFIELD, cfg, resume=killed.info.run_id, log=_quiet)
    with pytest.raises(OutputExistsError, match=r"finished; choose another tracking\.run_name"):
        run_training(DEEPFIELD, cfg, log=_quiet)


@pytest.mark.parametrize(
    ("how", "status"),
    [("error", "FAILED"), ("ctrl-c", "KILLED"), ("sigterm", "KILLED"), ("ray-exit", "KILLED")],
)
def test_driver_run_ends_the_run_by_how_training_ended(tmp_path, tracking, how, status):
    """Never left RUNNING: an exception ends it FAILED; Ctrl-C, SIGTERM and the SystemExit of
    Ray Train's own SIGINT handler end it KILLED (and reach the CLI as an interrupt)."""
    name = f"ended-{how}"
    cfg = load_config(DeepFieldTrainConfig, _write_config(tmp_path), [f"tracking.run_name={name}"])
    storage = tmp_path / "runs"
    target = runs.resolve(DEEPFIELD, cfg, storage, None, _quiet)
    lines: list[str] = []
    raised = RuntimeError if how == "error" else KeyboardInterrupt
    with pytest.raises(raised):
        with runs.driver_run(DEEPFIELD, cfg, target, storage, lines.append) as run:
            assert runs.lock_holder(run.directory).startswith(f"pid {os.getpid()}")
            if how == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler raises before this ends
            raise {"error": RuntimeError, "ctrl-c": KeyboardInterrupt}.get(how, SystemExit)()
    assert mlflow.MlflowClient().get_run(run.run_id).info.status == status
    assert runs.read_state(run.directory)["status"] == status
    assert runs.lock_holder(run.directory) is None
    assert any(f"--resume {name}" in line for line in lines)
    assert signal.getsignal(signal.SIGTERM) is not runs._interrupt  # handler restored


def test_new_run_ends_a_stale_running_run_of_its_name_killed(tmp_path, tracking):
    """A driver killed outright before its run directory was written leaves only an MLflow run
    RUNNING; a new run of that name ends it KILLED and says so."""
    cfg = load_config(DeepFieldTrainConfig, _write_config(tmp_path), ["tracking.run_name=stale"])
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("resume-test")
    experiment_id = (
        experiment.experiment_id if experiment else client.create_experiment("resume-test")
    )
    stale = client.create_run(experiment_id, run_name="stale").info.run_id
    storage = tmp_path / "runs"
    lines: list[str] = []
    with runs.driver_run(
        DEEPFIELD, cfg, runs.resolve(DEEPFIELD, cfg, storage, None, _quiet), storage, lines.append
    ) as run:
        assert run.run_id != stale
    assert client.get_run(stale).info.status == "KILLED"
    assert any(f"MLflow run {stale} (stale) was left RUNNING" in line for line in lines)


def test_untracked_run_resumes_by_its_name(tmp_path):
    """Without MLflow, --resume takes the run's directory name under storage_path and keeps
    its run id."""
    sets = ["tracking.run_name=local", "tracking.enabled=false"]
    cfg = load_config(DeepFieldTrainConfig, _write_config(tmp_path), sets)
    storage = tmp_path / "runs"
    with pytest.raises(KeyboardInterrupt):
        with runs.driver_run(
            DEEPFIELD, cfg, runs.resolve(DEEPFIELD, cfg, storage, None, _quiet), storage, _quiet
        ) as run:
            raise KeyboardInterrupt
    lines: list[str] = []
    target = runs.resolve(DEEPFIELD, cfg, storage, "local", lines.append)
    assert target.run_id == run.run_id and target.status == "KILLED"
    assert lines == [f"resuming run local, from epoch 1 (no checkpoint yet): {storage / 'local'}"]
    with pytest.raises(ConfigError, match="no run 'elsewhere'"):
        runs.resolve(DEEPFIELD, cfg, storage, "elsewhere", _quiet)


def test_resume_of_an_unknown_run_is_one_line(tmp_path, tracking, capsys):
    simulate_deepfield(tmp_path / "field.fits", DeepFieldConfig(size=64, seed=1))
    config = _write_config(tmp_path, epochs=2)
    assert main(["train", "deepfield", "--config", config, "--resume", "nope"]) == 2
    (err,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("galray:")]
    assert err.startswith("galray: error: --resume: no MLflow run with id or name 'nope'")
    assert not (tmp_path / "runs").exists()


def test_emulator_shape_fields_name_the_changed_networks():
    """The emulator's checkpoint depends on the model kind, its networks and its features."""
    sets = ["data.survey=s", "model=flow"]
    a = runs.flat_config(load_config(EmulatorTrainConfig, None, sets))
    b = runs.flat_config(load_config(EmulatorTrainConfig, None, [*sets, "flow.width=32"]))
    c = runs.flat_config(load_config(EmulatorTrainConfig, None, [*sets, "epochs=99"]))
    assert runs.shape_differences(EMULATOR.shape_fields, a, b) == ["flow.width 64 -> 32"]
    assert runs.shape_differences(EMULATOR.shape_fields, a, c) == []


# ----------------------------------------------------------------------------- missing data


def _tiny_survey_yaml(tmp_path, **data) -> str:
    doc = {
        "data": {
            "survey": str(tmp_path / "smoke-survy"),  # the typo
            "simulate": {"n_injections": 3000, "n_deep": 1000, "nside": 16, "seed": 0},
            **data,
        },
        "storage_path": str(tmp_path / "runs"),
        "tracking": {"enabled": False},
    }
    path = tmp_path / "emulator.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_mistyped_survey_is_an_error_and_nothing_is_simulated(tmp_path, capsys):
    config = _tiny_survey_yaml(tmp_path)
    assert main(["train", "emulator", "--config", config]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert f"data.survey: {tmp_path / 'smoke-survy'} does not exist" in err
    assert "data.simulate_if_missing" in err  # how to ask for a simulation
    assert not (tmp_path / "smoke-survy").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("field", ["catalog", "maps"])
def test_missing_catalog_or_maps_names_the_field(tmp_path, capsys, field):
    catalog, maps = tmp_path / "cat", tmp_path / "maps.parquet"
    (catalog.mkdir() if field == "maps" else maps.write_bytes(b""))
    argv = ["train", "emulator", "--config", _tiny_survey_yaml(tmp_path)]
    for s in ("data.survey=null", f"data.catalog={catalog}", f"data.maps={maps}"):
        argv += ["--set", s]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    missing = catalog if field == "catalog" else maps
    assert "\n" not in err and f"data.{field}: {missing} does not exist" in err


def test_mistyped_deepfield_image_is_an_error(tmp_path, capsys):
    config = _write_config(tmp_path, epochs=1)
    typo = tmp_path / "feild.fits"
    argv = ["train", "deepfield", "--config", config, "--set", f"data.image={typo}"]
    assert main([*argv, "--set", "data.simulate_if_missing=false"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"data.image: {typo} does not exist" in err
    assert not typo.exists()


def test_simulation_happens_when_asked_and_says_so_in_one_line(tmp_path):
    cfg = load_config(EmulatorTrainConfig, _tiny_survey_yaml(tmp_path, simulate_if_missing=True))
    lines: list[str] = []
    EMULATOR.prepare(cfg, lines.append)
    said = [line for line in lines if "simulating" in line]
    assert said == [
        f"data.survey: {tmp_path / 'smoke-survy'} does not exist: simulating a synthetic "
        "survey there (data.simulate_if_missing)"
    ]
    assert (tmp_path / "smoke-survy" / "injections").is_dir()
