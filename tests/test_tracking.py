"""MLflow round trips against a real SQLite store: log, register, resolve, load, sample."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from galray.emulator.bundle import Emulator
from galray.emulator.features import EmulatorFeatures
from galray.emulator.registry import load_emulator, log_emulator
from galray.emulator.registry import resolve_emulator_uri as resolve_model_uri
from galray.errors import ConfigError, ModelNotFoundError
from galray.models.emulator import ConditionalGenerator, DetectionModel, NetConfig
from galray.registry import ModelRef
from galray.tracking import (
    MAX_PARAM_VALUE,
    configure_tracking,
    flatten_params,
    get_or_create_experiment,
    log_params_flat,
    tracking_uri,
)

BANDS = ["r", "i", "z"]
NAME = "galray-test-emulator"


def tiny_emulator(seed: int = 0) -> Emulator:
    torch.manual_seed(seed)
    features = EmulatorFeatures(
        bands=BANDS,
        use_size=True,
        cond_mean=[0.0] * 10,
        cond_std=[1.0] * 10,
        target_mean=[0.0] * 3,
        target_std=[1.0] * 3,
    )
    net = NetConfig(width=8, depth=1, noise_dim=2, detection_width=8, detection_depth=1)
    generator = ConditionalGenerator(features.n_cond, features.n_target, net)
    detection = DetectionModel(features.n_cond, net)
    with torch.no_grad():
        detection.net[-1].bias.fill_(1.0)  # most rows detected, so fluxes get compared too
    return Emulator(generator, detection, features, net)


def input_rows(n: int = 100, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = {f"true_mag_{b}": rng.uniform(20.0, 25.0, n) for b in BANDS}
    rows["true_size"] = rng.uniform(0.3, 0.7, n)
    for b in BANDS:
        rows[f"psf_fwhm_{b}"] = rng.uniform(0.8, 1.2, n)
        rows[f"depth_{b}"] = rng.uniform(23.0, 24.0, n)
    return rows


def assert_same_samples(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@dataclasses.dataclass
class Store:
    root: Path
    emulator: Emulator
    bundle: Path
    ref: ModelRef
    rows: dict[str, np.ndarray]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    """One SQLite store for the module (creating its tables takes ~2 s) holding one registered
    emulator, logged inside an active run."""
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        mp.chdir(root)
        emulator = tiny_emulator()
        bundle = emulator.save(root / "bundle")
        experiment_id = get_or_create_experiment("galray tests")
        with mlflow.start_run(experiment_id=experiment_id):
            ref = log_emulator(bundle, registered_name=NAME, alias="champion")
        yield Store(root, emulator, bundle, ref, input_rows())


# ---------------------------------------------------------------------- tracking URI
def test_tracking_uri_respects_env(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking_uri() == "http://mlflow.example:5000"


def test_tracking_uri_defaults_to_sqlite_file_in_cwd(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    expected = f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    assert tracking_uri() == expected
    try:
        assert configure_tracking() == expected
        assert mlflow.get_tracking_uri() == expected
    finally:
        mlflow.set_tracking_uri(None)


def test_experiment_artifacts_live_next_to_the_database(store, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # a Ray worker's working directory is elsewhere
    experiment_id = get_or_create_experiment("galray tests")
    assert get_or_create_experiment("galray tests") == experiment_id
    location = MlflowClient().get_experiment(experiment_id).artifact_location
    assert location.endswith(f"{store.root}/mlartifacts/galray_tests")
    assert list((store.root / "mlartifacts" / "galray_tests").rglob("emulator.json"))
    assert not (tmp_path / "mlruns").exists()


# ---------------------------------------------------------------------- round trips
def test_model_ref(store):
    ref = store.ref
    assert (ref.registered_name, ref.version, ref.alias) == (NAME, 1, "champion")
    assert ref.model_uri.startswith("models:/m-")
    assert ref.uri == f"models:/{NAME}@champion"
    assert MlflowClient().get_run(ref.run_id).info.run_id == ref.run_id


@pytest.mark.parametrize("kind", ["alias", "version", "run", "model_id", "path"])
def test_loaded_emulator_samples_identically(store, kind):
    uri = {
        "alias": f"models:/{NAME}@champion",
        "version": f"models:/{NAME}/1",
        "run": f"runs:/{store.ref.run_id}/emulator",
        "model_id": store.ref.model_uri,
        "path": str(store.bundle),
    }[kind]
    if kind == "path":
        assert resolve_model_uri(uri) == store.bundle
    loaded = load_emulator(uri)
    assert_same_samples(
        loaded.sample(store.rows, seed=3), store.emulator.sample(store.rows, seed=3)
    )


def test_pyfunc_predict_matches_sample(store):
    model = mlflow.pyfunc.load_model(store.ref.uri)
    df = pd.DataFrame(store.rows)
    pd.testing.assert_frame_equal(model.predict(df), pd.DataFrame(store.emulator.sample(df)))
    seeded = model.predict(df, params={"seed": 7})
    pd.testing.assert_frame_equal(seeded, pd.DataFrame(store.emulator.sample(df, seed=7)))
    df["depth_r"] = np.int32(24)  # the input schema says double: a 32-bit integer converts
    pd.testing.assert_frame_equal(model.predict(df), pd.DataFrame(store.emulator.sample(df)))
    df["depth_r"] = np.int64(24)  # MLflow refuses to narrow int64 (cast it), naming the column
    with pytest.raises(MlflowException, match="depth_r"):
        model.predict(df)
    assert model.metadata.metadata["galray_input_columns"] == store.emulator.input_columns


def test_log_to_a_run_that_is_not_active(store):
    emulator = tiny_emulator(seed=5)
    bundle = emulator.save(store.root / "bundle-2")
    run = MlflowClient().create_run(get_or_create_experiment("other experiment"))
    assert mlflow.active_run() is None
    ref = log_emulator(bundle, registered_name=NAME, alias="challenger", run_id=run.info.run_id)
    assert (ref.version, ref.run_id) == (2, run.info.run_id)
    model = MlflowClient().get_logged_model(ref.model_uri.removeprefix("models:/"))
    assert model.experiment_id == run.info.experiment_id
    rows = store.rows
    assert_same_samples(load_emulator(ref.uri).sample(rows), emulator.sample(rows))
    assert_same_samples(load_emulator(f"models:/{NAME}/2").sample(rows), emulator.sample(rows))
    assert_same_samples(
        load_emulator(f"models:/{NAME}@champion").sample(rows), store.emulator.sample(rows)
    )


def test_log_without_a_run_starts_one_and_registering_is_optional(store):
    assert mlflow.active_run() is None
    ref = log_emulator(store.bundle, registered_name="", alias=None)
    assert mlflow.active_run() is None
    assert (ref.registered_name, ref.version, ref.uri) == (None, None, ref.model_uri)
    assert MlflowClient().get_run(ref.run_id).info.status == "FINISHED"
    assert resolve_model_uri(ref.uri).joinpath("emulator.json").is_file()


@pytest.mark.parametrize("alias", ["latest", "v2", "bad alias"])
def test_reserved_or_invalid_alias_is_refused_before_logging(store, alias):
    with pytest.raises(ConfigError, match=r"tracking\.alias"):
        log_emulator(store.bundle, registered_name="never-registered", alias=alias)
    assert not MlflowClient().search_registered_models("name = 'never-registered'")


# ---------------------------------------------------------------------- failures
@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("models:/no-such-model@champion", "no registered model 'no-such-model'"),
        (f"models:/{NAME}@prod", "has no alias 'prod' (aliases: "),
        (f"models:/{NAME}/99", "has no version 99"),
        ("models:/no-such-model/1", "no registered model 'no-such-model'"),
        ("models:/m-0123456789abcdef", "no logged model 'm-0123456789abcdef'"),
        ("runs:/0123456789abcdef0123456789abcdef/emulator", "no run"),
        ("RUN/no-such-artifact", "cannot download"),
    ],
)
def test_unresolvable_uris_raise_model_not_found(store, uri, says):
    uri = uri.replace("RUN", f"runs:/{store.ref.run_id}")
    with pytest.raises(ModelNotFoundError) as caught:
        load_emulator(uri)
    assert str(caught.value).startswith(f"{uri}: ")
    assert says in str(caught.value)


def test_unresolvable_paths_raise_model_not_found(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(ModelNotFoundError, match=f"{missing}: no such file"):
        resolve_model_uri(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="not a galray emulator"):
        load_emulator(str(tmp_path / "empty"))


def test_log_refuses_a_directory_that_is_not_a_bundle(store, tmp_path):
    with pytest.raises(ModelNotFoundError, match="not a galray emulator"):
        log_emulator(tmp_path, registered_name=NAME, alias="champion")


# ---------------------------------------------------------------------- params
def test_flatten_params():
    net = NetConfig(width=8, depth=1)
    flat = flatten_params(
        {
            "net": net,
            "data": {"bands": ["r", "i"], "cuts": {"mag max": 25.0}},
            "long": "x" * 10_000,
        },
        prefix="job.",
    )
    assert flat["job.net.width"] == "8"
    assert flat["job.data.bands"] == "['r', 'i']"
    assert flat["job.data.cuts.mag max"] == "25.0"
    assert len(flat["job.long"]) == MAX_PARAM_VALUE
    assert flat["job.long"].endswith("...[truncated]")
    assert flatten_params({"a:b(c)": 1}) == {"a_b_c_": "1"}


def test_log_params_flat(store):
    with mlflow.start_run(experiment_id=get_or_create_experiment("galray tests")) as run:
        logged = log_params_flat({"optim": {"lr": 1e-3, "betas": [0.5, 0.9]}, "epochs": 3})
    params = MlflowClient().get_run(run.info.run_id).data.params
    assert params == logged == {"optim.lr": "0.001", "optim.betas": "[0.5, 0.9]", "epochs": "3"}
