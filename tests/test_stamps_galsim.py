"""Generated galaxies from GalSim: the ``galsim`` executable on ``examples/stamps.yaml`` through
galray's config plug-in (output checked by fitsverify), and the same object type from Python."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from galray.datasets.stamps import flux_of

galsim = pytest.importorskip("galsim")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "stamps.yaml"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from test_stamps_model import tiny_model

    return tiny_model().save(tmp_path_factory.mktemp("stamps") / "bundle")


def run_galsim(bundle: Path, out: Path, *extra: str) -> Path:
    exe = Path(sys.executable).with_name("galsim")
    command = [str(exe) if exe.exists() else "galsim", str(EXAMPLE)]
    command += [f"input.galray_stamps.model={bundle}", f"output.dir={out}", *extra]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return out / "stamps.fits"


def verify_fits(path: Path) -> None:
    if shutil.which("fitsverify"):
        done = subprocess.run(["fitsverify", "-q", str(path)], capture_output=True, text=True)
        assert done.returncode == 0 and "verification OK" in done.stdout, done.stdout
    else:  # astropy's checks of the standard
        from astropy.io import fits

        with fits.open(path) as hdus:
            hdus.verify("exception")


def test_galsim_executable_draws_the_example(bundle, tmp_path):
    first = run_galsim(bundle, tmp_path / "a")
    verify_fits(first)
    from astropy.io import fits

    image = fits.getdata(first)
    assert image.shape == (6 * 48, 6 * 48) and np.isfinite(image).all()
    # 36 galaxies of 20.5-23 mag (>= 630 counts each) over noise of sigma 2 per pixel
    assert image.sum() > 36 * 630 * 0.8
    tiles = image.reshape(6, 48, 6, 48).sum(axis=(1, 3))
    assert (tiles > 300).all()  # a galaxy in every tile
    # the file is reproducible from image.random_seed
    assert np.array_equal(fits.getdata(run_galsim(bundle, tmp_path / "b")), image)


def test_object_type_from_python(bundle):
    import galray.stamps.galsim_config  # noqa: F401  (registers the types)

    def build(seed: int):
        config = {
            "input": {"galray_stamps": {"model": str(bundle)}},
            "gal": {
                "type": "GalrayStamp",
                "mag": 21.0,
                "hlr": 0.5,
                "z": 0.6,
                "ellipticity": 0.3,
                "seed": seed,
            },
            "psf": {"type": "Moffat", "beta": 3.0, "fwhm": 0.7},
            "image": {"size": 64, "pixel_scale": 0.2, "draw_method": "no_pixel"},
        }
        galsim.config.ProcessInput(config)
        return galsim.config.BuildImage(config)

    image = build(7)
    assert image.array.sum() == pytest.approx(flux_of(21.0), rel=0.02)
    assert np.array_equal(build(7).array, image.array)  # a fixed seed is the same galaxy
    assert not np.array_equal(build(8).array, image.array)
