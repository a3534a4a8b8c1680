"""Survey emulation: determinism across workers, resume after a kill, bad inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from galray.datasets.simulate import SurveyConfig, simulate_survey
from galray.emulator.emulate import MANIFEST, EmulateConfig, emulate, plan_shards
from galray.errors import DataError, ModelNotFoundError, OutputExistsError
from tiny_emulator import untrained_emulator

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("emulate")
    cfg = SurveyConfig(n_injections=20_000, n_deep=6_000, nside=32, seed=2, write_fits_maps=False)
    simulate_survey(root / "survey", cfg, log=lambda *_: None)
    model = untrained_emulator(root / "survey", nside=32).save(root / "model")
    return root, model


def _cfg(setup, out, **kw):
    root, model = setup
    args = dict(
        model=str(model),
        deep=str(root / "survey" / "deep"),
        maps=str(root / "survey" / "maps" / "conditions.parquet"),
        out=str(out),
        realizations=2,
        seed=7,
        chunk_rows=1500,
    )
    args.update(kw)
    return EmulateConfig(**args)


def _read(out):
    return pq.read_table(out).to_pandas().sort_values(["realization", "id"]).reset_index(drop=True)


def test_same_output_for_one_or_two_workers(setup, tmp_path, ray_session):
    one = emulate(_cfg(setup, tmp_path / "one", workers=1), log=lambda *_: None, progress=False)
    two = emulate(_cfg(setup, tmp_path / "two", workers=2), log=lambda *_: None, progress=False)
    assert one["rows"] == two["rows"] == 2 * 6000
    a, b = _read(tmp_path / "one"), _read(tmp_path / "two")
    assert a.equals(b)
    assert set(a.columns) >= {
        "id",
        "realization",
        "ra",
        "dec",
        "pixel",
        "depth_i",
        "detected",
        "obs_mag_i",
    }
    # realizations differ in position and noise, not in what was injected
    r0, r1 = a[a.realization == 0], a[a.realization == 1]
    assert (r0.deep_id.to_numpy() == r1.deep_id.to_numpy()).all()
    assert not np.allclose(r0.ra.to_numpy(), r1.ra.to_numpy())
    assert np.isnan(a.obs_mag_i[~a.detected]).all()
    manifest = json.loads((tmp_path / "one" / "_emulation.json").read_text())
    assert manifest["complete"] and manifest["detected"] == int(a.detected.sum())


def test_positions_lie_on_the_footprint(setup, tmp_path, ray_session):
    import healpy as hp

    emulate(_cfg(setup, tmp_path / "o", realizations=1), log=lambda *_: None, progress=False)
    t = _read(tmp_path / "o")
    np.testing.assert_array_equal(t.pixel, hp.ang2pix(32, t.ra, t.dec, lonlat=True))
    cond = (
        pq.read_table(setup[0] / "survey" / "maps" / "conditions.parquet")
        .to_pandas()
        .set_index("pixel")
    )
    np.testing.assert_array_equal(t.depth_i.to_numpy(), cond.depth_i.reindex(t.pixel).to_numpy())


def test_killed_run_resumes_without_duplicates(setup, tmp_path, ray_join):
    root, model = setup
    out = tmp_path / "killed"
    cmd = [
        sys.executable, "-m", "galray.cli", "emulate", "--model", str(model),
        "--deep", str(root / "survey" / "deep"), "--maps", str(root / "survey" / "maps"),
        "--out", str(out), "--realizations", "6", "--seed", "7", "--chunk-rows", "500",
        "--workers", "1",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, **ray_join),  # a driver on a running cluster
    )
    try:
        deadline = time.time() + 180
        while time.time() < deadline and len(list(out.glob("part-*.parquet"))) < 3:
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    partial = len(list(out.glob("part-*.parquet")))
    total = len(plan_shards(6000, 6, 500))
    assert 3 <= partial < total
    with pytest.raises(OutputExistsError, match="--resume"):
        emulate(
            _cfg(setup, out, realizations=6, chunk_rows=500), log=lambda *_: None, progress=False
        )
    with pytest.raises(OutputExistsError, match="seed"):
        emulate(
            _cfg(setup, out, realizations=6, chunk_rows=500, seed=8, resume=True),
            log=lambda *_: None,
        )
    recorded = json.loads((out / MANIFEST).read_text())["identity"]["precision"]
    assert recorded in ("fp32", "bf16")  # auto, resolved on the driver
    other = "fp32" if recorded == "bf16" else "bf16"
    with pytest.raises(OutputExistsError, match=f"precision was '{recorded}', now '{other}'"):
        emulate(
            _cfg(setup, out, realizations=6, chunk_rows=500, precision=other, resume=True),
            log=lambda *_: None,
        )
    summary = emulate(
        _cfg(setup, out, realizations=6, chunk_rows=500, resume=True),
        log=lambda *_: None,
        progress=False,
    )
    t = _read(out)
    assert summary["rows"] == len(t) == 6 * 6000
    assert not t.duplicated(["realization", "id"]).any()
    assert not list(out.glob(".*tmp*"))
    # what the resumed run wrote equals an uninterrupted run
    emulate(
        _cfg(setup, tmp_path / "clean", realizations=6, chunk_rows=500),
        log=lambda *_: None,
        progress=False,
    )
    assert t.equals(_read(tmp_path / "clean"))


def test_bad_inputs_leave_no_output(setup, tmp_path, ray_session):
    root, _ = setup
    out = tmp_path / "bad"
    with pytest.raises(ModelNotFoundError, match="models:/absent@x"):
        emulate(_cfg(setup, out, model="models:/absent@x"), log=lambda *_: None)
    deep = pq.read_table(root / "survey" / "deep").drop(["true_mag_z"])
    pq.write_table(deep, tmp_path / "deep.parquet")
    with pytest.raises(DataError, match="true_mag_z"):
        emulate(_cfg(setup, out, deep=str(tmp_path / "deep.parquet")), log=lambda *_: None)
    other = SurveyConfig(n_injections=100, n_deep=100, nside=64, write_fits_maps=False)
    simulate_survey(tmp_path / "other", other, log=lambda *_: None)
    with pytest.raises(DataError, match="nside"):
        emulate(
            _cfg(setup, out, maps=str(tmp_path / "other" / "maps" / "conditions.parquet")),
            log=lambda *_: None,
        )
    assert not out.exists()
