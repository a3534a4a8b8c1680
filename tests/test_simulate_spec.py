"""The synthetic survey of any SurveySpec (galray.datasets.simulate_spec): the declared layout for
every preset, determinism, and the physics of the general transfer function."""

from __future__ import annotations

import healpy as hp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from galray.cli import main
from galray.datasets import schema, selection
from galray.datasets.simulate import SurveyConfig, noise_sigma, simulate_survey
from galray.datasets.simulate_spec import (
    DES_EXTINCTION,
    Band,
    measure,
    simulate_deep_spec,
    wavelength_nm,
    wide_band,
)
from galray.datasets.survey import load_spec
from galray.errors import ConfigError

QUIET = {"log": lambda *_: None}


def _small(spec: str, **kw) -> SurveyConfig:
    base = dict(n_injections=4_000, n_deep=2_000, nside=32, write_fits_maps=False, spec=spec)
    return SurveyConfig(**(base | kw))


@pytest.fixture(scope="module")
def des(tmp_path_factory):
    out = tmp_path_factory.mktemp("des") / "survey"
    cfg = SurveyConfig(
        spec="des-y6", n_injections=150_000, n_deep=30_000, nside=64, seed=4, shard_rows=60_000
    )
    simulate_survey(out, cfg, **QUIET)
    inj = pq.read_table(out / "injections").to_pandas()
    cond = pq.read_table(out / "maps" / "conditions.parquet").to_pandas()
    return out, cfg, inj, cond


def _expected_injection_fields(spec) -> dict[str, pa.DataType]:
    f32 = pa.float32()
    fields = {"id": pa.int64(), "deep_id": pa.int64(), "ra": pa.float64(), "dec": pa.float64()}
    fields["pixel"] = pa.int64()
    fields |= {c: f32 for c in spec.truth_columns}
    fields |= {spec.deep.redshift: f32} if spec.deep.redshift else {}
    fields |= {f"obs_flux_{b}": f32 for b in spec.bands}
    fields |= {f"obs_mag_{b}": f32 for b in spec.bands}
    fields |= {f"obs_flux_err_{b}": f32 for b in spec.bands} if spec.outputs.flux_err else {}
    fields |= {f"obs_{c}": f32 for c in spec.outputs.continuous}
    fields |= {f"obs_{f}": pa.int32() for f in spec.outputs.flags}
    return fields | {"detected": pa.bool_(), "p_detect": f32}


def _types(sch: pa.Schema) -> dict[str, pa.DataType]:
    return {name: sch.field(name).type for name in sch.names}


@pytest.mark.parametrize("preset", ["riz", "des-y6", "lsst"])
def test_each_preset_writes_the_declared_layout(tmp_path, preset):
    out = tmp_path / preset
    simulate_survey(out, _small(preset, shard_rows=1_500), **QUIET)
    spec = load_spec(preset)
    assert load_spec(out) == spec  # survey.json round-trips
    files = sorted((out / "injections").glob("part-*.parquet"))
    assert len(files) == 3
    sch = pq.read_schema(files[0])
    assert _types(sch) == _expected_injection_fields(spec)
    assert list(sch.names) == list(_expected_injection_fields(spec))
    assert schema.read_healpix_metadata(sch, "injections") == (32, "RING")

    deep = _types(pq.read_schema(out / "deep" / "part-00000.parquet"))
    want = {"id": pa.int64()} | {f"true_mag_{b}": pa.float32() for b in spec.deep.bands}
    want |= {m: pa.float32() for m in spec.deep.morphology}
    want |= {spec.deep.redshift: pa.float32()} if spec.deep.redshift else {}
    # the riz deep catalog also keeps its image-simulation columns (Sersic n, ellipticity)
    assert deep == want if preset != "riz" else dict(list(deep.items())[: len(want)]) == want

    cond = pq.read_schema(out / "maps" / "conditions.parquet")
    assert cond.names == ["pixel", *spec.condition_columns]
    assert _types(cond) == {"pixel": pa.int64()} | {c: pa.float32() for c in cond.names[1:]}
    assert schema.read_healpix_metadata(cond, "maps") == (32, "RING")

    inj = pq.read_table(out / "injections").to_pandas()
    assert inj.id.is_unique and inj.detected.any() and (~inj.detected).any()
    und = inj[~inj.detected]
    measured = [c for c in inj if c.startswith("obs_") and c != "obs_flags"]
    assert und[measured].isna().all().all()
    if "obs_flags" in inj:
        assert (und.obs_flags == 0).all()


def test_same_seed_same_files_other_seed_differs(tmp_path):
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        simulate_survey(tmp_path / name, _small("des-y6", seed=seed), **QUIET)
    for sub in ("injections", "deep", "maps/conditions.parquet"):
        a, b, c = (pq.read_table(tmp_path / name / sub) for name in "abc")
        assert a.schema == b.schema and a.to_pandas().equals(b.to_pandas()), sub  # NaN == NaN
        assert not a.to_pandas().equals(c.to_pandas()), sub
    assert (tmp_path / "a" / "survey.json").read_bytes() == (
        tmp_path / "b" / "survey.json"
    ).read_bytes()


def test_des_fits_maps_and_pixels(des):
    out, cfg, inj, cond = des
    np.testing.assert_array_equal(inj.pixel, hp.ang2pix(cfg.nside, inj.ra, inj.dec, lonlat=True))
    full = hp.read_map(out / "maps" / "fits" / "ebv.fits")
    np.testing.assert_array_equal(full[cond.pixel], cond.ebv)
    assert len(list((out / "maps" / "fits").glob("*.fits"))) == len(
        load_spec(out).condition_columns
    )


def test_des_conditions_ranges_and_correlations(des):
    cond = des[3]
    for b in "griz":
        assert 1.0 <= cond[f"airmass_{b}"].min() and cond[f"airmass_{b}"].max() <= 2.0
        assert cond[f"depth_{b}"].std() > 0.1 and cond[f"sky_{b}"].std() > 0.1
        # brighter sky (smaller mag/arcsec^2) and worse seeing -> shallower
        assert np.corrcoef(cond[f"sky_{b}"], cond[f"depth_{b}"])[0, 1] > 0.3
        assert np.corrcoef(cond[f"psf_fwhm_{b}"], cond[f"depth_{b}"])[0, 1] < -0.1
        assert np.corrcoef(cond[f"airmass_{b}"], cond[f"psf_fwhm_{b}"])[0, 1] > 0.1
    assert 0.0 <= cond.ebv.min() and cond.ebv.max() <= 0.15 and cond.ebv.std() > 0.005


def test_des_selection_fraction_and_redshift_information(des):
    out, _, inj, _ = des
    spec = load_spec(out)
    sel = selection.select(spec.selection, inj)
    det = inj.detected.to_numpy()
    assert 0.2 < sel.sum() / det.sum() < 0.5
    assert 0.1 < det.mean() < 0.6
    # a magnitude (S/N) selection carries n(z) information: the selected sample lies nearer
    assert inj.true_z[sel].mean() < inj.true_z[det].mean() - 0.05
    assert inj.true_z[det].mean() < inj.true_z.mean() - 0.05
    flagged = (inj.obs_flags[det] != 0).mean()
    assert 0.02 < flagged < 0.15
    assert set(np.unique(inj.obs_flags)) <= {0, 1, 2, 4}


def test_des_measurements_are_consistent(des):
    inj, cond = des[2], des[3].set_index("pixel")
    det = inj[inj.detected]
    flux = det[["obs_flux_r", "obs_flux_i", "obs_flux_z"]].sum(axis=1)
    err = np.sqrt((det[["obs_flux_err_r", "obs_flux_err_i", "obs_flux_err_z"]] ** 2).sum(axis=1))
    np.testing.assert_allclose(det.obs_snr, flux / err, rtol=1e-4)
    t_psf = 2 * (cond.psf_fwhm_i.reindex(det.pixel).to_numpy() / 2.355) ** 2
    np.testing.assert_allclose(det.obs_size_ratio, det.obs_T / t_psf, rtol=1e-4)
    assert (det.obs_T < 0).any()  # faint galaxies' deconvolved sizes scatter below zero
    bright = det[det.true_mag_i < 21]
    np.testing.assert_allclose(np.median(bright.obs_T / bright.true_T), 1.0, atol=0.05)
    # flux noise grows with shallower depth at fixed magnitude
    faint = inj[(inj.true_mag_i > 22.5) & (inj.true_mag_i < 23.0) & inj.detected]
    depth = cond.depth_i.reindex(faint.pixel).to_numpy()
    assert np.corrcoef(np.log(faint.obs_flux_err_i), depth)[0, 1] < -0.3


def _columns(n, mag=22.0, depth=24.0, psf=0.9, ebv=0.0, bands=("g", "r", "i", "z")):
    truth = {f"true_mag_{b}": np.full(n, mag) for b in bands}
    truth |= {"true_size": np.full(n, 0.4), "true_T": np.full(n, 1.443 * 0.16)}
    cond = {"ebv": np.full(n, ebv)}
    for b in bands:
        cond |= {f"psf_fwhm_{b}": np.full(n, psf), f"depth_{b}": np.full(n, depth)}
        cond[f"airmass_{b}"] = np.full(n, 1.2)
    neighbour = {f"flux_{b}": np.zeros(n) for b in bands} | {"true_T": np.zeros(n)}
    return truth, cond, neighbour


def _bands(survey="DES", bands="griz") -> dict[str, Band]:
    return {b: wide_band(survey, b)[0] for b in bands}


def test_flux_noise_follows_depth_and_errors_estimate_it():
    bands, n = _bands(), 40_000
    flux = schema.mag_to_flux(22.0)
    shallow = measure(*_columns(n, depth=23.0), bands, np.random.default_rng(0))
    deep = measure(*_columns(n, depth=24.5), bands, np.random.default_rng(0))
    assert shallow.obs_flux["i"].std() > 3 * deep.obs_flux["i"].std()
    sigma = noise_sigma(flux, 0.4, 0.9, 24.5)
    assert deep.obs_flux["i"].std() == pytest.approx(sigma, rel=0.03)
    ratio = deep.flux_err["i"] / sigma  # an estimate: lognormal scatter around sigma
    assert np.median(ratio) == pytest.approx(1.0, abs=0.01) and 0.03 < np.log(ratio).std() < 0.07


def test_ebv_dims_fluxes_by_the_documented_coefficient():
    bands, n = _bands(), 40_000
    clear = measure(*_columns(n, mag=19.0, depth=25.0), bands, np.random.default_rng(1))
    dusty = measure(*_columns(n, mag=19.0, depth=25.0, ebv=0.1), bands, np.random.default_rng(1))
    for b in "gz":
        ratio = dusty.obs_flux[b].mean() / clear.obs_flux[b].mean()
        assert ratio == pytest.approx(10 ** (-0.4 * DES_EXTINCTION[b] * 0.1), rel=0.003)
    ignored = measure(
        *_columns(n, mag=19.0, depth=25.0, ebv=0.1),
        bands,
        np.random.default_rng(1),
        extinction=False,
    )
    np.testing.assert_array_equal(ignored.obs_flux["g"], clear.obs_flux["g"])


def test_survey_ebv_dims_observed_fluxes(des):
    inj, cond = des[2], des[3].set_index("pixel")
    bright = inj[(inj.true_mag_g < 21.5) & inj.detected]
    ebv = cond.ebv.reindex(bright.pixel).to_numpy()
    ratio = bright.obs_flux_g / schema.mag_to_flux(bright.true_mag_g)
    lo, hi = ebv < np.quantile(ebv, 0.25), ebv > np.quantile(ebv, 0.75)
    expected = 10 ** (-0.4 * DES_EXTINCTION["g"] * (ebv[hi].mean() - ebv[lo].mean()))
    assert np.median(ratio[hi]) / np.median(ratio[lo]) == pytest.approx(expected, abs=0.02)
    assert expected < 0.9


def test_band_constants_come_from_surveycodex():
    lsst_i, x0 = wide_band("LSST", "i")
    assert x0 == pytest.approx(1.2) and 750 < lsst_i.wavelength_nm < 765
    assert 25.5 < lsst_i.depth0 < 26.8 and 0.6 < lsst_i.psf0 < 0.9
    des_i = wide_band("DES", "i")[0]
    assert des_i.depth0 < lsst_i.depth0 - 1 and des_i.extinction == pytest.approx(1.569, rel=1e-3)
    assert 4.3 < wide_band("LSST", "u")[0].extinction < 5.2  # extrapolated blueward
    assert wavelength_nm("DES", "u") == 375.0 and wavelength_nm("LSST", "u") < 375.0
    assert wavelength_nm("DES", "Ks") == 2147.0
    with pytest.raises(ConfigError, match="band 'Q'"):
        wavelength_nm("DES", "Q")


def test_colours_carry_redshift():
    wl = {b: wavelength_nm("DES", b) for b in "grizJ"}
    deep = simulate_deep_spec(100_000, wl, wl["i"], np.random.default_rng(0))
    counts, edges = np.histogram(deep["true_z"], bins=np.arange(0, 3.01, 0.2))
    assert 0.3 <= edges[np.argmax(counts)] <= 0.8 and deep["true_z"].max() > 2.5
    g_r = deep["true_mag_g"] - deep["true_mag_r"]
    lo, hi = deep["true_z"] < 0.3, (deep["true_z"] > 1.0) & (deep["true_z"] < 1.5)
    assert abs(np.median(g_r[lo]) - np.median(g_r[hi])) > 0.2
    faint, bright = deep["true_mag_i"] > 25, deep["true_mag_i"] < 22
    assert deep["true_z"][faint].mean() > deep["true_z"][bright].mean() + 0.3
    assert (deep["true_T"] > 0).all() and deep["true_G"].max() < 0.8
    np.testing.assert_allclose(deep["true_T"], 1.4427 * deep["true_size"] ** 2, rtol=1e-3)


def test_lsst_small_survey(tmp_path):
    simulate_survey(tmp_path / "l", _small("lsst", n_injections=20_000, nside=64), **QUIET)
    spec = load_spec(tmp_path / "l")
    inj = pq.read_table(tmp_path / "l" / "injections").to_pandas()
    sel = selection.select(spec.selection, inj)
    assert 0.2 < sel.sum() / inj.detected.sum() < 0.6
    assert inj.true_z[sel].mean() < inj.true_z[inj.detected].mean()
    assert (inj.obs_snr[inj.detected] > 0).all()  # log-transformed output: positive


def test_custom_spec_file(tmp_path):
    path = tmp_path / "gri.yaml"
    path.write_text(
        "name: gri-test\nbands: [g, r, i]\n"
        "deep: {bands: [g, r, i], morphology: {true_size: log}}\n"
        "conditions: {per_band: [psf_fwhm, maglim], depth: maglim}\n"
        "outputs: {flux_err: true}\nselection: detected & mag_i < 24\n"
    )
    simulate_survey(tmp_path / "s", _small(str(path)), **QUIET)
    cond = pq.read_schema(tmp_path / "s" / "maps" / "conditions.parquet")
    per_band = [f"{q}_{b}" for b in "gri" for q in ("psf_fwhm", "maglim")]
    assert cond.names == ["pixel", *per_band]  # the depth under the spec's name, no ebv
    assert load_spec(tmp_path / "s").name == "gri-test"

    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text().replace("[psf_fwhm, maglim]", "[psf_fwhm, maglim, moon]"))
    with pytest.raises(ConfigError, match=r"spec: .*\['moon'\]"):
        simulate_survey(tmp_path / "t", _small(str(bad)), **QUIET)


def test_cli_preset_and_spec(tmp_path, capsys):
    args = ["--n-injections", "2000", "--n-deep", "1000", "--nside", "32", "--no-fits-maps"]
    assert (
        main(["simulate", "survey", "--preset", "lsst", "--out", str(tmp_path / "l"), *args]) == 0
    )
    assert load_spec(tmp_path / "l").name == "lsst"
    assert main(["simulate", "survey", "--out", str(tmp_path / "r"), *args]) == 0
    assert load_spec(tmp_path / "r").name == "riz"
    assert main(["simulate", "survey", "--preset", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "spec" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["simulate", "survey", "--preset", "riz", "--spec", "a.yaml", "--out", "x"])
