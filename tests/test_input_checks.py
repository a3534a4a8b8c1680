"""Input checked at the door (issue 16): ids unique and in range, dtypes, empty tables, mixed-type
shards and metadata values, for ingest (catalog, deep, maps) and for the training reader; and a
disk that fills up mid-write.  Each bad input is one line naming the file and the field, exit 2
from the CLI, and nothing written (an existing output kept)."""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path

import healpy as hp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.table import Table

import galray.io
from galray.cli import main
from galray.datasets import schema
from galray.datasets.conditions import read_condition_map
from galray.datasets.ingest_catalog import ingest_catalogs, ingest_deep
from galray.datasets.ingest_maps import ingest_maps
from galray.datasets.reader import TrainingCatalog
from galray.errors import DataError, OutputError
from galray.io import write_parquet
from ingest_checks import fails
from test_reader import catalog_rows, footprint_maps, write_catalog, write_maps

CATALOG_MAP = "nside: 32\ncolumns: {id: ID, ra: RA, dec: DEC, true_mag_r: {from: MAG}}\n"
DEEP_MAP = "columns: {id: ID, true_mag_r: {from: MAG}}\n"
QUIET = {"log": lambda *_: None}


def _rows(n: int = 6, first_id: int = 0, **override) -> dict:
    rows = {
        "ID": np.arange(first_id, first_id + n, dtype=np.int64),
        "RA": np.linspace(10.0, 20.0, n),
        "DEC": np.linspace(-5.0, 5.0, n),
        "MAG": np.linspace(20.0, 24.0, n),
    }
    return rows | override


def _parquet(path: Path, rows: dict) -> Path:
    pq.write_table(pa.table(rows), path)
    return path


def _ingest(tmp_path: Path, sources, text: str = CATALOG_MAP, deep: bool = False, **kwargs):
    cmap = tmp_path / "map.yaml"
    cmap.write_text(text)
    run = ingest_deep if deep else ingest_catalogs
    return lambda out: run([str(s) for s in sources], out, cmap, **kwargs, **QUIET)


# --------------------------------------------------------------------------- ids


def test_repeated_id_in_one_file(tmp_path):
    Table(_rows(ID=np.array([1, 2, 3, 3, 4, 5]))).write(tmp_path / "dup.fits")
    run = _ingest(tmp_path, [tmp_path / "dup.fits"])
    fails(tmp_path, run, DataError, "dup.fits", "'ID'", "repeats 1 id(s), e.g. 3")


def test_repeated_id_across_files_names_both(tmp_path):
    a = _parquet(tmp_path / "a.parquet", _rows())
    b = _parquet(tmp_path / "b.parquet", _rows(first_id=4))  # ids 4 and 5 again
    run = _ingest(tmp_path, [a, b])
    fails(tmp_path, run, DataError, "b.parquet", "a.parquet", "'ID'", "repeats id 4", "2 id(s)")


def test_repeated_id_through_the_cli_is_exit_2_one_line(tmp_path, capsys):
    a = _parquet(tmp_path / "a.parquet", _rows(ID=np.array([7, 7, 8, 9, 10, 11])))
    (tmp_path / "map.yaml").write_text(CATALOG_MAP)
    argv = ["ingest", "catalog", str(a), "--columns", str(tmp_path / "map.yaml")]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a.parquet" in err and "'ID'" in err and "repeats" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("ids", "needle"),
    [
        (np.array([2**63 + 5, 1, 2, 3, 4, 5], dtype=np.uint64), "9223372036854775813"),
        (np.array([1e20, 1, 2, 3, 4, 5]), "1e+20"),
    ],
    ids=["uint64-above-int64", "float-beyond-int64"],
)
def test_id_beyond_int64_is_refused_not_wrapped(tmp_path, ids, needle):
    src = _parquet(tmp_path / "big.parquet", _rows(ID=ids))
    run = _ingest(tmp_path, [src])
    fails(tmp_path, run, DataError, "big.parquet", "'ID'", "outside the range of int64", needle)


def test_int32_extra_column_beyond_int32(tmp_path):
    src = _parquet(tmp_path / "f.parquet", _rows(FLAGS=np.array([0, 1, 2**40, 3, 4, 5])))
    text = CATALOG_MAP.replace("}}", "}, flags: {from: FLAGS, dtype: int32}}")
    run = _ingest(tmp_path, [src], text)
    fails(tmp_path, run, DataError, "f.parquet", "'FLAGS'", "(for flags)", "range of int32")


def test_deep_catalog_repeated_ids(tmp_path):
    deep = {"ID": np.array([1, 2, 2]), "MAG": np.ones(3)}
    src = _parquet(tmp_path / "deep.parquet", deep)
    fails(
        tmp_path, _ingest(tmp_path, [src], DEEP_MAP, deep=True), DataError, "deep.parquet", "'ID'"
    )
    a = _parquet(tmp_path / "d1.parquet", {"ID": np.array([1, 2]), "MAG": np.ones(2)})
    b = _parquet(tmp_path / "d2.parquet", {"ID": np.array([2, 3]), "MAG": np.ones(2)})
    run = _ingest(tmp_path, [a, b], DEEP_MAP, deep=True)
    fails(tmp_path, run, DataError, "d2.parquet", "d1.parquet", "repeats id 2")


# --------------------------------------------------------------------------- dtypes, shards


def test_parquet_directory_with_a_string_shard(tmp_path):
    """Mixed-type shards: one file's MAG is float, another's string."""
    src = tmp_path / "src"
    src.mkdir()
    _parquet(src / "part-0.parquet", _rows())
    _parquet(src / "part-1.parquet", _rows(first_id=6, MAG=np.array(list("abcdef"))))
    run = _ingest(tmp_path, [src])
    fails(tmp_path, run, DataError, "part-1.parquet", "'MAG'", "string/object", "expected a number")


def test_parquet_directory_with_a_shard_lacking_a_column(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _parquet(src / "part-0.parquet", _rows())
    rows = _rows(first_id=6)
    del rows["MAG"]
    _parquet(src / "part-1.parquet", rows)
    fails(tmp_path, _ingest(tmp_path, [src]), DataError, "part-1.parquet", "missing column 'MAG'")


def test_mixed_float_and_int_shards_are_converted_alike(tmp_path):
    """Not an error: an integer MAG in one file and a float one in another both become float32."""
    a = _parquet(tmp_path / "a.parquet", _rows())
    b = _parquet(tmp_path / "b.parquet", _rows(first_id=6, MAG=np.arange(20, 26)))
    _ingest(tmp_path, [a, b])(tmp_path / "out")
    table = pq.read_table(tmp_path / "out")
    assert table.schema.field("true_mag_r").type == pa.float32()
    np.testing.assert_array_equal(table["true_mag_r"].to_numpy()[6:], np.arange(20, 26))


def test_an_empty_file_among_sources(tmp_path):
    a = _parquet(tmp_path / "a.parquet", _rows())
    empty = _parquet(tmp_path / "empty.parquet", {k: v[:0] for k, v in _rows().items()})
    fails(tmp_path, _ingest(tmp_path, [a, empty]), DataError, "empty.parquet", "zero rows")


# --------------------------------------------------------------------------- map headers


def _map(path: Path, **header) -> str:
    hp.write_map(str(path), np.ones(hp.nside2npix(8), np.float32), dtype=np.float32)
    with fits.open(path, mode="update") as hdul:
        for key, value in header.items():
            hdul[1].header[key] = value
    return str(path)


@pytest.mark.parametrize(
    ("header", "needle"),
    [
        ({"NSIDE": 8.5}, "NSIDE is 8.5"),
        ({"NSIDE": "eight"}, "NSIDE is 'eight'"),
        ({"NSIDE": 12}, "NSIDE is 12"),
        ({"ORDERING": "SPIRAL"}, "ORDERING is 'SPIRAL'"),
        ({"INDXSCHM": "SPARSE"}, "INDXSCHM is 'SPARSE'"),
    ],
    ids=["nside-fraction", "nside-text", "nside-not-power-of-2", "ordering", "indxschm"],
)
def test_bad_map_header_names_file_and_keyword(tmp_path, header, needle):
    spec = f"depth_r={_map(tmp_path / 'bad.fits', **header)}"
    run = lambda out: ingest_maps([spec], out, **QUIET)  # noqa: E731
    fails(tmp_path, run, DataError, "bad.fits", needle)


# --------------------------------------------------------------------------- the reader


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    pixels, full = footprint_maps()
    return write_maps(tmp_path_factory.mktemp("maps") / "conditions.parquet", pixels, full)


def _catalog(tmp_path: Path, n: int = 400) -> Path:
    return write_catalog(tmp_path / "cat", catalog_rows(n, seed=3), shards=2)


def _rewrite(path: Path, change) -> None:
    table = pq.read_table(path)
    write_parquet(change(table).replace_schema_metadata(table.schema.metadata), path)


def _opens(catalog: Path, maps: Path) -> TrainingCatalog:
    return TrainingCatalog(catalog, maps, max_outside_fraction=0.5)


def test_reader_refuses_a_column_of_another_type(tmp_path, maps):
    catalog = _catalog(tmp_path)
    shard = catalog / "part-00001.parquet"
    column = "true_mag_i"
    _rewrite(shard, lambda t: t.set_column(t.schema.get_field_index(column), column,
                                           t[column].cast(pa.float64())))  # fmt: skip
    with pytest.raises(DataError) as info:
        _opens(catalog, maps)
    message = str(info.value)
    for needle in ("part-00001.parquet", "part-00000.parquet", "'true_mag_i'", "double", "float"):
        assert needle in message, message


def test_reader_refuses_shards_with_other_columns(tmp_path, maps):
    catalog = _catalog(tmp_path)
    _rewrite(catalog / "part-00001.parquet", lambda t: t.drop_columns(["obs_mag_z"]))
    with pytest.raises(DataError, match=r"part-00001.parquet: .*missing \['obs_mag_z'\]"):
        _opens(catalog, maps)


def test_reader_refuses_a_text_truth_column(tmp_path, maps):
    catalog = _catalog(tmp_path)
    column = "true_mag_r"

    def as_text(t: pa.Table) -> pa.Table:
        text = pa.array([f"{v:.3f}" for v in t[column].to_numpy()])  # numbers, as text
        return t.set_column(t.schema.get_field_index(column), column, text)

    for shard in catalog.glob("*.parquet"):
        _rewrite(shard, as_text)
    with pytest.raises(
        DataError, match=r"part-00000.parquet: column 'true_mag_r' must be a number"
    ):
        _opens(catalog, maps)


def test_reader_refuses_repeated_ids(tmp_path, maps):
    catalog = _catalog(tmp_path)
    first_id = pq.read_table(catalog / "part-00000.parquet")["id"][0].as_py()
    shard = catalog / "part-00001.parquet"
    ids = pq.read_table(shard)["id"].to_numpy().copy()
    ids[5] = first_id
    _rewrite(shard, lambda t: t.set_column(0, "id", pa.array(ids)))
    with pytest.raises(
        DataError, match=f"part-00001.parquet: column 'id' repeats id {first_id} of"
    ):
        _opens(catalog, maps)


@pytest.mark.parametrize("nside", [b"48", b"thirty-two"])
def test_bad_nside_in_parquet_metadata(tmp_path, maps, nside):
    bad = tmp_path / "conditions.parquet"
    table = pq.read_table(maps)
    meta = table.schema.metadata | {schema.META_NSIDE: nside}
    write_parquet(table.replace_schema_metadata(meta), bad)
    with pytest.raises(DataError, match=f"conditions.parquet: HEALPix nside '{nside.decode()}'"):
        read_condition_map(bad)
    catalog = _catalog(tmp_path)
    shard = catalog / "part-00001.parquet"
    shard_meta = pq.read_schema(shard).metadata | {schema.META_NSIDE: nside}
    write_parquet(pq.read_table(shard).replace_schema_metadata(shard_meta), shard)
    with pytest.raises(DataError, match=r"part-00001\.parquet: HEALPix nside"):
        _opens(catalog, maps)


# --------------------------------------------------------------------------- disk full


def _digest(directory: Path) -> dict[str, str]:
    return {
        p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def _disk_fills_up(monkeypatch, after: int) -> None:
    """Parquet writes fail with ENOSPC after ``after`` complete files, the failing one half
    written, as a full file system does."""
    write = galray.io.pq.write_table
    calls = {"n": 0}

    def full(table, where, **kwargs):
        calls["n"] += 1
        if calls["n"] > after:
            Path(where).write_bytes(b"PAR1" + b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device", str(where))
        return write(table, where, **kwargs)

    monkeypatch.setattr(galray.io.pq, "write_table", full)


def test_disk_full_mid_ingest_keeps_the_old_output(tmp_path, monkeypatch, capsys):
    (tmp_path / "map.yaml").write_text(CATALOG_MAP)
    a = _parquet(tmp_path / "a.parquet", _rows(n=40))
    out = tmp_path / "cat"
    argv = ["ingest", "catalog", str(a), "--columns", str(tmp_path / "map.yaml"), "--out", str(out)]
    assert main([*argv, "--shard-rows", "10"]) == 0
    before = _digest(out)
    _disk_fills_up(monkeypatch, after=2)  # the third of four shards fails
    capsys.readouterr()
    assert main([*argv, "--shard-rows", "10", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert str(out) in err and "No space left on device" in err and "kept" in err
    assert _digest(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_disk_full_mid_map_ingest(tmp_path, monkeypatch):
    spec = f"depth_r={_map(tmp_path / 'depth.fits')}"
    _disk_fills_up(monkeypatch, after=0)
    message = fails(tmp_path, lambda out: ingest_maps([spec], out, **QUIET), OutputError, "out")
    assert "No space left on device" in message and "nothing was written" in message
