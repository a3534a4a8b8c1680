"""The conditional-flow emulator without Ray: the flow is a normalised, invertible density that
learns a known conditional distribution; it trains through the shared step, checkpoints, and
travels in the same emulator bundle as the GAN."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import zuko

from galray.config import load_config
from galray.emulator.bundle import Emulator
from galray.emulator.config import EmulatorOptimConfig as OptimConfig
from galray.emulator.config import EmulatorTrainConfig
from galray.emulator.features import EmulatorFeatures
from galray.emulator.step import (
    DeviceData,
    GroupRunner,
    build_modules,
    run_epoch,
)
from galray.errors import ConfigError
from galray.models import spline_kernel
from galray.models.emulator import DetectionModel, NetConfig
from galray.models.flow import (
    SAMPLE_LIMIT,
    SPLINE_SLOPE,
    TAIL_BOUND,
    ConditionalFlow,
    FlowConfig,
    _rqs_inverse,
    _rqs_inverse_fused,
    fused_spline,
)
from galray.training.modules import GradientSync, lr_scale

CPU = torch.device("cpu")
SMALL = FlowConfig(transforms=2, bins=6, width=32, depth=2)


def _toy(n=20_000, seed=0):
    """y = (0.5 c0 + 0.3 e0,  y0^2 / 2 + 0.2 c1 + 0.2 e1): a conditional, non-Gaussian
    (banana-shaped) joint density with known log-likelihood."""
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(n, 3, generator=g)
    e = torch.randn(n, 2, generator=g)
    y0 = 0.5 * cond[:, 0] + 0.3 * e[:, 0]
    y1 = 0.5 * y0**2 + 0.2 * cond[:, 1] + 0.2 * e[:, 1]
    return DeviceData(cond, torch.stack([y0, y1], 1), cond, (cond[:, 2] > 0).float())


def _true_nll(data: DeviceData) -> float:
    """Exact mean negative log-likelihood of the toy (a triangular map with unit Jacobian
    determinant up to the two noise scales)."""
    c, y = data.cond_all, data.target
    r0 = (y[:, 0] - 0.5 * c[:, 0]) / 0.3
    r1 = (y[:, 1] - 0.5 * y[:, 0] ** 2 - 0.2 * c[:, 1]) / 0.2
    log_p = -0.5 * (r0**2 + r1**2) - math.log(2 * math.pi) - math.log(0.3 * 0.2)
    return float(-log_p.mean())


def test_flow_is_invertible_and_normalised():
    torch.manual_seed(0)
    flow = ConditionalFlow(3, 2, SMALL)
    with torch.no_grad():
        for p in flow.parameters():  # a non-trivial (non-identity) map
            p.add_(0.3 * torch.randn_like(p))
        cond = torch.randn(1, 3).expand(2000, 3)
        z = torch.randn(2000, 2)
        y = flow(z, cond)
        # sampling is the inverse of the density's transform, except for the draws held at the
        # sampling limit (|u| = SAMPLE_LIMIT x B in the soft-clipped coordinates)
        u = y / (1 + y.abs() / TAIL_BOUND)
        held = (u.abs() > SAMPLE_LIMIT * TAIL_BOUND * (1 - 1e-5)).any(1)
        assert float(held.float().mean()) < 0.2
        back = flow.flow(cond).transform(y)
        torch.testing.assert_close(back[~held], z[~held], atol=1e-4, rtol=1e-4)
        # the density integrates to one: over the whole real plane, done on a grid in the
        # soft-clipped coordinates u = y / (1 + |y| / B), which map it onto (-B, B)^2
        edge = TAIL_BOUND * (1 - 1e-4)
        g = torch.linspace(-edge, edge, 400)
        u = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
        y = u / (1 - u.abs() / TAIL_BOUND)
        dy_du = (1 - u.abs() / TAIL_BOUND).pow(-2).prod(-1)
        density = flow.log_prob(y, cond[:1].expand(y.shape[0], 3)).exp() * dy_du
        mass = float(density.sum() * (g[1] - g[0]) ** 2)
    assert mass == pytest.approx(1.0, abs=0.005)


@pytest.mark.parametrize(
    "n_cond, n_out, passes", [(10, 3, 2), (30, 12, 2), (4, 5, 0), (4, 5, 3), (3, 1, 2)]
)
def test_fast_sampling_is_zukos_inverse(n_cond, n_out, passes):
    """The sampler's own spline inverse (one order group per pass) is zuko's general inverse:
    coupling, fully autoregressive and in-between, one output or many."""
    torch.manual_seed(1)
    flow = ConditionalFlow(n_cond, n_out, FlowConfig(transforms=3, bins=6, width=16, passes=passes))
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.2 * torch.randn_like(p))
        z, cond = 1.5 * torch.randn(4000, n_out), torch.randn(4000, n_cond)
        fast, ref = flow(z, cond), flow.reference_sample(z, cond)
    # compared in the soft-clipped coordinates, where the maps are well conditioned
    clip = lambda y: y / (1 + y.abs() / TAIL_BOUND)  # noqa: E731
    torch.testing.assert_close(clip(fast), clip(ref), atol=1e-4, rtol=0)
    assert float((clip(fast) - clip(z)).abs().mean()) > 0.05  # not the identity


def _robust_width(r: torch.Tensor) -> float:
    return 1.4826 * float((r - r.median()).abs().median())


def test_flow_learns_a_conditional_density():
    data = _toy()
    val = _toy(8_000, seed=1)
    opt = OptimConfig(batch_size=256, lr_generator=3e-3, ema_decay=0.99, warmdown=0.3)
    m = build_modules(3, 2, NetConfig(detection_width=16), opt, CPU, seed=0, flow=SMALL)
    assert m.critic is None and m.is_flow
    runner = GroupRunner(m, data, opt, GradientSync(1))
    order = torch.Generator().manual_seed(0)

    def val_nll() -> float:
        with torch.no_grad():
            return float(-m.exported_generator.log_prob(val.target, val.cond_all).mean())

    untrained, epochs = val_nll(), 6
    for epoch in range(epochs):
        m.set_lr_scale(lr_scale(epoch / epochs, opt.warmdown))
        run_epoch(runner, data, opt, order)
    metrics = m.pop_metrics()
    assert set(metrics) == {"nll", "detection_bce"}
    trained, best = val_nll(), _true_nll(val)
    assert untrained - best > 1.0  # the start is far from the truth ...
    assert trained - best < 0.05  # ... and training closes the gap to within 0.05 nats
    with torch.no_grad():  # samples: the right conditional mean, width and curvature
        c = val.cond_all
        y = m.exported_generator(torch.randn(c.shape[0], 2), c)
    r0 = y[:, 0] - 0.5 * c[:, 0]
    r1 = y[:, 1] - 0.5 * y[:, 0] ** 2 - 0.2 * c[:, 1]
    u = y / (1 + y.abs() / TAIL_BOUND)
    held = (u.abs() > SAMPLE_LIMIT * TAIL_BOUND * (1 - 1e-5)).any(1)
    assert float(held.float().mean()) < 1e-3  # a trained flow rarely reaches the limit
    for r, width in ((r0, 0.3), (r1, 0.2)):
        assert abs(float(r.median())) < 0.02
        assert _robust_width(r) == pytest.approx(width, rel=0.08)
        assert float((r.abs() > 5 * width).float().mean()) < 0.005  # few spurious outliers


def test_flow_modules_checkpoint_round_trip():
    opt = OptimConfig(batch_size=64, lr_generator=1e-3)
    m = build_modules(3, 2, NetConfig(detection_width=8), opt, CPU, seed=1, flow=SMALL)
    data = _toy(1000)
    run_epoch(GroupRunner(m, data, opt, GradientSync(1)), data, opt, torch.Generator())
    state = m.state_dict()
    assert "critic" not in state and "opt_critic" not in state
    other = build_modules(3, 2, NetConfig(detection_width=8), opt, CPU, seed=2, flow=SMALL)
    other.load_state_dict(state)
    z, c = torch.randn(50, 2), torch.randn(50, 3)
    with torch.no_grad():
        torch.testing.assert_close(other.generator(z, c), m.generator(z, c))
        torch.testing.assert_close(other.ema_generator(z, c), m.ema_generator(z, c))
    m.set_lr_scale(0.5)
    assert m.opt_generator.param_groups[0]["lr"] == pytest.approx(0.5e-3)


def _rows(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    rows = {f"true_mag_{b}": rng.uniform(19, 25, n) for b in "riz"}
    rows["true_size"] = rng.uniform(0.2, 1.0, n)
    for b in "riz":
        rows[f"psf_fwhm_{b}"] = rng.uniform(0.8, 1.3, n)
        rows[f"depth_{b}"] = rng.uniform(22.5, 24.5, n)
        rows[f"obs_flux_{b}"] = 10 ** (-0.4 * (rows[f"true_mag_{b}"] - 30)) * rng.normal(1, 0.1, n)
    rows["detected"] = rows["true_mag_i"] < rows["depth_i"]
    return rows


def test_flow_emulator_bundle_round_trip(tmp_path):
    rows = _rows()
    features = EmulatorFeatures.fit(rows)
    net = NetConfig(detection_width=8, detection_depth=1)
    torch.manual_seed(0)
    flow = ConditionalFlow(features.n_cond, 3, SMALL)
    emu = Emulator(flow, DetectionModel(features.n_cond, net), features, net, flow=SMALL)
    assert emu.model == "flow"
    out = emu.sample(rows, seed=5)
    assert np.isfinite(out["obs_flux_i"][out["detected"]]).all()
    again = Emulator.load(emu.save(tmp_path / "bundle"))
    assert again.model == "flow" and again.flow == SMALL
    for key, values in again.sample(rows, seed=5).items():
        np.testing.assert_array_equal(values, out[key])
    assert not np.array_equal(emu.sample(rows, seed=6)["obs_flux_i"], out["obs_flux_i"])


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("model=maf", "model: must be one of"),
        ("flow.transforms=0", "flow.transforms: must be >= 1"),
        ("flow.bins=1", "flow.bins: must be >= 2"),
        ("flow.passes=1", "flow.passes: must be 0"),
        ("flow.activation=tanh", "flow.activation: must be one of"),
        ("flow.widht=3", "flow.widht: unknown field"),
    ],
)
def test_flow_config_errors_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field):
        load_config(EmulatorTrainConfig, None, ["data.survey=x", override])


def test_fast_sampling_follows_parameter_updates_and_runs_in_inference_mode():
    """The inverse's cached weight blocks are rebuilt after an optimiser step (sampling after
    it is zuko's inverse of the *new* flow), and a flow built under inference mode samples."""
    torch.manual_seed(2)
    flow = ConditionalFlow(4, 3, FlowConfig(transforms=2, bins=4, width=16))
    z, cond = torch.randn(500, 3), torch.randn(500, 4)
    clip = lambda y: y / (1 + y.abs() / TAIL_BOUND)  # noqa: E731
    with torch.no_grad():
        before = flow(z, cond)
    opt = torch.optim.SGD(flow.parameters(), lr=0.5)
    (-flow.log_prob(torch.randn(500, 3), cond).mean()).backward()
    opt.step()
    with torch.no_grad():
        after, ref = flow(z, cond), flow.reference_sample(z, cond)
    assert float((clip(after) - clip(before)).abs().max()) > 1e-3
    torch.testing.assert_close(clip(after), clip(ref), atol=1e-4, rtol=0)
    with torch.inference_mode():
        built = ConditionalFlow(4, 3, FlowConfig(transforms=2, bins=4, width=16))
        assert built(z, cond).shape == (500, 3)


# ------------------------------------------------------------- the fused spline inverse (numba)
def _spline_params(n: int, n_sel: int, bins: int, scale: float, seed: int) -> torch.Tensor:
    """Spline logits as ``_invert_masked_spline`` lays them out: [n, n_sel (3 bins - 1)]."""
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, n_sel * (3 * bins - 1), generator=g)


def _split(params: torch.Tensor, n_sel: int, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    wh = params[:, : 2 * n_sel * bins].view(-1, 2, n_sel, bins)
    return wh, params[:, 2 * n_sel * bins :].view(-1, n_sel, bins - 1)


def _fused(y: torch.Tensor, params: torch.Tensor, bins: int) -> torch.Tensor:
    """The fused kernel on every column of ``y``, written into a strided view (as in a flow)."""
    x = torch.full((y.shape[0], y.shape[1] + 3), -99.0)[:, 1:-2]
    _rqs_inverse_fused(y, torch.arange(y.shape[1]), params, bins, x)
    return x


@pytest.mark.skipif(not spline_kernel.AVAILABLE, reason="numba is not installed")
@pytest.mark.parametrize("n_sel, bins, scale", [(1, 8, 0.5), (2, 8, 2.0), (3, 6, 1.0), (2, 2, 4.0)])
def test_fused_spline_inverse_is_the_torch_inverse(n_sel, bins, scale):
    """The numba kernel computes the torch path's formulas: most values bit for bit, the rest
    within the float32 rounding of ``exp`` -- no further from the exact (float64) inverse than
    the float32 torch path is -- and exactly the identity outside [-bound, bound] and on NaN."""
    params = _spline_params(20_000, n_sel, bins, scale, seed=n_sel + bins)
    g = torch.Generator().manual_seed(3)
    y = 2.5 * torch.randn(20_000, n_sel, generator=g)  # ~5 % beyond the bound
    y[:8, 0] = torch.tensor([-TAIL_BOUND, TAIL_BOUND, -6.0, 7.0, math.nan, 0.0, -4.999, 4.999])
    fused = _fused(y, params, bins)
    torch32 = _rqs_inverse(y, *_split(params, n_sel, bins))
    exact = _rqs_inverse(y.double(), *_split(params.double(), n_sel, bins))
    outside = y.abs() > TAIL_BOUND + 1e-3  # the last knot is the bound to float32 rounding
    assert outside.sum() > 500 and torch.equal(fused[outside], y[outside])
    assert fused[y.isnan()].isnan().all()
    assert fused.isfinite().sum() == y.isfinite().sum()
    inside = y.abs() < TAIL_BOUND
    assert float((fused[inside] == torch32[inside]).float().mean()) > 0.6
    # a rounding in a knot moves the inverse by up to 1 / slope times as much where the spline
    # is steep, so a few values differ by more than a few ulps (as the float32 torch path's do)
    near = torch.isclose(fused, torch32, rtol=1e-4, atol=1e-5, equal_nan=True)
    assert float(near.float().mean()) > 0.999
    torch.testing.assert_close(fused, torch32, rtol=1e-3, atol=1e-4, equal_nan=True)
    err_fused = (fused - exact).abs()[inside].max()
    err_torch = (torch32 - exact).abs()[inside].max()
    assert err_fused <= 2 * err_torch + 1e-6


@pytest.mark.skipif(not spline_kernel.AVAILABLE, reason="numba is not installed")
def test_fused_spline_inverse_is_zukos_inverse():
    """... and zuko's own ``MonotonicRQSTransform`` inverse (softmax knots, searchsorted)."""
    n_sel, bins = 3, 8
    params = _spline_params(20_000, n_sel, bins, 1.5, seed=5)
    y = 2.0 * torch.randn(20_000, n_sel, generator=torch.Generator().manual_seed(6))
    wh, derivs = _split(params, n_sel, bins)
    spline = zuko.transforms.MonotonicRQSTransform(
        wh[:, 0], wh[:, 1], derivs, bound=TAIL_BOUND, slope=SPLINE_SLOPE
    )
    fused, ref = _fused(y, params, bins), spline.inv(y)
    assert float(torch.isclose(fused, ref, rtol=1e-4, atol=1e-4).float().mean()) > 0.999
    torch.testing.assert_close(fused, ref, atol=1e-3, rtol=1e-3)
    assert float((fused - y).abs().mean()) > 0.05  # not the identity


@pytest.mark.skipif(not spline_kernel.AVAILABLE, reason="numba is not installed")
def test_fused_exp_is_within_one_ulp():
    """The kernel's branch-free exp, over the squashed logits' whole range (|x| < |log slope|):
    within 1 ulp of the correctly rounded value, and exact at 0 (the derivative pads)."""
    x = np.linspace(-7.0, 7.0, 400_001, dtype=np.float32)
    exact = np.exp(x.astype(np.float64)).astype(np.float32)
    got = np.array([spline_kernel.exp(v) for v in x[::97]], dtype=np.float32)
    ulps = np.abs(got.view(np.int32).astype(np.int64) - exact[::97].view(np.int32))
    assert ulps.max() <= 1
    assert spline_kernel.exp(np.float32(0.0)) == 1.0


def test_spline_inverse_takes_the_torch_path_for_autograd_and_without_numba(monkeypatch):
    """Tensors that record gradients, other dtypes, and installs without numba sample through
    the torch inverse: the same samples (to float32 rounding), recorded by autograd."""
    torch.manual_seed(4)
    flow = ConditionalFlow(4, 3, FlowConfig(transforms=2, bins=6, width=16))
    z, cond = torch.randn(3000, 3), torch.randn(3000, 4)
    with torch.no_grad():
        fast = flow(z, cond)
    assert fused_spline(z, cond) == spline_kernel.AVAILABLE
    assert not fused_spline(z.double())
    zg = z.clone().requires_grad_(True)
    assert not fused_spline(zg)
    sampled = flow(zg, cond)
    assert sampled.grad_fn is not None
    monkeypatch.setattr(spline_kernel, "AVAILABLE", False)
    assert not fused_spline(z)
    with torch.no_grad():
        slow = flow(z, cond)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sampled.detach(), slow, rtol=1e-4, atol=1e-5)


def test_numba_is_imported_only_when_a_flow_samples_on_a_cpu():
    """Loading emulators (a GAN's workers never sample a flow) does not import numba."""
    import subprocess
    import sys

    code = (
        "import sys, torch, galray.emulator.emulate, galray.models.flow as f\n"
        "assert 'numba' not in sys.modules\n"
        "flow = f.ConditionalFlow(3, 2, f.FlowConfig(transforms=1, bins=4, width=8))\n"
        "with torch.no_grad():\n"
        "    flow(torch.randn(5, 2), torch.randn(5, 3))\n"
        "assert ('numba' in sys.modules) == f.spline_kernel.AVAILABLE\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.skipif(not spline_kernel.AVAILABLE, reason="numba is not installed")
def test_fused_spline_compiles_without_a_writable_cache(monkeypatch):
    """Where numba finds no writable cache directory, the kernel compiles per process."""
    from numba.core import caching

    monkeypatch.setattr(caching.CacheImpl, "_locator_classes", [])
    spline_kernel._compiled.cache_clear()
    try:
        assert spline_kernel.exp(np.float32(0.0)) == 1.0
        assert type(spline_kernel._compiled()[1]._cache).__name__ == "NullCache"
    finally:
        spline_kernel._compiled.cache_clear()


def test_fused_kernel_refuses_arrays_that_do_not_fit():
    """numba checks no indices, so the kernel's wrapper checks the shapes: too few parameters
    for the bins, a feature index beyond ``y``, or ``out`` of another shape raise instead of
    reading or writing past an array."""
    y = np.zeros((4, 3), np.float32)
    sel = np.array([0, 2], np.int64)
    params = np.zeros((4, 2 * (3 * 8 - 1)), np.float32)
    args = (np.float32(5.0), np.float32(-0.1), np.float32(-6.9))
    spline_kernel.rqs_inverse_into(y, sel, params, 8, y.copy(), *args)  # fits
    for bad in (
        (y, sel, params[:, :-1], 8, y.copy()),
        (y, np.array([0, 3]), params, 8, y.copy()),
        (y, sel, params, 8, np.zeros((4, 2), np.float32)),
        (y, sel, params[:3], 8, y.copy()),
    ):
        with pytest.raises(ValueError, match="do not fit"):
            spline_kernel.rqs_inverse_into(*bad, *args)
