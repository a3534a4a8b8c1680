"""The emulator's networks and training step, without Ray."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from galray.datasets import schema
from galray.emulator.bundle import Emulator
from galray.emulator.config import EmulatorOptimConfig as OptimConfig
from galray.emulator.features import EmulatorFeatures, luptitude, luptitude_to_flux
from galray.emulator.step import (
    DeviceData,
    GroupRunner,
    build_modules,
    run_epoch,
    train_group,
)
from galray.errors import ConfigError, ModelNotFoundError
from galray.models.emulator import (
    ConditionalGenerator,
    DetectionModel,
    NetConfig,
    gradient_penalty,
)
from galray.training.modules import GradientSync

CPU = torch.device("cpu")


class LinearCritic(nn.Module):
    """D(y, c) = a·y + w·c: its gradient in y is ``a`` everywhere."""

    def __init__(self, a, w):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float32))
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float32))

    def forward(self, y, c):
        return y @ self.a + c @ self.w


@pytest.mark.parametrize("a", [[0.3, 0.4], [3.0, 4.0], [1.0, 0.0]])
def test_gradient_penalty_on_analytic_critic(a):
    critic = LinearCritic(a, [0.7])
    real, fake = torch.randn(64, 2), torch.randn(64, 2)
    cond, eps = torch.randn(64, 1), torch.rand(64, 1)
    norm = float(np.hypot(*a))
    two = gradient_penalty(critic, real, fake, cond, eps, one_sided=False)
    one = gradient_penalty(critic, real, fake, cond, eps, one_sided=True)
    assert two.item() == pytest.approx((norm - 1) ** 2, rel=1e-5, abs=1e-7)
    assert one.item() == pytest.approx(max(norm - 1, 0) ** 2, rel=1e-5, abs=1e-7)
    # the penalty is differentiable in the critic's parameters (double backward)
    two.backward()
    expected = 2 * (norm - 1) * np.asarray(a) / norm
    np.testing.assert_allclose(critic.a.grad.numpy(), expected, rtol=1e-5, atol=1e-6)


def _toy(n=12_000, seed=0):
    """y = 0.5 c[:, :2] + 0.3 noise: a conditional Gaussian with known mean and width."""
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(n, 4, generator=g)
    target = 0.5 * cond[:, :2] + 0.3 * torch.randn(n, 2, generator=g)
    label = (cond[:, 0] > 0).float()
    return DeviceData(cond, target, cond, label)


def _modules(opt, seed=0):
    return build_modules(
        4, 2, NetConfig(width=64, depth=2, noise_dim=4, detection_width=16), opt, CPU, seed
    )


def test_generator_objective_is_the_critic_alone():
    """With a critic that scores everything 0, the generator gets no gradient at all: no MSE or
    other term pulls its samples towards the conditional mean."""
    opt = OptimConfig(batch_size=32, critic_steps=1, lr_critic=1e-9)
    m = _modules(opt)
    for p in m.critic.parameters():
        nn.init.zeros_(p)
    before = [p.detach().clone() for p in m.generator.parameters()]
    data = _toy(256)
    train_group(m, data, torch.arange(32).view(1, 32), torch.arange(64), opt, GradientSync(1))
    for p, b in zip(m.generator.parameters(), before):
        assert torch.equal(p.grad, torch.zeros_like(p))
        assert torch.equal(p.detach(), b)


def test_learns_a_conditional_distribution():
    torch.manual_seed(0)
    data = _toy()
    opt = OptimConfig(batch_size=128, lr_generator=1e-3, lr_critic=1e-3, betas=(0.5, 0.9))
    m = _modules(opt)
    runner = GroupRunner(m, data, opt, GradientSync(1))
    order = torch.Generator().manual_seed(0)

    def residual():
        with torch.no_grad():
            fake = m.generator(torch.randn(data.n_rows, 4), data.cond_all)
        return fake - 0.5 * data.cond_all[:, :2]

    untrained = residual()
    for _ in range(12):
        run_epoch(runner, data, opt, order)
    metrics = m.pop_metrics()
    trained = residual()
    assert metrics["wasserstein"] > 0
    assert trained.mean(0).abs().max() < 0.1 < untrained.mean(0).abs().max()
    np.testing.assert_allclose(trained.std(0).numpy(), 0.3, rtol=0.25)
    with torch.no_grad():
        acc = ((m.detection(data.cond_all) > 0).float() == data.label).float().mean()
    assert acc > 0.95


def test_same_seed_same_weights():
    opt = OptimConfig(batch_size=64)
    weights = []
    for _ in range(2):
        torch.manual_seed(1)
        m = _modules(opt, seed=5)
        run_epoch(
            GroupRunner(m, _toy(2000), opt, GradientSync(1)),
            _toy(2000),
            opt,
            torch.Generator().manual_seed(2),
        )
        weights.append(torch.cat([p.detach().reshape(-1) for p in m.generator.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_too_little_data_names_the_field():
    opt = OptimConfig(batch_size=512)
    m = _modules(opt)
    with pytest.raises(ValueError, match="batch_size"):
        run_epoch(
            GroupRunner(m, _toy(1000), opt, GradientSync(1)), _toy(1000), opt, torch.Generator()
        )


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"batch_size": 1}, "batch_size"),
        ({"critic_steps": 0}, "critic_steps"),
        ({"gp_weight": -1.0}, "gp_weight"),
        ({"lr_critic": 2.0}, "lr_critic"),
        ({"betas": (0.5,)}, "betas"),
    ],
)
def test_optim_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        OptimConfig(**kwargs)


def test_net_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="activation"):
        NetConfig(activation="tanhh")
    with pytest.raises(ConfigError, match="noise_dim"):
        NetConfig(noise_dim=0)


def test_luptitude_round_trip_and_limit():
    b = float(schema.mag_to_flux(26.5))
    flux = np.array([-300.0, -1.0, 0.0, 1.0, 50.0, 1e3, 1e6])
    np.testing.assert_allclose(luptitude_to_flux(luptitude(flux, b), b), flux, rtol=1e-9, atol=1e-9)
    bright = schema.mag_to_flux(20.0)
    assert luptitude(bright, b) == pytest.approx(20.0, abs=1e-4)  # = AB magnitude when bright


def _truth_rows(n, rng, mags, sizes, psfs, depths, observe):
    """Truth and conditions drawn uniformly in the given ranges; ``observe(band, rows)`` draws
    each band's ``obs_flux`` right after its conditions."""
    rows = {f"true_mag_{b}": rng.uniform(*mags, n) for b in schema.BANDS}
    rows["true_size"] = rng.uniform(*sizes, n)
    for b in schema.BANDS:
        rows[f"psf_fwhm_{b}"] = rng.uniform(*psfs, n)
        rows[f"depth_{b}"] = rng.uniform(*depths, n)
        rows[f"obs_flux_{b}"] = observe(b, rows)
    return rows


def _rows(n=500, seed=0):
    rng = np.random.default_rng(seed)
    rows = _truth_rows(
        n, rng, (19, 25), (0.1, 1.5), (0.8, 1.3), (22.5, 24.5),
        lambda b, r: schema.mag_to_flux(r[f"true_mag_{b}"]) * rng.normal(1, 0.1, n),
    )  # fmt: skip
    rows["detected"] = rng.random(n) < 0.7
    return rows


def test_features_encode_decode_round_trip():
    rows = _rows()
    f = EmulatorFeatures.fit(rows)
    det = rows["detected"]
    y = f.encode_target(rows, det)
    assert y.shape == (det.sum(), 3)
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-5)
    decoded = f.decode_target(y, {k: v[det] for k, v in rows.items()})
    for b in schema.BANDS:
        np.testing.assert_allclose(decoded[f"obs_flux_{b}"], rows[f"obs_flux_{b}"][det], rtol=1e-4)
    # what ranks do: sum moments and histograms of their parts (here two halves), then fit
    half = np.arange(len(det)) < len(det) // 2
    parts = [{k: v[m] for k, v in rows.items()} for m in (half, ~half)]
    probe = EmulatorFeatures(f.bands, True, [0.0], [1.0], [0.0], [1.0])
    hist = sum(probe.target_histogram(p, p["detected"]) for p in parts)
    probe = probe.with_whitening(hist)
    again = probe.with_moments(
        sum(EmulatorFeatures.moments(f.raw_cond(p)) for p in parts),
        sum(EmulatorFeatures.moments(probe.whitened_target(p, p["detected"])) for p in parts),
    )
    np.testing.assert_allclose(again.cond_mean, f.cond_mean, rtol=1e-5)
    np.testing.assert_allclose(again.target_std, f.target_std, rtol=1e-4)
    np.testing.assert_allclose(again.whiten_scale, f.whiten_scale, rtol=1e-9)


def _heteroscedastic_rows(n=100_000, seed=0):
    """Detected rows whose measured-minus-true spread grows 50x from bright to faint."""
    rng = np.random.default_rng(seed)

    def observe(b, rows):
        sigma = 0.01 + 0.5 * 10 ** (0.4 * (rows[f"true_mag_{b}"] - rows[f"depth_{b}"]))
        mag = rows[f"true_mag_{b}"] + 0.02 + sigma * rng.standard_normal(n)
        return schema.mag_to_flux(mag)

    rows = _truth_rows(n, rng, (18, 25), (0.2, 2), (0.8, 1.2), (23, 24), observe)
    rows["detected"] = np.ones(n, bool)
    return rows


def test_whitening_equalises_the_width_of_bright_and_faint_rows():
    rows = _heteroscedastic_rows()
    bright, faint = rows["true_mag_i"] < 19, rows["true_mag_i"] > 24.5
    plain = EmulatorFeatures.fit(rows, whiten=False).encode_target(rows, rows["detected"])
    assert plain[faint, 1].std() > 30 * plain[bright, 1].std()  # what the networks saw before
    f = EmulatorFeatures.fit(rows)
    y = f.encode_target(rows, rows["detected"])
    for sel in (bright, faint):
        assert 0.85 < y[sel, 1].std() < 1.15
        assert abs(np.median(y[sel, 1])) < 0.1
    # the histogram's quartiles agree with exact ones, bin by bin
    x = rows["true_mag_i"] - rows["depth_i"]
    delta = f.raw_target(rows, rows["detected"])[:, 1]
    grid = np.asarray(f.whiten_grid)
    for centre in (-5.0, -2.0, 1.0):
        sel = np.abs(x - centre) <= 0.25
        q1, q2, q3 = np.percentile(delta[sel], [25, 50, 75])
        g = int(np.flatnonzero(grid == centre)[0])
        assert f.whiten_loc[1][g] == pytest.approx(q2, abs=0.02 * (q3 - q1))
        assert f.whiten_scale[1][g] == pytest.approx((q3 - q1) / 1.349, rel=0.02)
    decoded = f.decode_target(y, rows)
    np.testing.assert_allclose(decoded["obs_flux_z"], rows["obs_flux_z"], rtol=1e-4)


def test_features_saved_before_whitening_still_decode_the_same():
    rows = _rows()
    f = EmulatorFeatures.fit(rows, whiten=False)
    old = json.loads(f.to_json())
    for key in ("whiten_grid", "whiten_loc", "whiten_scale"):
        del old[key]
    g = EmulatorFeatures.from_json(json.dumps(old))
    assert not g.whitened and g.truth_columns == [f"true_mag_{b}" for b in schema.BANDS]
    y = np.random.default_rng(1).standard_normal((50, 3)).astype(np.float32)
    some = {k: v[:50] for k, v in rows.items()}
    assert g.decode_target(y, some)["obs_mag_r"].tolist() == (
        f.decode_target(y, some)["obs_mag_r"].tolist()
    )


def _emulator(rows):
    f = EmulatorFeatures.fit(rows)
    net = NetConfig(width=16, depth=1, noise_dim=3, detection_width=8, detection_depth=1)
    torch.manual_seed(0)
    return Emulator(ConditionalGenerator(f.n_cond, 3, net), DetectionModel(f.n_cond, net), f, net)


def test_emulator_sample_save_load(tmp_path):
    rows = _rows()
    emu = _emulator(rows)
    out = emu.sample(rows, seed=3)
    assert set(out) == {
        "detected",
        "p_detected",
        "selected",
        *(f"obs_{k}_{b}" for k in ("flux", "mag") for b in "riz"),
    }
    assert np.isnan(out["obs_flux_r"][~out["detected"]]).all()
    assert np.isfinite(out["obs_flux_r"][out["detected"]]).all()
    again = Emulator.load(emu.save(tmp_path / "bundle")).sample(rows, seed=3)
    for k in out:
        np.testing.assert_array_equal(out[k], again[k])
    other = emu.sample(rows, seed=4)
    assert not np.array_equal(out["detected"], other["detected"])


def test_emulator_load_errors(tmp_path):
    with pytest.raises(ModelNotFoundError, match="nowhere"):
        Emulator.load(tmp_path / "nowhere")
    emu = _emulator(_rows())
    path = emu.save(tmp_path / "bundle")
    (path / "generator.pt").write_bytes(b"not a state dict")
    with pytest.raises(ModelNotFoundError, match="damaged"):
        Emulator.load(path)


def test_lr_warmdown_schedule():
    from galray.training.modules import lr_scale

    assert lr_scale(0.0, 0.3) == 1.0
    assert lr_scale(0.7, 0.3) == 1.0
    assert lr_scale(0.85, 0.3) == pytest.approx(0.5)
    assert lr_scale(1.0, 0.3) == 0.0
    assert lr_scale(0.99, 0.0) == 1.0
    m = _modules(OptimConfig())
    m.set_lr_scale(0.25)
    assert m.opt_critic.param_groups[0]["lr"] == pytest.approx(0.25 * OptimConfig().lr_critic)


def test_ema_generator_trails_the_trained_one():
    opt = OptimConfig(batch_size=64, ema_decay=0.9)
    m = _modules(opt)
    start = [p.detach().clone() for p in m.ema_generator.parameters()]
    data = _toy(2000)
    run_epoch(
        GroupRunner(m, data, opt, GradientSync(1)), data, opt, torch.Generator().manual_seed(0)
    )
    for e, g, s0 in zip(m.ema_generator.parameters(), m.generator.parameters(), start):
        assert not torch.equal(e, s0)  # it moved ...
        assert not torch.equal(e, g)  # ... but is not the trained weights
    assert m.exported_generator is m.ema_generator
    assert _modules(OptimConfig(ema_decay=0.0)).exported_generator is not None


def test_sample_does_not_depend_on_the_network_block(monkeypatch):
    """The networks run block by block on a CPU (cache-sized); the random numbers are drawn for
    all rows first, so the output is the same for any block size -- empty batches included."""
    import galray.emulator.bundle as inference

    rows = _rows()
    emu = _emulator(rows)
    reference = emu.sample(rows, seed=7)
    for block in (1000, 4096, 1 << 20):
        monkeypatch.setitem(inference.NETWORK_BLOCK, "cpu", block)
        out = emu.sample(rows, seed=7)
        for key, values in reference.items():
            np.testing.assert_allclose(out[key], values, rtol=1e-6, equal_nan=True)
    empty = emu.sample({k: v[:0] for k, v in rows.items()}, seed=7)
    assert empty["detected"].shape == (0,) and empty["obs_mag_i"].shape == (0,)
