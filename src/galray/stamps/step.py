"""One update of the stamp generator as a plain torch function, and its training state.

A batch: ``batch_size`` stamps drawn (with the epoch's generator) from the worker's shard held on
its device.  The loss is the negative ELBO per pixel, ``mean(nll + beta * kl) / N²``
(:func:`galray.models.stamps.elbo_terms`).  Gradients are averaged across ranks by one flat
``all_reduce`` (:class:`galray.training.modules.GradientSync`), so one CPU worker and N GPUs run
the same code.  Metrics accumulate on the device and are read once per epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from galray.models.stamps import StampNetConfig, StampVAE, elbo_terms
from galray.stamps.config import StampOptimConfig
from galray.training.modules import GradientSync, TrainingState, optimizer_step

METRIC_NAMES = ("loss", "nll_per_pixel", "kl")


@dataclass
class StampBatchData:
    """A worker's stamps on its device: images ``[R, N, N]``, noise, flux and conditions."""

    stamp: torch.Tensor
    psf: torch.Tensor
    sigma: torch.Tensor
    flux: torch.Tensor
    cond: torch.Tensor

    def __len__(self) -> int:
        return self.stamp.shape[0]

    def rows(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t[index] for t in (self.stamp, self.psf, self.sigma, self.flux, self.cond))


class StampModules(TrainingState):
    """The VAE (with its flow prior), its optimiser and its EMA."""

    def __init__(self, vae: StampVAE, opt: torch.optim.Optimizer, ema_decay: float):
        self.vae, self.opt = vae, opt
        super().__init__(vae, ema_decay, [opt], METRIC_NAMES)

    def parts(self) -> dict:
        return {"vae": self.vae, "opt": self.opt}


def build_stamp_modules(
    net: StampNetConfig, opt: StampOptimConfig, device: torch.device, seed: int
) -> StampModules:
    """The VAE and its optimiser, initialised identically on every rank for a given seed."""
    torch.manual_seed(seed)
    vae = StampVAE(net).to(device)
    adam = torch.optim.Adam(vae.parameters(), lr=opt.lr, fused=device.type == "cuda")
    return StampModules(vae, adam, opt.ema_decay)


def negative_elbo(vae: StampVAE, batch: tuple[torch.Tensor, ...], beta: float):
    """``(loss, nll per pixel, kl)`` of a batch ``(stamp, psf, sigma, flux, cond)``."""
    stamp = batch[0]
    nll, kl = elbo_terms(vae, *batch)
    pixels = stamp.shape[-1] * stamp.shape[-2]
    loss = (nll + beta * kl).mean() / pixels
    return loss, nll.mean() / pixels, kl.mean()


def train_batch(
    m: StampModules,
    data: StampBatchData,
    opt: StampOptimConfig,
    sync: GradientSync,
    generator: torch.Generator,
) -> None:
    """One optimiser step on ``opt.batch_size`` random stamps of ``data``; no host sync."""
    index = torch.randint(0, len(data), (opt.batch_size,), generator=generator)
    batch = data.rows(index.to(data.stamp.device))
    loss, nll, kl = negative_elbo(m.vae, batch, opt.beta)
    optimizer_step(loss, m.vae, m.opt, sync, opt.clip_norm)
    m.update_ema()
    m.metrics.add([loss, nll, kl])
