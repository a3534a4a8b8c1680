"""Any survey end to end on Ray: a size-less catalog with the default config, and the LSST-like
preset at smoke size (simulate, train, evaluate, emulate through the CLI)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from galray.cli import main
from galray.datasets.simulate import SurveyConfig, simulate_survey
from galray.io import parquet_files, write_parquet

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _drop_size(directory):
    for path in parquet_files(directory):
        table = pq.read_table(path)
        write_parquet(
            table.drop_columns(["true_size"]).replace_schema_metadata(table.schema.metadata), path
        )


@pytest.fixture
def workdir(tmp_path, monkeypatch, ray_session):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _cli(*args: str) -> int:
    return main([str(a) for a in args])


def test_a_size_less_catalog_trains_evaluates_and_emulates_with_the_default_config(workdir):
    """A catalog as ingested from a DES-format file without a size column and no survey.json:
    the default config with only the data paths set needs no size anywhere."""
    survey = workdir / "survey"
    cfg = SurveyConfig(n_injections=60_000, n_deep=20_000, nside=64, seed=3, write_fits_maps=False)
    simulate_survey(survey, cfg, log=lambda *_: None)
    _drop_size(survey / "injections")
    _drop_size(survey / "deep")
    (survey / "survey.json").unlink()
    paths = [f"data.catalog={survey / 'injections'}", f"data.maps={survey / 'maps'}"]
    small = ["epochs=2", "eval_rows=5000", "scaling.cpus_per_worker=1"]  # time, not behaviour
    sets = [x for s in [*paths, *small] for x in ("--set", s)]
    (workdir / "empty.yaml").write_text("{}\n")
    assert _cli("train", "emulator", "--config", workdir / "empty.yaml", *sets) == 0
    model = "models:/galray-emulator@champion"
    assert (
        _cli(
            "evaluate",
            "emulator",
            "--model",
            model,
            "--data",
            survey,
            "--out",
            workdir / "report",
            "--rows",
            5000,
        )
        == 0
    )
    report = json.loads((workdir / "report" / "report.json").read_text())
    assert report["n_rows"] > 0 and 0.0 <= report["c2st_auc"] <= 1.0
    out = workdir / "emulated"
    assert (
        _cli(
            "emulate",
            "--model",
            model,
            "--deep",
            survey / "deep",
            "--maps",
            survey / "maps",
            "--out",
            out,
        )
        == 0
    )
    table = pq.read_table(out)
    assert "true_size" not in table.column_names
    assert {"detected", "obs_flux_i", "selected"} <= set(table.column_names)


def test_lsst_preset_trains_and_evaluates_at_smoke_size(workdir):
    survey = workdir / "lsst"
    assert (
        _cli(
            "simulate",
            "survey",
            "--preset",
            "lsst",
            "--out",
            survey,
            "--n-injections",
            60_000,
            "--n-deep",
            20_000,
            "--nside",
            64,
            "--no-fits-maps",
        )
        == 0
    )
    (workdir / "flow.yaml").write_text(
        "model: flow\nflow: {transforms: 2, bins: 6, width: 32, depth: 1}\n"
        "optim: {batch_size: 512, lr_generator: 0.002, ema_decay: 0.9}\n"
        "tracking: {registered_name: lsst-smoke}\n"
    )
    sets = [f"data.survey={survey}", "epochs=2", "eval_rows=5000", "scaling.cpus_per_worker=1"]
    assert (
        _cli(
            "train",
            "emulator",
            "--config",
            workdir / "flow.yaml",
            *[x for s in sets for x in ("--set", s)],
        )
        == 0
    )
    report_dir = next((workdir / "galray-runs").glob("*/report"))
    report = json.loads((report_dir / "report.json").read_text())
    assert report["n_rows"] > 0
    assert "ks_obs_flux_err_y" in report and "nz_mean_z_max_abs_diff" in report
