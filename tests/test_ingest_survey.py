"""Ingest against a survey spec: the DES-Y6-style example column map on a big-endian FITS file,
a deep-field catalog joined onto the injections by ``deep_id``, and the errors that name the file
and the field when the spec, the column map, the catalog or the deep ids disagree."""

from __future__ import annotations

import json
from pathlib import Path

import healpy as hp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from astropy.table import Table

from galray.cli import main
from galray.datasets.ingest import load_column_map
from galray.datasets.ingest_catalog import ingest_catalogs, ingest_deep
from galray.datasets.survey import load_spec
from galray.errors import ConfigError, DataError
from ingest_checks import fails as _fails

ROOT = Path(__file__).resolve().parents[1]
Y6_MAP = ROOT / "configs" / "columns" / "des_y6_example.yaml"
Y6_DEEP_MAP = ROOT / "configs" / "columns" / "des_y6_deep_example.yaml"
DEEP_BANDS = ["u", "g", "r", "i", "z", "J", "H", "Ks"]
WIDE = ["g", "r", "i", "z"]
SHAPE = {
    "obs_snr": "unsheared/snr",
    "obs_T": "unsheared/T",
    "obs_size_ratio": "unsheared/size_ratio",
}
NSIDE = 64
QUIET = {"log": lambda *_: None}


def _sentinel(values: np.ndarray, rng, share: float, value: float) -> np.ndarray:
    values[rng.random(values.size) < share] = value
    return values


def _deep_columns(rng, n: int) -> dict[str, np.ndarray]:
    """BDF truth as DES writes it: big-endian, 99 / -9999 for magnitudes not measured."""
    cols = {}
    for b in DEEP_BANDS:
        mag = _sentinel(rng.uniform(18, 27, n).astype(">f4"), rng, 0.05, 99.0)
        cols[f"BDF_MAG_DERED_{b.upper()}"] = _sentinel(mag, rng, 0.03, -9999.0)
    cols["BDF_T"] = _sentinel(rng.lognormal(-1, 1, n).astype(">f4"), rng, 0.05, -9999.0)
    cols["BDF_G"] = rng.uniform(0, 0.6, n).astype(">f4")
    return cols


def _balrog_y6(path: Path, n: int, seed: int, deep_ids=None, drop=()) -> dict[str, np.ndarray]:
    """A tiny DES-Y6-style Balrog catalog, written (big-endian) with astropy."""
    rng = np.random.default_rng(seed)
    cols = {
        "bal_id": np.arange(seed * 1000, seed * 1000 + n).astype(">i8"),
        "true_id": np.asarray(
            rng.integers(0, 10**6, n) if deep_ids is None else deep_ids, dtype=">i8"
        ),
        "true_ra": rng.uniform(0, 360, n).astype(">f8"),
        "true_dec": np.degrees(np.arcsin(rng.uniform(-1, 1, n))).astype(">f8"),
        **_deep_columns(rng, n),
    }
    for b in WIDE:
        cols[f"unsheared/flux_{b}"] = _sentinel(
            rng.normal(500, 400, n).astype(">f4"), rng, 0.05, -9999.0
        )
        cols[f"unsheared/flux_err_{b}"] = rng.uniform(5, 50, n).astype(">f4")
    for source in SHAPE.values():
        cols[source] = _sentinel(rng.lognormal(1, 1, n).astype(">f4"), rng, 0.05, -9999.0)
    cols["unsheared/flags"] = _sentinel(rng.integers(0, 8, n).astype(">i4"), rng, 0.05, -9999)
    cols["detected"] = (rng.random(n) < 0.8).astype(">i2")
    Table({k: v for k, v in cols.items() if k not in drop}).write(path)
    return cols


def _missing(values: np.ndarray, *sentinels: float) -> np.ndarray:
    return np.isin(values, sentinels) | ~np.isfinite(values)


def _expected_float(values: np.ndarray, *sentinels: float) -> np.ndarray:
    out = values.astype(np.float32)
    out[_missing(values, *sentinels)] = np.nan
    return out


def _expected_mag_from_flux(flux: np.ndarray) -> np.ndarray:
    f = flux.astype(np.float64)
    ok = ~_missing(f, -9999.0, 9999.0) & (f > 0)
    return np.where(ok, 30.0 - 2.5 * np.log10(np.where(ok, f, 1.0)), np.nan).astype(np.float32)


def _truth_expected(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {
        f"true_mag_{b}": _expected_float(cols[f"BDF_MAG_DERED_{b.upper()}"], 99, -99, -9999)
        for b in DEEP_BANDS
    }
    out["true_T"] = _expected_float(cols["BDF_T"], -9999, 9999)
    out["true_G"] = _expected_float(cols["BDF_G"], -9999, 9999)
    return out


def _measured_expected(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for b in WIDE:
        flux = cols[f"unsheared/flux_{b}"]
        out[f"obs_flux_{b}"] = _expected_float(flux, -9999, 9999)
        out[f"obs_flux_err_{b}"] = _expected_float(cols[f"unsheared/flux_err_{b}"], -9999, 9999)
        out[f"obs_mag_{b}"] = _expected_mag_from_flux(flux)
    out |= {name: _expected_float(cols[source], -9999, 9999) for name, source in SHAPE.items()}
    out["detected"] = cols["detected"] != 0
    return out


def _read(out: Path) -> pa.Table:
    return pq.read_table(sorted(out.glob("part-*.parquet")))


def _assert_equal(table: pa.Table, expected: dict[str, np.ndarray]) -> None:
    for name, values in expected.items():
        got = table[name].to_numpy()
        np.testing.assert_array_equal(got, values, err_msg=name)


# --------------------------------------------------------------------------------------------
# The DES-Y6-style example column map
# --------------------------------------------------------------------------------------------


def test_des_y6_example_map_on_big_endian_fits(tmp_path):
    cols = _balrog_y6(tmp_path / "balrog.fits", n=300, seed=1)
    out = tmp_path / "cat"
    summary = ingest_catalogs(
        [tmp_path / "balrog.fits"], out, Y6_MAP, nside=NSIDE, survey="des-y6", **QUIET
    )
    table = _read(out)
    spec = load_spec("des-y6")
    assert summary.rows_kept == 300
    assert set(spec.training_columns) <= set(table.column_names)
    ra, dec = cols["true_ra"].astype(np.float64), cols["true_dec"].astype(np.float64)
    expected = {
        "id": cols["bal_id"].astype(np.int64),
        "deep_id": cols["true_id"].astype(np.int64),
        "ra": ra,
        "pixel": hp.ang2pix(NSIDE, ra, dec, lonlat=True),
        **_truth_expected(cols),
        **_measured_expected(cols),
    }
    _assert_equal(table, expected)
    # integer flags stay integer; their -9999 becomes null
    assert table.schema.field("obs_flags").type == pa.int32()
    flags = cols["unsheared/flags"]
    np.testing.assert_array_equal(table["obs_flags"].is_null().to_numpy(), flags == -9999)
    kept = table["obs_flags"].drop_null().to_numpy()
    np.testing.assert_array_equal(kept, flags[flags != -9999].astype(np.int32))
    for name in ("true_T", "obs_snr", "obs_flux_err_g", "true_mag_Ks"):
        assert table.schema.field(name).type == pa.float32(), name
    # the spec travels with the shards
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.parquet", "survey.json"]
    assert json.loads((out / "survey.json").read_text()) == spec.to_dict()
    assert load_spec(out).to_dict() == spec.to_dict()


def test_des_y6_map_needs_the_spec_for_its_bands(tmp_path):
    _balrog_y6(tmp_path / "balrog.fits", n=20, seed=1)
    run = lambda out: ingest_catalogs([tmp_path / "balrog.fits"], out, Y6_MAP, **QUIET)  # noqa: E731
    _fails(tmp_path, run, ConfigError, "des_y6_example.yaml", "columns.true_mag_u", "unknown band")
    cmap = load_column_map(Y6_DEEP_MAP, load_spec("des-y6"), kind="deep")
    assert cmap.names[0] == "id" and "true_z" in cmap.names


def test_survey_column_the_map_lacks_is_one_line_exit_2(tmp_path, capsys):
    _balrog_y6(tmp_path / "balrog.fits", n=20, seed=1)
    text = Y6_MAP.read_text().replace("  obs_snr: unsheared/snr\n", "")
    cmap = tmp_path / "no_snr.yaml"
    cmap.write_text(text)
    out = tmp_path / "out"
    argv = ["ingest", "catalog", str(tmp_path / "balrog.fits"), "--columns", str(cmap)]
    assert main([*argv, "--out", str(out), "--survey", "des-y6", "--nside", "32"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no_snr.yaml" in err and "obs_snr" in err
    assert not out.exists()


def test_spec_column_absent_from_the_catalog_names_file_and_column(tmp_path, capsys):
    _balrog_y6(tmp_path / "balrog.fits", n=20, seed=1, drop=("unsheared/T",))
    run = lambda out: ingest_catalogs(  # noqa: E731
        [tmp_path / "balrog.fits"], out, Y6_MAP, nside=32, survey="des-y6", **QUIET
    )
    _fails(tmp_path, run, DataError, "balrog.fits", "'unsheared/T'")


# --------------------------------------------------------------------------------------------
# Deep-field catalogs
# --------------------------------------------------------------------------------------------


def _deep_fits(path: Path, ids: np.ndarray, seed: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    cols = {"ID": ids.astype(">i8"), **_deep_columns(rng, ids.size)}
    cols["Z"] = rng.uniform(0, 3, ids.size).astype(">f4")
    Table(cols).write(path)
    return cols


def _injection_map(tmp_path: Path) -> Path:
    """des_y6_example.yaml without its true_* lines, as its comment says for --deep."""
    lines = Y6_MAP.read_text().splitlines(keepends=True)
    path = tmp_path / "injections.yaml"
    path.write_text("".join(line for line in lines if not line.startswith("  true_")))
    return path


def test_deep_catalog_joined_by_deep_id(tmp_path):
    ids = np.arange(5000, 5200)
    deep_cols = _deep_fits(tmp_path / "deep.fits", ids)
    deep = tmp_path / "deep"
    ingest_deep([tmp_path / "deep.fits"], deep, Y6_DEEP_MAP, survey="des-y6", **QUIET)
    deep_table = _read(deep)
    truth = _truth_expected(deep_cols) | {"true_z": _expected_float(deep_cols["Z"], -9999)}
    _assert_equal(deep_table, {"id": ids, **truth})
    assert deep_table.column_names == ["id", *(truth)]

    rng = np.random.default_rng(2)
    picks = rng.integers(0, ids.size, 400)
    cols = _balrog_y6(tmp_path / "balrog.fits", n=400, seed=3, deep_ids=ids[picks])
    out = tmp_path / "cat"
    cmap = _injection_map(tmp_path)
    ingest_catalogs(
        [tmp_path / "balrog.fits"], out, cmap, nside=32, survey="des-y6", deep=deep, **QUIET
    )
    table = _read(out)
    np.testing.assert_array_equal(table["deep_id"].to_numpy(), ids[picks])
    _assert_equal(table, {name: values[picks] for name, values in truth.items()})
    _assert_equal(table, _measured_expected(cols))
    assert (out / "survey.json").is_file()
    spec = load_spec("des-y6")
    assert table.column_names[:5] == ["id", "deep_id", "ra", "dec", "pixel"]
    assert table.column_names[5:16] == [*spec.truth_columns, "true_z"]


def test_deep_ids_missing_from_the_deep_catalog(tmp_path, capsys):
    ids = np.arange(100, 150)
    _deep_fits(tmp_path / "deep.fits", ids)
    deep = tmp_path / "deep"
    ingest_deep([tmp_path / "deep.fits"], deep, Y6_DEEP_MAP, survey="des-y6", **QUIET)
    deep_ids = np.resize(ids, 60)
    deep_ids[[3, 17, 40]] = [7, 7, 9999]  # three injections, two distinct ids, not in deep
    _balrog_y6(tmp_path / "balrog.fits", n=60, seed=4, deep_ids=deep_ids)
    cmap = _injection_map(tmp_path)
    run = lambda out: ingest_catalogs(  # noqa: E731
        [tmp_path / "balrog.fits"], out, cmap, nside=32, survey="des-y6", deep=deep, **QUIET
    )
    _fails(tmp_path, run, DataError, "balrog.fits", str(deep), "3 injection(s)", "2 id(s)")
    argv = ["ingest", "catalog", str(tmp_path / "balrog.fits"), "--columns", str(cmap)]
    argv += [
        "--nside",
        "32",
        "--survey",
        "des-y6",
        "--deep",
        str(deep),
        "--out",
        str(tmp_path / "out"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "3 injection(s)" in err and not (tmp_path / "out").exists()
    # a truth column both mapped and in the deep catalog is ambiguous
    run = lambda out: ingest_catalogs(  # noqa: E731
        [tmp_path / "balrog.fits"], out, Y6_MAP, nside=32, survey="des-y6", deep=deep, **QUIET
    )
    _fails(tmp_path, run, ConfigError, "des_y6_example.yaml", "columns.true_mag_u", str(deep))


def test_cli_ingest_deep(tmp_path, capsys):
    _deep_fits(tmp_path / "deep.fits", np.arange(10))
    argv = ["ingest", "deep", str(tmp_path / "deep.fits"), "--columns", str(Y6_DEEP_MAP)]
    assert main([*argv, "--out", str(tmp_path / "deep"), "--survey", "des-y6"]) == 0
    assert "ingest deep -> " in capsys.readouterr().out
    assert _read(tmp_path / "deep").num_rows == 10
    no_z = tmp_path / "no_z.yaml"
    no_z.write_text(Y6_DEEP_MAP.read_text().replace("  true_z:", "  # true_z:"))
    argv = ["ingest", "deep", str(tmp_path / "deep.fits"), "--columns", str(no_z)]
    assert main([*argv, "--out", str(tmp_path / "out"), "--survey", "des-y6"]) == 2
    err = capsys.readouterr().err
    assert "no_z.yaml" in err and "true_z" in err and not (tmp_path / "out").exists()
