"""The Ray Data reader: condition join, footprint accounting, id split."""

from __future__ import annotations

import logging

import healpy as hp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from galray.datasets import reader, schema
from galray.datasets.conditions import ConditionMap, read_condition_map
from galray.datasets.reader import TrainingCatalog
from galray.datasets.split import SPLITS, SplitSpec, split_counts, split_uniform, splitmix64
from galray.errors import ConfigError, DataError, FootprintError
from galray.io import write_parquet

NSIDE = 32
ORDERING = "NESTED"
CENTER = (40.0, -30.0)  # ra, dec of the footprint disc, deg
N_ROWS = 20_000
LOOSE = 0.5  # max_outside_fraction for catalogs that deliberately scatter outside


# --------------------------------------------------------------------------- test data


def footprint_maps(nside: int = NSIDE, ordering: str = ORDERING, radius: float = 20.0):
    """Footprint pixels (sorted) and full-sky condition maps built with healpy (NaN off it)."""
    nest = ordering == "NESTED"
    vec = hp.ang2vec(*CENTER, lonlat=True)
    pixels = np.sort(hp.query_disc(nside, vec, np.radians(radius), nest=nest)).astype(np.int64)
    ra, dec = hp.pix2ang(nside, np.arange(hp.nside2npix(nside)), nest=nest, lonlat=True)
    full = {}
    for k, b in enumerate(schema.BANDS):
        psf = 1.0 + 0.2 * np.sin(np.radians(3 * ra + 10 * k)) * np.cos(np.radians(2 * dec))
        depth = 23.5 + 0.5 * np.cos(np.radians(5 * ra - 7 * dec + k))
        for name, values in (
            (schema.condition("psf_fwhm", b), psf),
            (schema.condition("depth", b), depth),
        ):
            sky = np.full(ra.size, np.nan, dtype=np.float32)
            sky[pixels] = values[pixels]
            full[name] = sky
    return pixels, full


def write_maps(path, pixels, full, *, nside=NSIDE, ordering=ORDERING):
    cols = {"pixel": pixels, **{name: sky[pixels] for name, sky in full.items()}}
    meta = schema.healpix_metadata(nside, ordering, kind="conditions")
    return write_parquet(pa.table(cols).replace_schema_metadata(meta), path)


def catalog_rows(n: int, seed: int = 0, radius: float = 22.0, nside=NSIDE, ordering=ORDERING):
    """Injection rows at random positions in a cap a bit larger than the footprint disc."""
    rng = np.random.default_rng(seed)
    # Uniform on the sphere in a box around CENTER, kept within ``radius`` deg of it.
    m = 4 * n
    ra = CENTER[0] + rng.uniform(-2 * radius, 2 * radius, m)
    sin_dec = np.sin(np.radians(CENTER[1] + np.array([-radius, radius])))
    dec = np.degrees(np.arcsin(rng.uniform(*sin_dec, m)))
    near = hp.ang2vec(ra, dec, lonlat=True) @ hp.ang2vec(*CENTER, lonlat=True) > np.cos(
        np.radians(radius)
    )
    ra, dec = ra[near][:n], dec[near][:n]
    assert ra.size == n
    cols = {
        "id": rng.permutation(10 * n)[:n].astype(np.int64) + 1_000_000,
        "deep_id": rng.integers(0, 500, n),
        "ra": ra,
        "dec": dec,
        "pixel": hp.ang2pix(nside, ra, dec, lonlat=True, nest=ordering == "NESTED"),
    }
    for b in schema.BANDS:
        cols[schema.true_mag(b)] = rng.uniform(18, 26, n).astype(np.float32)
    cols["true_size"] = rng.lognormal(-1, 0.5, n).astype(np.float32)
    detected = rng.random(n) < 0.7
    for b in schema.BANDS:
        flux = rng.normal(300, 200, n)  # some negative fluxes: obs_mag NaN there
        cols[schema.obs_flux(b)] = np.where(detected, flux, np.nan).astype(np.float32)
    for b in schema.BANDS:
        cols[schema.obs_mag(b)] = schema.flux_to_mag(cols[schema.obs_flux(b)]).astype(np.float32)
    cols["detected"] = detected
    arrays = [pa.array(cols[c], type=t) for c, t in schema.INJECTION_FIELDS.items()]
    return pa.Table.from_arrays(arrays, schema=pa.schema(schema.INJECTION_FIELDS.items()))


def write_catalog(
    directory, table, *, shards=3, nside=NSIDE, ordering=ORDERING, row_group_size=None
):
    meta = schema.healpix_metadata(nside, ordering, kind="injections")
    table = table.replace_schema_metadata(meta)
    bounds = np.linspace(0, table.num_rows, shards + 1).astype(int)
    for k in range(shards):
        part = table.slice(bounds[k], bounds[k + 1] - bounds[k])
        write_parquet(part, directory / f"part-{k:05d}.parquet", row_group_size=row_group_size)
    return directory


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    """A catalog of 3 shards (~17% of it off the footprint) and its NESTED nside-32 maps."""
    root = tmp_path_factory.mktemp("reader")
    pixels, full = footprint_maps()
    maps = write_maps(root / "maps" / "conditions.parquet", pixels, full)
    table = catalog_rows(N_ROWS)
    catalog = write_catalog(root / "injections", table)
    return {"root": root, "maps": maps, "catalog": catalog, "table": table, "full": full}


def expected_rows(table: pa.Table, full: dict, split: int | None = None):
    """Direct healpy-map lookup in numpy: on-footprint rows of ``split`` (default split spec)."""
    spec = SplitSpec()
    cols = {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}
    inside = np.isfinite(full[schema.condition("psf_fwhm", "r")][cols["pixel"]])
    if split is not None:
        inside &= spec.codes(cols["id"]) == split
    out = {c: v[inside] for c, v in cols.items()}
    out.update({name: sky[out["pixel"]] for name, sky in full.items()})
    order = np.argsort(out["id"])
    return {c: v[order] for c, v in out.items()}


def to_numpy(ds, columns: list[str]) -> dict[str, np.ndarray]:
    """``columns`` of a Dataset as numpy arrays, rows sorted by id (Ray's block order varies)."""
    wanted = list(dict.fromkeys([*columns, "id"]))
    table = pa.concat_tables(ray.get(ds.select_columns(wanted).to_arrow_refs()))
    order = np.argsort(table.column("id").to_numpy(), kind="stable")
    return {c: table.column(c).to_numpy()[order] for c in columns}


# --------------------------------------------------------------------------- condition maps


def test_condition_map_lookup_matches_healpy_maps(survey):
    cmap = read_condition_map(survey["maps"])
    assert (cmap.nside, cmap.ordering, cmap.columns) == (
        NSIDE,
        ORDERING,
        tuple(schema.condition_columns()),
    )
    query = np.array([-5, 0, *cmap.pixels[::7], hp.nside2npix(NSIDE), hp.nside2npix(NSIDE) + 9])
    values, inside = cmap.lookup(query)
    on_sky = (query >= 0) & (query < hp.nside2npix(NSIDE))
    expect_inside = on_sky & np.isin(query, cmap.pixels)
    np.testing.assert_array_equal(inside, expect_inside)
    for j, name in enumerate(cmap.columns):
        np.testing.assert_array_equal(values[inside, j], survey["full"][name][query[inside]])
    assert np.isnan(values[~inside]).all()
    # The dense full-sky index and the binary search agree row for row.
    rows_dense, in_dense = cmap.index(query)
    rows_search, in_search = cmap._searchsorted_index(query)
    np.testing.assert_array_equal(in_dense, in_search)
    np.testing.assert_array_equal(rows_dense[in_dense], rows_search[in_search])


@pytest.mark.parametrize(
    ("mutate", "column", "what"),
    [
        (lambda c: c.update(pixel=c["pixel"][::-1].copy()), "pixel", "sorted"),
        (lambda c: c["pixel"].__setitem__(1, c["pixel"][0]), "pixel", "sorted and unique"),
        (lambda c: c["psf_fwhm_i"].__setitem__(3, np.nan), "psf_fwhm_i", "non-finite"),
        (lambda c: c["psf_fwhm_z"].__setitem__(0, -0.5), "psf_fwhm_z", "positive"),
        (lambda c: c["depth_r"].__setitem__(2, hp.UNSEEN), "depth_r", "UNSEEN"),
    ],
)
def test_condition_map_validation_names_file_and_column(tmp_path, mutate, column, what):
    pixels, full = footprint_maps()
    cols = {"pixel": pixels.copy(), **{name: sky[pixels].copy() for name, sky in full.items()}}
    mutate(cols)
    path = tmp_path / "bad.parquet"
    meta = schema.healpix_metadata(NSIDE, ORDERING, kind="conditions")
    write_parquet(pa.table(cols).replace_schema_metadata(meta), path)
    with pytest.raises(DataError, match=what) as info:
        read_condition_map(path)
    assert str(path) in str(info.value) and column in str(info.value)


def test_condition_map_without_dense_index_uses_searchsorted():
    pixels = np.array([3, 10, 11, 400], dtype=np.int64)
    values = np.arange(8, dtype=np.float32).reshape(4, 2)
    cmap = ConditionMap(pixels, values, ("psf_fwhm_r", "depth_r"), nside=2**14, ordering="RING")
    assert cmap.dense_index is None  # 3.2e9 sky pixels: binary search only
    got, inside = cmap.lookup(np.array([10, 12, 400, 3]))
    np.testing.assert_array_equal(inside, [True, False, True, True])
    np.testing.assert_array_equal(got[inside], values[[1, 3, 0]])


# --------------------------------------------------------------------------- split


def test_splitmix64_reference_value():
    # First output of the reference splitmix64 generator seeded with 0.
    assert int(splitmix64(np.array([0], dtype=np.uint64))[0]) == 0xE220A8397B1DCDAF


def test_split_fractions_disjoint_and_salted():
    ids = np.arange(200_000, dtype=np.int64) * 7 + 3
    spec = SplitSpec((0.8, 0.15, 0.05), salt=11)
    codes = spec.codes(ids)
    assert set(np.unique(codes)) == {0, 1, 2}  # every id in exactly one split
    counts = split_counts(ids, spec)
    for name, frac in zip(SPLITS, spec.fractions):
        sigma = np.sqrt(ids.size * frac * (1 - frac))
        assert abs(counts[name] - ids.size * frac) < 5 * sigma
    # A pure function of (id, salt): order does not matter, another salt reshuffles.
    perm = np.random.default_rng(1).permutation(ids.size)
    np.testing.assert_array_equal(spec.codes(ids[perm]), codes[perm])
    other = SplitSpec((0.8, 0.15, 0.05), salt=12).codes(ids)
    assert 0.6 < np.mean(other == codes) < 0.75  # independent: ~0.8^2 + 0.15^2 + 0.05^2
    u = split_uniform(ids)
    assert u.min() >= 0.0 and u.max() < 1.0


@pytest.mark.parametrize("fractions", [(0.9, 0.05), (0.9, 0.2, 0.05), (1.2, -0.1, -0.1)])
def test_split_fractions_validated(fractions):
    with pytest.raises(ConfigError, match="fractions"):
        SplitSpec(fractions)


# --------------------------------------------------------------------------- validation (no Ray)


def test_footprint_counted_and_error_above_threshold(survey):
    training = TrainingCatalog(survey["catalog"], survey["maps"], max_outside_fraction=LOOSE)
    expect = expected_rows(survey["table"], survey["full"])
    report = training.footprint
    assert report.n_rows == N_ROWS
    assert report.n_inside == expect["id"].size
    assert 0.05 < report.outside_fraction < LOOSE
    with pytest.raises(FootprintError) as info:
        TrainingCatalog(survey["catalog"], survey["maps"], max_outside_fraction=0.01)
    message = str(info.value)
    assert f"{report.n_outside:,} of {N_ROWS:,}" in message
    assert str(survey["catalog"]) in message and str(survey["maps"]) in message


def healpy_conditions(full: dict, table: pa.Table, nside: int, ordering: str) -> dict:
    """Conditions of every catalog row straight from healpy and the original NESTED maps: the
    map's pixel at (ra, dec) when the catalog's grid is as fine or finer (a child pixel has its
    parent's value), else ``ud_grade`` of the UNSEEN-filled map read at the row's pixel."""
    ra, dec = table.column("ra").to_numpy(), table.column("dec").to_numpy()
    if nside >= NSIDE:
        pixel = hp.ang2pix(NSIDE, ra, dec, lonlat=True, nest=True)
        return {name: sky[pixel] for name, sky in full.items()}
    pixel = table.column("pixel").to_numpy()
    out = {}
    for name, sky in full.items():
        filled = np.where(np.isnan(sky), hp.UNSEEN, sky).astype(np.float32)
        graded = hp.ud_grade(filled, nside, order_in="NESTED", order_out=ordering)
        out[name] = np.where(hp.mask_bad(graded), np.nan, graded)[pixel]
    return out


GRIDS = [(NSIDE, "RING"), (4 * NSIDE, ORDERING), (4 * NSIDE, "RING"), (NSIDE // 4, "RING")]


@pytest.mark.parametrize(("nside", "ordering"), GRIDS, ids=str)
def test_catalog_on_another_grid_gets_the_maps_converted(survey, tmp_path, caplog, nside, ordering):
    table = catalog_rows(N_ROWS // 4, seed=11, nside=nside, ordering=ordering)
    catalog = write_catalog(tmp_path / "cat", table, shards=2, nside=nside, ordering=ordering)
    with caplog.at_level(logging.WARNING, logger="galray.datasets.reader"):
        training = TrainingCatalog(catalog, survey["maps"], max_outside_fraction=LOOSE)
    (warning,) = [r.getMessage() for r in caplog.records if "differs" in r.getMessage()]
    assert str(catalog) in warning and str(survey["maps"]) in warning
    assert f"nside={nside}, ordering={ordering}" in warning
    assert f"nside={NSIDE}, ordering={ORDERING}" in warning
    assert (training.conditions.nside, training.conditions.ordering) == (nside, ordering)
    values, inside = training.conditions.lookup(table.column("pixel").to_numpy())
    expect = healpy_conditions(survey["full"], table, nside, ordering)
    defined = np.isfinite(expect[schema.condition("psf_fwhm", "r")])
    np.testing.assert_array_equal(inside, defined)
    assert 0 < training.footprint.n_outside == np.count_nonzero(~defined)
    for j, name in enumerate(training.conditions.columns):
        np.testing.assert_array_equal(values[inside, j], expect[name][inside], err_msg=name)


def test_converted_maps_join_in_ray(ray_session, survey, tmp_path):
    nside, ordering = 4 * NSIDE, "RING"
    table = catalog_rows(N_ROWS // 4, seed=12, nside=nside, ordering=ordering)
    catalog = write_catalog(tmp_path / "cat", table, shards=2, nside=nside, ordering=ordering)
    training = TrainingCatalog(catalog, survey["maps"], max_outside_fraction=LOOSE)
    got = to_numpy(training.dataset(None, ["id"]), ["id", *training.condition_columns])
    expect = healpy_conditions(survey["full"], table, nside, ordering)
    ids = table.column("id").to_numpy()
    keep = np.isfinite(expect["depth_r"])
    order = np.argsort(ids[keep])
    np.testing.assert_array_equal(got["id"], ids[keep][order])
    for name in training.condition_columns:
        np.testing.assert_array_equal(got[name], expect[name][keep][order], err_msg=name)


def test_shards_on_different_grids_name_both(survey, tmp_path):
    catalog = write_catalog(tmp_path / "cat", survey["table"], shards=2)
    other = tmp_path / "cat" / "part-00001.parquet"
    meta = schema.healpix_metadata(NSIDE, "RING", kind="injections")
    write_parquet(pq.read_table(other).replace_schema_metadata(meta), other)
    with pytest.raises(DataError, match="every shard needs one grid") as info:
        TrainingCatalog(catalog, survey["maps"], max_outside_fraction=LOOSE)
    assert str(other) in str(info.value) and "part-00000.parquet" in str(info.value)


def test_rows_off_the_footprint_are_a_warning(survey, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="galray.datasets.reader"):
        training = TrainingCatalog(survey["catalog"], survey["maps"], max_outside_fraction=LOOSE)
    report = training.footprint
    (record,) = [r for r in caplog.records if "outside the footprint" in r.getMessage()]
    assert record.levelno == logging.WARNING
    percent = f"{100 * report.outside_fraction:.3f}%"
    assert f"dropping {report.n_outside} of {N_ROWS}" in record.getMessage()
    assert percent in record.getMessage()
    caplog.clear()
    inside = write_catalog(tmp_path / "in", catalog_rows(2000, seed=4, radius=15.0), shards=1)
    with caplog.at_level(logging.INFO, logger="galray.datasets.reader"):
        TrainingCatalog(inside, survey["maps"], max_outside_fraction=0.0)
    (record,) = [r for r in caplog.records if "outside the footprint" in r.getMessage()]
    assert record.levelno == logging.INFO and "dropping 0 of 2000" in record.getMessage()


def test_missing_healpix_metadata_names_file(survey, tmp_path):
    path = tmp_path / "cat" / "part-00000.parquet"
    write_parquet(survey["table"].replace_schema_metadata(None), path)
    with pytest.raises(DataError, match="nside/ordering") as info:
        TrainingCatalog(path.parent, survey["maps"], max_outside_fraction=LOOSE)
    assert str(path) in str(info.value)


def test_missing_column_names_file(survey, tmp_path):
    catalog = write_catalog(tmp_path / "cat", survey["table"], shards=2)
    bad = catalog / "part-00001.parquet"
    table = pq.read_table(bad)
    write_parquet(table.drop_columns(["true_mag_i"]), bad)
    with pytest.raises(DataError, match="true_mag_i") as info:
        TrainingCatalog(catalog, survey["maps"], max_outside_fraction=LOOSE)
    assert str(bad) in str(info.value)


def test_truncated_shard_names_file(survey, tmp_path):
    catalog = write_catalog(tmp_path / "cat", survey["table"], shards=2)
    bad = catalog / "part-00000.parquet"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with pytest.raises(DataError, match="not a readable Parquet file") as info:
        TrainingCatalog(catalog, survey["maps"], max_outside_fraction=LOOSE)
    assert str(bad) in str(info.value)


def test_bad_arguments_name_the_field(survey):
    with pytest.raises(ConfigError, match="max_outside_fraction"):
        TrainingCatalog(survey["catalog"], survey["maps"], max_outside_fraction=2.0)
    training = TrainingCatalog(survey["catalog"], survey["maps"], max_outside_fraction=LOOSE)
    with pytest.raises(ConfigError, match="split"):
        training.dataset("holdout")
    with pytest.raises(DataError, match="redshift"):
        training.dataset("train", columns=["id", "redshift"])


def test_pieces_balance_cpus_and_respect_block_size():
    files = ["a.parquet", "b.parquet", "c.parquet"]

    def plan(sizes, n_cpus, max_bytes=1000):
        pieces = reader.plan_pieces(files[: len(sizes)], sizes, n_cpus, max_bytes)
        return [[(p["path"][0], p["row_groups"]) for p in piece["parts"]] for piece in pieces]

    # One big shard with many row groups is still read by every CPU.
    assert plan([[100] * 6], n_cpus=3) == [[("a", [0, 1])], [("a", [2, 3])], [("a", [4, 5])]]
    # Small shards are packed together, in order, up to total / n_cpus.
    assert plan([[100], [100], [100]], n_cpus=1) == [[("a", [0]), ("b", [0]), ("c", [0])]]
    assert plan([[100, 100], [100, 100]], n_cpus=2) == [[("a", [0, 1])], [("b", [0, 1])]]
    # Never more than max_bytes in a piece, unless one row group is bigger on its own.
    assert plan([[400] * 4], n_cpus=1) == [[("a", [0, 1])], [("a", [2, 3])]]
    assert plan([[5000], [10]], n_cpus=1) == [[("a", [0])], [("b", [0])]]


def test_dataset_reads_row_group_pieces(ray_session, survey, tmp_path):
    catalog = write_catalog(tmp_path / "cat", survey["table"], shards=2, row_group_size=1_000)
    training = TrainingCatalog(catalog, survey["maps"], max_outside_fraction=LOOSE)
    got = to_numpy(
        training.dataset(None, columns=["id", "true_mag_z"]), ["id", "true_mag_z", "depth_z"]
    )
    expect = expected_rows(survey["table"], survey["full"])
    for c in ("id", "true_mag_z", "depth_z"):
        np.testing.assert_array_equal(got[c], expect[c], err_msg=c)


# --------------------------------------------------------------------------- Ray pipeline


def test_join_equals_direct_healpy_lookup(ray_session, survey):
    training = TrainingCatalog(survey["catalog"], survey["maps"], max_outside_fraction=LOOSE)
    ds = training.dataset(split=None)
    columns = training.columns + training.condition_columns
    got = to_numpy(ds, columns)
    expect = expected_rows(survey["table"], survey["full"])
    assert got["id"].size == training.footprint.n_inside  # off-footprint rows dropped, counted
    for c in columns:
        np.testing.assert_array_equal(got[c], expect[c], err_msg=c)
        assert got[c].dtype == expect[c].dtype, c
    cmap = read_condition_map(survey["maps"])
    values, inside = cmap.lookup(got["pixel"])
    assert inside.all()
    np.testing.assert_array_equal(values, np.stack([got[c] for c in cmap.columns], axis=1))


def test_split_is_the_same_for_any_sharding(ray_session, survey, tmp_path):
    spec = SplitSpec()
    shuffled = survey["table"].take(np.random.default_rng(5).permutation(N_ROWS))
    resharded = write_catalog(tmp_path / "resharded", shuffled, shards=5, row_group_size=1_500)
    training = TrainingCatalog(resharded, survey["maps"], max_outside_fraction=LOOSE)
    ids = {split: to_numpy(training.dataset(split, ["id"]), ["id"])["id"] for split in SPLITS}
    original = TrainingCatalog(survey["catalog"], survey["maps"], max_outside_fraction=LOOSE)
    np.testing.assert_array_equal(to_numpy(original.dataset("val"), ["id"])["id"], ids["val"])
    inside = expected_rows(survey["table"], survey["full"])["id"]
    union = np.concatenate(list(ids.values()))
    assert union.size == np.unique(union).size == inside.size  # disjoint
    np.testing.assert_array_equal(np.sort(union), inside)  # and covering
    for k, split in enumerate(SPLITS):
        np.testing.assert_array_equal(ids[split], inside[spec.codes(inside) == k])
        assert abs(ids[split].size / inside.size - spec.fractions[k]) < 0.02


def test_corrupt_data_page_raises_data_error_naming_file(ray_session, survey, tmp_path):
    catalog = write_catalog(tmp_path / "cat", survey["table"], shards=2)
    bad = catalog / "part-00001.parquet"
    chunk = (
        # a measured column: the truth columns are read (and checked) when the catalog opens
        pq.read_metadata(bad).row_group(0).column(list(schema.INJECTION_FIELDS).index("obs_flux_r"))
    )
    data = bytearray(bad.read_bytes())
    start = chunk.data_page_offset + chunk.total_compressed_size // 3
    data[start : start + 512] = (
        np.random.default_rng(0).integers(0, 256, 512, dtype=np.uint8).tobytes()
    )
    bad.write_bytes(bytes(data))
    training = TrainingCatalog(catalog, survey["maps"], max_outside_fraction=LOOSE)  # footer fine
    with pytest.raises(DataError) as info:
        to_numpy(training.dataset("train"), ["obs_flux_r"])
    assert str(bad) in str(info.value)
