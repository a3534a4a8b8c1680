"""The galaxy-stamp generator: a convolutional VAE of the *intrinsic* (pre-PSF) light profile
with a conditional normalizing flow as the prior of its latent space (the galsim-hub recipe,
Lanusse et al.), trained PSF-aware.  Plain torch: no Ray, no files.

Shapes: stamps and PSF images ``[B, N, N]``, conditions ``[B, n_cond]`` (standardised by the
caller), latents ``[B, latent_dim]``.

* :class:`Decoder` ``(z, c) -> profile``: a unit-flux image (softmax over the pixels), so the
  flux is the caller's (from the magnitude) and the light is positive by construction; it reads
  ``c`` only with ``condition_decoder`` (off: the code carries everything).
* :class:`Encoder` ``(stamp / flux, psf, c) -> (mu, log_var)``: the approximate posterior.
* The prior ``p(z | c)`` is a conditional masked autoregressive flow (zuko's MAF), trained jointly
  through the ELBO's KL term, ``E_q[log q(z | x) - log p(z | c)]``.
* :func:`elbo_terms`: the likelihood is Gaussian under each stamp's own noise ``sigma``, of the
  decoded profile times the flux, convolved (FFT, :func:`fft_convolve`) with the stamp's PSF:
  the network models the galaxy, never the PSF.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import zuko
from torch import nn

from galray.config import require

IMAGE_GAIN = 100.0  # unit-flux images times this reach the encoder (peaks of order 1)


@dataclass
class StampNetConfig:
    """The generator's networks.

    size: stamp side in pixels (a multiple of ``2 ** len(channels)``).  n_cond: conditions.
    latent_dim: VAE code size.  channels: convolution widths, one stride-2 stage each.
    hidden: width of the dense layers between the convolutions and the code.
    flow_transforms / flow_hidden: the MAF prior's autoregressive transforms and their widths.
    condition_decoder: also feed the conditions to the decoder.  Off (galsim-hub's recipe), the
    code must carry everything, size and brightness profile included, and the flow prior maps
    the conditions to codes; on, the decoder learned to ignore its code (KL under 1 nat after 20
    epochs of the CPU config).
    envelope: scale, as a fraction of ``size``, of the exponential ``exp(-r / scale)`` that
    the decoder's output is a modulation of (its logits plus ``-r / scale``, ``r`` from the
    centre); 0: none.  Without it an untrained decoder spreads its light evenly over the stamp,
    and noise-dominated outskirts give little gradient to take it back: a CPU run kept 3.6 % of
    each galaxy's light beyond 3" (real: 0.4 %), 0.035 mag the estimator did not see.
    """

    size: int = 48
    n_cond: int = 4
    latent_dim: int = 16
    channels: tuple[int, ...] = (32, 64, 128)
    hidden: int = 256
    flow_transforms: int = 3
    flow_hidden: tuple[int, ...] = (128, 128)
    condition_decoder: bool = False
    envelope: float = 1.0 / 12.0

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.flow_hidden = tuple(int(h) for h in self.flow_hidden)
        require(len(self.channels) >= 1, "net.channels", "needs at least one stage")
        step = 2 ** len(self.channels)
        require(
            self.size >= step and self.size % step == 0,
            "net.size",
            f"must be a multiple of 2^{len(self.channels)} = {step} pixels, got {self.size}",
        )
        require(self.n_cond >= 1, "net.n_cond", f"must be >= 1, got {self.n_cond}")
        require(self.latent_dim >= 2, "net.latent_dim", f"must be >= 2, got {self.latent_dim}")
        require(self.hidden >= 8, "net.hidden", f"must be >= 8, got {self.hidden}")
        require(self.flow_transforms >= 1, "net.flow_transforms", "must be >= 1")
        require(self.envelope >= 0, "net.envelope", f"must be >= 0, got {self.envelope}")

    @property
    def bottom(self) -> int:
        """Pixels per side after the last stride-2 stage."""
        return self.size // 2 ** len(self.channels)


class Encoder(nn.Module):
    """``(x [B, 2, N, N], c [B, n_cond]) -> (mu, log_var [B, latent_dim])``; ``x`` holds the
    stamp turned into the canonical frame (:func:`orientation`) and the PSF image, both scaled
    to unit flux times :data:`IMAGE_GAIN`."""

    def __init__(self, cfg: StampNetConfig):
        super().__init__()
        layers, c_in = [], 2
        for c in cfg.channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.SiLU()]
            layers += [nn.Conv2d(c, c, 3, padding=1), nn.SiLU()]
            c_in = c
        self.conv = nn.Sequential(*layers)
        flat = cfg.channels[-1] * cfg.bottom**2
        self.head = nn.Sequential(
            nn.Linear(flat + cfg.n_cond, cfg.hidden),
            nn.SiLU(),
            nn.Linear(cfg.hidden, 2 * cfg.latent_dim),
        )
        # start with a sharp posterior (std e^-2.5): a code that is noise at first teaches the
        # decoder to ignore it, and it rarely learns to read it later
        with torch.no_grad():
            self.head[-1].bias[cfg.latent_dim : 2 * cfg.latent_dim].fill_(-5.0)
        self.latent_dim = cfg.latent_dim

    def forward(self, x: torch.Tensor, c: torch.Tensor):
        h = self.head(torch.cat([self.conv(x).flatten(1), c], dim=1))
        k = self.latent_dim
        mu, log_var = h[:, :k], h[:, k:]
        return mu, log_var.clamp(-12.0, 6.0)


class Decoder(nn.Module):
    """``(z [B, latent_dim], c [B, n_cond]) -> profile [B, N, N]`` of unit flux."""

    def __init__(self, cfg: StampNetConfig):
        super().__init__()
        self.cfg = cfg
        top = cfg.channels[-1]
        self.dense = nn.Sequential(
            nn.Linear(cfg.latent_dim + cfg.n_cond * cfg.condition_decoder, cfg.hidden),
            nn.SiLU(),
            nn.Linear(cfg.hidden, top * cfg.bottom**2),
            nn.SiLU(),
        )
        layers, c_in = [], top
        for c in reversed(cfg.channels):
            layers += [nn.Upsample(scale_factor=2, mode="nearest")]
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.SiLU()]
            layers += [nn.Conv2d(c, c, 3, padding=1), nn.SiLU()]
            c_in = c
        layers.append(nn.Conv2d(c_in, 1, 3, padding=1))
        self.up = nn.Sequential(*layers)
        r = pixel_radius(cfg.size).flatten()
        prior = -r / (cfg.envelope * cfg.size) if cfg.envelope > 0 else torch.zeros_like(r)
        self.register_buffer("log_envelope", prior, persistent=False)

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        inputs = torch.cat([z, c], dim=1) if cfg.condition_decoder else z
        h = self.dense(inputs).view(-1, cfg.channels[-1], cfg.bottom, cfg.bottom)
        logits = self.up(h).flatten(1).float() + self.log_envelope  # [B, N*N]
        return torch.softmax(logits, dim=1).view(-1, cfg.size, cfg.size)


def pixel_radius(size: int) -> torch.Tensor:
    """Distance ``[N, N]`` (pixels) of each pixel centre from the stamp's centre, the corner
    of pixels ``N/2 - 1`` and ``N/2`` where the galaxies are centred (and :func:`rotate` turns)."""
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2.0
    return torch.sqrt(x[:, None] ** 2 + x[None, :] ** 2)


def orientation(stamp: torch.Tensor) -> torch.Tensor:
    """The angle ``[B]`` (radians) by which :func:`rotate` turns a profile whose major axis lies
    along the image's x axis (the canonical frame) into the orientation of ``stamp [B, N, N]``:
    from the stamp's second moments under a round Gaussian weight of ``N / 10`` pixels centred
    on the stamp (a round PSF does not move the axis; noise does, for faint or round galaxies,
    where the angle matters little).  Measured, not learned: a learned angle and a canonical
    profile are a chicken and egg (a round profile gives the angle no gradient), and a CPU run
    that learned them ended with random angles and round galaxies (HSM ``|e|`` 0.03 against 0.2).
    """
    n = stamp.shape[-1]
    x = torch.arange(n, dtype=torch.float32, device=stamp.device) - (n - 1) / 2.0
    weight = torch.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2.0 * (n / 10.0) ** 2))
    w = stamp.float() * weight
    xx = (w * x[None, :] ** 2).sum(dim=(1, 2))
    yy = (w * x[:, None] ** 2).sum(dim=(1, 2))
    xy = (w * x[None, :] * x[:, None]).sum(dim=(1, 2))
    # the major axis lies at +phi in (column, row) coordinates; rotate() turns by -angle there
    return -0.5 * torch.atan2(2.0 * xy, xx - yy)


def rotate(profile: torch.Tensor, angle: torch.Tensor, renormalise: bool = True) -> torch.Tensor:
    """``profile [B, N, N]`` turned by ``angle [B]`` (radians) about the image centre (bilinear),
    renormalised to its flux before the turn (not with ``renormalise=False``: a noisy stamp's
    sum can be near zero)."""
    cos, sin, zero = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    x = profile[:, None].float()
    grid = torch.nn.functional.affine_grid(theta.float(), list(x.shape), align_corners=False)
    out = torch.nn.functional.grid_sample(x, grid, align_corners=False)[:, 0]
    if not renormalise:
        return out
    scale = profile.sum(dim=(1, 2)) / out.sum(dim=(1, 2)).clamp_min(1e-12)
    return out * scale[:, None, None]


class StampVAE(nn.Module):
    """Encoder, decoder and the conditional flow prior ``p(z | c)``.

    Orientation is separated from the code: a galaxy's orientation is isotropic and independent
    of its properties, so the decoder draws it in a canonical frame (major axis along x), each
    stamp's angle is measured from its moments (:func:`orientation`), the encoder sees the stamp
    turned into the canonical frame, and generation turns the profile by a uniform random angle.
    (Carried in the code, the orientation was the information the VAE learned last: after 16k
    training stamps it made round galaxies.)"""

    def __init__(self, cfg: StampNetConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.prior = zuko.flows.MAF(
            features=cfg.latent_dim,
            context=cfg.n_cond,
            transforms=cfg.flow_transforms,
            hidden_features=cfg.flow_hidden,
        )

    def encode(self, stamp, psf, flux, c):
        """Posterior ``(mu, log_var)`` and orientation (:func:`orientation`) of stamps ``[B, N,
        N]`` with their PSFs and fluxes.  The PSF reaches the encoder unturned (for its width;
        the likelihood uses it in the stamp's own frame)."""
        angle = orientation(stamp)
        canonical = rotate(stamp / flux[:, None, None], -angle, renormalise=False)
        x = torch.stack([canonical, psf], dim=1) * IMAGE_GAIN
        mu, log_var = self.encoder(x, c)
        return mu, log_var, angle

    def sample_latent(self, c: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Latents of conditions ``c`` from standard normal draws ``eps`` ``[B, latent_dim]``
        through the flow (the caller owns the randomness, so a seed fixes the result)."""
        return self.prior(c).transform.inv(eps)

    def generate(self, c: torch.Tensor, eps: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
        """Unit-flux intrinsic profiles ``[B, N, N]`` of conditions ``c``, turned by ``angle``
        (radians; uniform on [0, pi) for an isotropic population)."""
        return rotate(self.decoder(self.sample_latent(c, eps), c), angle)


def fft_convolve(image: torch.Tensor, psf: torch.Tensor) -> torch.Tensor:
    """Linear (zero-padded) convolution of ``image [B, N, N]`` with kernels ``psf [B, N, N]``
    centred on pixel ``(N // 2, N // 2)``, cropped to ``N x N`` (the numpy twin is
    :func:`galray.datasets.stamps.convolve_same`)."""
    n = image.shape[-1]
    shape = (2 * n, 2 * n)
    out = torch.fft.irfft2(
        torch.fft.rfft2(image.float(), s=shape) * torch.fft.rfft2(psf.float(), s=shape), s=shape
    )
    c = n // 2
    return out[..., c : c + n, c : c + n]


def elbo_terms(
    vae: StampVAE,
    stamp: torch.Tensor,  # [B, N, N] observed, noisy
    psf: torch.Tensor,  # [B, N, N] sums to 1
    sigma: torch.Tensor,  # [B] noise per pixel
    flux: torch.Tensor,  # [B] total flux (from the magnitude)
    c: torch.Tensor,  # [B, n_cond] standardised conditions
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-stamp negative log-likelihood (Gaussian, constants dropped) of one posterior draw and
    the single-draw KL estimate ``log q(z | x) - log p(z | c)``: ``([B], [B])``.  The decoded
    profile is turned by the stamp's measured angle (the orientation's prior is uniform: no KL)."""
    mu, log_var, angle = vae.encode(stamp, psf, flux, c)
    std = torch.exp(0.5 * log_var)
    eps = torch.randn_like(mu)
    z = mu + std * eps
    profile = rotate(vae.decoder(z, c), angle)
    model = flux[:, None, None] * fft_convolve(profile, psf)
    nll = 0.5 * (((stamp - model) / sigma[:, None, None]) ** 2).sum(dim=(1, 2))
    log_q = (-0.5 * eps**2 - 0.5 * log_var - 0.5 * math.log(2 * math.pi)).sum(dim=1)
    log_p = vae.prior(c).log_prob(z)
    return nll, log_q - log_p
