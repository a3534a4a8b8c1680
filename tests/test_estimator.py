"""The measurement yardstick: target transforms, the network's step, the bundle, calibration, the
report's statistics, judging generated stamps, and a smoke Ray Train fit end to end (registered
in MLflow, better than its initialisation, scored by ``galray evaluate estimator``)."""

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
from galray.datasets.stamps import StampSimConfig, read_stamps, simulate_stamps
from galray.errors import ConfigError, DataError, ModelNotFoundError
from galray.estimator.bundle import EstimatorModel
from galray.estimator.config import EstimatorOptimConfig, EstimatorTrainConfig
from galray.estimator.evaluate import bin_table
from galray.estimator.loop import to_device, validation_metrics
from galray.estimator.spec import load_training_stamps, train_estimator
from galray.estimator.step import build_estimator_modules, train_batch
from galray.evaluation.judge import judge_generated
from galray.models.estimator import Estimator, EstimatorNetConfig, Targets, brightness_scale
from galray.training.modules import GradientSync

pytest.importorskip("galsim")
SMOKE = Path(__file__).resolve().parents[1] / "configs" / "estimator-smoke.yaml"
NAMES = ["flux", "sersic_n", "hlr", "g1", "g2"]


@pytest.fixture(scope="module")
def sersic(tmp_path_factory):
    out = tmp_path_factory.mktemp("sersic") / "data"
    cfg = StampSimConfig(
        n=400, population="sersic", size=32, pixel_scale=0.2, mag_range=(20.5, 24.0), seed=1
    )
    simulate_stamps(out, cfg, log=lambda _: None)
    return out


def _config(tmp_path, stamps, *sets: str) -> EstimatorTrainConfig:
    base = [
        f"data.stamps={stamps}",
        f"storage_path={tmp_path / 'runs'}",
        "tracking.registered_name=estimator-test",
        "scaling.cpus_per_worker=1",
    ]
    return load_config(EstimatorTrainConfig, SMOKE, [*base, *sets])


def test_targets_round_trip_every_transform():
    names = ["flux", "mag", "hlr", "g1"]
    targets = Targets(names, ["logflux", "mag", "log", "linear"], [1.0, 2.0, -0.3, 0.0],
                      [0.5, 1.5, 0.2, 0.3])  # fmt: skip
    values = torch.tensor(
        [[1500.0, 22.1, 0.6, -0.1], [300.0, 24.0, 0.35, 0.2]], dtype=torch.float64
    )
    log_scale = torch.tensor([1.2, 0.4], dtype=torch.float64)
    t = targets.standardise(values, log_scale)
    # by hand: the flux relative to the scale, the magnitude plus 2.5 log10 of it
    assert t[0, 0].item() == pytest.approx((np.log10(1500.0) - 1.2 - 1.0) / 0.5)
    assert t[1, 1].item() == pytest.approx((24.0 + 2.5 * 0.4 - 2.0) / 1.5)
    back, err = targets.inverse(t, torch.zeros_like(t), log_scale)
    torch.testing.assert_close(back, values)
    # a unit standardised variance is the std in the parameter's units (delta method for logs)
    assert err[0, 0].item() == pytest.approx(1500.0 * np.log(10) * 0.5)
    assert err[0, 1].item() == pytest.approx(1.5) and err[0, 3].item() == pytest.approx(0.3)


def test_brightness_scale_is_the_smoothed_peak_and_at_least_sigma():
    stamp = torch.zeros(2, 8, 8)
    stamp[0, 4, 4] = 9.0
    scale = brightness_scale(stamp, torch.tensor([0.5, 0.5]))
    assert scale.tolist() == pytest.approx([1.0, 0.5])  # 9 / 9 pixels of the 3x3 box


def test_train_batch_draws_fresh_noise_and_learns(tmp_path, sersic):
    cfg = _config(tmp_path, sersic)
    data = load_training_stamps(cfg)
    assert data.clean and data.targets.names == NAMES and data.population == "sersic"
    device = torch.device("cpu")
    columns = read_stamps(sersic, split="train")
    batch = to_device(columns, NAMES, device)
    index = torch.arange(4)
    torch.manual_seed(0)
    a = batch.rows(index, fresh_noise=True)[0]
    b = batch.rows(index, fresh_noise=True)[0]
    assert not torch.equal(a, b)  # a new noise draw each time
    residual = (a - batch.clean[index]) / batch.sigma[index, None, None]
    assert residual.std().item() == pytest.approx(1.0, abs=0.1)
    torch.testing.assert_close(batch.rows(index, fresh_noise=False)[0], batch.stamp[index])

    opt = EstimatorOptimConfig(batch_size=64, lr=3e-3, ema_decay=0.0)
    m = build_estimator_modules(cfg.net, opt, device, seed=0)
    val = to_device(read_stamps(sersic, split="val"), NAMES, device)
    before = validation_metrics(m.net, val, data.targets, 0.5)["val_mse"]
    gen = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads beside Ray's workers on 2 cores ran 10x slower
    try:
        for _ in range(100):
            train_batch(m, batch, data.targets, opt, True, GradientSync(1), gen)
    finally:
        torch.set_num_threads(threads)
    after = validation_metrics(m.net, val, data.targets, 0.5)["val_mse"]
    assert after < 0.7 * before


def test_bundle_round_trip_calibration_and_input_checks(tmp_path, sersic):
    torch.manual_seed(0)
    net = Estimator(EstimatorNetConfig(size=32, n_targets=5, channels=(4, 8), hidden=16))
    targets = Targets(NAMES, ["logflux", "linear", "log", "linear", "linear"], [0.0] * 5, [1.0] * 5)
    model = EstimatorModel(net, targets, 0.2, "sersic")
    val = read_stamps(sersic, split="val")
    truth = np.stack([val[n] for n in NAMES], 1)
    cal = model.calibrate(val["stamp"], val["psf"], val["noise_sigma"], truth)
    assert len(cal) == 5 and all(c > 0 for c in cal)
    # calibrated: error over uncertainty has unit RMS on the calibration stamps
    mu, log_var, log_scale = model.raw(val["stamp"], val["psf"], val["noise_sigma"])
    z = mu - targets.standardise(torch.as_tensor(truth, dtype=mu.dtype), log_scale)
    z = z * torch.exp(-0.5 * log_var) / torch.tensor(cal)
    assert z.pow(2).mean(0).sqrt().numpy() == pytest.approx(np.ones(5), rel=1e-4)

    path = model.save(tmp_path / "bundle")
    loaded = EstimatorModel.load(path)
    a = model.measure(val["stamp"], val["psf"], val["noise_sigma"])
    b = loaded.measure(val["stamp"], val["psf"], val["noise_sigma"])
    pd.testing.assert_frame_equal(a, b)
    assert list(a.columns) == [c for n in NAMES for c in (n, f"{n}_err")]
    with pytest.raises(DataError, match=r"^stamp: expected \[rows, 32, 32\]"):
        loaded.measure(val["stamp"][:, :16, :16], val["psf"], val["noise_sigma"])
    with pytest.raises(DataError, match=r"^noise_sigma: every value must be finite and positive"):
        loaded.measure(val["stamp"], val["psf"], -val["noise_sigma"])
    (path / "net.pt").write_bytes(b"not a checkpoint" * 50)
    with pytest.raises(ModelNotFoundError, match=r"damaged estimator bundle"):
        EstimatorModel.load(path)


def test_bin_table_measures_errors_in_units_of_the_bound():
    rng = np.random.default_rng(0)
    n = 4000
    snr = np.where(np.arange(n) < n // 2, 30.0, 80.0)
    bound = rng.uniform(0.5, 2.0, (n, 1))
    err = 2.0 * bound * rng.standard_normal((n, 1))  # twice the bound, unbiased
    pred = 2.0 * bound  # uncertainties that are exactly right
    table = bin_table(["hlr"], snr, [10.0, 50.0, 1e9], err, pred, bound, "cnn")
    high = table[table.snr_bin == ">=50"].iloc[0]
    assert high.n == n // 2
    assert high.rmse_over_bound == pytest.approx(2.0, abs=4 * high.rmse_over_bound_se)
    assert abs(high.bias_over_bound) < 4 * high.bias_over_bound_se
    assert high.cov68 == pytest.approx(0.6827, abs=4 * high.cov68_se)
    assert high.cov95 == pytest.approx(0.95, abs=4 * high.cov95_se)
    # the raw RMSE is not in units of the bound: it mixes galaxies of different bounds
    assert high.rmse != pytest.approx(high.rmse_over_bound, rel=0.05)
    # no S/N known (the rich population): one bin of every row
    table = bin_table(["hlr"], np.full(n, np.inf), [], err, pred, None, "cnn")
    assert list(table.snr_bin) == ["all"] and table.n[0] == n
    assert table.rmse[0] == pytest.approx(np.sqrt(np.mean(err**2)))


def test_judge_flags_a_generator_whose_galaxies_measure_too_big():
    rng = np.random.default_rng(1)
    truth = {"hlr": rng.uniform(0.3, 1.0, 500)}
    real = pd.DataFrame({"hlr": truth["hlr"] + 0.02 + 0.05 * rng.standard_normal(500)})
    same = pd.DataFrame({"hlr": truth["hlr"] + 0.02 + 0.05 * rng.standard_normal(500)})
    big = pd.DataFrame({"hlr": truth["hlr"] + 0.15 + 0.05 * rng.standard_normal(500)})
    table, flat = judge_generated(["hlr"], real, same, truth)
    assert flat["judge_within"] and table.bias_real[0] == pytest.approx(0.02, abs=0.01)
    table, flat = judge_generated(["hlr"], real, big, truth)
    assert not flat["judge_within"]
    assert flat["judge_bias_difference_hlr"] == pytest.approx(0.13, abs=0.015)


def test_targets_the_stamps_lack_name_the_field(tmp_path, sersic):
    cfg = _config(tmp_path, sersic, "data.targets=[flux,z]", "net.n_targets=2")
    with pytest.raises(ConfigError, match=r"^data.targets: 'z' is not a column of the stamps"):
        load_training_stamps(cfg)
    cfg = _config(tmp_path, sersic, "net.n_targets=3")
    with pytest.raises(ConfigError, match=r"^net.n_targets: 3, but 5 data.targets"):
        load_training_stamps(cfg)


@pytest.mark.ray
@pytest.mark.slow
def test_smoke_training_registers_an_estimator_scored_against_the_bound(
    tmp_path, sersic, ray_session, monkeypatch, capsys
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    cfg = _config(tmp_path, sersic, "epochs=4", "evaluate.bound_rows=8", "evaluate.fit_rows=2")
    result = train_estimator(cfg, log=lambda *_: None)
    assert result.registered_uri == "models:/estimator-test@champion"
    report = result.report
    assert report["n_rows"] == 40 and "rmse_over_bound_flux" in report
    assert report["seconds_per_galaxy_fit"] > report["seconds_per_galaxy_cnn"]

    import galray.estimator

    model = galray.estimator.load("models:/estimator-test@champion")
    assert model.names == NAMES and model.population == "sersic"
    val = read_stamps(sersic, split="val")
    pyfunc = mlflow.pyfunc.load_model("models:/estimator-test@champion")
    inputs = {k: val[k][:3].astype(np.float32) for k in ("stamp", "psf", "noise_sigma")}
    pd.testing.assert_frame_equal(
        pyfunc.predict(inputs), model.measure(inputs["stamp"], inputs["psf"], inputs["noise_sigma"])
    )

    report_dir = tmp_path / "report"
    args = ["evaluate", "estimator", "--model", "models:/estimator-test@champion"]
    args += ["--data", str(sersic), "--out", str(report_dir), "--rows", "40"]
    assert main([*args, "--bound-rows", "6", "--fit-rows", "2", "--workers", "1"]) == 0
    report = json.loads((report_dir / "report.json").read_text())
    assert {"rmse_over_bound_hlr", "fit_rmse_over_bound_hlr", "cov68_hlr"} <= set(report)
    table = pd.read_csv(report_dir / "estimator_bins.csv")
    assert set(table.estimator) == {"cnn", "cnn_vs_bound", "fit", "cnn_fit_rows"}
    assert (report_dir / "estimator_vs_bound.png").is_file()
    assert (report_dir / "estimator_coverage.pdf").is_file()
    runs = mlflow.search_runs(experiment_names=["galray-evaluation"])
    assert "metrics.test/rmse_over_bound_flux" in runs.columns
    assert "report:" in capsys.readouterr().out
