"""Seamless tiled generation: deterministic noise, tiled == one pass, streaming FITS output."""

from __future__ import annotations

import shutil
import subprocess
import tracemalloc

import numpy as np
import pytest
import torch
from astropy.io import fits
from astropy.wcs import WCS

from galray.datasets.fitsfield import StreamingFieldWriter, read_field
from galray.deepfield.bundle import DeepFieldModel
from galray.deepfield.generate import check_field_output, generate_fits
from galray.deepfield.noise import NOISE_BLOCK, noise_window, plan_tiles
from galray.deepfield.scaling import IntensityScaling
from galray.errors import ConfigError, ModelNotFoundError, OutputExistsError
from galray.models.sgan import Generator, SGANNetConfig


def _model(cfg: SGANNetConfig | None = None, seed: int = 0) -> DeepFieldModel:
    torch.manual_seed(seed)
    generator = Generator(cfg or SGANNetConfig.debug())
    # train-like weights: larger output logits, so the image spans much of (0, 1)
    with torch.no_grad():
        generator.out.weight.mul_(40.0)
    rng = np.random.default_rng(seed)
    sample = rng.normal(0.0, 0.6, (3, 64, 64)).astype(np.float32)
    sample[:, 30:34, 30:34] += 80.0
    return DeepFieldModel(
        generator, IntensityScaling.fit(sample), ["r", "i", "z"], [31.4] * 3, 0.06, "nJy",
        (53.16, -27.79),
    )  # fmt: skip


def _relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / (b.max() - b.min()))


def test_noise_is_defined_per_cell_whatever_the_window():
    whole = noise_window(7, 5, 0, 40, 0, 50)
    assert whole.shape == (5, 40, 50) and whole.dtype == np.float32
    np.testing.assert_array_equal(noise_window(7, 5, 13, 31, 17, 49), whole[:, 13:31, 17:49])
    assert abs(whole.mean()) < 0.05 and abs(whole.std() - 1) < 0.05
    assert not np.array_equal(noise_window(8, 5, 0, 40, 0, 50), whole)
    # blocks are independent streams: no repeats across block boundaries
    b = NOISE_BLOCK
    assert not np.array_equal(whole[:, :b, :b], whole[:, :b, b : 2 * b])


def test_tile_plan_covers_the_field_once():
    tiles = plan_tiles(300, 200, 64, 16, (4, 3))
    cover = np.zeros((300, 200), int)
    for t in tiles:
        cover[t.y0 : t.y1, t.x0 : t.x1] += 1
        assert t.y0 % 16 == 0 and t.x0 % 16 == 0
        assert t.r0 == max(0, t.y0 // 16 - 4) and t.r1 == min(19, (t.y1 - 1) // 16 + 4)
    assert (cover == 1).all()
    with pytest.raises(ValueError, match="multiple of 16"):
        plan_tiles(100, 100, 40, 16, (1, 1))


@pytest.mark.parametrize(
    "height, width, tile",
    [(256, 256, 64), (200, 157, 64), (129, 300, 96), (77, 61, 32), (50, 90, 16)],
)
def test_tiled_equals_one_pass(height, width, tile):
    model = _model()
    one_pass = model.generate(height, width, seed=11)
    tiled = model.generate(height, width, seed=11, tile=tile)
    assert one_pass.shape == (3, height, width)
    assert _relative_error(tiled, one_pass) <= 1e-5


def test_tiled_equals_one_pass_for_the_paper_topology():
    cfg = SGANNetConfig(noise_channels=50, gen_channels=(8, 8, 8, 8), critic_channels=(8,))
    model = _model(cfg)
    assert model.halo == (4, 3)
    one_pass = model.generate(237, 190, seed=2)
    assert _relative_error(model.generate(237, 190, seed=2, tile=64), one_pass) <= 1e-5


def test_a_smaller_halo_would_show_seams():
    """The halo is necessary: one cell less on either side changes pixels near tile edges."""
    model = _model()
    one_pass = model.generate(256, 256, seed=3)
    before, after = model.halo
    for halo in ((before - 1, after), (before, after - 1)):
        out = np.empty_like(one_pass)
        for t in plan_tiles(256, 256, 64, model.upsampling, halo):
            out[:, t.y0 : t.y1, t.x0 : t.x1] = model.tile(t, 3)
        assert _relative_error(out, one_pass) > 1e-3


def test_same_seed_same_field_different_seed_different_field():
    model = _model()
    a = model.generate(96, 96, seed=1)
    np.testing.assert_array_equal(a, model.generate(96, 96, seed=1))
    assert _relative_error(model.generate(96, 96, seed=2), a) > 1e-2
    # a bigger field sharing the corner holds the same pixels away from its new edges
    big = model.generate(192, 192, seed=1)
    margin = 96 - 16 * (model.halo[1] + 1)
    assert _relative_error(big[:, :margin, :margin], a[:, :margin, :margin]) <= 1e-5


def test_streaming_writer_memory_is_bounded_by_the_tile(tmp_path):
    height, width, tile = 2048, 3072, 256  # 75 MB of float32 on disk
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [10.0, -20.0]
    wcs.wcs.cdelt = [-0.06 / 3600, 0.06 / 3600]
    wcs.wcs.crpix = [1536.5, 1024.5]
    path = tmp_path / "big.fits"
    tracemalloc.start()
    with StreamingFieldWriter(path, height, width, ["r", "i", "z"], [31.4] * 3, wcs.to_header(),
                              bunit="nJy", primary={"ORIGIN": "test"}) as out:  # fmt: skip
        for y0 in reversed(range(0, height, tile)):  # any order
            for x0 in range(0, width, tile):
                band = np.arange(3, dtype=np.float32)[:, None, None]
                values = band * 1e4 + y0 + x0 + np.zeros((3, tile, tile), np.float32)
                out.write_tile(y0, x0, values)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8 * 3 * tile * tile * 4  # a few tiles, not 75 MB
    with fits.open(path) as hdul:
        assert len(hdul) == 4
        data = hdul["i"].data
        assert data.shape == (height, width)
        assert data[300, 700] == 1e4 + 256 + 512 and data[-1, -1] == 1e4 + 1792 + 2816
        header = hdul[3].header
        assert header["MAGZERO"] == 31.4 and header["EXTNAME"] == "z"
        ra, dec = WCS(header).all_pix2world([1535.5], [1023.5], 0)
        assert ra[0] == pytest.approx(10.0) and dec[0] == pytest.approx(-20.0)
    assert not list(tmp_path.glob(".*tmp*"))


def test_streaming_writer_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with StreamingFieldWriter(tmp_path / "x.fits", 32, 32, ["r"]) as out:
            out.write_tile(0, 0, np.zeros((1, 16, 16), np.float32))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with StreamingFieldWriter(tmp_path / "y.fits", 32, 32, ["r"]) as out:
        with pytest.raises(ValueError, match="overflows"):
            out.write_tile(16, 16, np.zeros((1, 32, 16), np.float32))


@pytest.mark.ray
def test_ray_tiles_stream_to_a_fits_equal_to_one_pass(tmp_path, ray_session):
    model = _model()
    height, width = 300, 413
    result = generate_fits(model, tmp_path / "gen.fits", height, width, seed=5, tile=128, log=None)
    assert result.tiles == 12
    image = read_field(tmp_path / "gen.fits")
    assert image.bands == ["r", "i", "z"] and image.zeropoints == [31.4] * 3
    assert image.pixel_scale == pytest.approx(0.06) and image.bunit == "nJy"
    assert _relative_error(image.data, model.generate(height, width, seed=5)) <= 1e-5
    if shutil.which("fitsverify"):
        out = subprocess.run(["fitsverify", "-q", str(tmp_path / "gen.fits")], capture_output=True)
        assert b"verification OK" in out.stdout
    with pytest.raises(ConfigError, match="--tile"):
        generate_fits(model, tmp_path / "bad.fits", 100, 100, tile=100)
    # an existing field is replaced only with overwrite, atomically: a run that fails half-way
    # leaves the old file whole and no temporary behind
    before = (tmp_path / "gen.fits").read_bytes()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        generate_fits(model, tmp_path / "gen.fits", 64, 64, tile=64, log=None)
    calls = []

    def fail_late(message):
        calls.append(message)
        if len(calls) == 2:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        generate_fits(
            model, tmp_path / "gen.fits", 128, 128, tile=16, overwrite=True, log=fail_late
        )
    assert (tmp_path / "gen.fits").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen.fits"]
    generate_fits(model, tmp_path / "gen.fits", 64, 80, seed=1, tile=64, overwrite=True, log=None)
    assert read_field(tmp_path / "gen.fits").data.shape == (3, 64, 80)


def test_generate_never_replaces_what_it_did_not_write(tmp_path):
    """A real image, a non-FITS file or a directory at --out is refused, even with --overwrite,
    and left as it was; temporaries of killed runs to the same --out are removed."""
    fits.PrimaryHDU(np.ones((4, 4), np.float32)).writeto(tmp_path / "xdf.fits")
    (tmp_path / "notes.fits").write_text("not a FITS file")
    (tmp_path / "dir.fits").mkdir()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    for name in ("xdf.fits", "notes.fits"):
        with pytest.raises(OutputExistsError, match="not a deep field galray generated"):
            check_field_output(tmp_path / name, overwrite=True)
    with pytest.raises(OutputExistsError, match="is a directory"):
        check_field_output(tmp_path / "dir.fits", overwrite=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    (tmp_path / ".new.fits.tmp-0123abcd").write_bytes(b"half a field")
    (tmp_path / ".other.fits.tmp-0123abcd").write_bytes(b"someone else's")
    lines = []
    check_field_output(tmp_path / "new.fits", log=lines.append)
    assert not (tmp_path / ".new.fits.tmp-0123abcd").exists() and len(lines) == 1
    assert (tmp_path / ".other.fits.tmp-0123abcd").exists()


def test_bundle_round_trip_and_bad_uri(tmp_path):
    model = _model()
    model.save(tmp_path / "bundle")
    again = DeepFieldModel.load(tmp_path / "bundle")
    np.testing.assert_array_equal(again.generate(64, 48, seed=4), model.generate(64, 48, seed=4))
    assert again.bands == model.bands and again.center == model.center
    from galray.deepfield.registry import load_deepfield_model

    with pytest.raises(ModelNotFoundError, match="no-such"):
        load_deepfield_model(str(tmp_path / "no-such"))
    with pytest.raises(ModelNotFoundError, match=r"sgan\.json"):
        load_deepfield_model(str(tmp_path))
