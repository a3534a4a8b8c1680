"""Networks of the transfer-function emulator: a conditional WGAN-GP and a detection model.

Shapes: ``B`` rows, ``C`` condition features (truth + observing conditions, standardised), ``Y``
observed quantities (one per band), ``Z`` noise dimensions.

The generator maps ``(z, cond) -> y`` and nothing else shapes its output distribution: its loss is
the critic's score alone (no MSE or other term that would pull samples towards the conditional
mean and shrink their variance, as the published emulator's extra MSE term did).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from galray.config import require
from galray.models.precision import mlp_forward

ACTIVATIONS = {"leaky_relu": lambda: nn.LeakyReLU(0.2), "silu": nn.SiLU, "gelu": nn.GELU}


@dataclass
class NetConfig:
    """Width and depth of the emulator's MLPs.

    width: hidden units per layer.  depth: hidden layers.  noise_dim: generator noise dimensions.
    activation: one of ``leaky_relu``, ``silu``, ``gelu``.  detection_width / detection_depth:
    hidden units and hidden layers of the detection model's MLP (either emulator model).
    """

    width: int = 256
    depth: int = 3
    noise_dim: int = 8
    activation: Literal["leaky_relu", "silu", "gelu"] = "leaky_relu"
    detection_width: int = 128
    detection_depth: int = 3

    def __post_init__(self) -> None:
        require(self.width >= 1, "width", f"must be >= 1, got {self.width}")
        require(self.depth >= 1, "depth", f"must be >= 1, got {self.depth}")
        require(self.noise_dim >= 1, "noise_dim", f"must be >= 1, got {self.noise_dim}")
        require(
            self.activation in ACTIVATIONS,
            "activation",
            f"must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}",
        )
        require(self.detection_width >= 1, "detection_width", "must be >= 1")
        require(self.detection_depth >= 1, "detection_depth", "must be >= 1")


def mlp(n_in: int, n_out: int, width: int, depth: int, activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(n_in if i == 0 else width, width), ACTIVATIONS[activation]()]
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


class ConditionalGenerator(nn.Module):
    """Samples observed quantities given conditions: ``(z [B, Z], cond [B, C]) -> y [B, Y]``."""

    def __init__(self, n_cond: int, n_out: int, cfg: NetConfig):
        super().__init__()
        self.noise_dim = cfg.noise_dim
        self.net = mlp(cfg.noise_dim + n_cond, n_out, cfg.width, cfg.depth, cfg.activation)

    def forward(
        self, z: torch.Tensor, cond: torch.Tensor, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """``dtype``: of the hidden-to-hidden products (:mod:`galray.models.precision`)."""
        return mlp_forward(self.net, torch.cat([z, cond], dim=1), dtype)  # [B, Y]


class Critic(nn.Module):
    """Wasserstein critic on (observation, condition) pairs: ``-> score [B]``.

    No normalisation layers: the gradient penalty is defined per sample, which batch norm breaks.
    """

    def __init__(self, n_cond: int, n_out: int, cfg: NetConfig):
        super().__init__()
        self.net = mlp(n_out + n_cond, 1, cfg.width, cfg.depth, cfg.activation)

    def forward(self, y: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([y, cond], dim=1)).squeeze(1)  # [B]


class DetectionModel(nn.Module):
    """Logit of p(detected | truth, conditions): ``cond [B, C] -> logit [B]``."""

    def __init__(self, n_cond: int, cfg: NetConfig):
        super().__init__()
        self.net = mlp(n_cond, 1, cfg.detection_width, cfg.detection_depth, cfg.activation)

    def forward(self, cond: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``dtype``: of the hidden-to-hidden products (:mod:`galray.models.precision`)."""
        return mlp_forward(self.net, cond, dtype).squeeze(1)  # [B]


def gradient_penalty(
    critic: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    cond: torch.Tensor,
    eps: torch.Tensor,
    one_sided: bool = True,
) -> torch.Tensor:
    """Gradient penalty of Gulrajani et al. (2017) at ``ŷ = ε real + (1-ε) fake``.

    Two-sided: ``E[(||∇_y D(ŷ, c)|| - 1)²]``; one-sided (their appendix; the default here):
    ``E[max(0, ||∇_y D|| - 1)²]``.  Why one-sided: the two-sided form also penalises *small*
    gradients, so a freshly initialised critic whose slope points the wrong way is pushed to
    |slope| = 1 before it learns the sign, and then sits behind a penalty barrier at slope 0 with
    a negative Wasserstein estimate (seen on simple 1-D problems in about 1 of 3 seeds).

    ``eps`` [B, 1] is passed in (not drawn here) so the penalty is a pure function of its inputs.
    """
    interp = (eps * real + (1.0 - eps) * fake).requires_grad_(True)
    score = critic(interp, cond)
    (grad,) = torch.autograd.grad(score.sum(), interp, create_graph=True)
    excess = grad.norm(2, dim=1) - 1.0
    if one_sided:
        excess = torch.relu(excess)
    return (excess**2).mean()
