"""One update of the estimator as a plain torch function, and its training state.

A batch: ``batch_size`` stamps drawn (with the epoch's generator) from the worker's shard held on
its device.  With noiseless images (``fresh_noise``), each draw gets new white noise of the
stamp's sigma, so no two batches repeat a noise realisation.  The loss is the beta-NLL of the
standardised targets (:func:`galray.models.estimator.gaussian_nll`); gradients are averaged
across ranks by one flat ``all_reduce`` (:class:`galray.training.modules.GradientSync`), so one
CPU worker and N GPUs run the same code.  Metrics accumulate on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from galray.estimator.config import EstimatorOptimConfig
from galray.models.estimator import Estimator, EstimatorNetConfig, Targets, gaussian_nll
from galray.training.modules import GradientSync, TrainingState, optimizer_step

METRIC_NAMES = ("loss", "mse")


@dataclass
class EstimatorBatchData:
    """A worker's stamps on its device: images ``[R, N, N]`` (``clean``: noiseless ones, or
    None), noise sigma ``[R]`` and the raw parameters ``[R, P]``."""

    stamp: torch.Tensor
    psf: torch.Tensor
    sigma: torch.Tensor
    values: torch.Tensor
    clean: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.stamp.shape[0]

    def rows(self, index: torch.Tensor, fresh_noise: bool) -> tuple[torch.Tensor, ...]:
        """``(stamp, psf, sigma, values)`` of rows ``index``; with ``fresh_noise`` the stamps
        are the noiseless images plus new noise (torch's global generator)."""
        sigma = self.sigma[index]
        if fresh_noise and self.clean is not None:
            clean = self.clean[index]
            stamp = clean + torch.randn_like(clean) * sigma[:, None, None]
        else:
            stamp = self.stamp[index]
        return stamp, self.psf[index], sigma, self.values[index]


class EstimatorModules(TrainingState):
    """The CNN, its optimiser and its EMA."""

    def __init__(self, net: Estimator, opt: torch.optim.Optimizer, ema_decay: float):
        self.net, self.opt = net, opt
        super().__init__(net, ema_decay, [opt], METRIC_NAMES)

    def parts(self) -> dict:
        return {"net": self.net, "opt": self.opt}


def build_estimator_modules(
    net: EstimatorNetConfig, opt: EstimatorOptimConfig, device: torch.device, seed: int
) -> EstimatorModules:
    """The CNN and its optimiser, initialised identically on every rank for a given seed."""
    torch.manual_seed(seed)
    model = Estimator(net).to(device)
    adam = torch.optim.AdamW(
        model.parameters(),
        lr=opt.lr,
        weight_decay=opt.weight_decay,
        fused=device.type == "cuda",
    )
    return EstimatorModules(model, adam, opt.ema_decay)


def batch_loss(net: Estimator, targets: Targets, batch: tuple[torch.Tensor, ...], beta: float):
    """``(loss, mse)`` of a batch ``(stamp, psf, sigma, values)``: the mean beta-NLL and the
    mean squared error of the standardised estimates."""
    stamp, psf, sigma, values = batch
    mu, log_var, log_scale = net(stamp, psf, sigma)
    target = targets.standardise(values, log_scale)
    loss = gaussian_nll(mu, log_var, target, beta).mean()
    return loss, ((mu - target) ** 2).mean()


def train_batch(
    m: EstimatorModules,
    data: EstimatorBatchData,
    targets: Targets,
    opt: EstimatorOptimConfig,
    fresh_noise: bool,
    sync: GradientSync,
    generator: torch.Generator,
) -> None:
    """One optimiser step on ``opt.batch_size`` random stamps of ``data``; no host sync."""
    index = torch.randint(0, len(data), (opt.batch_size,), generator=generator)
    batch = data.rows(index.to(data.stamp.device), fresh_noise)
    loss, mse = batch_loss(m.net, targets, batch, opt.beta_nll)
    optimizer_step(loss, m.net, m.opt, sync, opt.clip_norm)
    m.update_ema()
    m.metrics.add([loss, mse])
