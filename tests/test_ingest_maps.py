"""``galray ingest maps`` on maps of mixed grids and survey specs: every map is moved onto the
output grid as healpy says (``ud_grade`` of the UNSEEN-filled full-sky map, reordered), spec
coverage is checked before anything is read, and bad maps name the file and the column."""

from __future__ import annotations

import logging
from pathlib import Path

import healpy as hp
import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.io import fits

from galray.cli import main
from galray.datasets import schema
from galray.datasets.conditions import read_condition_map
from galray.datasets.ingest_maps import ingest_maps
from galray.datasets.survey import load_spec
from galray.errors import ConfigError, DataError
from ingest_checks import fails as _fails

NSIDE = 32
SPEC_YAML = """
name: two-band
bands: [r, i]
deep: {bands: [r, i]}
conditions: {per_band: [psf_fwhm, depth], band_independent: [ebv]}
"""


def _map_file(path: Path, nside: int = NSIDE, value: float = 1.0, partial: bool = False) -> str:
    m = np.full(hp.nside2npix(nside), value, dtype=np.float32)
    m[: m.size // 2] = hp.UNSEEN
    hp.write_map(str(path), m, partial=partial, dtype=np.float32)
    return str(path)


def _ingest_maps(specs, **kwargs):
    return lambda out: ingest_maps(specs, out, log=lambda *_: None, **kwargs)


def _sky(nside: int, lo: float, hi: float, seed: int) -> np.ndarray:
    """A float32 map with values in [lo, hi) and ~30% of the pixels UNSEEN."""
    rng = np.random.default_rng(seed)
    m = rng.uniform(lo, hi, hp.nside2npix(nside)).astype(np.float32)
    m[rng.random(m.size) < 0.3] = hp.UNSEEN
    return m


# (column, nside, nested, partial, value range): three grids, full-sky and partial files
MAPS = [
    ("psf_fwhm_r", 32, False, False, (0.8, 1.4)),
    ("depth_r", 64, True, True, (22.5, 24.5)),
    ("ebv", 16, True, False, (0.0, 0.1)),
]


def _write_mixed(tmp_path: Path) -> tuple[list[str], dict]:
    specs, truth = [], {}
    for k, (column, nside, nest, partial, (lo, hi)) in enumerate(MAPS):
        m = _sky(nside, lo, hi, seed=k)
        path = tmp_path / f"{column}.fits"
        hp.write_map(str(path), m, nest=nest, partial=partial, dtype=np.float32)
        specs.append(f"{column}={path}")
        truth[column] = (m, nside, nest)
    return specs, truth


def _healpy_value(m, nside_in, nest_in, nside_out, nest_out, ra, dec) -> np.ndarray:
    """The map at (ra, dec) on the output grid, straight from healpy."""
    if nside_in == nside_out:
        return m[hp.ang2pix(nside_in, ra, dec, lonlat=True, nest=nest_in)]
    order_in, order_out = ("NESTED" if nest_in else "RING"), ("NESTED" if nest_out else "RING")
    graded = hp.ud_grade(m, nside_out, order_in=order_in, order_out=order_out)
    return graded[hp.ang2pix(nside_out, ra, dec, lonlat=True, nest=nest_out)]


@pytest.mark.parametrize("grid", [None, (64, "NESTED"), (16, "RING")], ids=str)
def test_maps_on_other_grids_are_converted_as_healpy_does(tmp_path, caplog, grid):
    specs, truth = _write_mixed(tmp_path)
    nside_out, ordering = grid or (32, "RING")  # default: the first map's grid
    kwargs = {} if grid is None else {"nside": grid[0], "ordering": grid[1]}
    with caplog.at_level(logging.WARNING, logger="galray.datasets.ingest_maps"):
        summary = ingest_maps(specs, tmp_path / "cond", log=lambda *_: None, **kwargs)
    moved = [c for c, n, nest, *_ in MAPS if (n, nest) != (nside_out, ordering == "NESTED")]
    assert sorted(summary.converted) == sorted(moved)
    for column in moved:  # one warning per converted map, naming it and both grids
        nside_in, nest_in = truth[column][1], truth[column][2]
        grid_in = f"nside {nside_in} {'NESTED' if nest_in else 'RING'}"
        assert any(
            f"{column}.fits" in r.message and grid_in in r.message and str(nside_out) in r.message
            for r in caplog.records
        ), column
    cond = read_condition_map(tmp_path / "cond", columns=[c for c, *_ in MAPS])
    assert (cond.nside, cond.ordering) == (nside_out, ordering)
    nest_out = ordering == "NESTED"
    rng = np.random.default_rng(3)
    ra, dec = rng.uniform(0, 360, 30_000), np.degrees(np.arcsin(rng.uniform(-1, 1, 30_000)))
    values, inside = cond.lookup(hp.ang2pix(nside_out, ra, dec, lonlat=True, nest=nest_out))
    expected = {
        c: _healpy_value(m, n, nest, nside_out, nest_out, ra, dec)
        for c, (m, n, nest) in truth.items()
    }
    defined = np.all([~hp.mask_bad(v) & np.isfinite(v) for v in expected.values()], axis=0)
    np.testing.assert_array_equal(inside, defined)
    assert 0.05 < inside.mean() < 0.95
    for j, column in enumerate(cond.columns):
        np.testing.assert_array_equal(values[inside, j], expected[column][inside], err_msg=column)
        m, nside_in, nest_in = truth[column]
        if nside_in < nside_out:  # to a finer grid: each child pixel has its parent's value
            parent = m[hp.ang2pix(nside_in, ra, dec, lonlat=True, nest=nest_in)]
            np.testing.assert_array_equal(values[inside, j], parent[inside], err_msg=column)


def test_cli_reports_converted_maps_and_takes_nside(tmp_path, capsys):
    specs, _ = _write_mixed(tmp_path)
    out = tmp_path / "cond"
    assert main(["ingest", "maps", *specs, "--out", str(out), "--nside", "64"]) == 0
    text = capsys.readouterr().out
    assert "nside 64, RING" in text
    assert "ebv <- " in text and "converted from nside 16 NESTED" in text
    assert "converted from nside 32 RING" in text
    assert read_condition_map(out / "conditions.parquet", columns=["ebv"]).nside == 64


def test_survey_spec_needs_every_condition_map(tmp_path, capsys):
    spec_path = tmp_path / "two-band.yaml"
    spec_path.write_text(SPEC_YAML)
    spec = load_spec(spec_path)
    specs = {
        c: _map_file(tmp_path / f"{c}.fits", value=1.0 + j)
        for j, c in enumerate(spec.condition_columns)
    }
    given = [f"{c}={p}" for c, p in specs.items() if c not in ("psf_fwhm_i", "depth_i")]
    run = _ingest_maps(given, survey=spec_path)
    _fails(tmp_path, run, ConfigError, "two-band", "psf_fwhm_i", "depth_i", "band(s) i")
    argv = ["ingest", "maps", *given, "--out", str(tmp_path / "out"), "--survey", str(spec_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "psf_fwhm_i" in err and not (tmp_path / "out").exists()
    # every map given, band-independent ebv included: the spec's columns, in its order
    all_maps = [f"{c}={p}" for c, p in reversed(specs.items())]
    ingest_maps(all_maps, tmp_path / "cond", survey=spec_path, log=lambda *_: None)
    cond = read_condition_map(tmp_path / "cond", columns=spec.condition_columns)
    assert cond.columns == tuple(spec.condition_columns)
    for j, column in enumerate(spec.condition_columns):
        np.testing.assert_array_equal(cond.values[:, j], 1.0 + list(specs).index(column))
    meta = pq.read_schema(tmp_path / "cond" / "conditions.parquet").metadata
    assert meta[schema.META_BANDS] == b'["r", "i"]'


# --------------------------------------------------------------------------------------------
# Bad maps: the right error, naming the file and the column; no output left behind
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("column", "value"), [("psf_fwhm_r", -1.0), ("depth_r", np.inf)])
def test_bad_condition_values_name_file_and_column(tmp_path, column, value):
    good = _map_file(tmp_path / "good.fits", partial=True)
    bad = _map_file(tmp_path / "bad.fits", value=value)
    specs = [f"depth_i={good}", f"{column}={bad}"]
    _fails(tmp_path, _ingest_maps(specs), DataError, "bad.fits", f"'{column}'")


def test_truncated_map_and_disjoint_footprints(tmp_path):
    path = Path(_map_file(tmp_path / "t.fits"))
    path.write_bytes(path.read_bytes()[:-5000])
    _fails(tmp_path, _ingest_maps([str(path)]), DataError, "t.fits", "truncated")
    m = np.full(hp.nside2npix(NSIDE), hp.UNSEEN, dtype=np.float32)
    m[200:210] = 1.0  # healpy cannot write int8 PIXEL columns, so keep indices > 127
    hp.write_map(str(tmp_path / "a.fits"), m, partial=True)
    hp.write_map(str(tmp_path / "b.fits"), np.roll(m, 100), partial=True)
    specs = [str(tmp_path / "a.fits"), str(tmp_path / "b.fits")]
    _fails(tmp_path, _ingest_maps(specs), DataError, "a.fits", "b.fits", "share no pixel")


def test_map_without_ordering_keyword(tmp_path):
    path = Path(_map_file(tmp_path / "o.fits"))
    with fits.open(path, mode="update") as hdul:
        del hdul[1].header["ORDERING"]
    _fails(tmp_path, _ingest_maps([str(path)]), DataError, "o.fits", "ORDERING")


@pytest.mark.parametrize("chunk", [7, 64, 1 << 26])
def test_union_of_defined_pixels_counts_each_pixel_once(chunk):
    """The summary's "defined in some map" count: every pixel defined anywhere, once, whatever
    the bitmap's chunk (pixel ranges straddling chunk edges, an empty map)."""
    from types import SimpleNamespace

    from galray.datasets.ingest_maps import _union_size

    rng = np.random.default_rng(3)
    maps = {f"m{i}": SimpleNamespace(pixels=np.unique(rng.integers(0, 500, 150))) for i in range(4)}
    maps["empty"] = SimpleNamespace(pixels=np.zeros(0, dtype=np.int64))
    union = np.unique(np.concatenate([m.pixels for m in maps.values()]))
    assert _union_size(maps, chunk=chunk) == union.size
    assert _union_size({"empty": maps["empty"]}) == 0
