"""The Python API: ``Emulator.sample`` output forms, ``Emulator.log_prob`` (the flow's exact
likelihood in measured units, checked against finite differences of the training encoding and
brute-force integration over a flag) and ``galray.train_emulator``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

import galray
from galray.datasets.survey import SurveySpec, load_spec
from galray.emulator.bundle import Emulator, build_generator
from galray.emulator.features import EmulatorFeatures
from galray.errors import ConfigError, DataError, GalrayError
from galray.models.emulator import DetectionModel, NetConfig
from galray.models.flow import FlowConfig
from test_features_spec import des_rows

NET = NetConfig(width=16, depth=1, noise_dim=4, detection_width=8, detection_depth=1)
FLOW = FlowConfig(transforms=2, bins=4, width=16, depth=1)


def _emulator(spec: SurveySpec, kind: str = "flow", n: int = 2000) -> tuple[Emulator, dict]:
    rows = des_rows(n)
    features = EmulatorFeatures.fit(rows, spec)
    flow = FLOW if kind == "flow" else None
    torch.manual_seed(0)
    generator = build_generator(features, NET, flow)
    emulator = Emulator(generator, DetectionModel(features.n_cond, NET), features, NET, flow=flow)
    return emulator, rows


def _no_flags_spec() -> SurveySpec:
    data = load_spec("des-y6").to_dict()
    data["outputs"]["flags"] = []
    data["selection"] = "detected & snr > 10"
    return SurveySpec.from_dict(data)


@pytest.fixture(scope="module")
def des():
    return _emulator(load_spec("des-y6"))


@pytest.fixture(scope="module")
def no_flags():
    return _emulator(_no_flags_spec())


# ------------------------------------------------------------------------------ sample


def test_sample_returns_a_frame_for_a_frame_a_dict_for_a_dict_or_what_is_asked(des):
    emulator, rows = des
    inputs = {c: rows[c][:300] for c in emulator.input_columns}
    frame = pd.DataFrame(inputs, index=np.arange(1000, 1300))
    as_dict = emulator.sample(inputs, seed=3)
    as_frame = emulator.sample(frame, seed=3)
    assert isinstance(as_dict, dict) and isinstance(as_frame, pd.DataFrame)
    assert list(as_frame.columns) == emulator.output_columns
    assert (as_frame.index == frame.index).all()  # the caller's rows, the caller's index
    arrow = emulator.sample(inputs, seed=3, output="arrow")
    assert isinstance(arrow, pa.Table) and arrow.column_names == emulator.output_columns
    dict_of_frame = emulator.sample(frame, seed=3, output="dict")
    for name in emulator.output_columns:
        np.testing.assert_array_equal(as_frame[name].to_numpy(), as_dict[name], err_msg=name)
        np.testing.assert_array_equal(arrow[name].to_numpy(), as_dict[name], err_msg=name)
        np.testing.assert_array_equal(dict_of_frame[name], as_dict[name], err_msg=name)
    assert as_frame["obs_flags"].dtype == np.int32 and as_frame["detected"].dtype == bool
    with pytest.raises(ValueError, match="output must be one of frame, dict, arrow"):
        emulator.sample(inputs, output="table")


# ------------------------------------------------------------------------------ log_prob


def _fd_log_jacobian(emulator: Emulator, columns: dict, names: list[str]) -> np.ndarray:
    """sum over ``names`` of log |d target_j / d x_j|, by central finite differences of the
    training encoding (each target depends on its own output only)."""
    features, spec = emulator.features, emulator.spec
    n = len(columns["obs_flux_i"])
    rows = np.ones(n, bool)
    order = spec.flux_columns + spec.measured_columns
    log_jac = np.zeros(n)
    for name in names:
        j = order.index(name)
        x = np.asarray(columns[name], np.float64)
        h = 1e-3 * np.maximum(np.abs(x), 1e-2)
        up = features.encode_target({**columns, name: x + h}, rows)[:, j].astype(np.float64)
        down = features.encode_target({**columns, name: x - h}, rows)[:, j].astype(np.float64)
        log_jac += np.log(np.abs(up - down) / (2 * h))
    return log_jac


def _flow_log_prob(emulator: Emulator, y: np.ndarray, columns: dict) -> np.ndarray:
    cond = torch.from_numpy(emulator.features.encode_cond(columns))
    with torch.no_grad():
        return emulator.generator.log_prob(torch.from_numpy(y).float(), cond).double().numpy()


def test_log_prob_is_the_flow_density_times_the_jacobian_of_the_encoding(no_flags):
    emulator, rows = no_flags
    spec = emulator.spec
    det = np.flatnonzero(rows["detected"])[:40]
    columns = {k: np.asarray(v)[det].astype(np.float64) for k, v in rows.items()}
    y = emulator.features.encode_target(columns, np.ones(len(det), bool))
    names = spec.flux_columns + spec.measured_columns  # fluxes, flux errors (log), snr (log), T
    want = _flow_log_prob(emulator, y, columns) + _fd_log_jacobian(emulator, columns, names)
    got = emulator.log_prob(columns)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=2e-3)
    # the measured values as their own frame give the same; a changed flux changes the density
    measured = pd.DataFrame({c: columns[c] for c in names})
    np.testing.assert_allclose(emulator.log_prob(columns, measured), got)
    moved = {**columns, "obs_flux_i": columns["obs_flux_i"] * 1.5}
    assert not np.allclose(emulator.log_prob(moved), got)


def test_log_prob_of_a_flag_is_the_mass_of_the_values_that_decode_to_it(des):
    emulator, rows = des
    features, spec = emulator.features, emulator.spec
    det = np.flatnonzero(rows["detected"])[:3]
    columns = {k: np.asarray(v)[det] for k, v in rows.items()}
    values = features.flag_values["flags"]
    got = np.array(
        [emulator.log_prob({**columns, "obs_flags": np.full(len(det), v)}) for v in values]
    )  # [values, rows]
    continuous = [c for c in spec.flux_columns + spec.measured_columns if c != "obs_flags"]
    log_jac = _fd_log_jacobian(emulator, columns, continuous)
    # brute force: the flow's density on a dense grid of the flag's (unstandardised) coordinate,
    # integrated over the cells that decode to each value (floor, clipped to the values seen)
    j = features.n_target - 1
    mean, std = features.target_mean[j], features.target_std[j]
    grid = np.linspace(-15.0, len(values) + 15.0, 6001)
    cell = np.clip(np.floor(grid), 0, len(values) - 1)
    y0 = features.encode_target(columns, np.ones(len(det), bool))
    for r in range(len(det)):
        y = np.repeat(y0[r : r + 1], len(grid), axis=0)
        y[:, j] = (grid - mean) / std
        one = {k: np.repeat(v[r : r + 1], len(grid)) for k, v in columns.items()}
        density = np.exp(_flow_log_prob(emulator, y, one)) / std
        masses = np.array(
            [np.trapezoid(np.where(cell == k, density, 0.0), grid) for k in range(len(values))]
        )
        np.testing.assert_allclose(got[:, r] - log_jac[r], np.log(masses), atol=0.02)
        # the cells cover the whole line: the masses add up to the flow's marginal
        total = np.trapezoid(density, grid)
        np.testing.assert_allclose(np.exp(got[:, r] - log_jac[r]).sum(), total, rtol=0.02)


def test_log_prob_with_detection_scores_non_detections_by_the_detection_model(des):
    emulator, rows = des
    inputs = {c: rows[c][:200] for c in emulator.input_columns}
    out = emulator.sample(inputs, seed=2)
    det = out["detected"]
    assert 0 < det.sum() < len(det)
    given = emulator.log_prob(inputs, out)
    assert np.isnan(given[~det]).all() and np.isfinite(given[det]).all()
    joint = emulator.log_prob(inputs, out, detection=True)
    p = out["p_detected"].astype(np.float64)
    np.testing.assert_allclose(joint[~det], np.log1p(-p[~det]), rtol=1e-5)
    np.testing.assert_allclose(joint[det], given[det] + np.log(p[det]), rtol=1e-5)
    # a flag value never seen in training has probability 0
    unseen = {**out, "obs_flags": np.where(det, 2, 0)}
    assert np.isneginf(emulator.log_prob(inputs, unseen)[det]).all()


def test_log_prob_refuses_a_gan_and_bad_input(des):
    gan, rows = _emulator(load_spec("des-y6"), kind="gan", n=600)
    with pytest.raises(GalrayError, match="a GAN has no likelihood"):
        gan.log_prob(rows)
    emulator, rows = des
    inputs = {c: rows[c][:10] for c in emulator.input_columns}
    with pytest.raises(DataError, match="missing measured column"):
        emulator.log_prob(inputs, {"obs_flux_i": rows["obs_flux_i"][:10]})
    with pytest.raises(DataError, match="needs a 'detected' column"):
        emulator.log_prob({k: v[:10] for k, v in rows.items() if k != "detected"}, detection=True)
    nan_flux = {k: np.asarray(v[:10], dtype=float) for k, v in rows.items() if k != "detected"}
    nan_flux["obs_flux_i"][3] = np.nan
    with pytest.raises(DataError, match="non-finite obs_flux_i"):
        emulator.log_prob(nan_flux)


# ------------------------------------------------------------------------------ train_emulator


def test_train_emulator_takes_a_path_a_dict_or_a_config(tmp_path, monkeypatch):
    from galray.emulator.config import EmulatorTrainConfig
    from galray.emulator.spec import SPEC
    from galray.training import job

    calls = []
    monkeypatch.setattr(job, "run_training", lambda spec, cfg, **kw: calls.append((spec, cfg, kw)))
    path = tmp_path / "c.yaml"
    path.write_text("model: flow\nepochs: 4\ndata:\n  survey: data/s\n")
    galray.train_emulator(path, overrides=["optim.batch_size=128"], resume="run-1")
    galray.train_emulator({"model": "flow", "epochs": 4, "data": {"survey": "data/s"}})
    cfg = EmulatorTrainConfig(model="flow", epochs=4)
    galray.train_emulator(cfg, overrides=["epochs=6"])
    spec, first, kw = calls[0]
    assert spec is SPEC and kw["resume"] == "run-1"
    assert isinstance(first, EmulatorTrainConfig)
    assert (first.model, first.epochs, first.data.survey) == ("flow", 4, "data/s")
    assert first.optim.batch_size == 128
    assert calls[1][1].data.survey == "data/s" and calls[1][2]["resume"] is None
    assert calls[2][1].epochs == 6 and cfg.epochs == 4  # the caller's object is not changed
    with pytest.raises(ConfigError, match="epochz: unknown field"):
        galray.train_emulator({"epochz": 3})
    with pytest.raises(ConfigError, match="config: expected a YAML path, a dict"):
        galray.train_emulator(42)
    assert len(calls) == 3


def test_import_galray_stays_light_and_finds_train_emulator():
    import subprocess
    import sys

    code = (
        "import sys, galray\n"
        "heavy = [m for m in ('ray', 'torch', 'mlflow') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert callable(galray.train_emulator) and callable(galray.train)\n"
        "heavy = [m for m in ('ray', 'torch', 'mlflow') if m in sys.modules]\n"
        "assert not heavy, heavy\n"  # finding the entry points imports no trainer either
        "print(galray.train_emulator.__module__, galray.train.__module__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["galray.emulator.train", "galray.products"]


# ------------------------------------------------------------------------------ galray.train


@pytest.mark.parametrize(
    ("kind", "product"),
    [
        ("emulator", "emulator"),
        ("deepfield", "deepfield"),
        ("sgan", "deepfield"),
        ("stamps", "stamps"),
        ("estimator", "estimator"),
    ],
)
def test_galray_train_is_what_the_cli_runs_for_every_product(tmp_path, monkeypatch, kind, product):
    from galray import cli, products

    class Called(Exception):
        pass

    def fake(kind, config, **kw):
        raise Called(kind, config, kw)

    monkeypatch.setattr(products, "train", fake)
    path = tmp_path / "c.yaml"
    path.write_text("seed: 5\n")
    with pytest.raises(Called) as called:
        cli.main(["train", kind, "--config", str(path), "--set", "epochs=2"])
    got, config, kw = called.value.args
    assert got == product and kw == {"resume": None}  # sgan: the name it stands for
    assert isinstance(config, products.get_product(product).config_cls)
    assert (config.seed, config.epochs) == (5, 2)


def test_galray_train_takes_a_path_a_dict_or_a_config_and_field_overrides(tmp_path, monkeypatch):
    from galray.deepfield.spec import SPEC as DEEPFIELD
    from galray.emulator.config import EmulatorTrainConfig
    from galray.emulator.spec import SPEC as EMULATOR
    from galray.stamps.spec import SPEC as STAMPS
    from galray.training import job

    calls = []

    def fake(spec, cfg, **kw):
        calls.append((spec, cfg, kw))
        return f"result {len(calls)}"

    monkeypatch.setattr(job, "run_training", fake)
    path = tmp_path / "c.yaml"
    path.write_text("model: flow\nepochs: 4\noptim:\n  batch_size: 512\n  lr_generator: 0.002\n")
    result = galray.train("emulator", path, epochs=3, optim={"batch_size": 128}, resume="run-1")
    assert result == "result 1"  # what the job returns, as the CLI gets it
    spec, cfg, kw = calls[-1]
    assert spec is EMULATOR and kw["resume"] == "run-1"
    assert (cfg.model, cfg.epochs, cfg.optim.batch_size) == ("flow", 3, 128)
    assert cfg.optim.lr_generator == 0.002  # a section given in part keeps its other fields

    galray.train("sgan", {"epochs": 2, "net": {"pack": 4}})
    spec, cfg, kw = calls[-1]
    assert spec is DEEPFIELD and kw["resume"] is None
    assert (cfg.epochs, cfg.net.pack) == (2, 4)

    base = EmulatorTrainConfig(model="flow", epochs=4)
    galray.train("emulator", base, seed=9)
    assert calls[-1][1].seed == 9 and base.seed != 9  # the caller's object is not changed
    galray.train("emulator", base)
    assert calls[-1][1] is base

    galray.train("stamps")  # the product's defaults
    assert calls[-1][0] is STAMPS

    n = len(calls)
    with pytest.raises(ConfigError, match="epochz: unknown field"):
        galray.train("estimator", {}, epochz=3)
    with pytest.raises(ConfigError, match=r"optim\.batch_sise: unknown field"):
        galray.train("emulator", None, optim={"batch_sise": 3})
    with pytest.raises(
        ConfigError, match="config: expected a YAML path, a dict or a StampsTrainConfig"
    ):
        galray.train("stamps", base)  # another product's config
    with pytest.raises(ConfigError, match="product: 'vae' is not a galray product"):
        galray.train("vae", {})
    assert len(calls) == n  # a bad config starts nothing
