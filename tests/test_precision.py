"""Sampling precision (galray.models.precision): bfloat16 between hidden layers only, float32
inputs and outputs, and what it changes in an emulator's output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from galray.datasets.survey import load_spec
from galray.emulator.bundle import Emulator, build_generator
from galray.emulator.features import EmulatorFeatures
from galray.errors import ConfigError
from galray.models.emulator import DetectionModel, NetConfig, mlp
from galray.models.flow import FlowConfig
from galray.models.precision import activate, mlp_forward, resolve
from test_features_spec import des_rows


def test_bfloat16_rounds_only_between_hidden_layers():
    torch.manual_seed(0)
    net = mlp(6, 3, width=64, depth=3, activation="silu").eval()
    x = torch.randn(4000, 6)
    with torch.inference_mode():
        exact, low = net(x), mlp_forward(net, x, torch.bfloat16)
        shallow = mlp(6, 3, width=64, depth=1, activation="silu").eval()
        # one hidden layer: no hidden-to-hidden product, so nothing is rounded
        assert torch.equal(shallow(x), mlp_forward(shallow, x, torch.bfloat16))
    assert low.dtype == torch.float32
    assert not torch.equal(low, exact)  # the middle layers did run in bfloat16
    assert float((low - exact).abs().max()) < 0.01 * float(exact.abs().max())
    # the outputs come from a float32 layer: not confined to bfloat16's 8-bit mantissa
    assert float((low != low.bfloat16().float()).float().mean()) > 0.9
    # the bfloat16 weight copies follow the parameters when they change
    with torch.no_grad():
        net[2].weight.mul_(2.0)
    with torch.inference_mode():
        again, exact2 = mlp_forward(net, x, torch.bfloat16), net(x)
    assert float((again - exact2).abs().max()) < 0.01 * float(exact2.abs().max())


def test_resolve_names_the_field_and_keeps_float32_off_cpu():
    with pytest.raises(ConfigError, match="precision"):
        resolve("half", torch.device("cpu"))
    assert resolve("fp32", torch.device("cpu")) == torch.float32
    assert resolve("bf16", torch.device("cpu")) == torch.bfloat16
    assert resolve("auto", torch.device("meta")) == torch.float32


@pytest.mark.parametrize("kind", ["gan", "flow"])
def test_emulator_output_barely_moves_in_bfloat16(kind):
    rows = des_rows(6000)
    spec = load_spec("des-y6")
    features = EmulatorFeatures.fit(rows, spec)
    net = NetConfig(width=64, depth=3, noise_dim=4, detection_width=64, detection_depth=3)
    flow = FlowConfig(transforms=2, bins=4, width=32) if kind == "flow" else None
    torch.manual_seed(0)
    generator, detection = (
        build_generator(features, net, flow),
        DetectionModel(features.n_cond, net),
    )
    out = {}
    for precision in ("fp32", "bf16"):
        emulator = Emulator(generator, detection, features, net, flow=flow, precision=precision)
        out[precision] = emulator.sample({c: rows[c] for c in emulator.input_columns}, seed=4)
        again = emulator.sample({c: rows[c] for c in emulator.input_columns}, seed=4)
        assert np.array_equal(again["p_detected"], out[precision]["p_detected"])  # deterministic
    a, b = out["fp32"], out["bf16"]
    dp = np.abs(a["p_detected"] - b["p_detected"])
    assert 0 < dp.max() < 0.01
    assert (a["detected"] != b["detected"]).mean() < 0.005
    both = a["detected"] & b["detected"]
    flux = a["obs_flux_g"][both], b["obs_flux_g"][both]
    spread = np.std(flux[0])
    assert np.sqrt(np.mean((flux[0] - flux[1]) ** 2)) < 0.02 * spread
    if kind == "flow":  # the flow's splines stay float32: only the detection draw can differ
        assert np.array_equal(flux[0], flux[1])
    with pytest.raises(ConfigError, match="precision"):
        Emulator(generator, detection, features, net, flow=flow, precision="fp8")


def test_the_cli_offers_exactly_the_precisions():
    from galray.commands.emulate import PRECISION_CHOICES
    from galray.models.precision import PRECISIONS

    assert PRECISION_CHOICES == PRECISIONS


@pytest.mark.parametrize("activation", ["leaky_relu", "silu", "gelu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sampling_activations_in_place_change_no_value(activation, dtype):
    """Sampling applies the activations in place (no second tensor per layer): bit for bit the
    values of the out-of-place modules autograd uses, in float32 and bfloat16."""
    torch.manual_seed(1)
    net = mlp(7, 2, width=32, depth=3, activation=activation).eval()
    x = torch.randn(3000, 7)
    recorded = mlp_forward(net, x.clone().requires_grad_(True), dtype)  # out of place
    assert recorded.grad_fn is not None
    with torch.inference_mode():
        sampled = mlp_forward(net, x, dtype)
        h = net[0](x)
        in_place = activate(net[1], h) is h
    assert torch.equal(sampled, recorded.detach())
    assert in_place == (activation != "gelu")  # gelu has no in-place form: out of place
    h = net[0](x)
    assert activate(net[1], h) is not h  # autograd records h: never in place
