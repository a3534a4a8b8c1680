"""What a user sees of galray in MLflow: experiments opened as model training (not GenAI), runs
with a description, tags, the training data and only their model's params, metrics in
``train/`` / ``val/`` / ``test/`` sections, registered versions with a description, signature,
input example and complete requirements, evaluation runs tied to a version (never an alias), and
no NaN printed as a headline number.  A real SQLite store and a tiny simulated survey; no
training (scripts/mlflow_screenshots.py looks at the pages of a trained run)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from galray import tracking
from galray.cli import main
from galray.config import load_config
from galray.datasets.simulate import SurveyConfig, simulate_survey
from galray.emulator.config import EmulatorTrainConfig
from galray.emulator.registry import log_emulator
from galray.emulator.spec import GAN_ONLY, SPEC
from galray.training import runs
from galray.training.job import record_run
from galray.training.worker import MlflowEpochLogger
from test_tracking import tiny_emulator

NAME = "pages-emulator"


@pytest.fixture(scope="module")
def survey(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pages") / "survey"
    cfg = SurveyConfig(n_injections=4000, n_deep=2000, nside=16, seed=0, write_fits_maps=False)
    simulate_survey(out, cfg, log=lambda *_: None)
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("pages-store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        mp.chdir(root)
        tracking.configure_tracking()
        yield root


def _config(survey: Path, tmp: Path, model: str, name: str) -> EmulatorTrainConfig:
    sets = {
        "data.survey": str(survey),
        "model": model,
        "storage_path": str(tmp / "runs"),
        "tracking.experiment": "pages",
        "tracking.run_name": name,
        "tracking.registered_name": NAME,
    }
    return load_config(EmulatorTrainConfig, None, [f"{k}={v}" for k, v in sets.items()])


def _open_run(survey: Path, tmp: Path, model: str, name: str):
    """A training run opened as ``galray train`` opens it (no Ray, no training)."""
    cfg = _config(survey, tmp, model, name)
    storage = tmp / "runs"
    target = runs.resolve(SPEC, cfg, storage, None, lambda *_: None)
    catalog = SPEC.load_data(cfg)
    with runs.driver_run(SPEC, cfg, target, storage, lambda *_: None) as run:
        record_run(SPEC, cfg, catalog)
    return MlflowClient().get_run(run.run_id)


@pytest.fixture(scope="module")
def flow_run(store, survey):
    return _open_run(survey, store, "flow", "flow-run")


def test_experiments_open_as_model_training_not_genai(store):
    """MLflow 3's UI opens an experiment without ``mlflow.experimentKind`` in its GenAI view."""
    client = MlflowClient()
    new = tracking.get_or_create_experiment("pages-new")
    assert client.get_experiment(new).tags["mlflow.experimentKind"] == "custom_model_development"
    old = client.create_experiment("pages-made-by-0.1")  # as galray 0.1.0 made them
    assert tracking.get_or_create_experiment("pages-made-by-0.1") == old
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"


def test_trained_summary_links_the_run_page_in_the_model_training_view(
    flow_run, capsys, monkeypatch
):
    """MLflow 3.17's UI opens in its GenAI view whatever the experiment's tags (a browser
    setting): the link galray prints carries ``workflowType=machine_learning``."""
    from types import SimpleNamespace

    from galray.commands.common import print_trained

    result = SimpleNamespace(
        seconds=1.0, metrics={}, run_id=flow_run.info.run_id, model_uri="models:/m-1",
        bundle_path="b", registered_uri=None, checkpoint_path="c", report=None,
    )  # fmt: skip
    print_trained(result, tracking_enabled=True)
    out = capsys.readouterr().out
    experiment = flow_run.info.experiment_id
    page = f"/#/experiments/{experiment}/runs/{flow_run.info.run_id}?workflowType=machine_learning"
    assert f"run page:       http://127.0.0.1:5000{page}" in out
    assert "mlflow ui --backend-store-uri sqlite:///" in out
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000/")
    monkeypatch.setattr(mlflow, "get_run", lambda run_id: flow_run)
    print_trained(result, tracking_enabled=True)
    out = capsys.readouterr().out
    assert f"run page:       http://mlflow.example:5000{page}" in out and "mlflow ui" not in out


def test_run_has_description_tags_and_training_data(flow_run, survey):
    tags = flow_run.data.tags
    assert tags["galray.version"] == galray_version()
    assert tags["galray.product"] == "emulator" and tags["galray.model"] == "flow"
    assert tags["galray.survey"] == "riz"
    commit = tracking.git_commit()
    assert tags.get("galray.git_commit") == commit  # absent outside a git checkout
    note = tags["mlflow.note.content"]
    assert "flow model" in note and str(survey / "injections") in note
    assert f"models:/{NAME}@champion" in note
    (dataset,) = flow_run.inputs.dataset_inputs
    assert json.loads(dataset.dataset.source) == {"uri": str(survey / "injections")}
    assert dataset.dataset.name == "survey" and len(dataset.dataset.digest) == 16
    assert {t.key: t.value for t in dataset.tags}["mlflow.data.context"] == "training"


def test_files_digest_changes_with_the_manifest(tmp_path):
    (tmp_path / "survey.json").write_text('{"name": "riz"}')
    before = tracking.files_digest([tmp_path / "survey.json"], listing=tmp_path)
    (tmp_path / "survey.json").write_text('{"name": "des-y6"}')
    assert tracking.files_digest([tmp_path / "survey.json"], listing=tmp_path) != before


def test_runs_log_only_their_models_params(flow_run, store, survey):
    params = flow_run.data.params
    assert "flow.width" in params and "net.detection_width" in params
    assert "optim.lr_generator" in params and "data.survey" in params
    leaked = [k for k in params if any(k == g or k.startswith(g + ".") for g in GAN_ONLY)]
    assert leaked == []
    gan = _open_run(survey, store, "gan", "gan-run").data.params
    assert "net.width" in gan and "optim.gp_weight" in gan
    assert not [k for k in gan if k.startswith("flow.")]


def test_metrics_are_named_by_split(store, tmp_path):
    run = mlflow.MlflowClient().create_run(tracking.get_or_create_experiment("pages"))
    run_id = run.info.run_id
    logger = MlflowEpochLogger({"tracking_uri": tracking.ensure_tracking(), "run_id": run_id})
    logger.log({"nll": 1.5, "val_swd": 0.2, "train_seconds": 3.0, "epoch": 1}, epoch=1)
    report = {"c2st_auc": 0.51, "ks_r-i": 0.02, "detection_max_abs_diff": math.nan, "seed": 0}
    (tmp_path / "report.json").write_text("{}")
    tracking.log_report(report, tmp_path, run_id=run_id)
    data = MlflowClient().get_run(run_id).data
    assert set(data.metrics) == {
        "train/nll",
        "val/swd",
        "train/seconds",
        "epoch",
        "test/c2st_auc",
        "test/ks_r_minus_i",
    }
    assert "detection_max_abs_diff: no (depth, magnitude) bin" in data.tags[tracking.TAG_MISSING]


@pytest.fixture(scope="module")
def registered(store, flow_run):
    """A tiny emulator registered from the flow run (as ``publish`` does)."""
    bundle = tiny_emulator().save(store / "bundle")
    ref = log_emulator(bundle, registered_name=NAME, alias="champion", run_id=flow_run.info.run_id)
    return ref


def test_registered_version_is_described_with_schema_example_and_requirements(registered):
    client = MlflowClient()
    version = client.get_model_version(NAME, str(registered.version))
    assert "emulator" in version.description and "true_mag_i" in version.description
    assert "flow-run" in version.description  # the run that trained it
    assert client.get_registered_model(NAME).description
    assert version.tags["galray.version"] == galray_version()
    assert version.tags["galray.run_id"] == registered.run_id
    model_dir = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/{registered.version}"))
    info = mlflow.models.Model.load(model_dir)
    inputs = info.signature.inputs.input_names()
    assert inputs == tiny_emulator().input_columns
    example = info.load_input_example(str(model_dir))
    assert list(example.columns) == inputs and len(example) == 3
    assert (example["true_size"] > 0).all()
    requirements = (model_dir / "requirements.txt").read_text().split()
    names = {r.split("==")[0] for r in requirements}
    assert {"galray", "torch", "zuko", "numpy", "mlflow", "pandas"} <= names
    pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}/{registered.version}")
    out = pyfunc.predict(example, params={"seed": 0})  # the example passes the schema
    assert len(out) == 3


def test_headline_never_holds_nan():
    report = {"n_rows": 200, "c2st_auc": 0.5, "detection_max_abs_diff": math.nan}
    report["detection_bins_used"] = 0
    values, warnings = tracking.headline(report, ["n_rows", "c2st_auc", "detection_max_abs_diff"])
    assert values == {"n_rows": 200, "c2st_auc": 0.5, "detection_max_abs_diff": None}
    (line,) = warnings
    assert "detection_max_abs_diff" in line and "--rows" in line and "200 rows scored" in line


def test_training_summary_warns_instead_of_printing_nan():
    from galray.commands.common import fidelity_line, fidelity_warnings

    report = {"n_rows": 300, "c2st_auc": 0.51, "detection_max_abs_diff": math.nan}
    assert fidelity_line(report) == "c2st_auc=0.510"
    (line,) = fidelity_warnings(report)
    assert line.startswith("warning: detection_max_abs_diff is missing: 300 rows scored")
    assert "eval_rows" in line


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.ray
def test_evaluate_records_the_version_and_prints_valid_json(
    registered, survey, store, capsys, ray_session
):
    """``--model ...@champion`` is recorded as the version it resolved to; a NaN headline
    (the test split is too small for the detection bins) is a warning with a hint."""
    out = store / "eval"
    args = ["evaluate", "emulator", "--model", f"models:/{NAME}@champion"]
    assert main([*args, "--data", str(survey), "--out", str(out), "--rows", "1000"]) == 0
    printed = capsys.readouterr()
    headline = _strict(printed.out[printed.out.index("{") : printed.out.rindex("}") + 1])
    assert headline["detection_max_abs_diff"] is None
    assert "warning: detection_max_abs_diff is missing" in printed.err and "--rows" in printed.err
    assert "NaN" not in printed.out + printed.err
    _strict((out / "report.json").read_text())
    (run,) = mlflow.search_runs(experiment_names=["galray-evaluation"], output_format="list")
    version_uri = f"models:/{NAME}/{registered.version}"
    assert run.data.tags["galray.model_version"] == version_uri
    assert run.data.tags["galray.training_run_id"] == registered.run_id
    assert "@" not in run.data.params["model"]
    assert version_uri in run.data.tags["mlflow.note.content"]
    logged_model_id = registered.model_uri.removeprefix("models:/")
    inputs = MlflowClient().get_run(run.info.run_id).inputs
    assert [m.model_id for m in inputs.model_inputs] == [logged_model_id]
    assert not any("NaN" in str(v) for v in run.data.metrics.values())


def galray_version() -> str:
    from galray._version import __version__

    return __version__
