"""The emulator's training step as plain torch: callable without Ray, benchmarked alone.

One *group* is, for the cWGAN-GP, ``critic_steps`` WGAN-GP critic updates (each on its own batch
of detected rows), one generator update and one detection-model update; for the conditional
flow, one maximum-likelihood update of the flow and one detection-model update.  Everything stays on the device: batches are
gathered from resident tensors by index, noise is drawn on the device, metrics accumulate into
device tensors and are read once per epoch.  The group therefore has no host synchronisation and
can be captured whole as a CUDA graph (:class:`GroupRunner`), which removes the kernel-launch
overhead that bounds small-batch GAN steps on a GPU.

Data parallelism: after every backward the gradients are averaged across ranks with one
``all_reduce`` of a flat buffer (:class:`~galray.training.modules.GradientSync`) -- the
arithmetic of DDP, in a form the gradient penalty's double backward and a CUDA graph allow.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from galray.emulator.config import EmulatorOptimConfig
from galray.models.emulator import (
    ConditionalGenerator,
    Critic,
    DetectionModel,
    NetConfig,
    gradient_penalty,
)
from galray.models.flow import ConditionalFlow, FlowConfig
from galray.training.modules import GradientSync, TrainingState, optimizer_step

GAN_METRICS = ("critic_loss", "wasserstein", "gradient_penalty", "generator_loss", "detection_bce")
FLOW_METRICS = ("nll", "detection_bce")
FLOW_BETAS = (0.9, 0.999)  # Adam's defaults: a likelihood needs no GAN-style low momentum
FLOW_CLIP_NORM = 10.0  # rare outliers (blends) give huge likelihood gradients early on


@dataclass
class DeviceData:
    """Training rows resident on the device.

    cond_det [Nd, C] and target [Nd, Y]: the detected rows (what the GAN learns);
    cond_all [N, C] and label [N]: every row (what the detection model learns).
    """

    cond_det: torch.Tensor
    target: torch.Tensor
    cond_all: torch.Tensor
    label: torch.Tensor

    @property
    def n_detected(self) -> int:
        return self.cond_det.shape[0]

    @property
    def n_rows(self) -> int:
        return self.cond_all.shape[0]


class EmulatorModules(TrainingState):
    """Networks and optimisers of one emulator.  ``critic``/``opt_critic`` are ``None`` for the
    flow, whose ``generator`` is a :class:`~galray.models.flow.ConditionalFlow`."""

    def __init__(
        self,
        generator: ConditionalGenerator | ConditionalFlow,
        critic: Critic | None,
        detection: DetectionModel,
        opt_generator: torch.optim.Optimizer,
        opt_critic: torch.optim.Optimizer | None,
        opt_detection: torch.optim.Optimizer,
        ema_decay: float = 0.0,
    ):
        self.generator, self.critic, self.detection = generator, critic, detection
        self.opt_generator, self.opt_critic = opt_generator, opt_critic
        self.opt_detection = opt_detection
        names = FLOW_METRICS if critic is None else GAN_METRICS
        super().__init__(generator, ema_decay, self.optimizers, names)

    @property
    def is_flow(self) -> bool:
        return self.critic is None

    @property
    def metric_names(self) -> tuple[str, ...]:
        return self.metrics.names

    @property
    def networks(self) -> list[nn.Module]:
        return [n for n in (self.generator, self.critic, self.detection) if n is not None]

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        opts = (self.opt_generator, self.opt_critic, self.opt_detection)
        return [o for o in opts if o is not None]

    def parts(self) -> dict[str, nn.Module | torch.optim.Optimizer | None]:
        return {
            "generator": self.generator,
            "critic": self.critic,
            "detection": self.detection,
            "opt_generator": self.opt_generator,
            "opt_critic": self.opt_critic,
            "opt_detection": self.opt_detection,
        }


def build_modules(
    n_cond: int,
    n_target: int,
    net: NetConfig,
    opt: EmulatorOptimConfig,
    device: torch.device,
    seed: int,
    flow: FlowConfig | None = None,
) -> EmulatorModules:
    """Networks and optimisers, initialised identically on every rank for a given seed.
    flow: build the conditional flow of that shape instead of the cWGAN-GP (``net`` then only
    shapes the detection model)."""
    torch.manual_seed(seed)
    if flow is not None:
        generator = ConditionalFlow(n_cond, n_target, flow).to(device)
        critic = None
    else:
        generator = ConditionalGenerator(n_cond, n_target, net).to(device)
        critic = Critic(n_cond, n_target, net).to(device)
    detection = DetectionModel(n_cond, net).to(device)
    # capturable Adam keeps its step count on the device, as CUDA-graph replay requires
    capturable = device.type == "cuda"

    def adam(params, lr, betas):
        # a tensor learning rate can change between replays of a captured graph
        lr = torch.tensor(lr, device=device) if capturable else lr
        return torch.optim.Adam(params, lr=lr, betas=betas, capturable=capturable, foreach=True)

    return EmulatorModules(
        generator,
        critic,
        detection,
        adam(generator.parameters(), opt.lr_generator, FLOW_BETAS if flow else opt.betas),
        adam(critic.parameters(), opt.lr_critic, opt.betas) if critic is not None else None,
        adam(detection.parameters(), opt.lr_detection, (0.9, 0.999)),
        ema_decay=opt.ema_decay,
    )


def train_group(
    m: EmulatorModules,
    data: DeviceData,
    idx_critic: torch.Tensor,  # [steps, B] rows of the detected set
    idx_det: torch.Tensor,  # [Bd] rows of the full set
    opt: EmulatorOptimConfig,
    sync: GradientSync,
) -> None:
    """One group of updates; accumulates metrics into ``m.metrics``.  No host synchronisation.
    The flow uses the last row of ``idx_critic`` (it is drawn with one step per group)."""
    losses = (
        _flow_update(m, data, idx_critic[-1], sync)
        if m.is_flow
        else _gan_updates(m, data, idx_critic, opt, sync)
    )
    logits = m.detection(data.cond_all[idx_det])
    bce = F.binary_cross_entropy_with_logits(logits, data.label[idx_det])
    optimizer_step(bce, m.detection, m.opt_detection, sync)

    m.metrics.add([*losses, bce])


def _gan_updates(
    m: EmulatorModules,
    data: DeviceData,
    idx: torch.Tensor,
    opt: EmulatorOptimConfig,
    sync: GradientSync,
) -> list[torch.Tensor]:
    """``critic_steps`` WGAN-GP critic updates, then one generator update."""
    gen, critic = m.generator, m.critic
    steps, batch = idx.shape
    noise_dim = gen.noise_dim
    device = data.cond_det.device
    for k in range(steps):
        cond = data.cond_det[idx[k]]  # [B, C]
        real = data.target[idx[k]]  # [B, Y]
        with torch.no_grad():
            fake = gen(torch.randn(batch, noise_dim, device=device), cond)
        scores = critic(torch.cat([real, fake]), torch.cat([cond, cond]))
        wasserstein = scores[:batch].mean() - scores[batch:].mean()
        eps = torch.rand(batch, 1, device=device)
        gp = gradient_penalty(critic, real, fake, cond, eps, opt.one_sided_penalty)
        loss = -wasserstein + opt.gp_weight * gp
        optimizer_step(loss, critic, m.opt_critic, sync)

    # the generator's loss is the critic's score alone: nothing that shrinks its variance
    cond = data.cond_det[idx[-1]]
    g_loss = -critic(gen(torch.randn(batch, noise_dim, device=device), cond), cond).mean()
    optimizer_step(g_loss, gen, m.opt_generator, sync)
    m.update_ema()
    return [loss, wasserstein, gp, g_loss]


def _flow_update(
    m: EmulatorModules, data: DeviceData, idx: torch.Tensor, sync: GradientSync
) -> list[torch.Tensor]:
    """One maximum-likelihood step of the flow on the detected rows ``idx`` [B]."""
    nll = -m.generator.log_prob(data.target[idx], data.cond_det[idx]).mean()
    optimizer_step(nll, m.generator, m.opt_generator, sync, clip_norm=FLOW_CLIP_NORM)
    m.update_ema()
    return [nll]


class GroupRunner:
    """Runs :func:`train_group`, eagerly or replayed from a captured CUDA graph.

    With ``cuda_graph=True`` (CUDA only) the first call warms up on a side stream, then captures
    one group with static index buffers; later calls copy the new indices in and replay.
    """

    def __init__(
        self,
        m: EmulatorModules,
        data: DeviceData,
        opt: EmulatorOptimConfig,
        sync: GradientSync,
        cuda_graph: bool = False,
    ):
        self.m, self.data, self.opt, self.sync = m, data, opt, sync
        self.cuda_graph = cuda_graph and data.cond_det.is_cuda
        self.graph: torch.cuda.CUDAGraph | None = None

    def __call__(self, idx_critic: torch.Tensor, idx_det: torch.Tensor) -> None:
        if not self.cuda_graph:
            train_group(self.m, self.data, idx_critic, idx_det, self.opt, self.sync)
            return
        if self.graph is None:
            self._capture(idx_critic, idx_det)
        self.static_critic.copy_(idx_critic)
        self.static_det.copy_(idx_det)
        self.graph.replay()

    def _capture(self, idx_critic: torch.Tensor, idx_det: torch.Tensor) -> None:
        self.static_critic = idx_critic.clone()
        self.static_det = idx_det.clone()
        args = (self.m, self.data, self.static_critic, self.static_det, self.opt, self.sync)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # allocate grads and optimizer state outside the graph
                train_group(*args)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            train_group(*args)


def steps_per_group(opt: EmulatorOptimConfig, flow: bool) -> int:
    """Batches of detected rows one group consumes: ``critic_steps`` for the GAN, 1 for a flow."""
    return 1 if flow else opt.critic_steps


def epoch_indices(
    data: DeviceData,
    opt: EmulatorOptimConfig,
    generator: torch.Generator,
    groups: int | None = None,
    steps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A shuffled epoch: ``[groups, steps, B]`` detected-row indices and ``[groups, Bd]``
    all-row indices (drawn with replacement).  ``steps`` defaults to ``opt.critic_steps``
    (see :func:`steps_per_group`).

    ``groups`` defaults to as many as the local rows allow; with several ranks pass the minimum
    over ranks, since every rank must run the same number of collectives."""
    device = data.cond_det.device
    steps = opt.critic_steps if steps is None else steps
    per_group = steps * opt.batch_size
    groups = data.n_detected // per_group if groups is None else groups
    if groups == 0:
        raise ValueError(
            f"{data.n_detected} detected rows on this worker: fewer than one group of "
            f"{steps} x batch_size = {per_group}; lower optim.batch_size"
        )
    perm = torch.randperm(data.n_detected, generator=generator, device="cpu").to(device)
    idx_critic = perm[: groups * per_group].view(groups, steps, opt.batch_size)
    idx_det = torch.randint(
        data.n_rows, (groups, opt.detection_batch_size), generator=generator, device="cpu"
    ).to(device)
    return idx_critic, idx_det


def run_epoch(
    runner: GroupRunner,
    data: DeviceData,
    opt: EmulatorOptimConfig,
    generator: torch.Generator,
    groups: int | None = None,
) -> int:
    """Train one epoch; returns the rows the critic (or the flow) consumed."""
    steps = steps_per_group(opt, runner.m.is_flow)
    idx_critic, idx_det = epoch_indices(data, opt, generator, groups, steps)
    for g in range(idx_critic.shape[0]):
        runner(idx_critic[g], idx_det[g])
    return idx_critic.numel()
