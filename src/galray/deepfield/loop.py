"""Ray Train loop of the deep-field generator (Spatial GAN).

The same :func:`train_loop` runs on one CPU worker (gloo) and on N GPU workers (NCCL).  The
driver scales the training image into (0, 1) once and hands it to every worker through the
object store; each worker holds it on its device and cuts its own random crops (crop positions
depend on (seed, epoch, rank); the crop size of each batch on (seed, epoch) only, so all ranks
run the same shapes).  Every ``report_every`` epochs rank 0 reports metrics and a checkpoint
through ``ray.train.report``; a restarted worker group (``FailureConfig``) resumes from the
latest one, so finished epochs are not repeated.  Rank 0 logs per-epoch metrics and, every
``sample_every`` epochs, a sample image to the MLflow run the driver opened; the driver logs and
registers the final generator (:func:`galray.training.job.run_training`).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import ks_2samp

from galray.config import from_dict
from galray.deepfield.config import DeepFieldTrainConfig
from galray.deepfield.step import (
    SGANModules,
    batch_sizes,
    build_sgan_modules,
    random_crops,
    train_batch,
)
from galray.training import worker
from galray.training.modules import GradientSync

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
    mlflow_info = config.pop("_mlflow", {})
    field_ref = config.pop("_field")
    cfg = from_dict(DeepFieldTrainConfig, config)
    ctx = worker.worker_context(mlflow_info)
    world, device = ctx.world, ctx.device
    image = _load_image(field_ref, device)
    worker.use_torch_threads(cfg.scaling)

    m = build_sgan_modules(
        cfg.net,
        cfg.optim,
        device,
        cfg.seed,
        amp_dtype=cfg.amp_dtype(device),
        channels_last=cfg.use_channels_last(device),
    )
    progress = worker.restore(m, device)
    if cfg.compile:
        _compile(m)
    sync = GradientSync(world)

    def plan(epoch: int, crops: torch.Generator):
        # crops depend on (seed, epoch, rank), crop sizes on (seed, epoch): restarts replay them
        shapes = batch_sizes(cfg.optim, torch.Generator().manual_seed(cfg.seed * 7919 + epoch))

        def step(k: int) -> None:
            real = random_crops(image, cfg.optim.batch_size, shapes[k], crops, cfg.optim.augment)
            train_batch(m, real, cfg.optim, sync)

        return step, len(shapes), cfg.optim.batch_size * len(shapes)

    def log_sample(logger: worker.MlflowEpochLogger, epoch: int, last: bool) -> None:
        if logger.enabled and cfg.sample_every and (epoch % cfg.sample_every == 0 or last):
            logger.log_image(
                sample_image(m, cfg.sample_size, cfg.seed),
                artifact_file=f"samples/epoch_{epoch:06d}.png",
            )

    def line(metrics: dict, epoch: int, seconds: float) -> str:
        return (
            f"[galray] epoch {epoch}/{cfg.epochs}  {seconds:.2f} s  "
            f"D={metrics['critic_loss']:.3f}  G={metrics['generator_loss']:.3f}  "
            f"pixel_ks_max={metrics['val_pixel_ks_max']:.3f}"
        )

    worker.run_epochs(
        cfg,
        ctx,
        m,
        progress,
        mlflow_info,
        plan=plan,
        rate="crops_per_second",
        validate=lambda epoch: validation_metrics(m, image, max(cfg.optim.crop_sizes), cfg.seed),
        line=line,
        after_log=log_sample,
    )
