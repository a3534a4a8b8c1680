"""Ray Train loop of the stamp generator (VAE + conditional flow prior, PSF-aware).

The same :func:`train_loop` runs on one CPU worker (gloo) and on N GPU workers (NCCL).  Each
worker takes its shard of the training stamps from Ray Data (``get_dataset_shard``) and holds it
on its device; the conditions' standardisation was fitted once on the driver, so every rank
encodes identically.  Batches are drawn with a generator seeded by (seed, epoch, rank), so a
restarted worker group (``FailureConfig``) replays an epoch from the latest checkpoint.  Rank 0
scores the validation stamps each reported epoch (``val_loss``: negative ELBO per pixel with a
fixed draw; ``val_nll_per_pixel``: its likelihood part, half the reduced chi² of the
reconstruction, 0.5 for a perfect model), logs to the MLflow run the driver opened and prints a
line.
"""

from __future__ import annotations

import numpy as np
import torch

from galray.config import from_dict
from galray.datasets.stamps import PROPERTIES, flux_of
from galray.stamps.bundle import Conditions
from galray.stamps.config import StampsTrainConfig
from galray.stamps.step import StampBatchData, build_stamp_modules, negative_elbo, train_batch
from galray.training import worker
from galray.training.modules import GradientSync

NEEDED = ["stamp", "psf", "noise_sigma", *PROPERTIES]


def to_device(columns: dict[str, np.ndarray], conditions: Conditions, device) -> StampBatchData:
    raw = np.stack([columns[n].astype(np.float64) for n in conditions.names], axis=1)

    def put(x) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(device)

    return StampBatchData(
        stamp=put(columns["stamp"]),
        psf=put(columns["psf"]),
        sigma=put(columns["noise_sigma"]),
        flux=put(flux_of(columns["mag"])),
        cond=put(conditions.encode(raw)),
    )


@torch.no_grad()
def validation_metrics(vae, val: StampBatchData, beta: float, seed: int) -> dict[str, float]:
    """Negative ELBO per pixel and its likelihood part on the validation stamps (fixed draw)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        losses, nlls = [], []
        for a in range(0, len(val), 256):
            batch = val.rows(torch.arange(a, min(a + 256, len(val)), device=val.stamp.device))
            loss, nll, _ = negative_elbo(vae, batch, beta)
            n = batch[0].shape[0]
            losses.append(float(loss) * n)
            nlls.append(float(nll) * n)
    return {"val_loss": sum(losses) / len(val), "val_nll_per_pixel": sum(nlls) / len(val)}


def train_loop(config: dict) -> None:
    """Ray Train worker function.  ``config``: the job config as a dict, plus the driver's
    ``_conditions`` (the fitted :class:`~galray.stamps.bundle.Conditions`) and ``_mlflow``."""
    import ray.train

    mlflow_info = config.pop("_mlflow", {})
    conditions = Conditions(**config.pop("_conditions"))
    cfg = from_dict(StampsTrainConfig, config)
    ctx = worker.worker_context()
    rank, world, device = ctx.rank, ctx.world, ctx.device

    data = to_device(
        worker.materialize(ray.train.get_dataset_shard("train"), NEEDED), conditions, device
    )
    val = None
    if rank == 0:
        columns = worker.materialize(ray.train.get_dataset_shard("val"), NEEDED)
        columns = {k: v[: cfg.data.max_val_rows] for k, v in columns.items()}
        val = to_device(columns, conditions, device)
    worker.use_torch_threads(cfg.scaling)

    m = build_stamp_modules(cfg.net, cfg.optim, device, cfg.seed)
    progress = worker.restore(m, device)
    sync = GradientSync(world)

    def line(metrics: dict, epoch: int, seconds: float) -> str:
        return (
            f"[galray] epoch {epoch}/{cfg.epochs}  {seconds:.2f} s  "
            f"{metrics['stamps_per_second']:,.0f} stamps/s  loss={metrics['loss']:.4f}  "
            f"kl={metrics['kl']:.1f}  val_loss={metrics['val_loss']:.4f}  "
            f"val_nll_per_pixel={metrics['val_nll_per_pixel']:.4f}"
        )

    worker.run_epochs(
        cfg,
        ctx,
        m,
        progress,
        mlflow_info,
        plan=worker.same_steps(
            cfg.optim, lambda order: train_batch(m, data, cfg.optim, sync, order)
        ),
        rate="stamps_per_second",
        validate=lambda epoch: validation_metrics(
            m.exported_generator, val, cfg.optim.beta, cfg.seed
        ),
        line=line,
    )
