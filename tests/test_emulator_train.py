"""End-to-end emulator training on Ray Train: learning, MLflow registry, DDP consistency, faults.

These run real Ray Train fits on a small synthetic survey (tens of seconds each on 2 cores).
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest

import galray
from galray.config import load_config
from galray.datasets.reader import TrainingCatalog
from galray.datasets.simulate import SurveyConfig, simulate_survey
from galray.emulator.config import EmulatorTrainConfig
from galray.emulator.spec import train_emulator
from galray.errors import ConfigError, ModelNotFoundError
from galray.evaluation.emulator import fidelity_report

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "survey"
    cfg = SurveyConfig(n_injections=120_000, n_deep=40_000, nside=64, seed=4, write_fits_maps=False)
    simulate_survey(out, cfg, log=lambda *_: None)
    return out


def _config(survey, tmp_path, **overrides) -> EmulatorTrainConfig:
    sets = {
        "data.survey": str(survey),
        "net.width": 96,
        "net.depth": 3,
        "optim.batch_size": 256,
        "optim.lr_generator": 3e-4,
        "optim.lr_critic": 3e-4,
        "optim.betas": "[0.5, 0.9]",
        "epochs": 4,
        "eval_rows": 8000,
        "storage_path": str(tmp_path / "runs"),
        "tracking.registered_name": "emu-test",
        "scaling.cpus_per_worker": 1,
    }
    sets.update(overrides)
    return load_config(EmulatorTrainConfig, None, [f"{k}={v}" for k, v in sets.items()])


@pytest.fixture(scope="module")
def trained(survey, tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("smoke")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/mlflow.db")
    mp.chdir(tmp)
    try:
        result = train_emulator(
            _config(survey, tmp, epochs=10, **{"tracking.run_name": "smoke"}), log=lambda *_: None
        )
        yield result, tmp
    finally:
        mp.undo()


def test_smoke_training_learns_the_transfer_function(trained, survey):
    """Passes the smoke bar, and beats an emulator that ignores truth and conditions."""
    result, tmp = trained
    report = result.report
    assert report["n_rows"] >= 5000
    assert report["c2st_auc"] <= 0.7
    assert report["ks_max"] < 0.15

    # the baseline: each row's measurement drawn from another detected row's (obs - true),
    # and detection drawn at the overall rate: conditions and truth ignored
    catalog = TrainingCatalog(survey / "injections", survey / "maps")
    cols = (
        [f"true_mag_{b}" for b in "riz"]
        + ["true_size"]
        + [f"obs_mag_{b}" for b in "riz"]
        + ["detected"]
    )
    ref = catalog.dataset("test", cols).limit(8000).to_pandas()
    rng = np.random.default_rng(0)
    base = ref.copy()
    base["detected"] = rng.random(len(ref)) < ref.detected.mean()
    donors = ref[ref.detected].sample(len(ref), replace=True, random_state=1)
    for b in "riz":
        delta = donors[f"obs_mag_{b}"].to_numpy() - donors[f"true_mag_{b}"].to_numpy()
        base[f"obs_mag_{b}"] = np.where(base.detected, ref[f"true_mag_{b}"] + delta, np.nan)
    baseline = fidelity_report(ref, pd.DataFrame(base), tmp / "baseline", seed=0)
    assert report["c2st_auc"] < baseline["c2st_auc"] - 0.05


def test_model_is_logged_registered_and_loadable(trained):
    result, tmp = trained
    assert result.registered_uri == "models:/emu-test@champion"
    mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
    run = mlflow.get_run(result.run_id)
    assert run.data.params["optim.batch_size"] == "256"
    assert "test/c2st_auc" in run.data.metrics
    history = mlflow.MlflowClient().get_metric_history(result.run_id, "val/ks_max")
    assert [m.step for m in history] == list(range(1, 11))
    emulator = galray.load_emulator("models:/emu-test@champion")
    rows = {f"true_mag_{b}": np.full(500, 21.0) for b in "riz"}
    rows["true_size"] = np.full(500, 0.4)
    for b in "riz":
        rows[f"psf_fwhm_{b}"] = np.full(500, 1.0)
        rows[f"depth_{b}"] = np.full(500, 24.0)
    out = emulator.sample(rows, seed=0)
    assert out["detected"].mean() > 0.95  # bright galaxies are detected
    assert abs(np.nanmedian(out["obs_mag_i"]) - 21.0) < 0.1
    report = json.loads((tmp / "runs" / "smoke" / "report" / "report.json").read_text())
    assert report["c2st_auc"] == result.report["c2st_auc"]


def test_flow_model_trains_registers_and_beats_the_gan_smoke_bar(
    trained, survey, tmp_path, ray_session, monkeypatch
):
    """``model: flow`` runs through the same Ray Train loop, registry and evaluation, in fewer
    epochs reaches a better fidelity than the smoke GAN, and reports its validation NLL."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    cfg = _config(
        survey,
        tmp_path,
        epochs=6,
        model="flow",
        **{
            "optim.batch_size": 512,
            "optim.lr_generator": 2e-3,
            "optim.ema_decay": 0.99,
            "tracking.run_name": "flow",
            "tracking.registered_name": "emu-flow",
        },
    )
    result = train_emulator(cfg, log=lambda *_: None)
    gan_report = trained[0].report
    assert result.report["c2st_auc"] <= 0.6
    assert result.report["c2st_auc_detected"] < gan_report["c2st_auc_detected"]
    assert result.report["ks_max"] < 0.05
    history = mlflow.MlflowClient().get_metric_history(result.run_id, "val/nll")
    nll = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert len(nll) == 6 and nll[-1] < nll[0]
    emulator = galray.load_emulator("models:/emu-flow@champion")
    assert emulator.model == "flow" and emulator.flow == cfg.flow
    assert emulator.info["config"]["model"] == "flow"


def test_two_ddp_workers_hold_identical_weights(survey, tmp_path, ray_session):
    cfg = _config(
        survey,
        tmp_path,
        epochs=2,
        evaluate="false",
        **{"tracking.enabled": "false", "scaling.num_workers": 2, "scaling.cpus_per_worker": 0.5},
    )
    result = train_emulator(cfg, log=lambda *_: None)
    assert result.metrics["epoch"] == 2
    assert result.metrics["max_param_divergence"] == 0.0


def test_worker_death_resumes_without_repeating_epochs(survey, tmp_path, ray_session, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    cfg = _config(
        survey,
        tmp_path,
        epochs=3,
        evaluate="false",
        max_failures=1,
        debug_fail_at_epoch=2,
        **{"tracking.run_name": "faulty", "tracking.registered_name": ""},
    )
    result = train_emulator(cfg, log=lambda *_: None)
    assert (tmp_path / "runs" / ".debug-failed-faulty").exists()  # the worker did die
    assert result.metrics["epoch"] == 3
    history = mlflow.MlflowClient().get_metric_history(result.run_id, "epoch")
    assert sorted(m.step for m in history) == [1, 2, 3]  # each epoch finished exactly once


def test_bad_config_names_the_field(survey, tmp_path):
    with pytest.raises(ConfigError, match=r"optim\.batch_size"):
        _config(survey, tmp_path, **{"optim.batch_size": "many"})
    with pytest.raises(ConfigError, match=r"optim\.betas"):
        _config(survey, tmp_path, **{"optim.betas": "[0.5]"})
    with pytest.raises(ConfigError, match=r"net\.widht"):
        _config(survey, tmp_path, **{"net.widht": 3})
    with pytest.raises(ConfigError, match="data"):
        load_config(EmulatorTrainConfig, None, ["data.survey=null"])


def test_workers_that_leave_ray_data_no_cpu_are_refused_before_anything_is_logged(
    survey, tmp_path, ray_session, monkeypatch
):
    """On this 2-CPU instance, a worker reserving both CPUs would wait forever for its data."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    total = ray_session.cluster_resources()["CPU"]
    cfg = _config(survey, tmp_path, **{"scaling.cpus_per_worker": total})
    with pytest.raises(ConfigError, match=r"scaling\.cpus_per_worker.*wait forever"):
        train_emulator(cfg, log=lambda *_: None)
    assert not (tmp_path / "runs").exists()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert [e.name for e in client.search_experiments()] == ["Default"]  # no run, no experiment


def test_missing_model_uri_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(ModelNotFoundError, match="models:/nope@champion"):
        galray.load_emulator("models:/nope@champion")
    with pytest.raises(ModelNotFoundError, match="no-such-dir"):
        galray.load_emulator(str(tmp_path / "no-such-dir"))
