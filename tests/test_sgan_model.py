"""SGAN networks: shapes, the relativistic average loss, packing, intensity scaling, receptive field."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from galray.config import from_dict
from galray.deepfield.scaling import IntensityConfig, IntensityScaling
from galray.errors import ConfigError
from galray.models.sgan import (
    Critic,
    Generator,
    SGANNetConfig,
    noise_halo,
    output_size,
    pack,
    relativistic_average_losses,
)


@pytest.mark.parametrize("cells, crop", [(4, 64), (8, 128), (16, 256)])
def test_paper_generator_and_critic_shapes(cells, crop):
    cfg = SGANNetConfig()  # the paper's topology: 50 noise channels, 16x upsampling, 3 bands
    torch.manual_seed(0)
    gen, critic = Generator(cfg), Critic(cfg)
    with torch.no_grad():
        images = gen(torch.randn(2, 50, cells, cells))
        assert images.shape == (2, 3, crop, crop)
        assert 0 < images.min() and images.max() < 1  # sigmoid output
        assert critic(pack(images, 2)).shape == (1,)
    assert output_size(gen.geometry, cells) == crop
    assert len([m for m in gen.modules() if isinstance(m, torch.nn.ConvTranspose2d)]) == 14
    assert len([m for m in critic.modules() if isinstance(m, torch.nn.Conv2d)]) == 5


def test_generator_takes_any_noise_shape():
    gen = Generator(SGANNetConfig.debug())
    with torch.no_grad():
        assert gen(torch.randn(1, 8, 3, 7)).shape == (1, 3, 48, 112)
        assert Critic(SGANNetConfig.debug())(torch.rand(3, 6, 96, 160)).shape == (3,)


def test_relativistic_average_loss_on_hand_computed_values():
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([0.0, 2.0])
    # real - mean(fake) = [0, 2]; fake - mean(real) = [-2, 0]

    def softplus(x):
        return math.log1p(math.exp(x))

    critic, generator = relativistic_average_losses(real, fake)
    # L_D = -E log σ(real_rel) - E log(1 - σ(fake_rel))
    want_d = (softplus(-0.0) + softplus(-2.0)) / 2 + (softplus(-2.0) + softplus(0.0)) / 2
    want_g = (softplus(0.0) + softplus(2.0)) / 2 + (softplus(2.0) + softplus(-0.0)) / 2
    assert critic.item() == pytest.approx(want_d, rel=1e-6)
    assert generator.item() == pytest.approx(want_g, rel=1e-6)
    # indistinguishable samples: both losses are 2 log 2
    same = torch.zeros(4)
    c, g = relativistic_average_losses(same, same)
    assert c.item() == pytest.approx(2 * math.log(2)) and g.item() == pytest.approx(2 * math.log(2))
    # the loss only sees differences: shifting every logit changes nothing
    c2, g2 = relativistic_average_losses(real + 5, fake + 5)
    assert c2.item() == pytest.approx(critic.item()) and g2.item() == pytest.approx(
        generator.item()
    )


def test_packing_concatenates_consecutive_images_along_channels():
    x = torch.arange(4 * 3 * 2 * 2, dtype=torch.float32).reshape(4, 3, 2, 2)
    packed = pack(x, 2)
    assert packed.shape == (2, 6, 2, 2)
    torch.testing.assert_close(packed[1], torch.cat([x[2], x[3]]))
    with pytest.raises(ValueError, match="packed"):
        pack(x[:3], 2)


@pytest.mark.parametrize("kind", ["asinh", "linear"])
def test_intensity_scaling_round_trip(kind):
    rng = np.random.default_rng(0)
    data = rng.normal(0, 0.5, (3, 128, 128)).astype(np.float32)
    data[:, 60:64, 60:64] += np.array([50.0, 200.0, 400.0], dtype=np.float32)[:, None, None]
    scaling = IntensityScaling.fit(data, IntensityConfig(kind=kind, clip_low=0, clip_high=100))
    scaled = scaling.forward(data)
    assert scaled.dtype == np.float32 and scaled.min() >= 0.001 - 1e-7 and scaled.max() <= 0.999
    back = scaling.inverse(scaled)
    span = data.max(axis=(1, 2)) - data.min(axis=(1, 2))
    assert (np.abs(back - data).max(axis=(1, 2)) / span).max() < 1e-5
    # batched [B, C, H, W] inverse and a JSON round trip of the fitted scaling
    again = IntensityScaling.from_dict(scaling.to_dict())
    np.testing.assert_allclose(again.inverse(scaled[None])[0], back, rtol=0, atol=1e-6)
    # the float32 torch inverse (used on the generator's device) agrees to 1e-6 of the range
    on_device = scaling.inverse_torch(torch.from_numpy(scaled)).numpy()
    assert (np.abs(on_device - back).max(axis=(1, 2)) / span).max() < 1e-6
    if kind == "asinh":
        assert scaling.noise_sigma[0] == pytest.approx(0.5, rel=0.05)


def test_scaling_clips_outside_the_percentiles():
    data = np.linspace(-1, 1, 3 * 100 * 100, dtype=np.float32).reshape(3, 100, 100)
    scaling = IntensityScaling.fit(data, IntensityConfig(clip_low=1, clip_high=99))
    scaled = scaling.forward(data)
    assert scaled.min() == pytest.approx(0.001) and scaled.max() == pytest.approx(0.999)


def _dependency_extent(gen: Generator, cells: int = 20) -> tuple[int, int]:
    """Empirical (before, after): how far, in cells, a noise cell's change reaches."""
    gen = gen.double()
    z = torch.randn(1, gen.noise_channels, cells, cells, dtype=torch.float64)
    c = cells // 2
    with torch.no_grad():
        base = gen(z)
        z[:, :, c, c] += 1.0
        changed = (gen(z) - base).abs().amax(dim=(0, 1, 3)) > 0  # per output row
    rows = torch.nonzero(changed).flatten()
    s = gen.upsampling
    # an output pixel in cell k depends on cells [k - before, k + after]: cell c reaches
    # pixels of cells c - after .. c + before
    return int(rows.max()) // s - c, c - int(rows.min()) // s


@pytest.mark.parametrize(
    "cfg",
    [
        SGANNetConfig.debug(),
        SGANNetConfig(noise_channels=4, gen_channels=(4, 4, 4, 4), critic_channels=(4,)),
        SGANNetConfig(noise_channels=4, gen_channels=(4, 4, 4), stride1_layers=2),
    ],
    ids=["debug", "paper-topology", "three-stages"],
)
def test_noise_halo_matches_the_architecture(cfg):
    torch.manual_seed(1)
    gen = Generator(cfg)
    halo = noise_halo(gen.geometry, gen.upsampling)
    assert _dependency_extent(gen) == halo  # exact: neither too small nor wasteful


def test_paper_halo_is_four_cells_before_and_three_after():
    gen = Generator(SGANNetConfig())
    assert noise_halo(gen.geometry, gen.upsampling) == (4, 3)


def test_bad_net_config_names_the_field():
    with pytest.raises(ConfigError, match="gen_channels"):
        from_dict(SGANNetConfig, {"gen_channels": []})
    with pytest.raises(ConfigError, match="pack"):
        from_dict(SGANNetConfig, {"pack": 0})
    with pytest.raises(ConfigError, match="kind"):
        from_dict(IntensityConfig, {"kind": "log"})
