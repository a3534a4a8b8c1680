"""One SGAN update as a plain torch function, plus the crop sampler and the optimiser state.

A batch: ``batch_size`` random crops of the (scaled) training image, all of one size ``S``
(64/128/256 px in the paper), and as many noise arrays of ``S / 16`` cells.  The critic step
and the generator step each run the packed critic once, on real and fake samples together,
under the relativistic average loss (:func:`galray.models.sgan.relativistic_average_losses`).
Metrics accumulate into a device tensor read once per epoch (no host sync per batch).

Precision and layout: on a GPU the forward passes run under bf16 autocast and the networks and
batches are ``channels_last`` (both configurable); the generator's sigmoid, the losses and the
optimiser state stay fp32.  Gradients are averaged across ranks by one flat ``all_reduce`` per
network and update (:class:`galray.training.modules.GradientSync`: DDP's arithmetic), so the
same code runs on one CPU worker and on N GPUs.
"""

from __future__ import annotations

import contextlib

import torch

from galray.config import require
from galray.deepfield.config import DeepFieldOptimConfig
from galray.models.sgan import (
    Critic,
    Generator,
    SGANNetConfig,
    pack,
    relativistic_average_losses,
)
from galray.training.modules import GradientSync, TrainingState, optimizer_step

METRIC_NAMES = ("critic_loss", "generator_loss", "logit_gap")


class SGANModules(TrainingState):
    """The SGAN's generator, packed critic, their optimisers, the generator's EMA, and how the
    forward passes run (``amp_dtype`` autocast, ``channels_last`` layout)."""

    def __init__(
        self,
        generator: Generator,
        critic: Critic,
        opt_generator: torch.optim.Optimizer,
        opt_critic: torch.optim.Optimizer,
        ema_decay: float = 0.0,
        amp_dtype: torch.dtype | None = None,
        channels_last: bool = False,
    ):
        self.generator, self.critic = generator, critic
        self.opt_generator, self.opt_critic = opt_generator, opt_critic
        self.amp_dtype, self.channels_last = amp_dtype, channels_last
        super().__init__(generator, ema_decay, [opt_generator, opt_critic], METRIC_NAMES)

    @property
    def device(self) -> torch.device:
        return self.metrics.sums.device

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def parts(self) -> dict:
        return {
            "generator": self.generator,
            "critic": self.critic,
            "opt_generator": self.opt_generator,
            "opt_critic": self.opt_critic,
        }


def build_sgan_modules(
    net: SGANNetConfig,
    opt: DeepFieldOptimConfig,
    device: torch.device,
    seed: int,
    *,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> SGANModules:
    """Networks and optimisers, initialised identically on every rank for a given seed."""
    require(opt.batch_size % net.pack == 0, "optim.batch_size", f"must be a multiple of "
            f"net.pack = {net.pack}, got {opt.batch_size}")  # fmt: skip
    smallest = 2 ** len(net.critic_channels)
    require(
        min(opt.crop_sizes) >= smallest,
        "optim.crop_sizes",
        f"the critic's {len(net.critic_channels)} stride-2 layers need crops >= {smallest} px",
    )
    torch.manual_seed(seed)
    generator = Generator(net).to(device)
    critic = Critic(net).to(device)
    if channels_last:
        generator.to(memory_format=torch.channels_last)
        critic.to(memory_format=torch.channels_last)
    fused = device.type == "cuda"
    return SGANModules(
        generator,
        critic,
        torch.optim.Adam(generator.parameters(), lr=opt.lr_generator, betas=opt.betas, fused=fused),
        torch.optim.Adam(critic.parameters(), lr=opt.lr_critic, betas=opt.betas, fused=fused),
        ema_decay=opt.ema_decay,
        amp_dtype=amp_dtype,
        channels_last=channels_last,
    )


def random_crops(
    image: torch.Tensor,  # [C, H, W] on the device
    n: int,
    size: int,
    generator: torch.Generator,
    augment: bool = True,
) -> torch.Tensor:
    """``n`` random ``size x size`` crops ``[n, C, size, size]``, gathered on ``image``'s device.

    With ``augment`` each crop gets a random element of the square's symmetry group (flips of
    either axis and a transpose), applied through the gather indices at no extra cost.
    """
    c, h, w = image.shape
    if size > h or size > w:
        raise ValueError(f"crop of {size} px does not fit a {h}x{w} image")
    y0 = torch.randint(0, h - size + 1, (n, 1), generator=generator)
    x0 = torch.randint(0, w - size + 1, (n, 1), generator=generator)
    step = torch.arange(size)
    if augment:
        flips = torch.randint(0, 2, (3, n, 1), generator=generator).bool()
        rows = torch.where(flips[0], size - 1 - step, step) + y0  # [n, size]
        cols = torch.where(flips[1], size - 1 - step, step) + x0
        transpose = flips[2][:, :, None]  # [n, 1, 1]
        ys = torch.where(transpose, rows[:, None, :], rows[:, :, None])  # [n, size, size]
        xs = torch.where(transpose, cols[:, :, None], cols[:, None, :])
    else:
        ys = (step + y0)[:, :, None].expand(n, size, size)
        xs = (step + x0)[:, None, :].expand(n, size, size)
    flat = (ys * w + xs).to(image.device)  # [n, size, size]
    crops = image.reshape(c, h * w)[:, flat]  # [C, n, size, size]
    return crops.permute(1, 0, 2, 3).contiguous()


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def train_batch(m: SGANModules, real: torch.Tensor, opt: DeepFieldOptimConfig, sync: GradientSync):
    """One batch: ``critic_steps`` critic updates, one generator update, EMA.  ``real`` is
    ``[B, C, S, S]`` of scaled crops.  No host synchronisation."""
    gen, critic, p = m.generator, m.critic, m.critic.pack
    b, _, size, _ = real.shape
    cells = size // gen.upsampling
    real = _layout(real, m.channels_last)
    real_packed = pack(real, p)
    half = b // p

    def noise():
        z = torch.randn(b, gen.noise_channels, cells, cells, device=real.device)
        return _layout(z, m.channels_last)

    for _ in range(opt.critic_steps):
        with m.autocast():
            with torch.no_grad():
                fake = gen(noise())
            logits = critic(torch.cat([real_packed, pack(fake.to(real.dtype), p)]))
        d_loss, _ = relativistic_average_losses(logits[:half], logits[half:])
        optimizer_step(d_loss, critic, m.opt_critic, sync)

    critic.requires_grad_(False)  # the generator step needs gradients through, not of, the critic
    with m.autocast():
        fake = gen(noise())
        logits = critic(torch.cat([real_packed, pack(fake.to(real.dtype), p)]))
    _, g_loss = relativistic_average_losses(logits[:half], logits[half:])
    optimizer_step(g_loss, gen, m.opt_generator, sync)
    critic.requires_grad_(True)
    m.update_ema()

    with torch.no_grad():
        gap = logits[:half].mean() - logits[half:].mean()
    m.metrics.add([d_loss, g_loss, gap])


def batch_sizes(opt: DeepFieldOptimConfig, generator: torch.Generator) -> list[int]:
    """The crop size of each batch of an epoch (the same on every rank for the same generator)."""
    choice = torch.randint(0, len(opt.crop_sizes), (opt.batches_per_epoch,), generator=generator)
    return [opt.crop_sizes[int(i)] for i in choice]
