"""The stamp generator's networks, PSF-aware likelihood and saved model (no Ray, no training)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from galray.datasets.stamps import convolve_same, flux_of, psf_image
from galray.errors import ConfigError, DataError, ModelNotFoundError
from galray.models.stamps import StampNetConfig, StampVAE, elbo_terms, fft_convolve
from galray.stamps.bundle import Conditions, PropertyRangeWarning, StampModel

galsim = pytest.importorskip("galsim")

NET = StampNetConfig(size=16, latent_dim=4, channels=(8, 8), hidden=16, flow_hidden=(16,))


def tiny_model(seed: int = 0) -> StampModel:
    torch.manual_seed(seed)
    rng = np.random.default_rng(0)
    train = {
        "mag": rng.uniform(20, 23, 200),
        "hlr": rng.uniform(0.3, 1.0, 200),
        "z": rng.uniform(0.05, 1.5, 200),
        "ellipticity": rng.uniform(0, 0.6, 200),
    }
    return StampModel(StampVAE(NET), Conditions.fit(train), pixel_scale=0.2)


def table(n: int = 5) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "mag": np.linspace(20.5, 22.5, n),
            "hlr": np.linspace(0.4, 0.8, n),
            "z": np.linspace(0.2, 1.2, n),
            "ellipticity": np.linspace(0.1, 0.5, n),
        }
    )


def test_torch_fft_convolution_matches_numpy_and_centres_the_kernel():
    rng = np.random.default_rng(1)
    image = rng.random((3, 16, 16))
    psf = np.stack([psf_image(f, 16, 0.2) for f in (0.6, 0.8, 1.0)])
    ours = fft_convolve(torch.from_numpy(image), torch.from_numpy(psf)).numpy()
    assert np.allclose(ours, convolve_same(image, psf), atol=1e-5)
    delta = np.zeros((1, 16, 16))
    delta[0, 8, 8] = 1.0  # a point at the kernel's centre pixel comes back as the kernel
    assert np.allclose(convolve_same(delta, psf[:1]), psf[:1], atol=1e-6)


def test_rotation_turns_an_elongated_profile_and_keeps_its_flux():
    from galray.models.stamps import rotate

    y, x = np.mgrid[:16, :16] - 7.5
    bar = torch.from_numpy(np.exp(-0.5 * ((x / 4.0) ** 2 + (y / 1.5) ** 2)))[None].float()
    turned = rotate(bar, torch.tensor([np.pi / 2]))
    assert torch.allclose(turned.sum(), bar.sum())
    assert torch.allclose(turned[0], bar[0].T, atol=1e-3 * float(bar.max()))  # a quarter turn
    assert torch.allclose(rotate(bar, torch.tensor([np.pi]))[0], bar[0], atol=1e-4)


@pytest.mark.parametrize("beta", [10.0, 55.0, 100.0, 150.0])
def test_stamps_are_turned_into_the_canonical_frame_by_their_measured_angle(beta):
    """The angle comes from the stamp (even an untrained VAE finds it), the stamp turned back
    by it has its major axis along x, and the canonical profile turned by it is the stamp."""
    from galray.evaluation.stamps import hsm_moments
    from galray.models.stamps import orientation, rotate

    def draw(angle):
        gal = galsim.Exponential(half_light_radius=0.6, flux=2000.0)
        gal = gal.shear(e=0.4, beta=angle * galsim.degrees)
        psf = galsim.Moffat(beta=3, fwhm=0.8)
        return galsim.Convolve(gal, psf).drawImage(nx=48, ny=48, scale=0.15).array

    rng = np.random.default_rng(int(beta))
    stamp = torch.from_numpy(draw(beta) + rng.normal(0, 2.0, (48, 48)))[None].float()
    cfg = StampNetConfig(size=48, latent_dim=4, channels=(8, 8), hidden=16, flow_hidden=(16,))
    torch.manual_seed(0)
    psf = torch.from_numpy(psf_image(0.8, 48, 0.15))[None]
    angle = StampVAE(cfg).encode(stamp, psf, torch.tensor([2000.0]), torch.zeros(1, 4))[2]
    assert torch.allclose(angle, orientation(stamp))
    turned = np.deg2rad(beta) + float(angle)  # angle is -beta (mod pi)
    assert abs(np.angle(np.exp(2j * turned))) / 2 < np.deg2rad(6.0)  # S/N ~60: noise
    back = hsm_moments(rotate(stamp, -angle, renormalise=False).numpy(), 0.15).iloc[0]
    assert back.hsm_e1 > 0.15 and abs(back.hsm_e2) < 0.03
    canonical = torch.from_numpy(draw(0.0))[None].float()
    again = rotate(canonical, orientation(torch.from_numpy(draw(beta))[None].float()))[0]
    assert float((again - torch.from_numpy(draw(beta))).abs().max()) < 0.05 * float(again.max())


def test_untrained_decoder_light_stays_near_the_centre():
    """With its envelope an untrained decoder draws a compact profile; without it the softmax
    spreads the light evenly (and noise-dominated outskirts barely teach it otherwise)."""
    from galray.models.stamps import pixel_radius

    outside = pixel_radius(48) > 18.0  # beyond 2.7" at 0.15"/px: 0.4 % of the real galaxies' light
    for envelope, low, high in ((1.0 / 12.0, 0.0, 0.06), (0.0, 0.3, 1.0)):
        torch.manual_seed(0)
        cfg = StampNetConfig(size=48, latent_dim=4, channels=(8, 8), hidden=16, envelope=envelope)
        profile = StampVAE(cfg).decoder(torch.randn(8, 4), torch.zeros(8, 4)).detach()
        far = profile[:, outside].sum(dim=1)
        assert ((far > low) & (far < high)).all(), (envelope, far)
    with pytest.raises(ConfigError, match=r"net\.envelope: must be >= 0"):
        StampNetConfig(envelope=-1.0)


def test_decoder_profiles_have_unit_flux_and_likelihood_rewards_the_truth():
    torch.manual_seed(0)
    vae = StampVAE(NET)
    c = torch.randn(4, NET.n_cond)
    profile = vae.generate(c, torch.randn(4, NET.latent_dim), torch.rand(4) * 3.14)
    assert profile.shape == (4, 16, 16) and (profile >= 0).all()
    assert torch.allclose(profile.sum(dim=(1, 2)), torch.ones(4), atol=1e-5)
    psf = torch.from_numpy(np.stack([psf_image(0.8, 16, 0.2)] * 4))
    flux, sigma = torch.full((4,), 500.0), torch.full((4,), 1.0)
    stamp = flux[:, None, None] * fft_convolve(profile.detach(), psf)
    nll, kl = elbo_terms(vae, stamp, psf, sigma, flux, c)
    far = elbo_terms(vae, stamp.roll(3, dims=-1) + 5.0, psf, sigma, flux, c)[0]
    assert nll.shape == kl.shape == (4,) and torch.isfinite(kl).all()
    assert (far > nll).all()


def test_sample_is_deterministic_with_flux_and_scale_set():
    model = tiny_model()
    rows = table()
    a, b = model.generate(rows, seed=3), model.generate(rows, seed=3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, model.generate(rows, seed=4))
    assert np.allclose(a.sum(axis=(1, 2)), flux_of(rows["mag"]), rtol=1e-4)
    # row i depends on (seed, i) only: a prefix of the table gives the same galaxies
    assert np.allclose(model.generate(rows.iloc[:2], seed=3), a[:2], rtol=1e-3)  # float batching
    profiles = model.sample(rows, seed=3)
    assert len(profiles) == 5 and all(isinstance(p, galsim.InterpolatedImage) for p in profiles)
    assert profiles[1].flux == pytest.approx(flux_of(rows["mag"][1]))
    drawn = profiles[1].drawImage(nx=16, ny=16, scale=0.2, method="no_pixel").array
    assert np.allclose(drawn, a[1], rtol=1e-3, atol=1e-3 * a[1].max())
    psf = galsim.Moffat(beta=3, fwhm=0.8)
    seen = galsim.Convolve(profiles[0], psf).drawImage(nx=32, ny=32, scale=0.2, method="no_pixel")
    assert seen.array.sum() == pytest.approx(profiles[0].flux, rel=0.02)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.drop(columns=["z"]), "missing column(s) ['z']"),
        (lambda t: t.assign(hlr=[0.5, -0.1, 0.5, 0.5, 0.5]), "hlr: sizes must be positive"),
        (lambda t: t.assign(hlr=[0.5, 0.5, 0.0, 0.5, 0.5]), "at row 2"),
        (lambda t: t.assign(mag=[20, np.nan, 21, 21, 21]), "mag: 1 non-finite value(s)"),
    ],
)
def test_bad_input_is_one_line_data_error(change, message):
    with pytest.raises(DataError) as err:
        tiny_model().sample(change(table()), seed=0)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_outside_training_range_is_clipped_with_a_warning():
    model = tiny_model()
    rows = table().assign(z=[0.2, 5.0, 0.3, 0.4, 0.5])
    with pytest.warns(PropertyRangeWarning, match=r"z: 1 value\(s\) outside the training range"):
        out = model.generate(rows, seed=0)
    high = model.conditions.high[model.conditions.names.index("z")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = model.generate(rows.assign(z=[0.2, high, 0.3, 0.4, 0.5]), seed=0)
    assert np.array_equal(out, same)


def test_input_tables_of_any_kind(tmp_path):
    import pyarrow as pa
    from astropy.table import Table

    model = tiny_model()
    rows = table(3)
    expect = model.generate(rows, seed=1)
    for other in (
        pa.Table.from_pandas(rows),
        Table.from_pandas(rows),
        {k: rows[k].to_numpy() for k in rows},
    ):
        assert np.array_equal(model.generate(other, seed=1), expect)


def test_bundle_round_trip_and_damaged_bundle(tmp_path):
    model = tiny_model()
    path = model.save(tmp_path / "bundle")
    again = StampModel.load(path)
    assert np.array_equal(again.generate(table(), seed=2), model.generate(table(), seed=2))
    assert again.pixel_scale == 0.2 and again.conditions == model.conditions
    (path / "vae.pt").write_bytes(b"not a state dict")
    with pytest.raises(ModelNotFoundError, match="damaged stamp generator bundle"):
        StampModel.load(path)


def test_sweep_grids_span_the_populations_bulk_not_its_range():
    """A skewed condition with a long, sparse tail (z, clipped at 2) is swept between its 5th
    and 95th percentiles, sizes evenly in log; the extremes of the range stay out."""
    from galray.stamps.evaluate import sweep_values

    rng = np.random.default_rng(0)
    z = np.clip(2.0 * rng.beta(2.0, 4.0, 5000) * 1.2, 0.02, 2.0)
    grid = sweep_values(z, "z", 8)
    assert np.allclose(grid[[0, -1]], np.percentile(z, [5, 95]))
    assert np.allclose(np.diff(grid), np.diff(grid)[0]) and grid[-1] < 1.7
    hlr = 10 ** rng.normal(-0.3, 0.15, 5000)
    sizes = sweep_values(hlr, "hlr", 5)
    assert np.allclose(np.diff(np.log10(sizes)), np.diff(np.log10(sizes))[0])
    assert sizes[0] > hlr.min() * 1.5 and sizes[-1] < hlr.max() / 1.5


def test_ks_noise_floor_is_what_samples_of_one_distribution_exceed_one_time_in_twenty():
    from galray.evaluation.stamps import ks_noise_floor, ks_statistics

    rng = np.random.default_rng(0)
    real = pd.DataFrame({"a": rng.normal(size=50), "b": np.r_[rng.normal(size=8), [np.nan] * 42]})
    floor = ks_noise_floor(real, real.assign(a=rng.normal(size=50)))
    assert floor["a"] == pytest.approx(0.272, abs=0.001) and np.isnan(floor["b"])
    big = pd.DataFrame({"a": rng.normal(size=300)})
    assert ks_noise_floor(big, big)["a"] == pytest.approx(0.111, abs=0.001)
    draws = [
        ks_statistics(pd.DataFrame({"a": rng.normal(size=50)}), real[["a"]])["a"]
        for _ in range(400)
    ]
    assert 0.01 < np.mean(np.array(draws) > floor["a"]) < 0.1


def test_stamp_classifier_test_given_properties_sees_what_the_statistics_alone_miss():
    """Real stamps whose statistic follows their property, against (a) a generator with the same
    marginal but the wrong relation (another galaxy's property) and (b) a baseline off
    in the marginal: on the statistics alone only (b) is told apart (and the paired difference
    says (a) is closer); given the properties, (a) is too."""
    from galray.evaluation.stamps import c2st_comparison

    rng = np.random.default_rng(3)
    n = 4000
    prop = rng.normal(size=n)
    real = pd.DataFrame({"stat": prop + 0.3 * rng.normal(size=n)})
    shuffled = pd.DataFrame({"stat": rng.permutation(prop) + 0.3 * rng.normal(size=n)})
    offset = pd.DataFrame({"stat": real["stat"] + 0.8 + 0.3 * rng.normal(size=n)})
    given = pd.DataFrame({"prop": prop})
    out = c2st_comparison(real, shuffled, offset, seed=1, repeats=2)
    assert abs(out["c2st_auc"] - 0.5) < 3 * out["c2st_auc_err"]
    assert out["baseline_c2st_auc"] > 0.6
    assert out["c2st_auc_minus_baseline"] < -5 * out["c2st_auc_minus_baseline_err"]
    cond = c2st_comparison(real, shuffled, offset, seed=1, given=given, suffix="_given", repeats=2)
    assert cond["c2st_auc_given"] > 0.8  # the relation is gone: told apart given the property
    assert cond["baseline_c2st_auc_given"] > 0.8


def test_stamp_classifier_test_cannot_win_by_pairing_twins():
    """Generated stamps that are their real twins plus a trace of noise: each galaxy keeps one
    version and every fold is scored by classifiers that never saw it, so the AUC is 0.5 within
    its error -- not below it, as when a twin's label is learnt from the other version."""
    from galray.evaluation.stamps import c2st_comparison

    rng = np.random.default_rng(4)
    real = pd.DataFrame(rng.normal(size=(3000, 4)), columns=list("abcd"))
    twins = real + 1e-4 * rng.normal(size=real.shape)
    given = pd.DataFrame({"p": rng.normal(size=3000)})
    for out in (
        c2st_comparison(real, twins, twins, seed=0, repeats=2),
        c2st_comparison(real, twins, twins, seed=0, given=given, repeats=2),
    ):
        assert abs(out["c2st_auc"] - 0.5) < 3 * out["c2st_auc_err"]
        assert out["c2st_auc_minus_baseline"] == 0.0


def test_stamp_classifier_test_folds_do_not_bias_identical_samples_low():
    """Statistics that carry nothing (all equal): each fold's classifier can only score by the
    mixture it was trained on.  Folds stratified by kind make that the same everywhere, so the
    AUC is 0.5; with folds of random mixtures it was 0.45-0.47 (a fold rich in one kind scored
    low for it): the bias that pulled every comparison of identical samples below 0.5."""
    from sklearn.metrics import roc_auc_score

    from galray.evaluation.stamps import c2st_scores

    flat = pd.DataFrame({"stat": np.zeros(500)})
    for seed in range(3):
        scores, labels, rows = c2st_scores(flat, flat, seed=seed)
        assert sorted(rows) == list(range(500))  # every galaxy scored once
        assert roc_auc_score(labels, scores) == pytest.approx(0.5, abs=0.02)


def test_stamp_classifier_difference_error_covers_the_tests_own_spread():
    """Generator and baseline equally far from the real stamps (independent draws of one
    shifted distribution): the true difference is 0, and each run's classifiers find different
    things.  The error (the bootstrap over galaxies plus the spread across runs) keeps the
    difference within about one of them, as a calibrated error should."""
    from galray.evaluation.stamps import c2st_comparison

    z = []
    for d in range(8):
        rng = np.random.default_rng(100 + d)
        real, gen, base = (
            pd.DataFrame(rng.normal(shift, 1.0, size=(300, 3)), columns=list("abc"))
            for shift in (0.0, 0.3, 0.3)
        )
        out = c2st_comparison(real, gen, base, seed=d, repeats=3)
        assert out["c2st_auc"] > 0.52 and out["baseline_c2st_auc"] > 0.52  # both find it
        z.append(out["c2st_auc_minus_baseline"] / out["c2st_auc_minus_baseline_err"])
    assert np.mean(np.abs(z) > 2) <= 0.125 and np.std(z) < 1.2, z
