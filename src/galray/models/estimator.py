"""The measurement yardstick's network: a CNN that reads a noisy galaxy stamp, its PSF image and
its noise level and returns, per measured parameter, an estimate and its uncertainty (a Gaussian
mean and log-variance).  Plain torch: no Ray, no files.

Inputs: stamps and PSF images ``[B, N, N]`` (counts; PSF summing to 1), noise sigma ``[B]``.
Each stamp is divided by its *brightness scale* ``s`` (the peak of its 3x3 box average, at least
sigma), so the convolutions see images of order 1 whatever the flux; ``log10 s`` and
``log10 sigma`` reach the dense head.  Targets are standardised transforms of the parameters
(:class:`Targets`); a flux is measured *relative to s* (``log10 flux - log10 s``), a magnitude
likewise, so the network learns a shape-dependent correction instead of a logarithm over the
population's whole flux range.

Loss: the Gaussian negative log-likelihood of the standardised targets with the variance's
weight on the mean's gradient damped (beta-NLL, Seitzer et al. 2022, beta = 0.5): plain NLL
lets badly fitted rows buy a large variance instead of a better mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from galray.config import require

TRANSFORMS = ("linear", "log", "logflux", "mag")
LOG10 = math.log(10.0)


@dataclass
class EstimatorNetConfig:
    """The estimator's network.

    size: stamp side in pixels (a multiple of ``2 ** len(channels)``).  n_targets: parameters
    measured.  channels: convolution widths, one stage (two 3x3 convolutions, 2x2 average pool)
    each.  hidden: width of the two dense layers.  use_psf: the PSF image is a second input
    channel (off: the network must infer the PSF from the stamp).
    """

    size: int = 32
    n_targets: int = 5
    channels: tuple[int, ...] = (16, 32, 64)
    hidden: int = 256
    use_psf: bool = True

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        require(len(self.channels) >= 1, "net.channels", "needs at least one stage")
        step = 2 ** len(self.channels)
        require(
            self.size % step == 0,
            "net.size",
            f"must be a multiple of {step} (2 ** len(net.channels)), got {self.size}",
        )
        require(self.n_targets >= 1, "net.n_targets", "must be >= 1")
        require(self.hidden >= 8, "net.hidden", f"must be >= 8, got {self.hidden}")


@dataclass
class Targets:
    """How measured parameters become the network's standardised targets and back.

    names: the parameters (stamp table columns), in order.  transforms: per name, one of
    ``linear``, ``log`` (log10), ``logflux`` (log10 of the value over the stamp's brightness
    scale) or ``mag`` (the magnitude plus 2.5 log10 of the brightness scale).  mean / std: of the
    transformed values over the training stamps.
    """

    names: list[str]
    transforms: list[str]
    mean: list[float]
    std: list[float]

    def __post_init__(self) -> None:
        for name, t in zip(self.names, self.transforms):
            require(t in TRANSFORMS, "targets", f"{name}: transform {t!r} not in {TRANSFORMS}")

    def forward(self, values: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
        """Raw parameters ``[B, P]`` -> transformed, unstandardised ``[B, P]``
        (``log_scale``: log10 of each stamp's brightness scale, ``[B]``)."""
        cols = []
        for k, t in enumerate(self.transforms):
            v = values[:, k]
            if t == "log":
                v = torch.log10(v)
            elif t == "logflux":
                v = torch.log10(v) - log_scale
            elif t == "mag":
                v = v + 2.5 * log_scale
            cols.append(v)
        return torch.stack(cols, dim=1)

    def standardise(self, values: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
        mean = values.new_tensor(self.mean)
        std = values.new_tensor(self.std)
        return (self.forward(values, log_scale) - mean) / std

    def inverse(
        self, mu: torch.Tensor, log_var: torch.Tensor, log_scale: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised ``(mu, log_var)`` -> each parameter's estimate and 1-sigma uncertainty in
        its own units (a log-transformed parameter's uncertainty by the delta method)."""
        mean = mu.new_tensor(self.mean)
        std = mu.new_tensor(self.std)
        t = mean + std * mu
        sd = std * torch.exp(0.5 * log_var)
        values, errors = [], []
        for k, kind in enumerate(self.transforms):
            v, e = t[:, k], sd[:, k]
            if kind in ("log", "logflux"):
                v = 10.0 ** (v + (log_scale if kind == "logflux" else 0.0))
                e = v * LOG10 * e
            elif kind == "mag":
                v = v - 2.5 * log_scale
            values.append(v)
            errors.append(e)
        return torch.stack(values, dim=1), torch.stack(errors, dim=1)


def brightness_scale(stamp: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per stamp ``[B]``: the peak of its 3x3 box average, at least its noise sigma."""
    box = F.avg_pool2d(stamp[:, None], 3, stride=1, padding=1)
    return torch.maximum(box.amax(dim=(1, 2, 3)), sigma)


class Estimator(nn.Module):
    """``(stamp, psf, sigma) -> (mu, log_var)``, both ``[B, n_targets]`` standardised."""

    def __init__(self, cfg: EstimatorNetConfig):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        c_in = 2 if cfg.use_psf else 1
        for c in cfg.channels:
            layers += [
                nn.Conv2d(c_in, c, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(c, c, 3, padding=1),
                nn.ReLU(),
                nn.AvgPool2d(2),
            ]
            c_in = c
        self.features = nn.Sequential(*layers, nn.Flatten())
        side = cfg.size // 2 ** len(cfg.channels)
        width = c_in * side * side + 2
        self.head = nn.Sequential(
            nn.Linear(width, cfg.hidden),
            nn.ReLU(),
            nn.Linear(cfg.hidden, cfg.hidden),
            nn.ReLU(),
            nn.Linear(cfg.hidden, 2 * cfg.n_targets),
        )

    def forward(
        self, stamp: torch.Tensor, psf: torch.Tensor, sigma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(mu, log_var, log10 s)`` of a batch (``s``: :func:`brightness_scale`)."""
        scale = brightness_scale(stamp, sigma)
        x = (stamp / scale[:, None, None])[:, None]
        if self.cfg.use_psf:
            x = torch.cat([x, (psf / psf.amax(dim=(1, 2), keepdim=True))[:, None]], dim=1)
        log_scale = torch.log10(scale)
        extra = torch.stack([log_scale, torch.log10(sigma)], dim=1)
        out = self.head(torch.cat([self.features(x), extra], dim=1))
        mu, log_var = out.chunk(2, dim=1)
        return mu, log_var.clamp(-14.0, 6.0), log_scale


def gaussian_nll(
    mu: torch.Tensor, log_var: torch.Tensor, target: torch.Tensor, beta: float = 0.5
) -> torch.Tensor:
    """Per-row beta-NLL ``[B]`` (mean over targets) of standardised targets; ``beta = 0``: the
    plain Gaussian NLL (up to a constant)."""
    nll = 0.5 * ((target - mu) ** 2 * torch.exp(-log_var) + log_var)
    if beta:
        nll = nll * torch.exp(beta * log_var).detach()
    return nll.mean(dim=1)
