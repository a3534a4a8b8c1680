"""The yardstick's references: the Cramér–Rao bound (galray.estimator.bound) against an analytic
Fisher matrix, and the maximum-likelihood Sersic fit (galray.estimator.fit) against noiseless
truth and against the bound itself (Monte Carlo)."""

from __future__ import annotations

import math

import numpy as np
import pytest

galsim = pytest.importorskip("galsim")

from galray.datasets import sersic  # noqa: E402
from galray.estimator import bound, fit  # noqa: E402

GEOMETRY = (32, 0.2, 3.0)  # size (px), pixel scale (arcsec), Moffat beta: the Sersic defaults
PSF_FWHM = 0.7


def gaussian_render(size: int = 64, scale: float = 0.2):
    """A circular Gaussian ``theta = (flux, sigma_arcsec)`` sampled at pixel centres."""

    def render(theta):
        profile = galsim.Gaussian(flux=theta[0], sigma=theta[1])
        image = profile.drawImage(nx=size, ny=size, scale=scale, method="no_pixel", dtype=float)
        return image.array

    return render


def test_fisher_of_a_gaussian_matches_the_analytic_bound():
    # pixel area a, noise sigma: F_FF = a / (4 pi s^2 sigma^2), F_Fs = -a F / (4 pi s^3 sigma^2),
    # F_ss = a F^2 / (2 pi s^4 sigma^2), so CRB(F) = sigma sqrt(8 pi) s / sqrt(a) and
    # CRB(s) = s^2 sigma sqrt(4 pi) / (F sqrt(a)) -- the cross term makes them larger than
    # 1 / sqrt(F_ii)
    flux, s, noise, scale = 1000.0, 0.5, 2.0, 0.2
    area = scale**2
    fisher = bound.fisher_matrix(
        gaussian_render(scale=scale), [flux, s], noise, steps=[10.0, 1e-3 * s]
    )
    unit = area / noise**2
    expected = unit * np.array(
        [
            [1 / (4 * math.pi * s**2), -flux / (4 * math.pi * s**3)],
            [-flux / (4 * math.pi * s**3), flux**2 / (2 * math.pi * s**4)],
        ]
    )
    np.testing.assert_allclose(fisher, expected, rtol=1e-3)
    crb = bound.cramer_rao(fisher)
    crb_flux = noise * math.sqrt(8 * math.pi) * s / scale
    crb_s = s**2 * noise * math.sqrt(4 * math.pi) / (flux * scale)
    np.testing.assert_allclose(crb, [crb_flux, crb_s], rtol=1e-4)
    assert crb[0] > 1.1 / math.sqrt(fisher[0, 0])  # the correlation matters


def test_cramer_rao_marks_unidentifiable_parameters():
    diag = np.diag([4.0, 9.0, 0.0])
    np.testing.assert_allclose(bound.cramer_rao(diag), [0.5, 1 / 3, np.inf])
    # parameters 0 and 1 change the image the same way: neither is identifiable, 2 still is
    jac = np.array([[1.0, 2.0, 0.0], [1.0, 2.0, 1.0], [0.0, 0.0, 1.0]])
    crb = bound.cramer_rao(jac.T @ jac)
    assert np.isinf(crb[:2]).all() and np.isfinite(crb[2])
    with pytest.raises(ValueError, match="square"):
        bound.cramer_rao(np.ones((2, 3)))


def test_one_sided_differences_at_a_limit_agree_with_central_ones():
    pattern = np.linspace(0.0, 1.0, 12)

    def render(theta):  # quadratic in both: second-order differences are exact
        return theta[0] ** 2 * pattern + theta[1] * pattern[::-1] ** 2

    theta, steps = [0.35, 2.0], [0.05, 0.1]
    central = bound.fisher_matrix(render, theta, 1.0, steps)
    at_low = bound.fisher_matrix(render, theta, 1.0, steps, limits=[(0.3, 6.2), (1.9, 2.1)])
    np.testing.assert_allclose(at_low, central, rtol=1e-9)


def test_render_is_observe_without_float32_rounding():
    theta = [3000.0, 1.37, 0.6, 0.2, -0.1]
    ours = bound.render_sersic(theta, PSF_FWHM, *GEOMETRY)
    assert ours.dtype == np.float64
    np.testing.assert_allclose(ours, sersic.observe(theta, PSF_FWHM, *GEOMETRY), atol=1e-4)


def test_sersic_bound_scales_with_noise_and_flux():
    theta = [2000.0, 1.5, 0.5, 0.1, -0.05]
    table = {p: np.array([v, v]) for p, v in zip(sersic.PARAMS, theta, strict=True)}
    table |= {"psf_fwhm": np.full(2, PSF_FWHM), "noise_sigma": np.array([1.0, 3.0])}
    cfg = {"size": 32, "pixel_scale": 0.2, "psf_beta": 3.0}
    out = bound.sersic_bounds(table, cfg)
    np.testing.assert_allclose(out["crb"][1], 3 * out["crb"][0], rtol=1e-12)
    np.testing.assert_allclose(out["snr"], np.array([1, 1 / 3]) * out["snr"][0], rtol=1e-12)
    assert np.all(np.isfinite(out["crb"]))
    # the flux bound over the flux is the inverse S/N times a profile factor >= 1
    assert 1.0 <= out["crb_flux"][0] / theta[0] * out["snr"][0] < 3.0
    # doubling the flux at fixed noise halves every shape bound
    brighter = dict(table, flux=np.array([4000.0, 4000.0]))
    ratio = bound.sersic_bounds(brighter, cfg)["crb"][0] / out["crb"][0]
    np.testing.assert_allclose(ratio[1:], 0.5, rtol=1e-6)
    np.testing.assert_allclose(ratio[0], 1.0, rtol=1e-6)


def test_sersic_bound_near_the_index_limit_and_in_parallel():
    rows = [
        [800.0, 0.3, 0.7, 0.0, 0.2],
        [1500.0, 2.2, 0.4, -0.3, 0.1],
        [900.0, 0.31, 0.5, 0.1, 0.0],
    ]
    table = {p: np.array(col) for p, col in zip(sersic.PARAMS, np.array(rows).T, strict=True)}
    table |= {"psf_fwhm": np.full(3, 0.8), "noise_sigma": np.full(3, 1.5), "id": np.arange(3)}
    serial = bound.sersic_bounds(table, {"config": {"size": 32, "pixel_scale": 0.2, "psf_beta": 3}})
    assert np.all(np.isfinite(serial["crb"])) and np.all(serial["crb"] > 0)
    parallel = bound.sersic_bounds(
        table, {"size": 32, "pixel_scale": 0.2, "psf_beta": 3}, workers=2, chunk=1
    )
    np.testing.assert_array_equal(parallel["crb"], serial["crb"])
    np.testing.assert_array_equal(parallel["id"], np.arange(3))


def test_shear_reparametrisation_round_trips():
    for g in [(0.0, 0.0), (0.3, -0.2), (-0.85, 0.1)]:
        np.testing.assert_allclose(fit.g_of_eta(*fit.eta_of_g(*g)), g, atol=1e-12)
    upper = fit.parameter_box(GEOMETRY)[1]
    corner = fit.g_of_eta(upper[3], upper[4])
    assert math.hypot(*corner) < 1.0 and abs(fit.g_of_eta(upper[3], 0.0)[0] - 0.9) < 1e-12


@pytest.mark.parametrize(
    "theta",
    [
        [5000.0, 0.8, 0.45, 0.05, 0.2],
        [2500.0, 1.73, 0.7, -0.25, -0.1],
        [8000.0, 3.42, 0.35, 0.3, 0.0],
    ],
)
def test_fit_recovers_noiseless_truth_from_a_blind_start(theta):
    stamp = sersic.observe(theta, PSF_FWHM, *GEOMETRY)  # the product's data: float32 rounding
    result = fit.fit_galaxy(stamp, 1.0, PSF_FWHM, GEOMETRY)
    assert result["start"][1] == fit.START_N
    assert abs(result["start"][2] - theta[2]) > 1e-3  # the start is not the truth
    assert result["success"] and result["refused"] == 0
    np.testing.assert_allclose(result["estimate"][[0, 2]], np.array(theta)[[0, 2]], rtol=1e-5)
    np.testing.assert_allclose(result["estimate"][1], theta[1], atol=1e-4)
    np.testing.assert_allclose(result["estimate"][3:], theta[3:], atol=1e-5)
    assert result["chi2"] < 1e-6


def test_fit_between_grid_indices_and_without_interpolation():
    theta = [4000.0, 2.345, 0.5, 0.12, 0.08]  # off the 0.01 grid
    stamp = bound.render_sersic(theta, PSF_FWHM, *GEOMETRY)
    interpolated = fit.fit_galaxy(stamp, 1.0, PSF_FWHM, GEOMETRY)
    continuous = fit.fit_galaxy(stamp, 1.0, PSF_FWHM, GEOMETRY, interpolate=False)
    np.testing.assert_allclose(continuous["estimate"], theta, rtol=1e-6, atol=1e-6)
    # the interpolation error (~1e-6 of the image here) moves the estimate far less than the
    # Cramér–Rao bound of any stamp the population holds
    np.testing.assert_allclose(interpolated["estimate"], theta, rtol=1e-3, atol=1e-3)


def test_too_costly_profiles_are_refused_before_drawing():
    model = fit.SersicModel(PSF_FWHM, GEOMETRY)
    with pytest.raises(fit.TooCostly):
        model.unit(6.15, math.log(1.6), 2.0, 1.7, check=True)
    assert model.draws == 0


def _noisy_table(theta, sigma, count, seed):
    clean = bound.render_sersic(theta, PSF_FWHM, *GEOMETRY)
    rng = np.random.default_rng(seed)
    return {
        "stamp": clean + rng.normal(0.0, sigma, (count, *clean.shape)),
        "noise_sigma": np.full(count, sigma),
        "psf_fwhm": np.full(count, PSF_FWHM),
    }


def test_fit_scatter_reaches_the_cramer_rao_bound():
    # a bright galaxy (S/N ~ 230): the ML fit is efficient, so its scatter over noise
    # realizations is the bound; a bound that got sigma wrong would miss by the factor, a fit
    # that got it wrong would report chi^2 per degree of freedom far from 1
    theta, sigma, count = [6000.0, 1.5, 0.6, 0.1, -0.05], 2.0, 30
    crb = bound.cramer_rao(bound.sersic_fisher(theta, sigma, PSF_FWHM, GEOMETRY)[0])
    table = _noisy_table(theta, sigma, count, seed=7)
    out = fit.fit_sersic(table, {"size": 32, "pixel_scale": 0.2, "psf_beta": 3.0})
    assert out["success"].all()
    scatter = np.std(out["estimate"], axis=0, ddof=1)
    for i in (0, 2):  # flux, hlr
        assert 0.7 < scatter[i] / crb[i] < 1.3, (sersic.PARAMS[i], scatter[i], crb[i])
    # chi^2 per degree of freedom ~ 1 at the true sigma
    dof = GEOMETRY[0] ** 2 - 5
    assert abs(np.mean(out["chi2"]) / dof - 1.0) < 0.03


def test_fit_is_deterministic_across_workers():
    table = _noisy_table([1200.0, 2.1, 0.5, -0.1, 0.15], 2.0, 3, seed=1)
    table["id"] = np.array([9, 19, 29])
    cfg = {"size": 32, "pixel_scale": 0.2, "psf_beta": 3.0}
    serial = fit.fit_sersic(table, cfg)
    parallel = fit.fit_sersic(table, cfg, workers=2, chunk=1)
    np.testing.assert_array_equal(parallel["estimate"], serial["estimate"])
    np.testing.assert_array_equal(parallel["nfev"], serial["nfev"])
    np.testing.assert_array_equal(parallel["id"], table["id"])
    with pytest.raises(ValueError, match="noise_sigma"):
        fit.fit_sersic({"stamp": table["stamp"], "psf_fwhm": table["psf_fwhm"]}, cfg)
