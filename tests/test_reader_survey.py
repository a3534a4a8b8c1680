"""The reader against a survey spec: the catalog needs ``id``, ``pixel`` and the spec's truth
columns (no more), the maps exactly the spec's condition columns (per band and band-independent),
in the spec's order; anything missing is a DataError naming the file and the columns."""

from __future__ import annotations

import healpy as hp
import numpy as np
import pyarrow as pa
import pytest

from galray.datasets import schema
from galray.datasets.conditions import read_condition_map
from galray.datasets.reader import TrainingCatalog
from galray.datasets.survey import Conditions, DeepInputs, SurveySpec
from galray.errors import ConfigError, DataError
from galray.io import write_parquet

NSIDE = 16
SPEC = SurveySpec(
    name="gri-T",
    bands=["r", "i"],
    deep=DeepInputs(["g", "r", "i"], {"true_T": "log"}),
    conditions=Conditions(["psf_fwhm", "depth"], ["ebv"]),
)
# stored in another order than the spec's, with a column the spec does not use
MAP_COLUMNS = ["ebv", "depth_i", "psf_fwhm_z", "psf_fwhm_i", "depth_r", "psf_fwhm_r"]


def _maps(path, columns=MAP_COLUMNS):
    rng = np.random.default_rng(0)
    pixels = np.sort(rng.choice(hp.nside2npix(NSIDE), 2000, replace=False)).astype(np.int64)
    cols = {"pixel": pixels}
    for name in columns:
        lo = 0.7 if name.startswith("psf") else 0.0
        cols[name] = rng.uniform(lo, lo + 1.0, pixels.size).astype(np.float32)
    meta = schema.healpix_metadata(NSIDE, "NESTED", kind="conditions")
    write_parquet(pa.table(cols).replace_schema_metadata(meta), path)
    return cols


def _catalog(directory, drop=()):
    rng = np.random.default_rng(1)
    n = 3000
    ra, dec = rng.uniform(0, 360, n), np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    cols = {
        "id": np.arange(n, dtype=np.int64),
        "pixel": hp.ang2pix(NSIDE, ra, dec, lonlat=True, nest=True).astype(np.int64),
        **{schema.true_mag(b): rng.uniform(18, 26, n).astype(np.float32) for b in "gri"},
        "true_T": rng.lognormal(-1, 1, n).astype(np.float32),
    }
    table = pa.table({k: v for k, v in cols.items() if k not in drop})
    meta = schema.healpix_metadata(NSIDE, "NESTED", kind="injections")
    write_parquet(table.replace_schema_metadata(meta), directory / "part-00000.parquet")
    return cols


def test_condition_columns_in_the_order_asked(tmp_path):
    stored = _maps(tmp_path / "maps.parquet")
    cmap = read_condition_map(tmp_path / "maps.parquet", columns=SPEC.condition_columns)
    assert cmap.columns == tuple(SPEC.condition_columns)
    assert SPEC.condition_columns == ["psf_fwhm_r", "depth_r", "psf_fwhm_i", "depth_i", "ebv"]
    for j, name in enumerate(cmap.columns):
        np.testing.assert_array_equal(cmap.values[:, j], stored[name], err_msg=name)
    cmap = read_condition_map(tmp_path / "maps.parquet", columns=["ebv", "depth_r"])
    assert cmap.columns == ("ebv", "depth_r")
    np.testing.assert_array_equal(cmap.values[:, 0], stored["ebv"])
    with pytest.raises(DataError) as info:
        read_condition_map(tmp_path / "maps.parquet", columns=["ebv", "depth_g", "airmass_r"])
    message = str(info.value)
    assert str(tmp_path / "maps.parquet") in message and "['depth_g', 'airmass_r']" in message
    # the legacy columns, r, i and z: psf_fwhm_z is there, depth_z is not
    with pytest.raises(DataError, match="depth_z"):
        read_condition_map(tmp_path / "maps.parquet")


def test_spec_sets_the_required_truth_and_condition_columns(tmp_path):
    stored = _maps(tmp_path / "maps.parquet")
    (tmp_path / "cat").mkdir()
    cols = _catalog(tmp_path / "cat")
    training = TrainingCatalog(
        tmp_path / "cat", tmp_path / "maps.parquet", spec=SPEC, max_outside_fraction=1.0
    )
    assert training.condition_columns == SPEC.condition_columns
    assert training.bands == ("r", "i") and training.spec is SPEC
    assert set(SPEC.truth_columns) <= set(training.columns)  # true_T, no true_size needed
    values, inside = training.conditions.lookup(cols["pixel"])
    on = np.isin(cols["pixel"], stored["pixel"])
    np.testing.assert_array_equal(inside, on)
    rows = np.searchsorted(stored["pixel"], cols["pixel"][on])
    for j, name in enumerate(SPEC.condition_columns):
        np.testing.assert_array_equal(values[inside, j], stored[name][rows], err_msg=name)
    assert training.footprint.n_outside == np.count_nonzero(~on)
    # without the spec the legacy contract asks for true_mag_z and depth_z
    with pytest.raises(DataError, match="depth_z"):
        TrainingCatalog(tmp_path / "cat", tmp_path / "maps.parquet", max_outside_fraction=1.0)


def test_missing_spec_columns_name_the_file(tmp_path):
    _maps(tmp_path / "maps.parquet")
    (tmp_path / "cat").mkdir()
    _catalog(tmp_path / "cat", drop=("true_T",))
    with pytest.raises(DataError, match="true_T") as info:
        TrainingCatalog(tmp_path / "cat", tmp_path / "maps.parquet", spec=SPEC)
    assert str(tmp_path / "cat" / "part-00000.parquet") in str(info.value)
    _maps(tmp_path / "no_ebv.parquet", [c for c in MAP_COLUMNS if c != "ebv"])
    _catalog(tmp_path / "cat")
    with pytest.raises(DataError, match="ebv") as info:
        TrainingCatalog(tmp_path / "cat", tmp_path / "no_ebv.parquet", spec=SPEC)
    assert str(tmp_path / "no_ebv.parquet") in str(info.value)
    with pytest.raises(ConfigError, match="bands"):
        TrainingCatalog(tmp_path / "cat", tmp_path / "maps.parquet", spec=SPEC, bands="riz")


def test_a_nan_truth_value_is_refused_on_the_driver_naming_shard_column_and_count(tmp_path):
    """A sentinel that ingest turned into NaN in a truth input stops the catalog before any Ray
    work (it used to fail later in every training worker, after retries)."""
    import numpy as np
    import pyarrow.parquet as pq

    from galray.datasets.reader import TrainingCatalog
    from galray.datasets.simulate import SurveyConfig, simulate_survey
    from galray.errors import DataError

    out = tmp_path / "survey"
    cfg = SurveyConfig(n_injections=2000, n_deep=500, nside=16, seed=1, write_fits_maps=False)
    simulate_survey(out, cfg, log=lambda *_: None)
    shard = sorted((out / "injections").glob("*.parquet"))[0]
    table = pq.read_table(shard)
    mags = table.column("true_mag_i").to_numpy().copy()
    mags[[3, 7, 11]] = np.nan
    table = table.set_column(table.schema.get_field_index("true_mag_i"), "true_mag_i", [mags])
    pq.write_table(table, shard)
    with pytest.raises(DataError, match=r"'true_mag_i' has 3 non-finite value") as info:
        TrainingCatalog(out / "injections", out / "maps", max_outside_fraction=1.0)
    assert shard.name in str(info.value) and "\n" not in str(info.value)
