"""Emulation under faults: output it does not own, kills, damaged shards, a full disk, model
identity, bad deep input.  Each resumed run must equal an uninterrupted one (hash of the rows
sorted by realization and id).

One tiny survey and one uninterrupted reference run for the module; the fault hook
``GALRAY_EMULATE_FAULT`` (``driver:N``: the driver dies after N shards; ``enospc``: every shard
write fails half-way as on a full disk) is read by the driver and handed to the workers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from galray.cli import main as cli_main
from galray.datasets.simulate import SurveyConfig, simulate_survey
from galray.emulator.emulate import FAULT_ENV, EmulateConfig, InjectedKill, emulate
from galray.emulator.manifest import MANIFEST, check_shard, prepare_output
from galray.errors import DataError, OutputError, OutputExistsError
from galray.models.emulator import NetConfig
from tiny_emulator import untrained_emulator

pytestmark = pytest.mark.ray
N_DEEP, CHUNK = 1200, 300  # 4 shards per realization


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    cfg = SurveyConfig(n_injections=4000, n_deep=N_DEEP, nside=32, seed=3, write_fits_maps=False)
    simulate_survey(root / "survey", cfg, log=lambda *_: None)
    net = NetConfig(width=8, depth=1, noise_dim=2, detection_width=8, detection_depth=1)
    return root, untrained_emulator(root / "survey", nside=32, net=net).save(root / "model")


def _cfg(setup, out, **kw) -> EmulateConfig:
    root, model = setup
    args = dict(
        model=str(model),
        deep=str(root / "survey" / "deep"),
        maps=str(root / "survey" / "maps" / "conditions.parquet"),
        out=str(out),
        realizations=2,
        seed=5,
        chunk_rows=CHUNK,
        workers=1,
    )
    return EmulateConfig(**(args | kw))


def _run(setup, out, lines=None, **kw) -> dict:
    log = lines.append if lines is not None else (lambda *_: None)
    return emulate(_cfg(setup, out, **kw), log=log, progress=False)


def _rows_hash(out: Path) -> str:
    frame = pq.read_table(out).to_pandas().sort_values(["realization", "id"])
    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).values).hexdigest()


def _files(path: Path) -> dict[str, str]:
    """Every file under ``path`` (hidden ones included) -> SHA-256 of its bytes."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory, ray_session):
    out = tmp_path_factory.mktemp("reference") / "out"
    _run(setup, out)
    return out, _rows_hash(out)


def _copy(reference, tmp_path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    return out


# --------------------------------------------------------------------------- ownership


def test_overwrite_refuses_a_directory_it_did_not_write(setup, tmp_path, capsys):
    """A copy of an ingested catalog (part files, no emulation manifest) is never touched."""
    catalog = tmp_path / "catalog"
    shutil.copytree(setup[0] / "survey" / "deep", catalog)
    (catalog / "part-00001.parquet").write_bytes((catalog / "part-00000.parquet").read_bytes())
    before = _files(catalog)
    for flags in ({"overwrite": True}, {"resume": True}, {}):
        with pytest.raises(OutputExistsError, match="not a galray emulation output"):
            _run(setup, catalog, **flags)
    root, model = setup
    argv = ["emulate", "--model", str(model), "--deep", str(root / "survey" / "deep")]
    argv += ["--maps", str(root / "survey" / "maps"), "--out", str(catalog), "--overwrite"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(catalog) in err
    assert _files(catalog) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_overwrite_refuses_an_output_holding_foreign_files(setup, reference, tmp_path):
    out = _copy(reference, tmp_path)
    (out / "notes.txt").write_text("mine")
    before = _files(out)
    with pytest.raises(OutputExistsError, match=r"notes\.txt"):
        _run(setup, out, overwrite=True)
    assert _files(out) == before


def test_killed_overwrite_keeps_the_old_output(setup, reference, tmp_path, monkeypatch):
    out = _copy(reference, tmp_path)
    before = _files(out)
    monkeypatch.setenv(FAULT_ENV, "driver:2")
    with pytest.raises(InjectedKill):
        _run(setup, out, overwrite=True, seed=6)
    assert _files(out) == before  # the old run, untouched
    staging = [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]
    assert len(staging) == 1 and any(staging[0].glob("part-*.parquet"))
    monkeypatch.delenv(FAULT_ENV)
    lines: list[str] = []
    _run(setup, out, lines, overwrite=True, seed=6)
    assert any("killed --overwrite" in line for line in lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # staging dirs gone
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["complete"] and manifest["identity"]["seed"] == 6
    assert _rows_hash(out) != reference[1]


def test_a_second_emulate_of_a_live_output_is_refused(reference, tmp_path):
    """Two emulate runs of one output at once: the second (--overwrite or --resume) is refused
    while the first holds the output's lock; once the first is dead, an --overwrite removes its
    staging directory, but never one a live run still holds."""
    out = _copy(reference, tmp_path)
    identity = json.loads((out / MANIFEST).read_text())["identity"]
    lines: list[str] = []
    first = prepare_output(out, identity, overwrite=True, resume=False, log=lines.append)
    for flags in ({"overwrite": True, "resume": False}, {"overwrite": False, "resume": True}):
        with pytest.raises(OutputExistsError, match="another galray emulate is writing here"):
            prepare_output(out, identity, log=lines.append, **flags)
    assert first.work.is_dir()
    first.release()  # the first run dies: its staging directory is stale now
    second = prepare_output(out, identity, overwrite=True, resume=False, log=lines.append)
    assert not first.work.exists()
    assert any("removed the unfinished output" in line for line in lines)
    os.close(second.locks.pop())  # the output's lock gone, its staging directory's still held
    third = prepare_output(out, identity, overwrite=True, resume=False, log=lines.append)
    assert second.work.is_dir()
    assert any("left alone" in line and str(second.work) in line for line in lines)
    second.discard()
    third.discard()
    third.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_resume_removes_a_killed_overwrites_staging_directory(reference, tmp_path):
    """A killed --overwrite leaves its staging directory beside the output; finishing the old
    run with --resume (not only a later --overwrite) removes it."""
    out = _copy(reference, tmp_path)
    identity = json.loads((out / MANIFEST).read_text())["identity"]
    dead = prepare_output(out, identity, overwrite=True, resume=False, log=lambda *_: None)
    (dead.work / "part-r0000-c00000.parquet").write_bytes(b"half a shard")
    dead.release()  # the --overwrite run is killed
    lines: list[str] = []
    resumed = prepare_output(out, identity, overwrite=False, resume=True, log=lines.append)
    assert not dead.work.exists()
    assert any("removed the unfinished output" in line for line in lines)
    resumed.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_filesystem_without_directory_locks_is_used_not_refused(reference, tmp_path, monkeypatch):
    """On NFS, flock of a directory fails with EBADF (Linux emulates it with a byte-range lock,
    which needs a descriptor open for writing): emulate must still run there -- saying that a
    concurrent run would go unnoticed -- and must leave staging directories alone, since it
    cannot tell a dead run's from a live one's."""
    import errno

    from galray.emulator import manifest as manifest_module

    def no_locks(fd, op):
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    out = _copy(reference, tmp_path)
    identity = json.loads((out / MANIFEST).read_text())["identity"]
    dead = prepare_output(out, identity, overwrite=True, resume=False, log=lambda *_: None)
    dead.release()  # a killed --overwrite, on a filesystem that locks
    monkeypatch.setattr(manifest_module.fcntl, "flock", no_locks)
    lines: list[str] = []
    resumed = prepare_output(out, identity, overwrite=False, resume=True, log=lines.append)
    assert any("cannot lock the directory" in line for line in lines)
    assert dead.work.is_dir() and any("left alone" in line for line in lines)
    said: list[str] = []
    fresh = prepare_output(
        tmp_path / "new", identity, overwrite=False, resume=False, log=said.append
    )
    assert (tmp_path / "new" / MANIFEST).is_file()
    assert any("cannot lock the directory" in line for line in said)
    for run in (resumed, fresh):
        run.release()


def test_a_run_from_before_precision_was_recorded_resumes_as_fp32(reference, tmp_path):
    """Runs emulated before the precision was part of a run's identity were float32: they
    resume with fp32, and another precision is refused with the option that finishes them."""
    out = _copy(reference, tmp_path)
    manifest = json.loads((out / MANIFEST).read_text())
    identity = manifest["identity"]
    del manifest["identity"]["precision"]
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(
        OutputExistsError, match="precision was 'fp32', now 'bf16'; pass --precision fp32"
    ):
        prepare_output(out, {**identity, "precision": "bf16"}, overwrite=False, resume=True)
    prepare_output(out, {**identity, "precision": "fp32"}, overwrite=False, resume=True).release()


# --------------------------------------------------------------------------- resume


def _corrupt_data_page(path: Path) -> None:
    """Flip bytes in the middle of the largest column chunk's data (not its footer)."""
    meta = pq.read_metadata(path).row_group(0)
    chunk = max(
        (meta.column(i) for i in range(meta.num_columns)), key=lambda c: c.total_compressed_size
    )
    at = chunk.data_page_offset + chunk.total_compressed_size // 2
    data = bytearray(path.read_bytes())
    data[at : at + 8] = bytes(255 - b for b in data[at : at + 8])
    path.write_bytes(bytes(data))


def _damage(path: Path, kind: str) -> None:
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "corrupt page":
        _corrupt_data_page(path)


@pytest.mark.parametrize("kind", ["truncated", "empty", "corrupt page"])
@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "unrecorded"])
def test_check_shard_finds_damage(reference, tmp_path, kind, recorded):
    """With the manifest's record (size, SHA-256) or without one (footer, rows, page CRCs)."""
    src = reference[0] / "part-r0000-c00001.parquet"
    record = json.loads((reference[0] / MANIFEST).read_text())["shard_records"][src.name]
    shard = tmp_path / src.name
    shutil.copy(src, shard)
    assert check_shard(shard, CHUNK, record if recorded else None) == (record, None)
    _damage(shard, kind)
    found, problem = check_shard(shard, CHUNK, record if recorded else None)
    assert found is None and problem


def test_resume_redoes_damaged_shards_and_removes_stale_temporaries(setup, reference, tmp_path):
    out = _copy(reference, tmp_path)
    manifest = json.loads((out / MANIFEST).read_text())
    del manifest["shard_records"]["part-r0001-c00002.parquet"]  # written, never recorded
    manifest["complete"] = False
    (out / MANIFEST).write_text(json.dumps(manifest))
    _damage(out / "part-r0000-c00000.parquet", "truncated")
    _damage(out / "part-r0000-c00001.parquet", "empty")
    _damage(out / "part-r0001-c00000.parquet", "corrupt page")
    _damage(out / "part-r0001-c00002.parquet", "corrupt page")
    (out / "part-r0001-c00003.parquet").unlink()  # never written
    (out / ".part-r0001-c00003.parquet.tmp-0badf00d").write_bytes(b"PAR1 half a shard")
    (out / ".notes.txt.tmp-12345678").write_text("not emulate's")
    lines: list[str] = []
    summary = _run(setup, out, lines, resume=True)
    redone = [line.split(":")[0] for line in lines if line.endswith("redoing it")]
    assert sorted(Path(p).name for p in redone) == [
        "part-r0000-c00000.parquet",
        "part-r0000-c00001.parquet",
        "part-r0001-c00000.parquet",
        "part-r0001-c00002.parquet",
    ]
    assert any("removed 1 temporary file" in line for line in lines)
    assert not list(out.glob(".part-*"))
    assert (out / ".notes.txt.tmp-12345678").read_text() == "not emulate's"
    assert summary["rows"] == 2 * N_DEEP and _rows_hash(out) == reference[1]
    assert (
        json.loads((out / MANIFEST).read_text())["shard_records"]
        == json.loads((reference[0] / MANIFEST).read_text())["shard_records"]
    )


def test_killed_driver_then_resume_equals_uninterrupted(setup, reference, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv(FAULT_ENV, "driver:2")
    with pytest.raises(InjectedKill):
        _run(setup, out)
    monkeypatch.delenv(FAULT_ENV)
    with pytest.raises(OutputExistsError, match="--resume"):
        _run(setup, out)
    _run(setup, out, resume=True)
    assert _rows_hash(out) == reference[1]


def test_disk_full_leaves_no_partial_shard(setup, reference, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv(FAULT_ENV, "enospc")
    with pytest.raises(OutputError, match="No space left on device") as err:
        _run(setup, out)
    assert str(out) in str(err.value) and "\n" not in str(err.value)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST]  # no shard, no temporary
    monkeypatch.delenv(FAULT_ENV)
    _run(setup, out, resume=True)
    assert _rows_hash(out) == reference[1]


# --------------------------------------------------------------------------- model identity


def test_model_identity_is_stable_across_downloads(setup, tmp_path, monkeypatch):
    """Two downloads of one registered version (by alias and by number) and the local bundle
    are one identity; the second resolution uses the cache instead of downloading again."""
    import mlflow

    from galray.emulator.model_source import resolve_model
    from galray.emulator.registry import log_emulator

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("GALRAY_CACHE", str(tmp_path / "cache"))
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    ref = log_emulator(setup[1], registered_name="faults-emu", alias="champion")
    downloads = []
    real = mlflow.artifacts.download_artifacts
    monkeypatch.setattr(
        mlflow.artifacts, "download_artifacts", lambda **kw: downloads.append(kw) or real(**kw)
    )
    first = resolve_model("models:/faults-emu@champion", log=lambda *_: None)
    second = resolve_model(f"models:/faults-emu/{ref.version}", log=lambda *_: None)
    local = resolve_model(str(setup[1]))
    assert first.identity == second.identity == local.identity
    assert first.path == second.path and first.path.is_relative_to(tmp_path / "cache")
    assert first.source == second.source == f"models:/faults-emu/{ref.version}"
    assert len(downloads) == 1
    (first.path / "features.json").write_text("{}")  # a damaged cache entry is fetched again
    third = resolve_model("models:/faults-emu@champion", log=lambda *_: None)
    assert third.identity == local.identity and len(downloads) == 2
    # every product's loader (evaluate, galray.emulator.load_emulator) reads the same cache
    from galray.emulator.registry import resolve_emulator_uri

    assert resolve_emulator_uri("models:/faults-emu@champion") == third.path
    assert len(downloads) == 2
    leftovers = [p for p in (tmp_path / "cache").rglob(".download.tmp-*")]
    assert not leftovers


# --------------------------------------------------------------------------- bad deep input


def _deep(setup) -> pa.Table:
    return pq.read_table(setup[0] / "survey" / "deep")


def _with(table: pa.Table, name: str, values) -> pa.Table:
    return table.set_column(table.column_names.index(name), name, pa.array(values))


BAD_DEEP = {
    "duplicate ids": lambda t: _with(t, "id", np.r_[t["id"].to_numpy()[:-1], 0]),
    "null id": lambda t: _with(t, "id", [None, *t["id"].to_pylist()[1:]]),
    "float ids": lambda t: _with(t, "id", t["id"].to_numpy().astype(float)),
    "NaN truth": lambda t: _with(t, "true_mag_i", np.r_[np.nan, t["true_mag_i"].to_numpy()[1:]]),
    "string truth": lambda t: _with(t, "true_size", t["true_size"].to_numpy().astype(str)),
    "empty": lambda t: t.slice(0, 0),
    "missing column": lambda t: t.drop(["true_mag_r"]),
}
MESSAGES = {
    "duplicate ids": "column id has 1 duplicated",
    "null id": "column id has 1 null",
    "float ids": "column id is double, not an integer",
    "NaN truth": "column true_mag_i has 1 non-finite",
    "string truth": "column true_size is string, not numeric",
    "empty": "deep catalog is empty",
    "missing column": "lacks column",
}


@pytest.mark.parametrize("case", list(BAD_DEEP))
def test_bad_deep_catalog_is_refused_before_anything_is_written(setup, tmp_path, case):
    path = tmp_path / "deep.parquet"
    pq.write_table(BAD_DEEP[case](_deep(setup)), path)
    with pytest.raises(DataError, match=MESSAGES[case]) as err:
        _run(setup, tmp_path / "out", deep=str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


BAD_POSITIONS = {
    "unknown deep_id": ({"deep_id": [10**9]}, "deep_id has 1 value"),
    "float deep_id": ({"deep_id": [1.0]}, "deep_id is double"),
    "NaN ra": ({"ra": [np.nan]}, "column ra has 1 non-finite"),
    "dec beyond the pole": ({"dec": [91.0]}, "column dec has 1 value"),
    "string ra": ({"ra": ["10"]}, "column ra is string"),
}


@pytest.mark.parametrize("case", list(BAD_POSITIONS))
def test_bad_positions_are_refused(setup, tmp_path, case):
    change, message = BAD_POSITIONS[case]
    columns = {"ra": [60.0], "dec": [-30.0], "deep_id": [3]} | change
    path = tmp_path / "positions.parquet"
    pq.write_table(pa.table(columns), path)
    with pytest.raises(DataError, match=message):
        _run(setup, tmp_path / "out", positions=str(path))
    assert not (tmp_path / "out").exists()


def test_positions_name_deep_galaxies_by_id_not_row(setup, tmp_path, ray_session):
    """Deep ids that are not the row numbers (shuffled, mixed int32/int64 and float/double
    shards): each position gets the galaxy whose id it names.  Before, ``deep_id`` was taken
    as a row number: wrong galaxies, exit 0."""
    deep = _deep(setup).to_pandas()
    rng = np.random.default_rng(0)
    deep["id"] = rng.permutation(len(deep)).astype(np.int64)
    half = len(deep) // 2
    (tmp_path / "deep").mkdir()
    pq.write_table(
        pa.Table.from_pandas(deep[:half], preserve_index=False), tmp_path / "deep" / "a.parquet"
    )
    second = pa.Table.from_pandas(deep[half:], preserve_index=False)
    second = second.cast(pa.schema([
        pa.field(f.name, pa.int32() if f.name == "id" else pa.float32() if pa.types.is_floating(f.type) else f.type)
        for f in second.schema
    ]))  # fmt: skip
    pq.write_table(second, tmp_path / "deep" / "b.parquet")
    maps = pq.read_table(setup[0] / "survey" / "maps" / "conditions.parquet")
    import healpy as hp

    pixels = maps["pixel"].to_numpy()[:50]
    ra, dec = hp.pix2ang(32, pixels, lonlat=True)
    wanted = rng.choice(deep["id"].to_numpy(), 50, replace=False)
    pq.write_table(pa.table({"ra": ra, "dec": dec, "deep_id": wanted}), tmp_path / "pos.parquet")
    _run(setup, tmp_path / "out", deep=str(tmp_path / "deep"), positions=str(tmp_path / "pos.parquet"), realizations=1)  # fmt: skip
    out = pq.read_table(tmp_path / "out").to_pandas().sort_values("id")
    np.testing.assert_array_equal(out.deep_id.to_numpy(), wanted)
    truth = deep.set_index("id").true_mag_i.reindex(wanted).to_numpy().astype(np.float32)
    np.testing.assert_array_equal(out.true_mag_i.to_numpy(), truth)


# --------------------------------------------------------------------------- multi-node

CLUSTER_SCRIPT = """
import json, os, signal, subprocess, sys, time
from pathlib import Path
from ray.cluster_utils import Cluster

model, deep, maps, out, ready = sys.argv[1:6]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
try:
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    env = dict(os.environ, RAY_ADDRESS=cluster.address)
    from galray.emulator.registry import log_emulator
    log_emulator(model, registered_name="faults-cluster", alias="champion")
    argv = [sys.executable, "-m", "galray.cli", "emulate", "--model",
            "models:/faults-cluster@champion", "--deep", deep, "--maps", maps, "--out", out,
            "--realizations", "2", "--seed", "5", "--chunk-rows", "300", "--workers", "2"]
    driver = subprocess.Popen(argv, env=env, start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(list(Path(out).glob("part-*.parquet"))) < 2:
        time.sleep(0.1)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver dies; the cluster stays
    first = driver.communicate()[0]
    killed_with = len(list(Path(out).glob("part-*.parquet")))
    resumed = subprocess.run(argv + ["--resume"], env=env, capture_output=True, text=True)
    Path(ready).write_text(json.dumps({
        "first": first, "killed_with": killed_with, "rc": resumed.returncode,
        "resumed": resumed.stdout + resumed.stderr,
    }))
finally:
    cluster.shutdown()
"""


@pytest.mark.slow
@pytest.mark.cluster
def test_multi_node_emulation_from_a_tracking_server_resumes_after_a_killed_driver(
    setup, reference, tmp_path
):
    """Two worker nodes (ray.cluster_utils.Cluster), the model from an MLflow server with proxied
    artifacts by alias: the driver is SIGKILLed mid-run, a new driver resumes, the rows equal an
    uninterrupted single-node run of the same bundle (same content hash), and the model was
    downloaded once, into the cache."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    root, model = setup
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "artifacts").mkdir()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--artifacts-destination", str(tmp_path / "artifacts"),
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "no MLflow server"
                time.sleep(0.5)
        env = dict(os.environ, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}")
        env |= {"GALRAY_CACHE": str(tmp_path / "cache"), "RAY_AUTH_MODE": "token"}
        env.pop("RAY_ADDRESS", None)
        env.pop(FAULT_ENV, None)
        (tmp_path / "cluster.py").write_text(CLUSTER_SCRIPT)
        out, ready = tmp_path / "out", tmp_path / "result.json"
        args = [model, root / "survey" / "deep", root / "survey" / "maps", out, ready]
        proc = subprocess.run(
            [sys.executable, str(tmp_path / "cluster.py"), *map(str, args)],
            env=env, capture_output=True, text=True, timeout=540,
        )  # fmt: skip
        assert ready.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    finally:
        os.killpg(server.pid, 15)
        server.wait()
    result = json.loads(ready.read_text())
    assert result["rc"] == 0, result["resumed"]
    assert 2 <= result["killed_with"] < 8, result
    assert f"{result['killed_with']}" in result["resumed"]  # "N already done"
    assert "downloaded to the model cache" in result["first"]
    assert "downloaded to the model cache" not in result["resumed"]
    assert _rows_hash(out) == reference[1]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["complete"] and manifest["model_source"] == "models:/faults-cluster/1"
    cached = [p for p in (tmp_path / "cache").rglob("emulator.json")]
    assert len(cached) == 1
