"""Ray Train loop of the transfer-function emulator (cWGAN-GP or conditional flow, + detection
model).

The same :func:`train_loop` runs on one CPU worker (gloo) and on N GPU workers (NCCL).  Each worker
takes its shard of the training rows from Ray Data (``get_dataset_shard``) and holds it on its
device; standardisation is fitted from moments summed over all ranks, so every rank encodes rows
identically.  Every epoch rank 0 reports a checkpoint through ``ray.train.report``; a restarted
worker group (``FailureConfig``) resumes from the latest one, so finished epochs are not repeated.
Per-epoch metrics go to MLflow from rank 0 (into the run the driver opened), the final model is
logged and registered by the driver (:func:`galray.trainers.emulator_job.train_emulator`).
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
import torch.distributed as dist
from scipy.stats import ks_2samp

from galray.config import from_dict, require
from galray.datasets import schema
from galray.features import EmulatorFeatures
from galray.models.emulator import NetConfig
from galray.models.flow import FlowConfig
from galray.trainers.emulator_step import (
    DeviceData,
    EmulatorModules,
    GradientSync,
    GroupRunner,
    OptimConfig,
    build_modules,
    epoch_indices,
    lr_scale,
    steps_per_group,
)
from galray.trainers.ray_run import use_torch_threads, worker_print

MODELS = ("gan", "flow")

CHECKPOINT_STATE = "state.pt"
CHECKPOINT_FEATURES = "features.json"
CHECKPOINT_PROGRESS = "progress.json"


@dataclass
class DataConfig:
    """Where the training rows come from.

    survey: a directory written by ``galray simulate survey`` or laid out the same way
    (``injections/`` Parquet shards and ``maps/conditions.parquet``); or give ``catalog`` and
    ``maps`` explicitly.  fractions: train/val/test split by id.  use_size: give the model the
    true half-light radius as an input.  simulate: if ``survey`` does not exist, write a synthetic
    survey there first with these :class:`~galray.datasets.simulate.SurveyConfig` fields.
    """

    survey: str | None = None
    catalog: str | None = None
    maps: str | None = None
    fractions: tuple[float, float, float] = (0.9, 0.05, 0.05)
    salt: int = 0
    max_outside_fraction: float = 0.01
    use_size: bool = True
    max_val_rows: int = 20_000
    simulate: dict | None = None  # SurveyConfig fields: simulate ``survey`` first if missing

    def __post_init__(self) -> None:
        require(
            self.survey is not None or (self.catalog is not None and self.maps is not None),
            "data",
            "give data.survey, or both data.catalog and data.maps",
        )
        if self.survey is not None:
            self.catalog = self.catalog or str(Path(self.survey) / "injections")
            self.maps = self.maps or str(Path(self.survey) / "maps" / "conditions.parquet")
        require(
            len(self.fractions) == 3
            and all(f >= 0 for f in self.fractions)
            and abs(sum(self.fractions) - 1) < 1e-6,
            "data.fractions",
            f"must be three non-negative numbers summing to 1, got {self.fractions}",
        )
        self.fractions = tuple(float(f) for f in self.fractions)
        if self.simulate is not None:
            from galray.config import from_dict
            from galray.datasets.simulate import SurveyConfig

            from_dict(SurveyConfig, dict(self.simulate), prefix="data.simulate.")
        require(
            0 <= self.max_outside_fraction <= 1, "data.max_outside_fraction", "must be in [0, 1]"
        )
        require(self.max_val_rows >= 100, "data.max_val_rows", "must be >= 100")


@dataclass
class ScalingConfig:
    """num_workers: Ray Train workers (DDP ranks).  use_gpu: give each worker a GPU.
    cpus_per_worker: CPU share of each worker (0.5 lets 2 workers share 2 cores with Ray Data).
    gpus_per_worker: GPU share of each worker when ``use_gpu`` (a fraction, e.g. 0.25, lets
    several Tune trials share one GPU).  torch_threads: threads of each worker's torch CPU
    operations once its data is read (default: Ray's, one per whole CPU reserved).  On a
    machine of its own, ``cpus_per_worker: 1`` with ``torch_threads`` = its cores trains on all
    of them while leaving Ray Data a CPU to read with."""

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        require(
            self.num_workers >= 1, "scaling.num_workers", f"must be >= 1, got {self.num_workers}"
        )
        require(self.cpus_per_worker > 0, "scaling.cpus_per_worker", "must be > 0")
        require(
            0 < self.gpus_per_worker <= 1 or float(self.gpus_per_worker).is_integer(),
            "scaling.gpus_per_worker",
            f"must be a fraction in (0, 1] or a whole number, got {self.gpus_per_worker}",
        )
        require(
            self.torch_threads is None or self.torch_threads >= 1,
            "scaling.torch_threads",
            f"must be >= 1, got {self.torch_threads}",
        )


@dataclass
class TrackingConfig:
    """MLflow: experiment name, registered model name and alias (empty: don't register).
    enabled: false skips MLflow entirely (the bundle is still saved under storage_path)."""

    enabled: bool = True
    experiment: str = "galray-emulator"
    run_name: str | None = None
    registered_name: str | None = "galray-emulator"
    alias: str | None = "champion"


@dataclass
class EmulatorTrainConfig:
    """One emulator training job (``galray train emulator --config FILE``).

    model: ``gan`` (the cWGAN-GP, shaped by ``net``) or ``flow`` (a conditional neural-spline
    flow, shaped by ``flow``); both share the detection model (``net.detection_*``), the data,
    checkpoints, tracking and the saved emulator's interface.
    epochs: passes of the critic (or flow) over the detected training rows.  seed: initialisation and data
    order.  storage_path: where Ray Train keeps checkpoints.  max_failures: worker-group restarts
    allowed.  cuda_graphs: capture the training step as a CUDA graph on GPUs.  evaluate: write a
    fidelity report on the test split at the end.  report_every: epochs between reports
    (metrics, validation, checkpoint); raise it when epochs take well under a second.
    time_budget_s: stop after the epoch in which this much training time has been spent.
    whiten_targets: divide each band's measured-minus-true by its median and spread at the row's
    brightness relative to the depth (:mod:`galray.features`) before the networks see it.
    """

    data: DataConfig = field(default_factory=lambda: DataConfig(survey="survey"))
    model: str = "gan"
    net: NetConfig = field(default_factory=NetConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    epochs: int = 20
    seed: int = 0
    storage_path: str = "galray-runs"
    max_failures: int = 2
    cuda_graphs: bool = True
    evaluate: bool = True
    eval_rows: int = 50_000
    report_every: int = 1
    time_budget_s: float | None = None
    whiten_targets: bool = True
    debug_fail_at_epoch: int | None = None  # fault injection for tests: kill a worker once

    def __post_init__(self) -> None:
        require(self.model in MODELS, "model", f"must be one of {MODELS}, got {self.model!r}")
        require(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        require(self.max_failures >= 0, "max_failures", f"must be >= 0, got {self.max_failures}")
        require(self.eval_rows >= 1000, "eval_rows", f"must be >= 1000, got {self.eval_rows}")
        require(self.report_every >= 1, "report_every", f"must be >= 1, got {self.report_every}")
        require(
            self.time_budget_s is None or self.time_budget_s > 0,
            "time_budget_s",
            f"must be positive, got {self.time_budget_s}",
        )


# --------------------------------------------------------------------------- worker helpers


def _columns_needed(bands, use_size: bool) -> list[str]:
    cols = EmulatorFeatures.cond_columns(bands, use_size)
    return cols + [schema.obs_flux(b) for b in bands] + ["detected"]


def materialize(shard, columns: list[str]) -> dict[str, np.ndarray]:
    """A Ray Data shard (DataIterator) as numpy columns, read block by block."""
    parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    for batch in shard.iter_batches(batch_size=None, batch_format="numpy"):
        for c in columns:
            parts[c].append(np.asarray(batch[c]))
    return {c: np.concatenate(v) if v else np.empty(0) for c, v in parts.items()}


def _all_reduce_np(x: np.ndarray, device: torch.device, op=None) -> np.ndarray:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    t = torch.as_tensor(x, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t.cpu().numpy()


def fit_features(columns, bands, use_size, device, whiten: bool = True) -> EmulatorFeatures:
    """Standardisation (and the targets' whitening, see :mod:`galray.features`) from moments and
    histograms summed over every rank, so every rank encodes rows identically and the result
    does not depend on how rows are split between ranks."""
    return EmulatorFeatures.fit(
        columns, bands, use_size, whiten, reduce=lambda x: _all_reduce_np(x, device)
    )


def to_device_data(columns, features: EmulatorFeatures, device: torch.device) -> DeviceData:
    det = columns["detected"].astype(bool)
    cond = torch.from_numpy(features.encode_cond(columns))
    return DeviceData(
        cond_det=cond[torch.from_numpy(det)].to(device),
        target=torch.from_numpy(features.encode_target(columns, det)).to(device),
        cond_all=cond.to(device),
        label=torch.from_numpy(det.astype(np.float32)).to(device),
    )


def sliced_wasserstein(
    a: np.ndarray, b: np.ndarray, n_projections: int = 64, seed: int = 0
) -> float:
    """Sliced Wasserstein-1 distance between two equal-size samples ``a``, ``b`` [N, D]: the mean
    over ``n_projections`` random unit directions (fixed by ``seed``) of the 1-D W1 distance of
    the projected samples.  Zero only if the two joint distributions agree (Cramér-Wold)."""
    directions = np.random.default_rng(seed).standard_normal((a.shape[1], n_projections))
    directions /= np.linalg.norm(directions, axis=0, keepdims=True)
    pa, pb = np.sort(a @ directions, axis=0), np.sort(b @ directions, axis=0)  # [N, K]
    return float(np.abs(pa - pb).mean())


@torch.no_grad()
def validation_metrics(
    m: EmulatorModules, features: EmulatorFeatures, val: dict[str, np.ndarray], seed: int
) -> dict[str, float]:
    """Cheap per-epoch fidelity on the validation rows: KS D of each band's
    ``lupt(obs) - true`` (emulated vs real, detected rows), the sliced Wasserstein distance
    ``val_swd`` of the joint (conditions, measurement) of detected rows in standardised units --
    unlike the per-band KS it sees a measurement that ignores its conditions -- the detection
    model's BCE, and for a flow ``val_nll``, its negative log-likelihood per row (standardised
    units)."""
    device = next(m.generator.parameters()).device
    det = val["detected"].astype(bool)
    cond = torch.from_numpy(features.encode_cond(val)).to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    z = torch.randn(int(det.sum()), m.generator.noise_dim, generator=gen, device=device)
    fake = m.exported_generator(z, cond[torch.from_numpy(det).to(device)]).cpu().numpy()
    real = features.encode_target(val, det)
    out = {}
    for j, band in enumerate(features.bands):
        out[f"val_ks_{band}"] = float(ks_2samp(real[:, j], fake[:, j]).statistic)
    out["val_ks_max"] = max(out[f"val_ks_{b}"] for b in features.bands)
    cond_det = cond[torch.from_numpy(det).to(device)].cpu().numpy()
    out["val_swd"] = sliced_wasserstein(
        np.concatenate([cond_det, real], axis=1), np.concatenate([cond_det, fake], axis=1)
    )
    if m.is_flow:
        target = torch.from_numpy(real).to(device)
        log_p = m.exported_generator.log_prob(target, cond[torch.from_numpy(det).to(device)])
        out["val_nll"] = float(-log_p.mean())
    logits = m.detection(cond)
    label = torch.from_numpy(det.astype(np.float32)).to(device)
    out["val_detection_bce"] = float(
        torch.nn.functional.binary_cross_entropy_with_logits(logits, label)
    )
    out["val_detection_rate_diff"] = float(torch.sigmoid(logits).mean() - label.mean())
    return out


def _param_divergence(m: EmulatorModules, device: torch.device) -> float:
    """Max |θ_rank - θ_0| over all parameters and ranks (0 means every rank holds equal weights)."""
    flat = torch.cat([p.detach().reshape(-1) for mod in m.networks for p in mod.parameters()])
    flat = flat.to(device)
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return 0.0
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    diff = (flat - reference).abs().max()
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff)


def _save_checkpoint(directory: Path, m: EmulatorModules, features, progress: dict) -> None:
    torch.save(m.state_dict(), directory / CHECKPOINT_STATE)
    (directory / CHECKPOINT_FEATURES).write_text(features.to_json())
    (directory / CHECKPOINT_PROGRESS).write_text(json.dumps(progress))


def _maybe_fail(cfg: EmulatorTrainConfig, epoch: int, rank: int, world: int) -> None:
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


class _MlflowEpochLogger:
    """Rank 0 logs per-epoch metrics into the run the driver opened."""

    def __init__(self, tracking_uri: str | None, run_id: str | None):
        self.client = None
        if tracking_uri and run_id:
            from mlflow.tracking import MlflowClient

            self.client, self.run_id = MlflowClient(tracking_uri), run_id

    def log(self, metrics: dict[str, float], epoch: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, epoch) for k, v in metrics.items() if np.isfinite(v)]
        self.client.log_batch(self.run_id, metrics=batch)


def _progress_line(metrics: dict[str, float], epoch: int, epochs: int) -> str:
    if "nll" in metrics:
        losses = f"nll={metrics['nll']:.3f}  val_nll={metrics['val_nll']:.3f}"
    else:
        losses = f"W={metrics['wasserstein']:.3f}  gp={metrics['gradient_penalty']:.3f}"
    return (
        f"[galray] epoch {epoch}/{epochs}  {metrics['rows_per_second']:,.0f} rows/s  {losses}  "
        f"val_ks_max={metrics['val_ks_max']:.3f}  det_bce={metrics['val_detection_bce']:.4f}"
    )


# --------------------------------------------------------------------------- the loop


def train_loop(config: dict) -> None:
    """Ray Train worker function.  ``config``: the job config as a dict, plus the driver's
    ``_mlflow`` (tracking URI and run id)."""
    import ray.train
    import ray.train.torch

    mlflow_info = config.pop("_mlflow", {})
    cfg = from_dict(EmulatorTrainConfig, config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    bands = list(schema.BANDS)

    columns = materialize(
        ray.train.get_dataset_shard("train"), _columns_needed(bands, cfg.data.use_size)
    )
    use_torch_threads(cfg.scaling)
    features = fit_features(columns, bands, cfg.data.use_size, device, cfg.whiten_targets)
    data = to_device_data(columns, features, device)
    is_flow = cfg.model == "flow"
    steps = steps_per_group(cfg.optim, is_flow)
    per_group = steps * cfg.optim.batch_size
    groups = (
        int(_all_reduce_np(np.array([data.n_detected // per_group]), device, dist.ReduceOp.MIN)[0])
        if world > 1
        else None
    )
    val = None
    if rank == 0:
        val = materialize(
            ray.train.get_dataset_shard("val"), _columns_needed(bands, cfg.data.use_size)
        )
        val = {k: v[: cfg.data.max_val_rows] for k, v in val.items()}

    m = build_modules(
        features.n_cond,
        features.n_target,
        cfg.net,
        cfg.optim,
        device,
        cfg.seed,
        flow=cfg.flow if is_flow else None,
    )
    start_epoch, history, progress = 1, [], {}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            m.load_state_dict(
                torch.load(Path(d) / CHECKPOINT_STATE, map_location=device, weights_only=False)
            )
            progress = json.loads((Path(d) / CHECKPOINT_PROGRESS).read_text())
            features = EmulatorFeatures.from_json((Path(d) / CHECKPOINT_FEATURES).read_text())
        start_epoch, history = progress["epoch"] + 1, progress["history"]
        data = to_device_data(columns, features, device)
    del columns

    # the flow's step builds zuko distribution objects each call: run it eagerly
    graphs = cfg.cuda_graphs and not is_flow
    runner = GroupRunner(m, data, cfg.optim, GradientSync(world), cuda_graph=graphs)
    logger = (
        _MlflowEpochLogger(mlflow_info.get("tracking_uri"), mlflow_info.get("run_id"))
        if rank == 0
        else None
    )
    train_seconds = progress.get("train_seconds", 0.0) if checkpoint is not None else 0.0
    for epoch in range(start_epoch, cfg.epochs + 1):
        # the data order of an epoch depends on (seed, rank, epoch) only: restarts replay it
        order = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 7919 + rank)
        torch.manual_seed(cfg.seed * 1_000_003 + epoch * 7919 + rank)
        t0 = time.perf_counter()
        progress_fraction = (epoch - 1) / cfg.epochs
        if cfg.time_budget_s is not None:
            progress_fraction = max(progress_fraction, train_seconds / cfg.time_budget_s)
        m.set_lr_scale(lr_scale(progress_fraction, cfg.optim.warmdown))
        idx_critic, idx_det = epoch_indices(data, cfg.optim, order, groups, steps)
        for g in range(idx_critic.shape[0]):
            if g == idx_critic.shape[0] // 2:
                _maybe_fail(cfg, epoch, rank, world)
            runner(idx_critic[g], idx_det[g])
        metrics = m.pop_metrics()  # the one host sync of the epoch
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        if world > 1 and cfg.time_budget_s is not None:
            # one clock for all ranks: same learning rate, and all stop after the same epoch
            train_seconds = float(
                _all_reduce_np(np.array([train_seconds]), device, dist.ReduceOp.MAX)[0]
            )
        out_of_time = cfg.time_budget_s is not None and train_seconds >= cfg.time_budget_s
        last = epoch == cfg.epochs or out_of_time
        if not (last or epoch % cfg.report_every == 0):
            continue
        rows = idx_critic.numel() * world
        metrics.update(
            epoch=epoch,
            epoch_seconds=seconds,
            rows_per_second=rows / seconds,
            train_seconds=train_seconds,
        )
        if last:
            metrics["max_param_divergence"] = _param_divergence(m, device)
        if rank == 0:
            metrics.update(validation_metrics(m, features, val, seed=cfg.seed + epoch))
            logger.log(metrics, epoch)
            history.append(epoch)
            worker_print(_progress_line(metrics, epoch, cfg.epochs))
            progress = {"epoch": epoch, "history": history, "train_seconds": train_seconds}
            with tempfile.TemporaryDirectory() as tmp:
                _save_checkpoint(Path(tmp), m, features, progress)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
        if out_of_time:
            break
