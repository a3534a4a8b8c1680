"""The emulator's encoding on a general survey spec (DES-Y6-like: 8 deep bands, morphology,
per-band and band-independent conditions, flux errors, continuous outputs, a flag)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from galray.datasets import selection
from galray.datasets.survey import load_spec
from galray.emulator.bundle import Emulator, build_generator
from galray.emulator.features import EmulatorFeatures
from galray.models.emulator import DetectionModel, NetConfig
from galray.models.flow import FlowConfig


def des_rows(n: int = 4000, seed: int = 0) -> dict[str, np.ndarray]:
    spec = load_spec("des-y6")
    rng = np.random.default_rng(seed)
    cols: dict[str, np.ndarray] = {}
    base = rng.uniform(19.0, 25.0, n)
    for k, b in enumerate(spec.deep.bands):
        cols[f"true_mag_{b}"] = base + 0.1 * k + rng.normal(0, 0.2, n)
    cols["true_T"] = rng.lognormal(-1.0, 0.5, n)
    cols["true_G"] = rng.uniform(0.0, 0.6, n)
    for b in spec.bands:
        cols[f"psf_fwhm_{b}"] = rng.uniform(0.8, 1.3, n)
        cols[f"airmass_{b}"] = rng.uniform(1.0, 1.6, n)
        cols[f"sky_{b}"] = rng.uniform(20.0, 22.0, n)
        cols[f"depth_{b}"] = rng.uniform(23.0, 24.5, n)
    cols["ebv"] = rng.uniform(0.0, 0.1, n)
    for b in spec.bands:
        flux = 10 ** (-0.4 * (cols[f"true_mag_{b}"] - 30)) * rng.lognormal(0, 0.1, n)
        cols[f"obs_flux_{b}"] = flux
        cols[f"obs_flux_err_{b}"] = (
            10 ** (-0.4 * (cols[f"depth_{b}"] - 30)) / 10 * rng.lognormal(0, 0.05, n)
        )
    cols["obs_snr"] = rng.lognormal(3.0, 1.0, n)
    cols["obs_T"] = cols["true_T"] + rng.normal(0, 0.1, n)
    cols["obs_size_ratio"] = rng.lognormal(0.0, 0.4, n)
    cols["obs_flags"] = rng.choice([0, 1, 4], n, p=[0.9, 0.07, 0.03])
    cols["detected"] = rng.random(n) < 0.8
    return cols


def test_general_targets_round_trip():
    spec = load_spec("des-y6")
    rows = des_rows()
    features = EmulatorFeatures.fit(rows, spec)
    assert features.n_cond == len(spec.input_columns) == 8 + 2 + 4 * 4 + 1
    assert features.n_target == 4 + 4 + 3 + 1
    assert features.flag_values == {"flags": [0, 1, 4]}
    det = rows["detected"]
    y = features.encode_target(rows, det)
    assert y.shape == (det.sum(), features.n_target) and np.isfinite(y).all()
    truth = {c: rows[c][det] for c in features.truth_columns}
    back = features.decode_target(y, truth)
    for name in spec.flux_columns + spec.measured_columns:
        want = rows[name][det]
        if name == "obs_flags":
            np.testing.assert_array_equal(back[name], want)  # dequantised, floored back exactly
            assert back[name].dtype == np.int32
        else:
            np.testing.assert_allclose(back[name], want, rtol=2e-3, err_msg=name)


def test_features_json_round_trip_keeps_the_spec():
    features = EmulatorFeatures.fit(des_rows(), load_spec("des-y6"))
    again = EmulatorFeatures.from_json(features.to_json())
    assert again.spec == features.spec
    assert again.flag_values == features.flag_values


def test_legacy_features_have_the_riz_spec_with_or_without_size():
    for use_size in (True, False):
        legacy = EmulatorFeatures(
            ["r", "i", "z"], use_size, [0.0] * 10, [1.0] * 10, [0.0] * 3, [1.0] * 3
        )
        assert legacy.spec.bands == ["r", "i", "z"]
        assert ("true_size" in legacy.spec.input_columns) == use_size
        assert legacy.n_target == 3


@pytest.mark.parametrize("kind", ["flow", "gan"])
def test_emulator_samples_every_output_and_the_selection(kind):
    spec = load_spec("des-y6")
    rows = des_rows(2000)
    features = EmulatorFeatures.fit(rows, spec)
    net = NetConfig(width=16, depth=1, noise_dim=4, detection_width=8, detection_depth=1)
    flow = FlowConfig(transforms=2, bins=4, width=16, depth=1) if kind == "flow" else None
    torch.manual_seed(0)
    emulator = Emulator(
        build_generator(features, net, flow),
        DetectionModel(features.n_cond, net),
        features,
        net,
        flow=flow,
    )
    inputs = {c: rows[c] for c in emulator.input_columns}
    out = emulator.sample(inputs, seed=1)
    assert list(out) == emulator.output_columns
    det = out["detected"]
    assert 0 < det.sum() < len(det)
    assert np.isnan(out["obs_snr"][~det]).all() and np.isfinite(out["obs_snr"][det]).all()
    assert out["obs_flags"].dtype == np.int32 and set(np.unique(out["obs_flags"])) <= {0, 1, 4}
    np.testing.assert_array_equal(
        out["selected"], selection.select(spec.selection, {**inputs, **out})
    )
    assert not out["selected"][~det].any()  # the selection requires a detection
    again = emulator.sample(inputs, seed=1)
    for key in out:
        np.testing.assert_array_equal(out[key], again[key])
