"""Ray Train loop of the measurement yardstick (a CNN with per-parameter uncertainties).

The same :func:`train_loop` runs on one CPU worker (gloo) and on N GPU workers (NCCL).  Each
worker takes its shard of the training stamps from Ray Data (``get_dataset_shard``) and holds it
on its device; the targets' standardisation was fitted once on the driver, so every rank
measures identically.  Batches are drawn with a generator seeded by (seed, epoch, rank), so a
restarted worker group replays an epoch from the latest checkpoint.  Rank 0 scores the
validation stamps (their stored noisy images) each reported epoch: ``val_loss`` (beta-NLL),
``val_nll`` (the plain Gaussian NLL, a proper score that sweeps over ``optim.beta_nll`` can
compare), ``val_mse`` (standardised) and ``val_z_rms_<param>`` (the RMS of error over predicted
uncertainty, 1 for calibrated uncertainties), logs to the MLflow run the driver opened and
prints a line.
"""

from __future__ import annotations

import numpy as np
import torch

from galray.config import from_dict
from galray.estimator.config import EstimatorTrainConfig
from galray.estimator.step import EstimatorBatchData, build_estimator_modules, train_batch
from galray.models.estimator import Targets, gaussian_nll
from galray.training import worker
from galray.training.modules import GradientSync

IMAGES = ["stamp", "psf", "noise_sigma"]


def needed_columns(targets: list[str], clean: bool) -> list[str]:
    return [*IMAGES, *(["noiseless"] if clean else []), *targets]


def to_device(columns: dict[str, np.ndarray], names: list[str], device) -> EstimatorBatchData:
    def put(x) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(device)

    clean = columns.get("noiseless")
    return EstimatorBatchData(
        stamp=put(columns["stamp"]),
        psf=put(columns["psf"]),
        sigma=put(columns["noise_sigma"]),
        values=put(np.stack([columns[n].astype(np.float64) for n in names], axis=1)),
        clean=None if clean is None else put(clean),
    )


@torch.no_grad()
def predict(net, data: EstimatorBatchData, batch_size: int = 512):
    """Standardised ``(mu, log_var, log10 scale)`` of every stored stamp of ``data``."""
    outs = []
    for a in range(0, len(data), batch_size):
        index = torch.arange(a, min(a + batch_size, len(data)), device=data.stamp.device)
        stamp, psf, sigma, _ = data.rows(index, fresh_noise=False)
        outs.append(net(stamp, psf, sigma))
    return tuple(torch.cat(parts) for parts in zip(*outs))


@torch.no_grad()
def validation_metrics(net, val: EstimatorBatchData, targets: Targets, beta: float) -> dict:
    """Loss, standardised MSE and per-parameter z-score RMS on the validation stamps."""
    mu, log_var, log_scale = predict(net, val)
    target = targets.standardise(val.values, log_scale)
    loss = gaussian_nll(mu, log_var, target, beta).mean()
    nll = gaussian_nll(mu, log_var, target, 0.0).mean()  # a proper score whatever beta is
    z = (mu - target) * torch.exp(-0.5 * log_var)
    out = {"val_loss": float(loss), "val_nll": float(nll)}
    out["val_mse"] = float(((mu - target) ** 2).mean())
    for name, rms in zip(targets.names, z.pow(2).mean(0).sqrt().tolist()):
        out[f"val_z_rms_{name}"] = rms
    return out


def train_loop(config: dict) -> None:
    """Ray Train worker function.  ``config``: the job config as a dict, plus the driver's
    ``_targets`` (the fitted :class:`~galray.models.estimator.Targets`) and ``_mlflow``."""
    import ray.train

    mlflow_info = config.pop("_mlflow", {})
    targets = Targets(**config.pop("_targets"))
    clean = bool(config.pop("_clean"))
    cfg = from_dict(EstimatorTrainConfig, config)
    ctx = worker.worker_context(mlflow_info)
    rank, world, device = ctx.rank, ctx.world, ctx.device
    fresh = cfg.data.fresh_noise and clean

    columns = needed_columns(targets.names, fresh)
    data = to_device(
        worker.materialize(ray.train.get_dataset_shard("train"), columns), targets.names, device
    )
    val = None
    if rank == 0:
        columns = worker.materialize(
            ray.train.get_dataset_shard("val"), needed_columns(targets.names, False)
        )
        columns = {k: v[: cfg.data.max_val_rows] for k, v in columns.items()}
        val = to_device(columns, targets.names, device)
    worker.use_torch_threads(cfg.scaling)

    m = build_estimator_modules(cfg.net, cfg.optim, device, cfg.seed)
    progress = worker.restore(m, device)
    sync = GradientSync(world)

    def line(metrics: dict, epoch: int, seconds: float) -> str:
        return (
            f"[galray] epoch {epoch}/{cfg.epochs}  {seconds:.2f} s  "
            f"{metrics['stamps_per_second']:,.0f} stamps/s  loss={metrics['loss']:.4f}  "
            f"val_loss={metrics['val_loss']:.4f}  val_mse={metrics['val_mse']:.4f}"
        )

    worker.run_epochs(
        cfg,
        ctx,
        m,
        progress,
        mlflow_info,
        plan=worker.same_steps(
            cfg.optim, lambda order: train_batch(m, data, targets, cfg.optim, fresh, sync, order)
        ),
        rate="stamps_per_second",
        validate=lambda epoch: validation_metrics(
            m.exported_generator, val, targets, cfg.optim.beta_nll
        ),
        line=line,
    )
