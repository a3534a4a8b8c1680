"""The main job a new user runs first: every stage's output exists and is sensible."""

from __future__ import annotations

import json

import pytest

from galray.cli import main

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_quickstart_end_to_end(tmp_path, monkeypatch, ray_session, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), "--epochs", "3"]) == 0
    printed = capsys.readouterr().out
    assert "models:/galray-quickstart@champion" in printed
    assert "mlflow ui --backend-store-uri sqlite:///" in printed
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["n_rows"] == 50_000  # one realization of the deep catalog
    assert report["c2st_auc"] < 0.9  # trained briefly, but far from a random model
    for plot in ("cmd_ri_i.png", "detection_vs_depth.png"):
        assert (out / "report" / plot).stat().st_size > 10_000
    assert (out / "mlflow.db").exists()
    assert json.loads((out / "emulated" / "_emulation.json").read_text())["complete"]
