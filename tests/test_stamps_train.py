"""Stamp-generator training: the step, a smoke Ray Train fit end to end (registered in MLflow,
loaded by name, better than its initialisation) and ``galray evaluate stamps`` on it."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from galray.cli import main
from galray.config import load_config
from galray.datasets.stamps import PROPERTIES, StampSimConfig, read_stamps, simulate_stamps
from galray.errors import ConfigError
from galray.models.stamps import StampVAE
from galray.stamps.config import StampOptimConfig, StampsTrainConfig
from galray.stamps.loop import to_device, validation_metrics
from galray.stamps.spec import load_training_stamps, train_stamps
from galray.stamps.step import build_stamp_modules, train_batch
from galray.training.modules import GradientSync

pytest.importorskip("galsim")
SMOKE = Path(__file__).resolve().parents[1] / "configs" / "stamps-smoke.yaml"


@pytest.fixture(scope="module")
def stamps(tmp_path_factory):
    out = tmp_path_factory.mktemp("stamps") / "data"
    simulate_stamps(out, StampSimConfig(n=300, size=32, seed=1), log=lambda _: None)
    return out


def _config(tmp_path, stamps, *sets: str) -> StampsTrainConfig:
    base = [
        f"data.stamps={stamps}",
        f"storage_path={tmp_path / 'runs'}",
        "tracking.registered_name=stamps-test",
        "evaluate.enabled=false",
        "scaling.cpus_per_worker=1",
    ]
    return load_config(StampsTrainConfig, SMOKE, [*base, *sets])


def test_train_batch_updates_the_vae_and_its_prior(tmp_path, stamps):
    cfg = _config(tmp_path, stamps)
    data = load_training_stamps(cfg)
    device = torch.device("cpu")
    batch = to_device(read_stamps(stamps, split="train"), data.conditions, device)
    m = build_stamp_modules(cfg.net, StampOptimConfig(batch_size=8), device, seed=0)
    before = {n: p.detach().clone() for n, p in m.vae.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        train_batch(m, batch, StampOptimConfig(batch_size=8), GradientSync(1), gen)
    metrics = m.pop_metrics()
    assert all(np.isfinite(v) for v in metrics.values()) and metrics["nll_per_pixel"] > 0
    changed = {
        n.split(".")[0] for n, p in m.vae.named_parameters() if not torch.equal(p, before[n])
    }
    assert changed == {"encoder", "decoder", "prior"}  # the flow prior learns through the KL


def test_size_mismatch_names_the_field(tmp_path, stamps):
    cfg = _config(tmp_path, stamps, "net.size=48")
    with pytest.raises(ConfigError, match=r"^net.size: 48 px, but the stamps in .* are 32 px"):
        load_training_stamps(cfg)


@pytest.mark.ray
@pytest.mark.slow
def test_smoke_training_registers_a_model_that_learned(
    tmp_path, stamps, ray_session, monkeypatch, capsys
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    # from an even spread of light (no envelope): the decoder's envelope alone starts it where
    # 8 smoke epochs end (val_loss 0.55), so only from an even spread is learning measurable
    cfg = _config(tmp_path, stamps, "epochs=8", "net.envelope=0")
    result = train_stamps(cfg, log=lambda *_: None)
    assert result.registered_uri == "models:/stamps-test@champion"
    assert result.metrics["epoch"] == 8 and np.isfinite(result.metrics["val_loss"])

    import galray.stamps

    model = galray.stamps.load("models:/stamps-test@champion")
    assert model.size == 32 and model.pixel_scale == pytest.approx(0.15)
    # learned: the trained VAE explains the validation stamps better than its initialisation
    val = read_stamps(stamps, split="val")
    val = to_device(val, model.conditions, torch.device("cpu"))
    torch.manual_seed(cfg.seed)
    untrained = StampVAE(cfg.net).eval()
    trained = validation_metrics(model.vae, val, 1.0, seed=0)["val_loss"]
    initial = validation_metrics(untrained, val, 1.0, seed=0)["val_loss"]
    assert trained < 0.8 * initial

    props = pd.DataFrame(
        {n: val_col for n, val_col in zip(PROPERTIES, [[21.0], [0.5], [0.5], [0.2]])}
    )
    pyfunc = mlflow.pyfunc.load_model("models:/stamps-test@champion")
    out = pyfunc.predict(props, params={"seed": 3})
    assert out.shape == (1, 32, 32)
    np.testing.assert_allclose(out, model.generate(props, seed=3), rtol=1e-5, atol=1e-4)

    report_dir = tmp_path / "report"
    args = ["evaluate", "stamps", "--model", "models:/stamps-test@champion", "--data", str(stamps)]
    args += ["--out", str(report_dir), "--rows", "60", "--morphology-rows", "4"]
    args += ["--estimator", str(_rich_estimator(tmp_path / "estimator"))]
    assert main([*args, "--sweep-points", "3", "--sweep-draws", "2"]) == 0
    report = json.loads((report_dir / "report.json").read_text())
    for key in ("mag_bias_median", "hsm_size_ratio_median", "ks_max", "baseline_c2st_auc"):
        assert key in report
    for key in ("c2st_auc_minus_baseline", "c2st_auc_given_properties_minus_baseline"):
        assert np.isfinite(report[key]) and report[f"{key}_err"] >= 0  # 30 stamps: may be 0
    assert report["beats_baseline"] == (
        report["c2st_auc_minus_baseline"] + 2 * report["c2st_auc_minus_baseline_err"] < 0
    )
    # the estimator measured real and generated stamps, property by property
    judged = pd.read_csv(report_dir / "judge.csv")
    assert list(judged.property) == list(PROPERTIES) and (judged.n == report["n_rows"]).all()
    assert isinstance(report["judge_within"], bool) and "judge_bias_difference_hlr" in report
    assert {f"monotonic_rho_{n}" for n in PROPERTIES} <= set(report)
    table = pd.read_csv(report_dir / "monotonicity.csv")
    assert list(table.condition) == list(PROPERTIES)
    assert (report_dir / "sweeps.png").is_file() and (report_dir / "sweep_images.png").is_file()
    stats = pd.read_csv(report_dir / "statistics.csv")
    assert stats["gini"].notna().sum() >= 3  # statmorph ran on the first rows of each kind
    runs = mlflow.search_runs(experiment_names=["galray-evaluation"])
    assert "metrics.test/monotonic_rho_min" in runs.columns
    assert "report:" in capsys.readouterr().out


def _rich_estimator(path: Path) -> Path:
    """An (untrained) estimator of the generator's conditions on 32 px stamps at 0.15"."""
    from galray.estimator.bundle import EstimatorModel
    from galray.models.estimator import Estimator, EstimatorNetConfig, Targets

    torch.manual_seed(0)
    net = Estimator(EstimatorNetConfig(size=32, n_targets=4, channels=(4, 8), hidden=16))
    targets = Targets(list(PROPERTIES), ["mag", "log", "linear", "linear"], [22.0, -0.3, 0.5, 0.2],
                      [1.0, 0.2, 0.3, 0.1])  # fmt: skip
    return EstimatorModel(net, targets, 0.15, "rich").save(path)


def test_missing_stamps_name_the_field_unless_simulation_is_asked(tmp_path):
    from galray.stamps.spec import prepare

    missing = tmp_path / "nowhere"
    cfg = load_config(StampsTrainConfig, SMOKE, [f"data.stamps={missing}"])
    cfg.data.simulate_if_missing = False
    with pytest.raises(ConfigError, match=r"^data.stamps: .*nowhere does not exist"):
        prepare(cfg, log=lambda _: None)
    assert not missing.exists()
    cfg.data.simulate_if_missing = True
    cfg.data.simulate = StampSimConfig(n=12, size=32, seed=0)
    lines = []
    prepare(cfg, log=lines.append)
    assert read_stamps(missing)["stamp"].shape == (12, 32, 32)
    assert "simulate_if_missing" in lines[0]
