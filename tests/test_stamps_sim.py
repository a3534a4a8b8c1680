"""``galray simulate stamps``: GalSim galaxy stamps with known truth, as sharded Parquet with
tensor columns."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from galray.cli import main
from galray.datasets.stamps import (
    PROPERTIES,
    StampSimConfig,
    convolve_same,
    draw_population,
    read_manifest,
    read_stamps,
    simulate_stamps,
    split_of,
)

pytest.importorskip("galsim")


@pytest.fixture(scope="module")
def stamps_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("stamps") / "data"
    simulate_stamps(out, StampSimConfig(n=40, size=32, shard_rows=15, seed=5), log=lambda _: None)
    return out


def test_layout_and_columns(stamps_dir):
    files = sorted((stamps_dir / "stamps").glob("*.parquet"))
    assert len(files) == 3  # 15 + 15 + 10
    cols = read_stamps(stamps_dir)
    assert cols["stamp"].shape == (40, 32, 32) and cols["stamp"].dtype == np.float32
    assert cols["psf"].shape == cols["intrinsic"].shape == (40, 32, 32)
    assert np.array_equal(cols["id"], np.arange(40))
    for name in (*PROPERTIES, "noise_sigma", "psf_fwhm", "flux", "bulge_fraction"):
        assert np.isfinite(cols[name]).all(), name
    assert np.allclose(cols["psf"].sum(axis=(1, 2)), 1.0, atol=1e-5)
    assert ((cols["ellipticity"] >= 0) & (cols["ellipticity"] < 0.7)).all()
    # Sersic indices are rounded to 0.1 (GalSim builds one table per index)
    assert np.allclose(cols["bulge_n"] * 10, np.round(cols["bulge_n"] * 10))
    test = read_stamps(stamps_dir, split="test")
    assert set(test["id"] % 10) == {9} and len(test["id"]) == 4


def test_stamp_is_intrinsic_convolved_with_psf_plus_noise(stamps_dir):
    """The forward model a PSF-aware generator trains with: stamp = intrinsic ⊛ psf + noise of
    ``noise_sigma``.  A PSF off by one pixel or a wrong noise level breaks chi² / pixel = 1."""
    c = read_stamps(stamps_dir)
    model = convolve_same(c["intrinsic"].astype(np.float64), c["psf"].astype(np.float64))
    chi2 = (((c["stamp"] - model) / c["noise_sigma"][:, None, None]) ** 2).mean(axis=(1, 2))
    assert 0.85 < chi2.mean() < 1.15
    shifted = np.roll(model, 1, axis=-1)
    chi2_shifted = (((c["stamp"] - shifted) / c["noise_sigma"][:, None, None]) ** 2).mean((1, 2))
    assert chi2.max() < 1.3 and chi2_shifted.max() > 2.0  # the bright ones show it
    # the intrinsic image holds (nearly) the whole flux of the magnitude
    assert np.median(c["intrinsic"].sum(axis=(1, 2)) / c["flux"]) > 0.95


def test_population_trends_and_independence_of_sharding():
    cfg = StampSimConfig(n=1, seed=2)
    p = draw_population(np.arange(600), cfg)
    assert spearmanr(p["z"], p["bulge_fraction"]).statistic < -0.5  # nearby: bulgier
    assert spearmanr(p["z"], p["knot_fraction"]).statistic > 0.5  # further: clumpier
    assert spearmanr(p["mag"], p["disk_hlr"]).statistic < -0.2  # fainter: smaller
    again = draw_population(np.arange(300, 600), cfg)
    assert np.array_equal(again["mag"], p["mag"][300:])
    assert np.array_equal(split_of(np.array([8, 9, 10])), np.array(["val", "test", "train"]))


def test_deterministic_for_a_seed_whatever_the_shards(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    simulate_stamps(a, StampSimConfig(n=6, size=16, shard_rows=6, seed=1), log=lambda _: None)
    simulate_stamps(b, StampSimConfig(n=6, size=16, shard_rows=4, seed=1), log=lambda _: None)
    ca, cb = read_stamps(a), read_stamps(b)
    for name in ("stamp", "psf", "intrinsic", "hlr", "mag"):
        assert np.array_equal(ca[name], cb[name]), name


@pytest.mark.ray
def test_ray_data_reads_tensor_columns(stamps_dir, ray_session):
    ds = ray_session.data.read_parquet(str(stamps_dir / "stamps"))
    batch = next(iter(ds.iter_batches(batch_size=8, batch_format="numpy")))
    assert batch["stamp"].shape == (8, 32, 32) and batch["psf"].dtype == np.float32


def test_cli_bad_input_writes_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["simulate", "stamps", "--out", str(out), "--n", "0"]) == 2
    assert main(["simulate", "stamps", "--out", str(out), "--size", "15"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("galray: error: n:") and err[1].startswith("galray: error: size:")
    assert not out.exists()


def test_cli_counts_the_stamps_rendered(tmp_path, capsys):
    out = tmp_path / "st"
    argv = ["simulate", "stamps", "--out", str(out), "--n", "8", "--size", "16"]
    assert main([*argv, "--shard-rows", "3", "--no-intrinsic"]) == 0
    text = capsys.readouterr().out
    lines = [ln for ln in text.splitlines() if ln.startswith("stamps:")]
    # piped: every stamp counts, across shards; a line every quarter, none per shard
    assert [ln.split(" stamp ")[0] for ln in lines] == [f"stamps: {k}/8" for k in (2, 4, 6, 8)]
    assert lines[-1].startswith("stamps: 8/8 stamp (100%)") and "ETA" in lines[0]
    assert "\r" not in text and "\x1b[" not in text
    assert read_manifest(out)["shards"] == 3
