"""Every output traces back to the model that made it: the emulated catalog's manifest, the
evaluation report and the generated FITS header record the model's registered name, the
version its alias pointed at, the training run's id, galray's version and the seed -- for models
loaded from a local MLflow registry (and, where no registry is involved, a bundle directory)."""

from __future__ import annotations

import json
import shutil
import subprocess

import mlflow
import numpy as np
import pytest
from astropy.io import fits
from mlflow.tracking import MlflowClient

import galray
from galray.cli import main
from galray.datasets.simulate import SurveyConfig, simulate_survey
from galray.emulator.emulate import EmulateConfig, emulate
from galray.emulator.manifest import MANIFEST
from tiny_emulator import untrained_emulator

pytestmark = pytest.mark.ray

EMU = "galray-prov-emulator"
SGAN = "galray-prov-sgan"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A local SQLite registry holding two versions of an emulator (the alias on the second)
    and one deep-field generator, each logged in its own run; a small simulated survey."""
    root = tmp_path_factory.mktemp("provenance")
    cfg = SurveyConfig(n_injections=6000, n_deep=800, nside=16, seed=3, write_fits_maps=False)
    simulate_survey(root / "survey", cfg, log=lambda *_: None)
    info = {"run_id": "local-training-run"}
    bundle = untrained_emulator(root / "survey", nside=16, info=info).save(root / "emulator")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")  # over one an earlier test set
        mp.chdir(root)
        from galray.deepfield.registry import KIND as SGAN_KIND
        from galray.emulator.registry import log_emulator
        from test_deepfield_generate import _model

        refs = [log_emulator(bundle, registered_name=EMU, alias="champion") for _ in range(2)]
        sgan = _model().save(root / "sgan")
        sgan_ref = SGAN_KIND.log(sgan, registered_name=SGAN, alias="champion")
        yield {"root": root, "bundle": bundle, "emulator": refs[-1], "sgan": sgan_ref}
    mlflow.set_tracking_uri(None)


def _check_model(record: dict, ref, name: str) -> None:
    assert record["registered_name"] == name
    assert record["version"] == ref.version == int(ref.version)
    assert record["alias"] == "champion"
    assert record["run_id"] == ref.run_id
    assert record["uri"] == f"models:/{name}@champion"
    assert MlflowClient().get_run(record["run_id"]).info.run_id == ref.run_id


def test_emulated_catalog_manifest_records_the_registered_model(store, tmp_path, ray_session):
    root, ref = store["root"], store["emulator"]
    assert ref.version == 2  # the alias was moved once: the record must say which version
    cfg = EmulateConfig(
        model=f"models:/{EMU}@champion",
        deep=str(root / "survey" / "deep"),
        maps=str(root / "survey" / "maps" / "conditions.parquet"),
        out=str(tmp_path / "emulated"),
        seed=11,
        chunk_rows=400,
    )
    emulate(cfg, log=lambda *_: None, progress=False)
    manifest = json.loads((tmp_path / "emulated" / MANIFEST).read_text())
    prov = manifest["provenance"]
    _check_model(prov["model"], ref, EMU)
    assert prov["model"]["identity"] == manifest["identity"]["model"]
    assert prov["galray_version"] == galray.__version__ and prov["seed"] == 11
    # a bundle directory: no registry entry, the run id the bundle recorded
    local = EmulateConfig(
        **{**vars(cfg), "model": str(store["bundle"]), "out": str(tmp_path / "b")}
    )
    emulate(local, log=lambda *_: None, progress=False)
    model = json.loads((tmp_path / "b" / MANIFEST).read_text())["provenance"]["model"]
    assert model["uri"] == str(store["bundle"].resolve())
    assert model["registered_name"] is None and model["version"] is None
    assert model["run_id"] == "local-training-run"


def test_evaluation_report_records_the_registered_model(store, tmp_path, ray_session, monkeypatch):
    from galray.evaluation import plots

    titles, save = [], plots.save_figure

    def keep(fig, *args, **kw):
        titles.append(fig._suptitle.get_text())
        save(fig, *args, **kw)

    monkeypatch.setattr(plots, "save_figure", keep)
    root, ref = store["root"], store["emulator"]
    out = tmp_path / "report"
    args = ["evaluate", "emulator", "--model", f"models:/{EMU}@champion"]
    args += ["--data", str(root / "survey"), "--out", str(out), "--rows", "1500", "--seed", "5"]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    prov = report["provenance"]
    _check_model(prov["model"], ref, EMU)
    assert prov["galray_version"] == galray.__version__ and prov["seed"] == 5
    # the evaluation's MLflow run names the version, not only the moving alias
    runs = mlflow.search_runs(experiment_names=["galray-evaluation"], output_format="list")
    params = runs[0].data.params
    assert params["model_version"] == "2" and params["model_run_id"] == ref.run_id
    assert params["model_registered_name"] == EMU
    # and so do the figures' titles
    assert titles and all(t.startswith(f"{EMU} v2 | N = ") and "seed 5" in t for t in titles)


def test_generated_field_header_and_its_evaluation_record_the_generator(store, tmp_path):
    pytest.importorskip("sep")
    from galray.datasets.deepfield import DeepFieldConfig, simulate_deepfield

    ref = store["sgan"]
    field = tmp_path / "field.fits"
    args = ["generate", "deepfield", "--model", f"models:/{SGAN}@champion", "--size", "256x256"]
    assert main([*args, "--tile", "128", "--seed", "9", "--out", str(field)]) == 0
    header = fits.getheader(field, 0)
    assert header["GRMODEL"] == SGAN and header["GRMVER"] == str(ref.version)
    assert header["GRMALIAS"] == "champion" and header["GRRUNID"] == ref.run_id
    assert header["GRMURI"] == f"models:/{SGAN}@champion"
    assert header["GRVERS"] == galray.__version__ and header["GRSEED"] == 9
    assert header.comments["GRRUNID"] == "MLflow run that trained the model"
    if shutil.which("fitsverify"):
        check = subprocess.run(["fitsverify", "-q", str(field)], capture_output=True)
        assert b"verification OK" in check.stdout, check.stdout
    real = tmp_path / "real.fits"
    simulate_deepfield(real, DeepFieldConfig(size=256, seed=2, density=500), log=lambda *_: None)
    out = tmp_path / "report"
    args = ["evaluate", "deepfield", "--real", str(real), "--generated", str(field)]
    assert main([*args, "--out", str(out), "--no-mlflow"]) == 0
    report = json.loads((out / "report.json").read_text())
    (generated,) = report["provenance"]["generated"]
    assert generated["model"] == SGAN and generated["version"] == str(ref.version)
    assert generated["run_id"] == ref.run_id and generated["seed"] == 9
    assert generated["galray_version"] == galray.__version__
    assert report["provenance"]["galray_version"] == galray.__version__
    for name in report["plots"]:  # the figures too, as PNG and PDF
        assert (out / name).is_file() and (out / name).with_suffix(".pdf").is_file()
    assert np.isfinite(report["n_real"])
