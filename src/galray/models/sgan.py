"""Networks of the deep-field generator: a Spatial GAN (Jetchev et al. 2016) as in Smith & Geach
(2019), with a relativistic average loss and a packed critic.

Shapes: ``B`` images, ``C`` bands, ``Z`` noise channels, noise ``[B, Z, h, w]`` -> images
``[B, C, s h, s w]`` with the generator's upsampling factor ``s = 2^len(gen_channels)`` (16).

Generator (fully convolutional, so any ``h, w``): one transposed convolution of stride 2
(kernel 4), then ``len(gen_channels) - 1`` sets of one stride-2 and ``stride1_layers`` stride-1
transposed convolutions (kernel 4), each followed by an ELU; a stride-1 kernel-3 transposed
convolution to ``C`` bands with a sigmoid closes it, so outputs lie in (0, 1): intensities are
scaled before training and unscaled after (:mod:`galray.deepfield.scaling`).  A kernel-4
stride-1 layer would grow the map by one pixel; its last row and column are cropped so every
stride-1 layer keeps the size ("same" padding, one pixel before and two after).

Critic: ``len(critic_channels)`` stride-2 kernel-4 convolutions with leaky ReLU, global average
pooling, one dense output (a logit).  It is *packed* (Lin et al. 2018): ``pack`` images of the
same class are concatenated along channels and judged as one sample.

Receptive field: every output pixel depends on a finite window of noise cells, fixed by the
layers' strides, kernels and paddings (:func:`noise_halo`).  Tiled generation gives each tile a
halo of that many cells so its kept pixels see exactly the noise (and the zero padding at the
field's edges) that a one-pass generation of the whole field would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from galray.config import require


@dataclass
class SGANNetConfig:
    """Widths of the SGAN.  Defaults follow Smith & Geach (2019) where they state them (50 noise
    channels, four stride-2 stages with three stride-1 layers in each of the last three, a
    five-layer critic, packing 2); channel widths are this implementation's.

    bands: image channels.  noise_channels: ``Z``.  gen_channels: width of each upsampling
    stage (its length sets the factor ``2^len``).  stride1_layers: stride-1 layers per stage
    after the first.  critic_channels: width of each stride-2 critic layer.  pack: images per
    critic sample.  leaky_slope: the critic's leaky-ReLU slope.
    """

    bands: int = 3
    noise_channels: int = 50
    gen_channels: tuple[int, ...] = (256, 128, 64, 32)
    stride1_layers: int = 3
    critic_channels: tuple[int, ...] = (64, 128, 256, 512, 512)
    pack: int = 2
    leaky_slope: float = 0.2

    def __post_init__(self) -> None:
        require(self.bands >= 1, "bands", f"must be >= 1, got {self.bands}")
        require(self.noise_channels >= 1, "noise_channels", "must be >= 1")
        self.gen_channels = tuple(int(c) for c in self.gen_channels)
        self.critic_channels = tuple(int(c) for c in self.critic_channels)
        require(
            len(self.gen_channels) >= 1 and all(c >= 1 for c in self.gen_channels),
            "gen_channels",
            f"must be one or more positive widths, got {self.gen_channels}",
        )
        require(self.stride1_layers >= 0, "stride1_layers", "must be >= 0")
        require(
            len(self.critic_channels) >= 1 and all(c >= 1 for c in self.critic_channels),
            "critic_channels",
            f"must be one or more positive widths, got {self.critic_channels}",
        )
        require(self.pack >= 1, "pack", f"must be >= 1, got {self.pack}")
        require(0 <= self.leaky_slope < 1, "leaky_slope", "must be in [0, 1)")

    @property
    def upsampling(self) -> int:
        """Output pixels per noise cell along each axis."""
        return 2 ** len(self.gen_channels)

    @classmethod
    def debug(cls, bands: int = 3) -> SGANNetConfig:
        """A tiny flavour for CPU tests: same topology, a few channels per layer."""
        return cls(
            bands=bands,
            noise_channels=8,
            gen_channels=(16, 12, 8, 8),
            stride1_layers=1,
            critic_channels=(8, 16, 16, 32, 32),
        )


@dataclass(frozen=True)
class LayerGeometry:
    """A transposed convolution along one axis: ``out[o]`` sums ``in[i]`` for every kernel tap
    ``k`` with ``stride * i + k = o + padding``; ``crop_end`` pixels are dropped at the end."""

    stride: int
    kernel: int
    padding: int
    crop_end: int = 0

    def out_size(self, n: int) -> int:
        return (n - 1) * self.stride + self.kernel - 2 * self.padding - self.crop_end

    def inputs_of(self, lo: int, hi: int) -> tuple[int, int]:
        """Input positions that output positions ``[lo, hi]`` depend on (inclusive)."""
        s, k, p = self.stride, self.kernel, self.padding
        return -((-(lo + p - k + 1)) // s), (hi + p) // s


class _SameTransposed(nn.Module):
    """Stride-1 kernel-4 transposed convolution cropped back to its input size."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.ConvTranspose2d(c_in, c_out, 4, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)[..., :-1, :-1]


class Generator(nn.Module):
    """Noise ``[B, Z, h, w]`` -> images ``[B, C, s h, s w]`` in (0, 1) (scaled intensities)."""

    def __init__(self, cfg: SGANNetConfig):
        super().__init__()
        self.cfg = cfg
        self.noise_channels = cfg.noise_channels
        self.upsampling = cfg.upsampling
        layers: list[nn.Module] = []
        geometry: list[LayerGeometry] = []
        c_in = cfg.noise_channels
        for stage, width in enumerate(cfg.gen_channels):
            layers += [nn.ConvTranspose2d(c_in, width, 4, stride=2, padding=1), nn.ELU()]
            geometry.append(LayerGeometry(2, 4, 1))
            for _ in range(cfg.stride1_layers if stage > 0 else 0):
                layers += [_SameTransposed(width, width), nn.ELU()]
                geometry.append(LayerGeometry(1, 4, 1, crop_end=1))
            c_in = width
        self.body = nn.Sequential(*layers)
        self.out = nn.ConvTranspose2d(c_in, cfg.bands, 3, stride=1, padding=1)
        geometry.append(LayerGeometry(1, 3, 1))
        self.geometry = tuple(geometry)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # the sigmoid in fp32: under bf16 autocast the logits' last bits matter near 0 and 1
        return torch.sigmoid(self.out(self.body(z)).float())  # [B, C, s h, s w]


class Critic(nn.Module):
    """Packed images ``[B / pack, pack C, H, W]`` -> logits ``[B / pack]``; any ``H, W`` >= 2^L."""

    def __init__(self, cfg: SGANNetConfig):
        super().__init__()
        self.pack = cfg.pack
        layers: list[nn.Module] = []
        c_in = cfg.bands * cfg.pack
        for width in cfg.critic_channels:
            layers += [
                nn.Conv2d(c_in, width, 4, stride=2, padding=1),
                nn.LeakyReLU(cfg.leaky_slope),
            ]
            c_in = width
        self.body = nn.Sequential(*layers)
        self.dense = nn.Linear(c_in, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x).mean(dim=(2, 3))  # global average pooling: [B / pack, width]
        return self.dense(h).squeeze(1).float()


# --------------------------------------------------------------------------- losses and packing


def pack(images: torch.Tensor, n: int) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B / n, n C, H, W]``: consecutive images become one sample."""
    b, c, h, w = images.shape
    if b % n:
        raise ValueError(f"batch of {b} images cannot be packed in groups of {n}")
    return images.reshape(b // n, n * c, h, w)


def relativistic_average_losses(
    real_logits: torch.Tensor, fake_logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Relativistic average GAN losses (Jolicoeur-Martineau 2018), ``(critic, generator)``.

    With ``D̃(x_r) = σ(C(x_r) - E[C(x_f)])`` and ``D̃(x_f) = σ(C(x_f) - E[C(x_r)])``::

        L_critic    = -E[log D̃(x_r)] - E[log(1 - D̃(x_f))]
        L_generator = -E[log D̃(x_f)] - E[log(1 - D̃(x_r))]

    computed as softplus of the logits (``-log σ(a) = softplus(-a)``) for stability.
    """
    real_rel = real_logits - fake_logits.mean()
    fake_rel = fake_logits - real_logits.mean()
    critic = F.softplus(-real_rel).mean() + F.softplus(fake_rel).mean()
    generator = F.softplus(real_rel).mean() + F.softplus(-fake_rel).mean()
    return critic, generator


# --------------------------------------------------------------------------- receptive field


def noise_halo(geometry: tuple[LayerGeometry, ...], upsampling: int) -> tuple[int, int]:
    """``(before, after)``: noise cells before and after an output pixel's own cell
    (``pixel // upsampling``) that the pixel depends on, through every layer's padding too.

    Computed by walking the dependency interval of each output pixel of one cell back through
    the layers; the pattern repeats every ``upsampling`` pixels, so one cell covers all.
    """
    before = after = 0
    for o in range(upsampling):
        lo, hi = o, o
        for layer in reversed(geometry):
            lo, hi = layer.inputs_of(lo, hi)
        before, after = max(before, -lo), max(after, hi)
    return before, after


def output_size(geometry: tuple[LayerGeometry, ...], cells: int) -> int:
    """Output pixels along an axis for ``cells`` noise cells."""
    n = cells
    for layer in geometry:
        n = layer.out_size(n)
    return n
