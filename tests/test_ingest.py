"""Ingest of catalogs (FITS, HDF5, Parquet) and healpy maps: round trips equal healpy lookups,
and every bad input raises a clear error that names the file and the column, leaving nothing."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import healpy as hp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.table import MaskedColumn, Table

from galray import console
from galray.cli import main
from galray.datasets import schema
from galray.datasets.conditions import read_condition_map
from galray.datasets.ingest import load_column_map
from galray.datasets.ingest_catalog import ingest_catalogs
from galray.datasets.ingest_maps import ingest_maps, parse_map_spec
from galray.datasets.ingest_sources import count_rows
from galray.errors import ConfigError, DataError, OutputExistsError
from ingest_checks import fails as _fails

NSIDE = 32
COLUMN_MAP = """
nside: 64
sentinels: [99, -99, -9999, 9999]
columns:
  id: ID
  ra: RA
  dec: {from: DEC, sentinels: [-9999]}
  true_mag_r: {from: FLUX_R, convert: flux_to_mag}
  true_mag_i: {from: MAG_I, convert: mag}
  obs_flux_r: {from: FLUX_R, convert: flux}
  detected: {from: DETECTED, convert: bool}
  flags: {from: FLAGS, dtype: int32}
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _catalog_columns(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "ID": np.arange(seed * 10_000, seed * 10_000 + n, dtype=np.int64),
        "RA": rng.uniform(0, 360, n).astype(">f8"),  # big-endian, as FITS stores it
        "DEC": np.degrees(np.arcsin(rng.uniform(-1, 1, n))),
        "FLUX_R": rng.lognormal(6, 1, n).astype(np.float32),
        "MAG_I": rng.uniform(18, 25, n),
        "DETECTED": rng.random(n) < 0.7,
        "FLAGS": rng.integers(0, 4, n).astype(np.int32),
    }


def _fits_catalog(path: Path, n: int = 400, seed: int = 1) -> dict[str, np.ndarray]:
    """A FITS catalog with sentinels, NaN, a masked float and a masked (TNULL) id."""
    cols = _catalog_columns(n, seed)
    cols["MAG_I"][[3, 7]] = 99.0  # sentinel
    cols["FLUX_R"][5] = -9999.0  # sentinel -> NaN
    cols["FLUX_R"][6] = -3.0  # flux <= 0 -> NaN magnitude, flux kept
    cols["RA"][10] = np.nan  # dropped: ra missing
    cols["DEC"][11] = -9999.0  # dropped: dec sentinel
    table = Table(cols)
    table["ID"] = MaskedColumn(cols["ID"], mask=np.arange(n) == 12)  # dropped: id masked
    table["MAG_I"] = MaskedColumn(cols["MAG_I"], mask=np.arange(n) == 13)
    table.write(path)
    return cols


def _fits_expected(cols: dict[str, np.ndarray], nside: int, nest: bool = False) -> dict:
    keep = np.ones(len(cols["ID"]), dtype=bool)
    keep[[10, 11, 12]] = False
    flux = cols["FLUX_R"].astype(np.float64)
    flux[5] = np.nan
    mag_i = cols["MAG_I"].copy()
    mag_i[[3, 7, 13]] = np.nan
    ra, dec = cols["RA"].astype(np.float64)[keep], cols["DEC"][keep]
    return {
        "id": cols["ID"][keep],
        "ra": ra,
        "dec": dec,
        "pixel": hp.ang2pix(nside, ra, dec, lonlat=True, nest=nest),
        "true_mag_r": schema.flux_to_mag(flux).astype(np.float32)[keep],
        "true_mag_i": mag_i.astype(np.float32)[keep],
        "obs_flux_r": flux.astype(np.float32)[keep],
        "detected": cols["DETECTED"][keep],
        "flags": cols["FLAGS"][keep],
    }


def _read_shards(out: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in sorted(out.glob("part-*.parquet")))


def _assert_columns(table: pa.Table, expected: dict) -> None:
    for name, values in expected.items():
        np.testing.assert_array_equal(table[name].to_numpy(), values, err_msg=name)


def test_fits_catalog_round_trip_with_sentinels_masks_and_shards(tmp_path):
    cols_a = _fits_catalog(tmp_path / "a.fits", n=400, seed=1)
    cols_b = _fits_catalog(tmp_path / "b.fits", n=300, seed=2)
    out = tmp_path / "cat"
    cmap = _write(tmp_path / "map.yaml", COLUMN_MAP)
    summary = ingest_catalogs(
        [tmp_path / "a.fits", tmp_path / "b.fits"],
        out,
        cmap,
        shard_rows=250,
        chunk_rows=128,
        log=lambda *_: None,
    )
    table = _read_shards(out)
    assert [p.name for p in sorted(out.glob("*"))] == [f"part-0000{i}.parquet" for i in range(3)]
    expected = [_fits_expected(c, 64) for c in (cols_a, cols_b)]
    _assert_columns(table, {k: np.concatenate([e[k] for e in expected]) for k in expected[0]})
    assert table.schema.field("ra").type == pa.float64()
    assert table.schema.field("true_mag_r").type == pa.float32()
    assert table.column_names[:4] == ["id", "ra", "dec", "pixel"]
    assert schema.read_healpix_metadata(table.schema, "cat") == (64, "RING")
    assert table.schema.metadata[schema.META_KIND] == b"catalog"
    assert summary.rows_read == 700 and summary.rows_kept == 694 and summary.n_shards == 3
    assert summary.dropped == {"id missing": 2, "ra missing": 2, "dec missing": 2}
    # per file: MAG_I has 2 sentinels + 1 masked; FLUX_R one sentinel, one negative flux
    assert summary.missing == {"true_mag_r": 4, "true_mag_i": 6, "obs_flux_r": 2}
    assert not list(tmp_path.glob(".cat.tmp-*"))


def test_hdf5_nested_groups_compound_fields_and_nested_ordering(tmp_path):
    n = 500
    cols = _catalog_columns(n, seed=3)
    cols["RA"] = cols["RA"].astype(np.float64)
    path = tmp_path / "balrog.h5"
    with h5py.File(path, "w") as f:
        f["catalog/unsheared/flux_r"] = cols["FLUX_R"]
        f["catalog/unsheared/deep/ids/bal_id"] = cols["ID"]
        f["truth/ra"] = cols["RA"].astype(">f8")
        f["truth/dec"] = cols["DEC"]
        table = np.zeros(n, dtype=[("mag_i", "<f4"), ("detected", "?")])
        table["mag_i"], table["detected"] = cols["MAG_I"], cols["DETECTED"]
        f["catalog/table"] = table
    cmap = _write(
        tmp_path / "map.yaml",
        """
columns:
  id: /catalog/unsheared/deep/ids/bal_id
  ra: truth/ra
  dec: truth/dec
  true_mag_r: {from: catalog/unsheared/flux_r, convert: flux_to_mag}
  obs_mag_i: {from: catalog/table/mag_i, convert: mag}
  detected: {from: catalog/table/detected, convert: bool}
""",
    )
    out = tmp_path / "cat"
    summary = ingest_catalogs([path], out, cmap, nside=32, ordering="NESTED", log=lambda *_: None)
    table = _read_shards(out)
    expected_pixel = hp.ang2pix(32, cols["RA"], cols["DEC"], lonlat=True, nest=True)
    mags = schema.flux_to_mag(cols["FLUX_R"]).astype(np.float32)
    _assert_columns(table, {"id": cols["ID"], "pixel": expected_pixel, "true_mag_r": mags})
    _assert_columns(table, {"obs_mag_i": cols["MAG_I"].astype(np.float32)})
    _assert_columns(table, {"detected": cols["DETECTED"], "ra": cols["RA"]})
    assert schema.read_healpix_metadata(table.schema, "cat") == (32, "NESTED")
    assert summary.rows_kept == n and summary.dropped == {}


def test_parquet_source_nulls_and_ra_wrapping(tmp_path):
    src = tmp_path / "in.parquet"
    pq.write_table(
        pa.table(
            {
                "id": pa.array([1, 2, None, 4], pa.int64()),
                "ra": [-10.0, 350.0, 5.0, 360.0],
                "dec": [0.0, 10.0, 20.0, -30.0],
                "mag": pa.array([20.0, None, 21.0, 99.0]),
            }
        ),
        src,
    )
    cmap = _write(
        tmp_path / "map.yaml",
        "nside: 32\ncolumns: {id: id, ra: ra, dec: dec, true_mag_r: {from: mag}}\n",
    )
    summary = ingest_catalogs([src], tmp_path / "out", cmap, log=lambda *_: None)
    table = _read_shards(tmp_path / "out")
    _assert_columns(table, {"id": [1, 2, 4], "ra": [350.0, 350.0, 0.0]})
    np.testing.assert_array_equal(table["true_mag_r"].to_numpy(), [20.0, np.nan, np.nan])
    assert summary.dropped == {"id missing": 1}
    assert summary.missing == {"true_mag_r": 2}


def test_cli_catalog_prints_counts(tmp_path, capsys):
    _fits_catalog(tmp_path / "a.fits", n=200)
    cmap = _write(tmp_path / "map.yaml", COLUMN_MAP)
    out = tmp_path / "cat"
    argv = ["ingest", "catalog", str(tmp_path / "a.fits"), "--out", str(out)]
    rc = main([*argv, "--columns", str(cmap), "--nside", "32", "--ordering", "NESTED"])
    text = capsys.readouterr().out
    assert rc == 0
    assert (
        "200 rows read, 197 kept, 3 dropped (id missing: 1, ra missing: 1, dec missing: 1)" in text
    )
    assert "true_mag_i 3" in text and "nside 32, NESTED" in text
    assert "rows read: 200/200 row (100%)" in text  # piped: the progress's last line
    assert schema.read_healpix_metadata(_read_shards(out).schema, "cat") == (32, "NESTED")
    assert main([*argv, "--columns", str(cmap)]) == 2  # exists, no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--columns", str(cmap), "--overwrite"]) == 0


def test_progress_counts_the_rows_of_every_source(tmp_path, capsys):
    """The total is every file's row count, read from headers (a gzipped FITS file's too), and
    the count advances by chunk: a line every quarter, the last at 100%."""
    import gzip
    import shutil

    _fits_catalog(tmp_path / "a.fits", n=200)
    _fits_catalog(tmp_path / "b.fits", n=100, seed=2)
    with open(tmp_path / "b.fits", "rb") as src, gzip.open(tmp_path / "b.fits.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    sources = [tmp_path / "a.fits", tmp_path / "b.fits.gz"]
    assert [count_rows(p, ["ID", "RA"]) for p in sources] == [200, 100]
    assert count_rows(_write(tmp_path / "bad.fits", "not FITS"), ["ID"]) == 0
    cmap = _write(tmp_path / "map.yaml", COLUMN_MAP)
    run = {"nside": 32, "chunk_rows": 50, "log": print, "progress": console.data_progress}
    ingest_catalogs(sources, tmp_path / "out", cmap, **run)
    lines = capsys.readouterr().out.splitlines()
    progress = [ln.split(" row ")[0] for ln in lines if ln.startswith("rows read:")]
    assert progress == ["rows read: 100/300", "rows read: 200/300", "rows read: 300/300"]
    assert "  total: 300 rows read, 294 kept in 1 shard(s), 6 dropped" in lines[-2]
    ingest_catalogs(sources, tmp_path / "quiet", cmap, nside=32, log=lambda *_: None)
    assert capsys.readouterr().out == ""  # from Python: no progress unless asked


def test_example_column_map_is_valid():
    root = Path(__file__).resolve().parents[1]
    cmap = load_column_map(root / "configs" / "columns" / "des_y3_example.yaml")
    assert {"id", "ra", "dec", "true_mag_r", "obs_flux_z", "detected"} <= {
        c.name for c in cmap.columns
    }


# --------------------------------------------------------------------------------------------
# Maps
# --------------------------------------------------------------------------------------------


BANDS = ("r", "i")


def _maps(nside: int, seed: int) -> dict[str, np.ndarray]:
    """float32 maps of PSF FWHM (arcsec) and depth (AB mag) in r and i, indexed in whatever
    ordering they are written with; different footprints, UNSEEN outside, a few NaN inside."""
    rng = np.random.default_rng(seed)
    npix = hp.nside2npix(nside)
    maps = {
        "psf_fwhm_r": rng.uniform(0.8, 1.4, npix),
        "depth_r": rng.uniform(22.5, 24.5, npix),
        "psf_fwhm_i": rng.uniform(0.8, 1.4, npix),
        "depth_i": rng.uniform(22.5, 24.5, npix),
    }
    for m in maps.values():
        m[rng.random(npix) < 0.3] = hp.UNSEEN
    maps["depth_r"][rng.choice(npix, 40, replace=False)] = np.nan
    return {k: v.astype(np.float32) for k, v in maps.items()}


def _write_maps(tmp_path: Path, maps: dict, nest: bool, partial: bool) -> list[str]:
    specs = []
    for name, m in maps.items():
        path = tmp_path / f"{name}.fits"
        hp.write_map(str(path), m, nest=nest, partial=partial, dtype=np.float32, overwrite=True)
        specs.append(str(path))
    return specs


def _assert_lookup_equals_healpy(out: Path, maps: dict, nests: dict, out_nest: bool) -> None:
    cond = read_condition_map(out / "conditions.parquet", bands=BANDS)
    assert cond.ordering == ("NESTED" if out_nest else "RING") and cond.nside == NSIDE
    pixel = cond.pixels
    rng = np.random.default_rng(7)
    ra, dec = rng.uniform(0, 360, 20_000), np.degrees(np.arcsin(rng.uniform(-1, 1, 20_000)))
    pix_out = hp.ang2pix(NSIDE, ra, dec, lonlat=True, nest=out_nest)
    idx = np.minimum(np.searchsorted(pixel, pix_out), len(pixel) - 1)
    found = pixel[idx] == pix_out
    truth = {k: m[hp.ang2pix(NSIDE, ra, dec, lonlat=True, nest=nests[k])] for k, m in maps.items()}
    defined = np.all([(v != hp.UNSEEN) & ~np.isnan(v) for v in truth.values()], axis=0)
    np.testing.assert_array_equal(found, defined)
    assert 0 < found.sum() < found.size
    for name, expected in truth.items():
        values = cond.column(name)
        assert values.dtype == np.float32
        np.testing.assert_array_equal(values[idx[found]], expected[found], err_msg=name)


@pytest.mark.parametrize("partial", [False, True], ids=["fullsky", "partial"])
@pytest.mark.parametrize("nest", [False, True], ids=["ring", "nested"])
@pytest.mark.parametrize("convert", [False, True], ids=["same-order", "reordered"])
def test_map_table_lookup_equals_healpy(tmp_path, partial, nest, convert):
    maps = _maps(NSIDE, seed=int(partial) + 2 * int(nest))
    specs = _write_maps(tmp_path, maps, nest=nest, partial=partial)
    out_nest = nest != convert
    ordering = ("NESTED" if out_nest else "RING") if convert else None
    summary = ingest_maps(specs, tmp_path / "cond", ordering=ordering, log=lambda *_: None)
    _assert_lookup_equals_healpy(tmp_path / "cond", maps, dict.fromkeys(maps, nest), out_nest)
    assert summary.n_footprint + summary.n_dropped == summary.n_union
    assert summary.n_dropped > 0


def test_mixed_map_files_and_metadata(tmp_path):
    maps = _maps(NSIDE, seed=5)
    nests = {"psf_fwhm_r": False, "depth_r": True, "psf_fwhm_i": True, "depth_i": False}
    specs = []
    for (name, m), partial in zip(maps.items(), [False, True, False, True]):
        path = tmp_path / f"m_{name}.fits"
        dtype = np.float64 if name == "psf_fwhm_i" else np.float32
        hp.write_map(str(path), m, nest=nests[name], partial=partial, dtype=dtype)
        specs.append(f"{name}={path}")
    ingest_maps(specs, tmp_path / "cond", log=lambda *_: None)
    _assert_lookup_equals_healpy(tmp_path / "cond", maps, nests, out_nest=False)
    sch = pq.read_schema(tmp_path / "cond" / "conditions.parquet")
    assert sch.names == ["pixel", "psf_fwhm_r", "depth_r", "psf_fwhm_i", "depth_i"]
    assert sch.metadata[schema.META_KIND] == b"conditions"
    assert sch.metadata[schema.META_BANDS] == b'["r", "i"]'


def test_cli_maps_prints_kept_and_dropped(tmp_path, capsys):
    maps = _maps(NSIDE, seed=9)
    specs = _write_maps(tmp_path, maps, nest=False, partial=True)
    assert main(["ingest", "maps", *specs, "--out", str(tmp_path / "cond")]) == 0
    text = capsys.readouterr().out
    cond = read_condition_map(tmp_path / "cond" / "conditions.parquet", bands=BANDS)
    assert f"kept {cond.n_pixels:,} pixels where every map is defined" in text
    n = len(specs)
    progress = [ln for ln in text.splitlines() if ln.startswith("maps read:")]
    assert progress[-1].startswith(f"maps read: {n}/{n} map (100%)") and len(progress) <= 5
    assert re.search(r"depth_r <- .*depth_r\.fits \(partial, RING\): [\d,]+ pixels defined", text)


def test_simulated_survey_round_trips_through_ingest(tmp_path):
    """The simulator's healpy FITS maps and injection shards ingest back to its own tables."""
    from galray.datasets.simulate import SurveyConfig, simulate_survey

    cfg = SurveyConfig(n_injections=3000, n_deep=2000, nside=32, ordering="NESTED", shard_rows=1000)
    sim = tmp_path / "sim"
    simulate_survey(sim, cfg, log=lambda *_: None)
    specs = [str(sim / "maps" / "fits" / f"{c}.fits") for c in schema.condition_columns()]
    ingest_maps(specs, tmp_path / "maps", log=lambda *_: None)
    assert pq.read_table(tmp_path / "maps" / "conditions.parquet").equals(
        pq.read_table(sim / "maps" / "conditions.parquet")
    )
    names = [n for n in schema.INJECTION_FIELDS if n != "pixel"]
    text = "sentinels: []\ncolumns:\n" + "".join(f"  {n}: {n}\n" for n in names)
    cmap = _write(tmp_path / "identity.yaml", text)
    ingest_catalogs(
        [sim / "injections"],
        tmp_path / "cat",
        cmap,
        nside=32,
        ordering="NESTED",
        shard_rows=1000,
        log=lambda *_: None,
    )
    # the catalog contract's columns; the simulator's extra truth (p_detect) is not mapped
    original = pq.read_table(sim / "injections", columns=list(schema.INJECTION_FIELDS))
    ingested = _read_shards(tmp_path / "cat")
    assert ingested.schema.remove_metadata() == original.schema.remove_metadata()
    _assert_columns(ingested, {n: original[n].to_numpy() for n in original.column_names})


def test_parse_map_spec():
    assert parse_map_spec("depth_r=maps/x.fits") == ("depth_r", Path("maps/x.fits"))
    assert parse_map_spec("maps/psf_fwhm_i.fits.gz") == (
        "psf_fwhm_i",
        Path("maps/psf_fwhm_i.fits.gz"),
    )
    with pytest.raises(ConfigError, match=r"COLUMN=path\.fits"):
        parse_map_spec("maps/psf-fwhm.fits")


# --------------------------------------------------------------------------------------------
# Bad input: the right error, naming the file and the column; no output left behind
# --------------------------------------------------------------------------------------------


def _ingest(sources, cmap_text: str, tmp_path: Path):
    cmap = _write(tmp_path / "map.yaml", cmap_text)
    return lambda out: ingest_catalogs(sources, out, cmap, nside=32, log=lambda *_: None)


def _parquet(path: Path, **columns) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


BASIC_MAP = "columns: {id: id, ra: ra, dec: dec, true_mag_r: {from: mag}}\n"


def _good_columns(n: int = 5) -> dict:
    return {"id": np.arange(n), "ra": np.full(n, 10.0), "dec": np.full(n, 5.0), "mag": np.ones(n)}


def test_missing_column_names_source_column_and_file(tmp_path):
    _fits_catalog(tmp_path / "a.fits", n=20)
    run = _ingest([tmp_path / "a.fits"], COLUMN_MAP.replace("MAG_I", "MAG_Y"), tmp_path)
    _fails(tmp_path, run, DataError, "a.fits", "missing column 'MAG_Y'")


def test_missing_hdf5_dataset(tmp_path):
    with h5py.File(tmp_path / "c.h5", "w") as f:
        for k, v in _good_columns().items():
            f[f"g/{k}"] = v
    text = "columns: {id: g/id, ra: g/ra, dec: g/dec, true_mag_r: {from: g/nope/mag}}\n"
    _fails(tmp_path, _ingest([tmp_path / "c.h5"], text, tmp_path), DataError, "c.h5", "g/nope/mag")


def test_string_column_is_a_wrong_dtype(tmp_path):
    cols = _good_columns() | {"mag": np.array(["a", "b", "c", "d", "e"])}
    src = _parquet(tmp_path / "s.parquet", **cols)
    run = _ingest([src], BASIC_MAP, tmp_path)
    _fails(tmp_path, run, DataError, "s.parquet", "'mag'", "true_mag_r", "expected a number")


def test_all_nan_column(tmp_path):
    src = _parquet(tmp_path / "n.parquet", **(_good_columns() | {"mag": np.full(5, 99.0)}))
    run = _ingest([src], BASIC_MAP, tmp_path)
    _fails(tmp_path, run, DataError, "n.parquet", "'mag'", "no valid value")


def test_zero_rows(tmp_path):
    Table({k: v[:0] for k, v in _good_columns().items()}).write(tmp_path / "e.fits")
    run = _ingest([tmp_path / "e.fits"], BASIC_MAP, tmp_path)
    _fails(tmp_path, run, DataError, "e.fits", "zero rows")


def test_truncated_fits_and_corrupt_parquet(tmp_path):
    _fits_catalog(tmp_path / "t.fits", n=2000)
    raw = (tmp_path / "t.fits").read_bytes()
    (tmp_path / "t.fits").write_bytes(raw[: len(raw) // 2])
    run = _ingest([tmp_path / "t.fits"], COLUMN_MAP, tmp_path)
    _fails(tmp_path, run, DataError, "t.fits", "truncated")
    src = _parquet(tmp_path / "c.parquet", **_good_columns())
    src.write_bytes(src.read_bytes()[:-30])
    _fails(tmp_path, _ingest([src], BASIC_MAP, tmp_path), DataError, "c.parquet", "Parquet")


def test_good_file_then_bad_file_leaves_nothing(tmp_path):
    good = _parquet(tmp_path / "good.parquet", **_good_columns())
    bad = _parquet(tmp_path / "bad.parquet", **(_good_columns() | {"dec": np.full(5, 95.0)}))
    run = _ingest([good, bad], BASIC_MAP, tmp_path)
    _fails(tmp_path, run, DataError, "bad.parquet", "'dec'", "outside [-90, 90]")


def test_ra_out_of_range_and_fractional_id(tmp_path):
    src = _parquet(tmp_path / "r.parquet", **(_good_columns() | {"ra": np.full(5, 400.0)}))
    _fails(tmp_path, _ingest([src], BASIC_MAP, tmp_path), DataError, "r.parquet", "'ra'")
    src = _parquet(tmp_path / "i.parquet", **(_good_columns() | {"id": np.linspace(0, 1, 5)}))
    run = _ingest([src], BASIC_MAP, tmp_path)
    _fails(tmp_path, run, DataError, "i.parquet", "'id'", "non-integer")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (BASIC_MAP.replace("true_mag_r", "true_mag_g"), "columns.true_mag_g: unknown band 'g'"),
        (BASIC_MAP.replace("{from: mag}", "{from: mag, convert: asinh}"), "convert: unknown"),
        (BASIC_MAP.replace("{from: mag}", "{from: mag, convert: flux}"), "true_mag_r.convert"),
        (BASIC_MAP.replace("id: id, ", ""), "columns.id: required"),
        (BASIC_MAP.replace("true_mag_r", "tru_mag_r"), "columns.tru_mag_r: not a catalog column"),
        (BASIC_MAP.replace("{from: mag}", "{from: mag, unit: AB}"), "columns.true_mag_r.unit"),
        ("nside: 48\n" + BASIC_MAP, "nside: must be a power of two"),
        (BASIC_MAP + "sentinels: 99\n", "sentinels: expected a list"),
    ],
)
def test_bad_column_map_is_a_config_error_naming_file_and_field(tmp_path, text, needle):
    src = _parquet(tmp_path / "ok.parquet", **_good_columns())
    _fails(tmp_path, _ingest([src], text, tmp_path), ConfigError, "map.yaml", needle)


def test_nside_must_be_given(tmp_path):
    src = _parquet(tmp_path / "ok.parquet", **_good_columns())
    cmap = _write(tmp_path / "map.yaml", BASIC_MAP)
    with pytest.raises(ConfigError, match="nside: not set"):
        ingest_catalogs([src], tmp_path / "out", cmap, log=lambda *_: None)
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite(tmp_path):
    src = _parquet(tmp_path / "ok.parquet", **_good_columns())
    cmap = _write(tmp_path / "map.yaml", "nside: 32\n" + BASIC_MAP)
    ingest_catalogs([src], tmp_path / "out", cmap, log=lambda *_: None)
    with pytest.raises(OutputExistsError):
        ingest_catalogs([src], tmp_path / "out", cmap, log=lambda *_: None)
