"""Hyperparameter sweeps with Ray Tune: search-space validation, a small ASHA sweep tracked in
MLflow (parent + child runs, registered best model), and resuming a sweep whose driver was
killed (kill -9) without rerunning finished trials.

The sweeps train tiny emulators (4 epochs) on a 60k-injection nside-64 survey: a few minutes on
2 CPU cores, dominated by starting each trial's Ray Train workers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

import galray
from galray.cli import main as cli_main
from galray.commands.tune import print_summary
from galray.datasets.simulate import SurveyConfig, simulate_survey
from galray.errors import ConfigError
from galray.products import get_product
from galray.tune.results import format_table
from galray.tune.search_space import load_sweep
from galray.tune.sweep import ASHA_STATE_FILE, TRIALS_DIR, resume_sweep, trial_params

EPOCHS = 4
SEARCH = {
    "optim.lr_generator": {"loguniform": [1.0e-4, 1.0e-3]},
    "optim.batch_size": {"choice": [128, 256]},
    "net.width": {"choice": [32, 64]},
    "net.depth": {"randint": [2, 3]},
    "net.noise_dim": {"choice": [4, 8]},
    "optim.critic_steps": {"choice": [3, 5]},
    "optim.gp_weight": {"loguniform": [3.0, 30.0]},
}


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "survey"
    cfg = SurveyConfig(n_injections=60_000, n_deep=30_000, nside=64, seed=3, write_fits_maps=False)
    simulate_survey(out, cfg, log=lambda *_: None)
    return out


def _write_sweep(path: Path, survey: Path, name: str, **tune) -> Path:
    config = {
        "train": {
            "data": {"survey": str(survey)},
            "net": {"width": 64, "depth": 2},
            "optim": {"batch_size": 256, "betas": [0.5, 0.9]},
            "scaling": {"num_workers": 1, "cpus_per_worker": 0.4},
            "tracking": {"experiment": "tune-test", "registered_name": name, "alias": "best"},
            "epochs": EPOCHS,
            "eval_rows": 2000,
            "storage_path": str(path.parent / "runs"),
        },
        "search": SEARCH,
        "tune": {
            "num_samples": 4,
            "max_concurrent_trials": 2,
            "grace_period": 1,
            "reduction_factor": 2,
            "name": name,
            "storage_path": str(path.parent / "sweeps"),
        }
        | tune,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _load(path: Path, overrides=()):
    spec = get_product("emulator")
    return load_sweep("emulator", spec.config_cls, path, list(overrides), fixed=spec.fixed)


# ----------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("search.net.widht={choice: [32, 64]}", r"search\.net\.widht: unknown field"),
        ("search.optim={choice: [1]}", r"search\.optim: is a section"),
        ("search.net.width={choise: [32]}", r"search\.net\.width: expected one distribution"),
        ("search.net.width={choice: [32, 0]}", r"search\.net\.width\.choice: value 0"),
        ("search.optim.batch_size={loguniform: [64, 512]}", r"search\.optim\.batch_size\.log"),
        ("search.optim.lr_generator={uniform: [0.1]}", r"search\.optim\.lr_generator\.uniform"),
        ("search.optim.lr_critic={loguniform: [0, 0.1]}", r"search\.optim\.lr_critic\.log"),
        ("search.optim.lr_critic={uniform: [1.0e-4, 2.0]}", r"value 2\.0 .*lr_critic"),
        ("search.epochs={choice: [2, 4]}", r"search\.epochs: not searchable"),
        ("search.tracking.alias={choice: [a, b]}", r"search\.tracking\.alias: not searchable"),
        ("tune.num_sample=3", r"tune\.num_sample: unknown field"),
        ("tune.scheduler=hyperband", r"tune\.scheduler"),
        ("train.net.widht=3", r"train\.net\.widht: unknown field"),
        ("trian.epochs=3", r"trian: unknown section"),
    ],
)
def test_config_errors_name_the_field(tmp_path, survey, override, field):
    path = _write_sweep(tmp_path / "sweep.yaml", survey, "bad")
    with pytest.raises(ConfigError, match=field):
        _load(path, [override])


def test_search_space_forms(tmp_path, survey):
    """Nested and dotted keys are the same dimension; --set adds, replaces and drops them."""
    path = _write_sweep(tmp_path / "sweep.yaml", survey, "forms")
    data = yaml.safe_load(path.read_text())
    data["search"] = {"net": {"width": {"choice": [32, 64]}}, "optim.critic_steps": {"grid": [3]}}
    path.write_text(yaml.safe_dump(data))
    sweep = _load(path, ["search.net.depth={randint: [2, 4]}", "search.optim.critic_steps=null"])
    assert {d.path: d.describe() for d in sweep.space} == {
        "net.width": "choice(32, 64)",
        "net.depth": "randint(2, 4)",
    }
    cfg = sweep.trial_config({"net.width": 32, "net.depth": 4})
    assert (cfg.net.width, cfg.net.depth, cfg.epochs) == (32, 4, EPOCHS)


def test_a_trial_run_records_the_sampled_fields_and_the_model(tmp_path, survey):
    """A trial's MLflow params are the fields its search space varies (as the config resolved
    them) and the model kind: what MLflow's compare view sets side by side, not every field."""
    path = _write_sweep(tmp_path / "sweep.yaml", survey, "params")
    sweep = _load(
        path,
        [
            "train.model=flow",
            "search={flow.width: {choice: [32, 64]}, "
            "optim.betas: {choice: [[0.5, 0.9], [0.9, 0.99]]}, "
            "optim.lr_generator: {loguniform: [1.0e-4, 1.0e-3]}}",
        ],
    )
    sampled = {"flow.width": 32, "optim.betas": [0.9, 0.99], "optim.lr_generator": 3.0e-4}
    cfg = sweep.trial_config(sampled)
    assert trial_params(get_product("emulator"), cfg, sampled) == {
        "model": "flow",
        "flow.width": "32",
        "optim.betas": "[0.9, 0.99]",
        "optim.lr_generator": "0.0003",
    }
    sgan = get_product("sgan")
    assert trial_params(sgan, sgan.config_cls(), {"net.pack": 4}) == {
        "model": "sgan",
        "net.pack": str(sgan.config_cls().net.pack),  # the value the config holds
    }


def test_cli_config_error_exits_2_naming_the_field(tmp_path, survey, capsys):
    path = _write_sweep(tmp_path / "sweep.yaml", survey, "cli")
    code = cli_main(
        ["tune", "emulator", "--config", str(path), "--set", "search.net.widht={choice: [8]}"]
    )
    assert code == 2
    assert "search.net.widht: unknown field" in capsys.readouterr().err
    assert cli_main(["tune", "emulator", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "not a galray sweep" in capsys.readouterr().err


# ----------------------------------------------------------------------------- a sweep
#
# One sweep serves the slow tests (each trial costs tens of seconds of Ray start-up on 2 cores):
# `galray tune emulator` runs in a subprocess until two trials have finished, is killed -9, and
# the sweep is resumed in this process.  What was on disk at the kill is kept for comparison.


def _trial_states(sweep_dir: Path) -> dict[str, str]:
    """Trial id -> status in Tune's saved experiment state (what a restore will see)."""
    files = sorted(sweep_dir.glob("experiment_state-*.json"))
    if not files:
        return {}
    try:
        state = json.loads(files[-1].read_text())
    except (json.JSONDecodeError, OSError):  # being rewritten
        return {}
    trials = (json.loads(t[0]) for t in state["trial_data"])
    return {t["trial_id"]: t["status"] for t in trials}


def _checkpoint_epochs(trial_dir: Path) -> list[int]:
    """Epochs of the checkpoints Ray Train has registered for the trial (what a restore resumes
    from).  A checkpoint directory on disk is not enough: one written just before the driver
    died may not be in Ray Train's snapshot yet, and the trial then restarts at epoch 1."""
    try:
        snapshot = json.loads((trial_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, json.JSONDecodeError):  # none yet, or being rewritten
        return []
    return sorted(r["metrics"]["epoch"] for r in snapshot.get("checkpoint_results", []))


def _snapshot(path: Path) -> dict[str, tuple[int, float]]:
    return {
        str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime)
        for p in path.rglob("*")
        if p.is_file()
    }


def _run_until_two_trials_finished(config: Path, sweep_dir: Path, cwd: Path) -> None:
    """``galray tune emulator --config`` in a subprocess (its own Ray instance), killed -9 once
    Tune's saved state holds two finished trials and Ray Train has registered a checkpoint of a
    running trial (or 60 s later)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = [sys.executable, "-m", "galray.cli", "tune", "emulator", "--config", str(config)]
    with open(cwd / "driver.log", "w") as log:
        driver = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 400
            while time.monotonic() < deadline and driver.poll() is None:
                states = _trial_states(sweep_dir)
                if sum(s == "TERMINATED" for s in states.values()) >= 2:
                    break
                time.sleep(0.5)
            deadline = min(deadline, time.monotonic() + 60)
            while time.monotonic() < deadline and driver.poll() is None:
                running = [t for t, s in _trial_states(sweep_dir).items() if s != "TERMINATED"]
                if any(_checkpoint_epochs(sweep_dir / TRIALS_DIR / t) for t in running):
                    break
                time.sleep(0.2)
            assert driver.poll() is None, (cwd / "driver.log").read_text()[-3000:]
        finally:
            driver.send_signal(signal.SIGKILL)
            driver.wait()


@pytest.fixture(scope="module")
def swept(survey, tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("sweep")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/mlflow.db")
    mp.chdir(tmp)
    try:
        config = _write_sweep(tmp / "sweep.yaml", survey, "emu-sweep")
        sweep_dir = tmp / "sweeps" / "emu-sweep"
        _run_until_two_trials_finished(config, sweep_dir, tmp)
        states = _trial_states(sweep_dir)
        at_kill = {
            "states": states,
            "results": {t: _snapshot(sweep_dir / t) for t in states},
            "training": {t: _snapshot(sweep_dir / TRIALS_DIR / t) for t in states},
            "checkpoints": {t: _checkpoint_epochs(sweep_dir / TRIALS_DIR / t) for t in states},
        }
        result = resume_sweep(sweep_dir, product="emulator", log=lambda *_: None, verbose=0)
        yield result, tmp, at_kill
    finally:
        mp.undo()


@pytest.mark.ray
@pytest.mark.slow
def test_killed_sweep_resumes_without_rerunning_finished_trials(swept):
    result, tmp, at_kill = swept
    sweep_dir = Path(result.path)
    finished = [t for t, s in at_kill["states"].items() if s == "TERMINATED"]
    unfinished = [t for t, s in at_kill["states"].items() if s != "TERMINATED"]
    assert len(finished) >= 2 and unfinished, at_kill["states"]
    assert _trial_states(sweep_dir) == {t.trial_id: "TERMINATED" for t in result.trials}
    assert len(result.trials) == 4 and result.best is not None
    for t in finished:  # untouched: no new results, no new training, no new checkpoints
        assert _snapshot(sweep_dir / t) == at_kill["results"][t], t
        assert _snapshot(sweep_dir / TRIALS_DIR / t) == at_kill["training"][t], t

    client = mlflow.MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    children = client.search_runs(
        [client.get_run(result.parent_run_id).info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'",
    )
    assert len(children) == 4  # a restarted trial reopened its run instead of opening another
    for child in children:
        trial = child.data.tags["galray.trial_id"]
        epochs = [m.step for m in client.get_metric_history(child.info.run_id, "epoch")]
        if trial in finished:
            assert len(epochs) == len(set(epochs)), (trial, epochs)  # each epoch trained once
        elif at_kill["checkpoints"][trial]:
            # it had a checkpoint when the driver died: Ray Train resumed it, not from epoch 1
            assert epochs.count(1) == 1, (trial, epochs)


@pytest.mark.ray
@pytest.mark.slow
def test_sweep_runs_every_trial_under_asha(swept, capsys):
    result, _, at_kill = swept
    for trial in result.trials:
        assert trial.status in ("completed", "stopped early"), format_table(result)
        assert (trial.epochs == EPOCHS) == (trial.status == "completed")
        assert set(trial.params) == set(SEARCH)
        assert np.isfinite(trial.best)
    assert result.trial_epochs <= 4 * EPOCHS
    assert result.best is not None and result.best.status == "completed"
    completed = [t for t in result.trials if t.status == "completed"]
    assert result.best.best == min(t.best for t in completed)
    rungs = json.loads((Path(result.path) / ASHA_STATE_FILE).read_text())
    assert set().union(*rungs.values()) == {t.trial_id for t in result.trials}
    # trials judged before the driver was killed are still on ASHA's rungs after the restore
    finished = {t for t, s in at_kill["states"].items() if s == "TERMINATED"}
    assert finished <= set(rungs["1.0"])
    print_summary(result)
    out = capsys.readouterr().out
    assert "best val_swd" in out and f"best trial:     {result.best.trial_id}" in out
    assert "registered as:  models:/emu-sweep@best" in out


@pytest.mark.ray
@pytest.mark.slow
def test_sweep_is_tracked_in_mlflow_with_a_registered_best_model(swept):
    result, tmp, _ = swept
    client = mlflow.MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["search.net.width"] == "choice(32, 64)"
    assert parent.data.params["base.epochs"] == str(EPOCHS)
    assert parent.data.metrics["best_val_swd"] == pytest.approx(result.best.best)
    assert parent.data.tags["galray.best_trial_id"] == result.best.trial_id
    assert "test/c2st_auc" in parent.data.metrics  # the best model's fidelity report

    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'",
    )
    by_trial = {t.trial_id: t for t in result.trials}
    assert {c.data.tags["galray.trial_id"] for c in children} == set(by_trial)
    for child in children:
        trial = by_trial[child.data.tags["galray.trial_id"]]
        assert child.info.status == "FINISHED"
        assert child.data.tags["galray.tune_status"] == trial.status
        # the compare view's columns: what the search varied, and the model; no other field
        assert set(child.data.params) == {*SEARCH, "model"}
        assert child.data.params["model"] == "gan"
        assert child.data.params["net.width"] == str(trial.params["net.width"])
        assert float(child.data.params["optim.lr_generator"]) == pytest.approx(
            trial.params["optim.lr_generator"]
        )
        steps = {m.step for m in client.get_metric_history(child.info.run_id, "val/swd")}
        assert set(range(1, trial.epochs + 1)) <= steps  # the metric curve, one point an epoch
        assert child.data.metrics["best_val_swd"] == pytest.approx(trial.best)

    assert result.model["registered_uri"] == "models:/emu-sweep@best"
    version = client.get_model_version_by_alias("emu-sweep", "best")
    assert version.run_id == result.parent_run_id
    mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
    emulator = galray.load_emulator("models:/emu-sweep@best")
    assert emulator.info["trial_id"] == result.best.trial_id
    assert emulator.net.width == result.best.params["net.width"]
    rows = {f"true_mag_{b}": np.full(200, 21.0) for b in "riz"}
    rows["true_size"] = np.full(200, 0.4)
    for b in "riz":
        rows[f"psf_fwhm_{b}"] = np.full(200, 1.0)
        rows[f"depth_{b}"] = np.full(200, 24.0)
    out = emulator.sample(rows, seed=0)
    assert out["detected"].mean() > 0.9
    assert np.isfinite(out["obs_mag_i"][out["detected"]]).all()


def test_a_sweep_saved_under_the_old_product_name_resumes_under_the_new(tmp_path):
    """Sweeps started as ``galray tune sgan`` record ``"trainer": "sgan"``; resuming them as
    ``deepfield`` (or ``sgan``) passes the product check, resuming as another product does not."""
    import json

    from galray.errors import ConfigError
    from galray.tune.sweep import STATE_FILE

    (tmp_path / STATE_FILE).write_text(json.dumps({"trainer": "sgan", "raw": {}, "mlflow": {}}))
    with pytest.raises(ConfigError, match="is a sweep of sgan, not emulator"):
        resume_sweep(tmp_path, product="emulator")
    for product in ("deepfield", "sgan"):
        with pytest.raises(ConfigError) as failed:  # past the check: the empty config is refused
            resume_sweep(tmp_path, product=product)
        assert "is a sweep of" not in str(failed.value)
