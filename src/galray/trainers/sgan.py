"""Ray Train loop of the deep-field generator (Spatial GAN).

The same :func:`train_loop` runs on one CPU worker (gloo) and on N GPU workers (NCCL).  The
driver scales the training image into (0, 1) once and hands it to every worker through the
object store; each worker holds it on its device and cuts its own random crops (crop positions
depend on (seed, epoch, rank); the crop size of each batch on (seed, epoch) only, so all ranks
run the same shapes).  Every ``report_every`` epochs rank 0 reports metrics and a checkpoint
through ``ray.train.report``; a restarted worker group (``FailureConfig``) resumes from the
latest one, so finished epochs are not repeated.  Rank 0 logs per-epoch metrics and, every
``sample_every`` epochs, a sample image to the MLflow run the driver opened; the driver logs and
registers the final generator (:func:`galray.trainers.sgan_job.train_sgan`).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.stats import ks_2samp

from galray.config import from_dict, require
from galray.deepfield.scaling import IntensityConfig
from galray.models.sgan import SGANNetConfig
from galray.trainers.emulator import ScalingConfig, _all_reduce_np, _MlflowEpochLogger
from galray.trainers.emulator_step import GradientSync, lr_scale
from galray.trainers.ray_run import use_torch_threads, worker_print
from galray.trainers.sgan_step import (
    SGANModules,
    SGANOptimConfig,
    batch_sizes,
    build_sgan_modules,
    random_crops,
    train_batch,
)

CHECKPOINT_STATE = "state.pt"
CHECKPOINT_PROGRESS = "progress.json"
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class FieldDataConfig:
    """The training image.

    image: a multi-band FITS field (one HDU per band or a cube).  bands: HDU names to use, in
    order (default: all).  simulate: if ``image`` does not exist, render a synthetic deep field
    there first with these :class:`~galray.datasets.deepfield.DeepFieldConfig` fields.
    intensity: how pixel values are scaled into the generator's (0, 1) range.
    """

    image: str = "data/deepfield.fits"
    bands: list[str] | None = None
    simulate: dict | None = None
    intensity: IntensityConfig = field(default_factory=IntensityConfig)

    def __post_init__(self) -> None:
        require(bool(self.image), "data.image", "must name a FITS file")
        if self.simulate is not None:
            from galray.datasets.deepfield import DeepFieldConfig

            from_dict(DeepFieldConfig, dict(self.simulate), prefix="data.simulate.")


@dataclass
class SGANTrackingConfig:
    """MLflow: experiment, registered model name and alias (empty: don't register).
    enabled: false skips MLflow entirely (the bundle is still saved under storage_path)."""

    enabled: bool = True
    experiment: str = "galray-sgan"
    run_name: str | None = None
    registered_name: str | None = "galray-sgan"
    alias: str | None = "champion"


@dataclass
class SGANTrainConfig:
    """One SGAN training job (``galray train sgan --config FILE``).

    epochs: of ``optim.batches_per_epoch`` batches.  seed: initialisation, crops and noise.
    storage_path: where Ray Train keeps checkpoints and the final bundle.  max_failures:
    worker-group restarts allowed.  report_every: epochs between reports (metrics, checkpoint).
    sample_every: epochs between sample images logged to MLflow (0: never).  precision: ``auto``
    (bf16 autocast on GPU, fp32 on CPU), ``fp32`` or ``bf16``.  channels_last: ``auto`` (on GPU),
    true or false.  compile: ``torch.compile`` the networks (GPU).  time_budget_s: stop after the
    epoch in which this much training time has been spent.
    """

    data: FieldDataConfig = field(default_factory=FieldDataConfig)
    net: SGANNetConfig = field(default_factory=SGANNetConfig)
    optim: SGANOptimConfig = field(default_factory=SGANOptimConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    tracking: SGANTrackingConfig = field(default_factory=SGANTrackingConfig)
    epochs: int = 100
    seed: int = 0
    storage_path: str = "galray-runs"
    max_failures: int = 2
    report_every: int = 1
    sample_every: int = 10
    sample_size: int = 256
    precision: str = "auto"
    channels_last: str = "auto"
    compile: bool = False
    time_budget_s: float | None = None
    debug_fail_at_epoch: int | None = None  # fault injection for tests: kill a worker once

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        require(self.max_failures >= 0, "max_failures", f"must be >= 0, got {self.max_failures}")
        require(self.report_every >= 1, "report_every", f"must be >= 1, got {self.report_every}")
        require(self.sample_every >= 0, "sample_every", f"must be >= 0, got {self.sample_every}")
        require(
            self.sample_size >= 16 and self.sample_size % 16 == 0,
            "sample_size",
            f"must be a multiple of 16 pixels, got {self.sample_size}",
        )
        require(
            self.precision in PRECISIONS,
            "precision",
            f"must be one of {PRECISIONS}, got {self.precision!r}",
        )
        self.channels_last = str(self.channels_last).lower()
        require(
            self.channels_last in ("auto", "true", "false"),
            "channels_last",
            f"must be auto, true or false, got {self.channels_last!r}",
        )
        require(
            self.time_budget_s is None or self.time_budget_s > 0,
            "time_budget_s",
            f"must be positive, got {self.time_budget_s}",
        )
        require(
            self.optim.batch_size % self.net.pack == 0,
            "optim.batch_size",
            f"must be a multiple of net.pack = {self.net.pack}, got {self.optim.batch_size}",
        )
        smallest = 2 ** len(self.net.critic_channels)
        require(
            min(self.optim.crop_sizes) >= smallest,
            "optim.crop_sizes",
            f"the critic's {len(self.net.critic_channels)} stride-2 layers need crops of at "
            f"least {smallest} px, got {self.optim.crop_sizes}",
        )

    def amp_dtype(self, device: torch.device) -> torch.dtype | None:
        if self.precision == "bf16" or (self.precision == "auto" and device.type == "cuda"):
            return torch.bfloat16
        return None

    def use_channels_last(self, device: torch.device) -> bool:
        if self.channels_last == "auto":
            return device.type == "cuda"
        return self.channels_last == "true"


# --------------------------------------------------------------------------- worker helpers


@torch.no_grad()
def validation_metrics(
    m: SGANModules, image: torch.Tensor, size: int, seed: int, n: int = 8
) -> dict[str, float]:
    """Cheap per-epoch fidelity: KS D between the scaled pixel values of ``n`` real crops and
    ``n`` generated images of ``size`` px, per band (0: identical pixel distributions)."""
    gen = torch.Generator().manual_seed(seed)
    size = min(size, image.shape[1] // 16 * 16, image.shape[2] // 16 * 16)
    real = random_crops(image, n, size, gen, augment=False).float().cpu().numpy()
    g = m.exported_generator
    z = torch.randn(n, g.noise_channels, size // 16, size // 16, generator=gen).to(image.device)
    with m.autocast():
        fake = g(z).float().cpu().numpy()
    rng = np.random.default_rng(seed)
    out = {}
    for c in range(real.shape[1]):
        a, b = real[:, c].ravel(), fake[:, c].ravel()
        a = a[rng.integers(0, a.size, 20_000)]
        b = b[rng.integers(0, b.size, 20_000)]
        out[f"val_pixel_ks_{c}"] = float(ks_2samp(a, b).statistic)
    out["val_pixel_ks_max"] = max(out.values())
    return out


@torch.no_grad()
def sample_image(m: SGANModules, size: int, seed: int) -> np.ndarray:
    """A ``size`` px RGB preview (H, W, 3) in [0, 1] from fixed noise: the last three bands as
    R, G, B of the scaled image, stretched between its 1st and 99.5th percentiles."""
    g = m.exported_generator
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(1, g.noise_channels, size // 16, size // 16, generator=gen).to(m.device)
    with m.autocast():
        img = g(z)[0].float().cpu().numpy()  # [C, H, W]
    rgb = img[::-1][:3] if img.shape[0] >= 3 else np.repeat(img[:1], 3, axis=0)
    lo, hi = np.percentile(rgb, 1), np.percentile(rgb, 99.5)
    return np.clip((rgb - lo) / max(hi - lo, 1e-6), 0, 1).transpose(1, 2, 0)


def _maybe_fail(cfg: SGANTrainConfig, epoch: int, rank: int, world: int) -> None:
    """Fault injection: the last rank dies (``os._exit``) once, mid-way through an epoch."""
    if cfg.debug_fail_at_epoch != epoch or rank != world - 1:
        return
    marker = Path(cfg.storage_path) / f".debug-failed-{cfg.tracking.run_name or 'run'}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("died once")
    time.sleep(3.0)  # let the controller register the previous epoch's checkpoint
    os._exit(1)


def _load_image(field_ref, device: torch.device) -> torch.Tensor:
    import ray

    array = ray.get(field_ref) if isinstance(field_ref, ray.ObjectRef) else field_ref
    # the object store hands out a read-only view: copy once, onto the device
    return torch.tensor(np.asarray(array, dtype=np.float32), device=device)


def _compile(m: SGANModules) -> None:
    m.generator.forward = torch.compile(m.generator.forward)
    m.critic.forward = torch.compile(m.critic.forward)


# --------------------------------------------------------------------------- the loop


def train_loop(config: dict) -> None:
    """Ray Train worker function.  ``config``: the job config as a dict, plus the driver's
    ``_field`` (ObjectRef of the scaled image ``[C, H, W]``) and ``_mlflow`` (tracking URI, run
    id)."""
    import ray.train
    import ray.train.torch

    mlflow_info = config.pop("_mlflow", {})
    field_ref = config.pop("_field")
    cfg = from_dict(SGANTrainConfig, config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    image = _load_image(field_ref, device)
    use_torch_threads(cfg.scaling)

    m = build_sgan_modules(
        cfg.net,
        cfg.optim,
        device,
        cfg.seed,
        amp_dtype=cfg.amp_dtype(device),
        channels_last=cfg.use_channels_last(device),
    )
    start_epoch, progress = 1, {}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / CHECKPOINT_STATE, map_location=device, weights_only=False)
            m.load_state_dict(state)
            progress = json.loads((Path(d) / CHECKPOINT_PROGRESS).read_text())
        start_epoch = progress["epoch"] + 1
    if cfg.compile:
        _compile(m)
    sync = GradientSync(world)
    logger = (
        _MlflowEpochLogger(mlflow_info.get("tracking_uri"), mlflow_info.get("run_id"))
        if rank == 0
        else None
    )
    history = progress.get("history", [])
    train_seconds = progress.get("train_seconds", 0.0)
    for epoch in range(start_epoch, cfg.epochs + 1):
        # crops depend on (seed, epoch, rank), crop sizes on (seed, epoch): restarts replay them
        shapes = batch_sizes(cfg.optim, torch.Generator().manual_seed(cfg.seed * 7919 + epoch))
        crops = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 7919 + rank)
        torch.manual_seed(cfg.seed * 1_000_003 + epoch * 7919 + rank + 1)
        progress_fraction = (epoch - 1) / cfg.epochs
        if cfg.time_budget_s is not None:
            progress_fraction = max(progress_fraction, train_seconds / cfg.time_budget_s)
        m.set_lr_scale(lr_scale(progress_fraction, cfg.optim.warmdown))
        t0 = time.perf_counter()
        for k, size in enumerate(shapes):
            if k == len(shapes) // 2:
                _maybe_fail(cfg, epoch, rank, world)
            real = random_crops(image, cfg.optim.batch_size, size, crops, cfg.optim.augment)
            train_batch(m, real, cfg.optim, sync)
        metrics = m.pop_metrics()  # the one host sync of the epoch
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        if world > 1 and cfg.time_budget_s is not None:
            # one clock for all ranks: all stop after the same epoch
            train_seconds = float(
                _all_reduce_np(np.array([train_seconds]), device, torch.distributed.ReduceOp.MAX)[0]
            )
        out_of_time = cfg.time_budget_s is not None and train_seconds >= cfg.time_budget_s
        last = epoch == cfg.epochs or out_of_time
        if not (last or epoch % cfg.report_every == 0):
            continue
        crops_seen = cfg.optim.batch_size * len(shapes) * world
        metrics.update(
            epoch=epoch,
            epoch_seconds=seconds,
            crops_per_second=crops_seen / seconds,
            train_seconds=train_seconds,
        )
        if rank == 0:
            metrics.update(validation_metrics(m, image, max(cfg.optim.crop_sizes), cfg.seed))
            logger.log(metrics, epoch)
            if (
                logger.client is not None
                and cfg.sample_every
                and (epoch % cfg.sample_every == 0 or last)
            ):
                logger.client.log_image(
                    logger.run_id,
                    sample_image(m, cfg.sample_size, cfg.seed),
                    artifact_file=f"samples/epoch_{epoch:06d}.png",
                )
            history.append(epoch)
            worker_print(
                f"[galray] epoch {epoch}/{cfg.epochs}  {seconds:.2f} s  "
                f"D={metrics['critic_loss']:.3f}  G={metrics['generator_loss']:.3f}  "
                f"pixel_ks_max={metrics['val_pixel_ks_max']:.3f}"
            )
            progress = {"epoch": epoch, "history": history, "train_seconds": train_seconds}
            with tempfile.TemporaryDirectory() as tmp:
                torch.save(m.state_dict(), Path(tmp) / CHECKPOINT_STATE)
                (Path(tmp) / CHECKPOINT_PROGRESS).write_text(json.dumps(progress))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
        if out_of_time:
            break
