"""Commands that do not need Ray do not start it: ``galray evaluate emulator`` on a local catalog
reads its rows with pyarrow (``TrainingCatalog.table``), the same rows, in the same order, as the
Ray Data pipeline training reads (``TrainingCatalog.dataset``), so its report is unchanged;
``galray config show`` starts nothing.  (``ingest`` and ``simulate``: tests/test_console.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pandas as pd
import pyarrow.parquet as pq
import pytest

from galray.datasets.reader import TrainingCatalog
from galray.datasets.simulate import SurveyConfig, simulate_survey
from galray.emulator.spec import evaluate_on_split
from tiny_emulator import untrained_emulator


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    """A small simulated survey, the same injections again in row groups of 500 rows, and an
    untrained emulator bundle (its scores do not matter, only that they are reproduced)."""
    root = tmp_path_factory.mktemp("no-ray")
    cfg = SurveyConfig(n_injections=4000, n_deep=600, nside=16, seed=5, write_fits_maps=False)
    simulate_survey(root / "survey", cfg, log=lambda *_: None)
    table = pq.read_table(root / "survey" / "injections")  # keeps the HEALPix metadata
    (root / "grouped").mkdir()
    pq.write_table(table, root / "grouped" / "part-00000.parquet", row_group_size=500)
    emulator = untrained_emulator(root / "survey", nside=16)
    return {"root": root, "bundle": emulator.save(root / "emulator"), "emulator": emulator}


def _catalog(root, shards="survey/injections") -> TrainingCatalog:
    return TrainingCatalog(root / shards, root / "survey" / "maps", max_outside_fraction=1.0)


def test_evaluate_emulator_and_config_show_do_not_start_ray(survey, tmp_path):
    root = survey["root"]
    evaluate = ["evaluate", "emulator", "--model", str(survey["bundle"])]
    evaluate += ["--data", str(root / "survey"), "--out", "report", "--rows", "150"]
    code = f"""
    import json, sys
    from galray.cli import main
    out = {{}}
    for argv in ({["config", "show", "emulator"]!r}, {[*evaluate, "--no-mlflow"]!r}):
        rc = main(argv)
        ray = sys.modules.get("ray")
        out[argv[0]] = [rc, ray is not None and ray.is_initialized(), ray is not None]
    print("RESULT", json.dumps(out))
    """
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.rsplit("RESULT ", 1)[1])
    # [exit code, Ray started, Ray imported]
    assert result == {"config": [0, False, False], "evaluate": [0, False, False]}
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["n_rows"] == 150  # of the test split's ~190: read, cut and scored
    assert not list(tmp_path.glob("**/session_*"))  # no Ray session directory either


@pytest.mark.ray
@pytest.mark.parametrize("shards", ["survey/injections", "grouped"])
def test_local_rows_are_the_ray_pipeline_rows(survey, shards, ray_session):
    catalog = _catalog(survey["root"], shards)
    cols = ["id", "true_mag_r", "obs_flux_i", "detected"]
    for split in ("test", "train", None):
        local = catalog.table(split, cols).to_pandas()
        piped = catalog.dataset(split, cols).to_pandas()
        assert len(local) > 100 and list(local.columns) == cols + catalog.condition_columns
        # Ray Data may hand blocks over in any order when a catalog reads as several pieces;
        # its frames hold pyarrow-backed dtypes (int64[pyarrow]), pyarrow's numpy ones
        pd.testing.assert_frame_equal(
            local.sort_values("id", ignore_index=True),
            piped.sort_values("id", ignore_index=True),
            check_dtype=False,
        )
        assert local["id"].dtype == "int64" and local["true_mag_r"].dtype.kind == "f"
        # the first rows in catalog order: the early stop cuts across row groups
        first = catalog.table(split, cols, max_rows=len(local) // 3 + 7).to_pandas()
        pd.testing.assert_frame_equal(first, local.iloc[: len(first)])


@pytest.mark.ray
def test_evaluation_report_unchanged_from_the_ray_read(survey, tmp_path, ray_session):
    """The report scored from pyarrow's rows equals the one scored from the Ray Data rows the
    evaluation used before (the catalog reads as one piece, so both keep catalog order)."""

    class RayRead:  # the catalog as evaluate_on_split read it before: Ray Data, then limit
        def __init__(self, catalog):
            self.catalog = catalog

        def __getattr__(self, name):
            return getattr(self.catalog, name)

        def table(self, split, columns, max_rows):
            rows = self.catalog.dataset(split, columns).limit(max_rows).to_pandas()
            return _Frame(rows)

    catalog = _catalog(survey["root"])
    emulator = survey["emulator"]
    kw = {"split": "train", "seed": 3}
    new = evaluate_on_split(emulator, catalog, tmp_path / "pyarrow", 700, **kw)
    old = evaluate_on_split(emulator, RayRead(catalog), tmp_path / "ray", 700, **kw)
    assert new["n_rows"] == 700
    assert json.dumps(new, sort_keys=True) == json.dumps(old, sort_keys=True)


class _Frame:
    """What ``TrainingCatalog.table`` returns, as far as evaluate_on_split uses it."""

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame

    def to_pandas(self) -> pd.DataFrame:
        return self.frame
