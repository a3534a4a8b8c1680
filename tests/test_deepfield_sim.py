"""The GalSim deep-field simulator and multi-band FITS reading: valid files, consistent truth."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from galray.cli import main
from galray.config import load_config
from galray.datasets.deepfield import DeepFieldConfig, catalog_path, simulate_deepfield
from galray.datasets.fitsfield import NJY_ZEROPOINT, read_field
from galray.errors import ConfigError, DataError

pytest.importorskip("galsim")


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "field.fits"
    cfg = DeepFieldConfig(height=384, width=448, seed=5)
    simulate_deepfield(out, cfg, log=lambda *_: None)
    return out, cfg


def test_fits_has_one_hdu_per_band_with_wcs_and_zeropoint(field):
    path, cfg = field
    with fits.open(path) as hdul:
        assert [h.header["EXTNAME"] for h in hdul[1:]] == ["r", "i", "z"]
        for h in hdul[1:]:
            assert h.data.shape == (384, 448) and h.data.dtype == np.dtype(">f4")
            assert h.header["MAGZERO"] == NJY_ZEROPOINT and h.header["BUNIT"] == "nJy"
            wcs = WCS(h.header)
            assert wcs.has_celestial
            ra, dec = wcs.all_pix2world([(448 - 1) / 2], [(384 - 1) / 2], 0)
            assert ra[0] == pytest.approx(cfg.ra) and dec[0] == pytest.approx(cfg.dec)
    image = read_field(path)
    assert image.bands == ["r", "i", "z"]
    assert image.pixel_scale == pytest.approx(0.06)
    assert image.zeropoints == [NJY_ZEROPOINT] * 3


@pytest.mark.skipif(shutil.which("fitsverify") is None, reason="fitsverify not installed")
def test_fitsverify_accepts_the_file(field):
    result = subprocess.run(["fitsverify", "-q", str(field[0])], capture_output=True, text=True)
    assert "verification OK" in result.stdout, result.stdout + result.stderr


def test_catalog_is_consistent_with_the_image(field):
    import sep

    path, cfg = field
    cat = pq.read_table(catalog_path(path)).to_pandas()
    assert len(cat) > 30
    meta = pq.read_schema(catalog_path(path)).metadata
    assert float(meta[b"galray.zeropoint"]) == NJY_ZEROPOINT
    image = read_field(path)
    sigma = cfg.sky_sigma()
    for c, b in enumerate(cfg.bands):
        # the image is the drawn light plus zero-mean noise
        noise_of_sum = sigma[c] * np.sqrt(image.data[c].size)
        assert image.data[c].sum() == pytest.approx(
            cat[f"drawn_flux_{b}"].sum(), abs=5 * noise_of_sum
        )
        # galaxies well inside the image land (nearly) all their light in it
        inner = (cat.x > 40) & (cat.x < 448 - 40) & (cat.y > 40) & (cat.y < 384 - 40)
        ratio = cat[f"drawn_flux_{b}"][inner] / cat[f"flux_{b}"][inner]
        assert np.median(ratio) > 0.97 and ratio.min() > 0.8
    # every bright galaxy is found by sep at its catalog position
    det = np.ascontiguousarray(image.data.mean(axis=0))
    bkg = sep.Background(det)
    found = sep.extract(det - bkg.back(), 5.0, err=bkg.globalrms, minarea=5)
    bright = cat[(cat.mag_i < 25.0) & (cat.x > 5) & (cat.x < 442) & (cat.y > 5) & (cat.y < 378)]
    assert len(bright) >= 3
    dist = np.hypot(
        bright.x.to_numpy()[:, None] - found["x"], bright.y.to_numpy()[:, None] - found["y"]
    )
    assert (dist.min(axis=1) < 2.0).mean() >= 0.9
    # and the catalog's sky coordinates follow the WCS
    ra, dec = image.wcs.all_pix2world(cat.x, cat.y, 0)
    np.testing.assert_allclose(ra, cat.ra, atol=1e-9)
    np.testing.assert_allclose(dec, cat.dec, atol=1e-9)


def test_counts_sizes_and_colours_are_deep_field_like():
    from galray.datasets.deepfield import draw_catalog

    cfg = DeepFieldConfig(size=4096, seed=1)
    cat = draw_catalog(cfg)
    n = cat["id"].size
    assert n == pytest.approx(cfg.density * cfg.area_arcmin2, rel=0.05)
    mag = cat["mag_i"]
    assert mag.min() >= 17.0 and mag.max() <= cfg.mag_faint
    # counts rise with magnitude: ~0.3 dex/mag at 22-26, flatter beyond 26.5
    per_mag = np.histogram(mag, np.arange(22, 30))[0]
    slope_bright = np.log10(per_mag[3] / per_mag[0]) / 3
    slope_faint = np.log10(per_mag[6] / per_mag[5])
    assert 0.25 < slope_bright < 0.4 and 0.1 < slope_faint < 0.3
    # fainter galaxies are smaller; r - i is red of i - z on average
    assert np.median(cat["half_light_radius"][mag < 24]) > np.median(
        cat["half_light_radius"][mag > 27]
    )
    assert np.median(cat["mag_r"] - cat["mag_i"]) > 0.2


def test_simulate_deepfield_cli_is_deterministic(tmp_path, capsys):
    args = ["simulate", "deepfield", "--size", "64x80", "--seed", "3", "--density", "2000"]
    assert main([*args, "--out", str(tmp_path / "a.fits")]) == 0
    # piped: the galaxies rendered, a plain line every quarter and at the end
    progress = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("galaxies:")]
    n = pq.read_metadata(tmp_path / "a.catalog.parquet").num_rows
    assert progress[-1].startswith(f"galaxies: {n}/{n} galaxy (100%)")
    assert 2 <= len(progress) <= 5 and "ETA" in progress[0]
    assert main([*args, "--out", str(tmp_path / "b.fits")]) == 0
    a, b = read_field(tmp_path / "a.fits"), read_field(tmp_path / "b.fits")
    assert a.shape == (64, 80)
    np.testing.assert_array_equal(a.data, b.data)
    assert (tmp_path / "a.catalog.parquet").is_file()


def test_a_cube_and_selected_bands_are_read(tmp_path, field):
    image = read_field(field[0])
    cube = fits.PrimaryHDU(image.data)
    cube.header["BANDS"] = "r,i,z"
    cube.header["MAGZERO"] = 30.0
    cube.writeto(tmp_path / "cube.fits")
    read = read_field(tmp_path / "cube.fits")
    assert read.bands == ["r", "i", "z"] and read.zeropoints == [30.0] * 3
    np.testing.assert_array_equal(read.data, image.data)
    two = read_field(field[0], bands=["z", "r"])
    np.testing.assert_array_equal(two.data, image.data[[2, 0]])


def test_bad_inputs_name_the_file_or_field(tmp_path, field):
    with pytest.raises(DataError, match=r"nope\.fits"):
        read_field(tmp_path / "nope.fits")
    with pytest.raises(DataError, match=r"field\.fits.*expected 4"):
        read_field(field[0], bands=4)
    with pytest.raises(DataError, match=r"no band\(s\) \['u'\]"):
        read_field(field[0], bands=["u"])
    data = read_field(field[0]).data.copy()
    data[1, 10, 10] = np.nan
    fits.HDUList(
        [fits.PrimaryHDU(), *[fits.ImageHDU(d, name=b) for d, b in zip(data, "riz")]]
    ).writeto(tmp_path / "nan.fits")
    with pytest.raises(DataError, match=r"(?i)nan\.fits: non-finite.*'i': 1"):
        read_field(tmp_path / "nan.fits")
    (tmp_path / "junk.fits").write_bytes(b"not a fits file" * 300)
    with pytest.raises(DataError, match=r"junk\.fits"):
        read_field(tmp_path / "junk.fits")
    with pytest.raises(ConfigError, match="psf_fwhm"):
        DeepFieldConfig(psf_fwhm=(0.1, 0.1))
    with pytest.raises(ConfigError, match="density"):
        load_config(DeepFieldConfig, None, ["density=-3"])
