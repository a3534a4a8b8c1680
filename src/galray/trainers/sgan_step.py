"""One SGAN update as a plain torch function, plus the crop sampler and the optimiser state.

A batch: ``batch_size`` random crops of the (scaled) training image, all of one size ``S``
(64/128/256 px in the paper), and as many noise arrays of ``S / 16`` cells.  The critic step
and the generator step each run the packed critic once, on real and fake samples together,
under the relativistic average loss (:func:`galray.models.sgan.relativistic_average_losses`).
Metrics accumulate into a device tensor read once per epoch (no host sync per batch).

Precision and layout: on a GPU the forward passes run under bf16 autocast and the networks and
batches are ``channels_last`` (both configurable); the generator's sigmoid, the losses and the
optimiser state stay fp32.  Gradients are averaged across ranks by one flat ``all_reduce`` per
network and update (:class:`galray.trainers.emulator_step.GradientSync`: DDP's arithmetic), so the
same code runs on one CPU worker and on N GPUs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from galray.config import require
from galray.models.sgan import (
    Critic,
    Generator,
    SGANNetConfig,
    pack,
    relativistic_average_losses,
)
from galray.trainers.emulator_step import GradientSync

METRIC_NAMES = ("critic_loss", "generator_loss", "logit_gap")


@dataclass
class SGANOptimConfig:
    """SGAN optimisation (Smith & Geach 2019: Adam at 2e-4, 30 batches of 128 crops of 64, 128 or
    256 pixels per epoch; betas are DCGAN's, the paper does not state them).

    batch_size: crops per batch per worker (a multiple of the critic's ``pack``).
    crop_sizes: crop side choices in pixels (multiples of 16); one is drawn per batch.
    batches_per_epoch: batches per epoch.  critic_steps: critic updates per generator update.
    augment: random flips and transposes of each crop (a deep field has no preferred axis).
    ema_decay: the exported generator is an exponential moving average of the trained one
    (0 disables it), a continuous version of the paper's self-ensemble of snapshots.
    warmdown: final fraction of training over which the learning rates decay linearly to 0.
    """

    batch_size: int = 128
    crop_sizes: tuple[int, ...] = (64, 128, 256)
    batches_per_epoch: int = 30
    critic_steps: int = 1
    lr_generator: float = 2e-4
    lr_critic: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    augment: bool = True
    ema_decay: float = 0.999
    warmdown: float = 0.0

    def __post_init__(self) -> None:
        require(self.batch_size >= 2, "batch_size", f"must be >= 2, got {self.batch_size}")
        self.crop_sizes = tuple(int(s) for s in self.crop_sizes)
        require(
            len(self.crop_sizes) >= 1 and all(s >= 16 and s % 16 == 0 for s in self.crop_sizes),
            "crop_sizes",
            f"must be multiples of 16 pixels, got {self.crop_sizes}",
        )
        require(self.batches_per_epoch >= 1, "batches_per_epoch", "must be >= 1")
        require(self.critic_steps >= 1, "critic_steps", f"must be >= 1, got {self.critic_steps}")
        for name in ("lr_generator", "lr_critic"):
            value = getattr(self, name)
            require(0 < value < 1, name, f"must be in (0, 1), got {value}")
        betas = tuple(self.betas)
        require(
            len(betas) == 2 and all(0 <= b < 1 for b in betas),
            "betas",
            f"must be two numbers in [0, 1), got {self.betas}",
        )
        self.betas = (float(betas[0]), float(betas[1]))
        require(0 <= self.ema_decay < 1, "ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        require(0 <= self.warmdown <= 1, "warmdown", f"must be in [0, 1], got {self.warmdown}")


@dataclass
class SGANModules:
    generator: Generator
    critic: Critic
    opt_generator: torch.optim.Optimizer
    opt_critic: torch.optim.Optimizer
    ema_decay: float = 0.0
    amp_dtype: torch.dtype | None = None  # autocast dtype (None: full precision)
    channels_last: bool = False
    sums: torch.Tensor = field(init=False)  # running sums of METRIC_NAMES, plus a batch count
    ema_generator: Generator = field(init=False)

    def __post_init__(self) -> None:
        device = next(self.generator.parameters()).device
        self.sums = torch.zeros(len(METRIC_NAMES) + 1, device=device)
        self.ema_generator = Generator(self.generator.cfg).to(device)
        self.ema_generator.load_state_dict(self.generator.state_dict())
        self.ema_generator.requires_grad_(False)
        if self.channels_last:
            self.ema_generator.to(memory_format=torch.channels_last)
        self.ema_count = 0
        self.base_lr = [
            [float(g["lr"]) for g in o.param_groups] for o in (self.opt_generator, self.opt_critic)
        ]

    @property
    def device(self) -> torch.device:
        return self.sums.device

    @property
    def exported_generator(self) -> Generator:
        """What samples and the saved model use: the EMA generator if enabled."""
        return self.ema_generator if self.ema_decay > 0 else self.generator

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    @torch.no_grad()
    def update_ema(self) -> None:
        """``ema <- ema + w (θ - ema)`` with ``w = 1 - min(decay, (1 + n) / (10 + n))`` after
        ``n`` updates: early averages are not pinned to the initial weights."""
        if self.ema_decay <= 0:
            return
        self.ema_count += 1
        n = self.ema_count
        w = 1.0 - min(self.ema_decay, (1.0 + n) / (10.0 + n))
        ema = list(self.ema_generator.parameters())
        torch._foreach_lerp_(ema, list(self.generator.parameters()), w)

    def set_lr_scale(self, scale: float) -> None:
        for opt, bases in zip((self.opt_generator, self.opt_critic), self.base_lr):
            for group, base in zip(opt.param_groups, bases):
                group["lr"] = base * scale

    def state_dict(self) -> dict:
        return {
            "generator": self.generator.state_dict(),
            "critic": self.critic.state_dict(),
            "opt_generator": self.opt_generator.state_dict(),
            "opt_critic": self.opt_critic.state_dict(),
            "ema_generator": self.ema_generator.state_dict(),
            "ema_count": self.ema_count,
        }

    def load_state_dict(self, state: dict) -> None:
        self.generator.load_state_dict(state["generator"])
        self.critic.load_state_dict(state["critic"])
        self.opt_generator.load_state_dict(state["opt_generator"])
        self.opt_critic.load_state_dict(state["opt_critic"])
        self.ema_generator.load_state_dict(state["ema_generator"])
        self.ema_count = int(state["ema_count"])

    def pop_metrics(self) -> dict[str, float]:
        """Mean of each metric since the last call (one host sync)."""
        sums = self.sums.detach().cpu().tolist()
        self.sums.zero_()
        count = max(sums[-1], 1.0)
        return {name: s / count for name, s in zip(METRIC_NAMES, sums[:-1])}


def build_sgan_modules(
    net: SGANNetConfig,
    opt: SGANOptimConfig,
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


def train_batch(m: SGANModules, real: torch.Tensor, opt: SGANOptimConfig, sync: GradientSync):
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
        m.opt_critic.zero_grad(set_to_none=False)
        d_loss.backward()
        sync(critic)
        m.opt_critic.step()

    critic.requires_grad_(False)  # the generator step needs gradients through, not of, the critic
    with m.autocast():
        fake = gen(noise())
        logits = critic(torch.cat([real_packed, pack(fake.to(real.dtype), p)]))
    _, g_loss = relativistic_average_losses(logits[:half], logits[half:])
    m.opt_generator.zero_grad(set_to_none=False)
    g_loss.backward()
    critic.requires_grad_(True)
    sync(gen)
    m.opt_generator.step()
    m.update_ema()

    with torch.no_grad():
        gap = logits[:half].mean() - logits[half:].mean()
        one = torch.ones((), device=real.device)
        m.sums += torch.stack([d_loss, g_loss, gap, one]).detach().float()


def batch_sizes(opt: SGANOptimConfig, generator: torch.Generator) -> list[int]:
    """The crop size of each batch of an epoch (the same on every rank for the same generator)."""
    choice = torch.randint(0, len(opt.crop_sizes), (opt.batches_per_epoch,), generator=generator)
    return [opt.crop_sizes[int(i)] for i in choice]
