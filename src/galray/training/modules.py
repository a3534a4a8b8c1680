"""Parts of a training state that every product's networks share (plain torch, no Ray).

:class:`EMA` averages a generator's weights; :class:`LearningRates` scales every optimiser's
base rate by the schedule :func:`lr_scale`; :class:`MetricSums` accumulates losses on the device
and is read once per epoch; :class:`GradientSync` averages gradients across ranks.  All device
updates are free of host synchronisation, so they can be captured in a CUDA graph.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn


class EMA:
    """An exponential moving average of ``module``'s parameters (a frozen copy of it).

    ``ema += w (θ - ema)`` with ``w = 1 - min(decay, (1 + n) / (10 + n))`` after ``n`` updates,
    so short runs are not dominated by the initial weights.  ``decay`` 0 disables it: then
    :attr:`exported` is the trained module itself.  The update count lives on the device.
    """

    def __init__(self, module: nn.Module, decay: float):
        self.module = module
        self.decay = float(decay)
        self.average = copy.deepcopy(module).requires_grad_(False)
        self.count = torch.zeros((), device=next(module.parameters()).device)

    @property
    def exported(self) -> nn.Module:
        """What validation and the saved model use: the average if enabled."""
        return self.average if self.decay > 0 else self.module

    @torch.no_grad()
    def update(self) -> None:
        if self.decay <= 0:
            return
        self.count += 1
        w = 1.0 - torch.clamp((1.0 + self.count) / (10.0 + self.count), max=self.decay)
        ema = list(self.average.parameters())
        torch._foreach_mul_(ema, 1.0 - w)
        torch._foreach_add_(ema, torch._foreach_mul(list(self.module.parameters()), w))

    def load_count(self, count) -> None:
        """Restore the update count of a checkpoint (a tensor, or an int in older ones)."""
        self.count.copy_(torch.as_tensor(count, dtype=self.count.dtype))


class LearningRates:
    """Every optimiser's base learning rates, scaled together by :meth:`set_scale`."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]):
        self.optimizers = list(optimizers)
        self.base = [[float(g["lr"]) for g in o.param_groups] for o in self.optimizers]

    def set_scale(self, scale: float) -> None:
        """Multiply each base rate by ``scale`` (in place for a tensor rate, so a captured CUDA
        graph, which reads it, sees the change)."""
        for opt, bases in zip(self.optimizers, self.base):
            for group, base in zip(opt.param_groups, bases):
                if isinstance(group["lr"], torch.Tensor):
                    group["lr"].fill_(base * scale)
                else:
                    group["lr"] = base * scale


def lr_scale(progress: float, warmdown: float) -> float:
    """Learning-rate multiplier at ``progress`` in [0, 1] of training: 1, then a linear decay to
    0 over the last ``warmdown`` fraction."""
    if warmdown <= 0 or progress <= 1.0 - warmdown:
        return 1.0
    return max(0.0, (1.0 - progress) / warmdown)


class MetricSums:
    """Running sums of named scalar metrics on the device, plus a step count."""

    def __init__(self, names: Sequence[str], device: torch.device):
        self.names = tuple(names)
        self.sums = torch.zeros(len(self.names) + 1, device=device)

    @torch.no_grad()
    def add(self, values: Sequence[torch.Tensor]) -> None:
        """Add one step's values (in the order of :attr:`names`)."""
        one = torch.ones((), device=self.sums.device)
        self.sums += torch.stack([*(v.detach().float() for v in values), one])

    def pop(self) -> dict[str, float]:
        """Mean of each metric since the last call (one host sync)."""
        sums = self.sums.detach().cpu().tolist()
        self.sums.zero_()
        count = max(sums[-1], 1.0)
        return {name: s / count for name, s in zip(self.names, sums[:-1])}


class GradientSync:
    """Average gradients across ranks with one flat ``all_reduce`` (a no-op on one rank).

    DDP's reducer is not used: its hooks assume one backward per forward, which a gradient
    penalty's double backward breaks, and an explicit collective can be captured in a CUDA graph.
    """

    def __init__(self, world_size: int):
        self.world_size = world_size

    def __call__(self, module: nn.Module) -> None:
        if self.world_size == 1:
            return
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat.div_(self.world_size)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def optimizer_step(
    loss: torch.Tensor,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    sync: GradientSync,
    clip_norm: float | None = None,
) -> None:
    """One update: backward ``loss``, average ``module``'s gradients across ranks, clip their
    norm to ``clip_norm`` (on the device: no host synchronisation), step ``optimizer``."""
    optimizer.zero_grad(set_to_none=False)
    loss.backward()
    sync(module)
    if clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(module.parameters(), clip_norm, foreach=True)
    optimizer.step()


class TrainingState(ABC):
    """Base of a product's networks and optimisers: named parts saved and restored together,
    an :class:`EMA` of the generator, learning rates and metric sums.

    A subclass calls ``__init__`` with its generator, EMA decay, optimisers and metric names,
    and implements :meth:`parts` (name -> module or optimiser, ``None`` for an absent one)."""

    def __init__(
        self,
        generator: nn.Module,
        ema_decay: float,
        optimizers: Sequence[torch.optim.Optimizer],
        metric_names: Sequence[str],
    ):
        self.ema = EMA(generator, ema_decay)
        self.rates = LearningRates(optimizers)
        self.metrics = MetricSums(metric_names, next(generator.parameters()).device)

    @abstractmethod
    def parts(self) -> dict[str, nn.Module | torch.optim.Optimizer | None]:
        """Name -> module or optimiser saved and restored (``None`` for an absent one)."""

    @property
    def ema_generator(self) -> nn.Module:
        return self.ema.average

    @property
    def exported_generator(self) -> nn.Module:
        """What validation and the saved model use: the EMA generator if enabled."""
        return self.ema.exported

    def update_ema(self) -> None:
        self.ema.update()

    def set_lr_scale(self, scale: float) -> None:
        self.rates.set_scale(scale)

    def pop_metrics(self) -> dict[str, float]:
        return self.metrics.pop()

    def _present(self) -> dict[str, nn.Module | torch.optim.Optimizer]:
        parts = self.parts() | {"ema_generator": self.ema.average}
        return {k: v for k, v in parts.items() if v is not None}

    def state_dict(self) -> dict:
        return {k: v.state_dict() for k, v in self._present().items()} | {
            "ema_count": self.ema.count
        }

    def load_state_dict(self, state: dict) -> None:
        for name, part in self._present().items():
            part.load_state_dict(state[name])
        self.ema.load_count(state["ema_count"])
