"""Ray Train loop of the transfer-function emulator (cWGAN-GP or conditional flow, + detection
model).

The same :func:`train_loop` runs on one CPU worker (gloo) and on N GPU workers (NCCL).  Each worker
takes its shard of the training rows from Ray Data (``get_dataset_shard``) and holds it on its
device; standardisation is fitted from moments summed over all ranks, so every rank encodes rows
identically.  Every ``report_every`` epochs rank 0 reports a checkpoint through
``ray.train.report``; a restarted
worker group (``FailureConfig``) resumes from the latest one, so finished epochs are not repeated.
Per-epoch metrics go to MLflow from rank 0 (into the run the driver opened), the final model is
logged and registered by the driver (:func:`galray.training.job.run_training`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from galray.config import from_dict
from galray.datasets.survey import SurveySpec
from galray.emulator.config import EmulatorTrainConfig
from galray.emulator.features import EmulatorFeatures
from galray.emulator.step import (
    DeviceData,
    EmulatorModules,
    GroupRunner,
    build_modules,
    epoch_indices,
    steps_per_group,
)
from galray.training import worker
from galray.training.modules import GradientSync

CHECKPOINT_FEATURES = "features.json"

# --------------------------------------------------------------------------- worker helpers


def _columns_needed(spec: SurveySpec) -> list[str]:
    """What a worker reads: the inputs (truth and conditions), the measurements, detection."""
    return spec.input_columns + spec.flux_columns + spec.measured_columns + ["detected"]


def fit_features(columns, spec: SurveySpec, device, whiten: bool = True) -> EmulatorFeatures:
    """Standardisation (and the targets' whitening, see :mod:`galray.emulator.features`) from moments and
    histograms summed over every rank, so every rank encodes rows identically and the result
    does not depend on how rows are split between ranks."""
    return EmulatorFeatures.fit(
        columns, spec, whiten=whiten, reduce=lambda x: worker.all_reduce_np(x, device)
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
    from scipy.stats import ks_2samp  # here: the driver imports this module (~0.8 s saved)

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

    mlflow_info = config.pop("_mlflow", {})
    spec = SurveySpec.from_dict(config.pop("_survey"), "the driver's survey spec")
    cfg = from_dict(EmulatorTrainConfig, config)
    ctx = worker.worker_context(mlflow_info)
    rank, world, device = ctx.rank, ctx.world, ctx.device
    needed = _columns_needed(spec)

    columns = worker.materialize(ray.train.get_dataset_shard("train"), needed)
    worker.use_torch_threads(cfg.scaling)
    features = fit_features(columns, spec, device, cfg.whiten_targets)
    is_flow = cfg.model == "flow"
    steps = steps_per_group(cfg.optim, is_flow)
    per_group = steps * cfg.optim.batch_size
    n_detected = int(columns["detected"].astype(bool).sum())
    groups = (
        int(worker.all_reduce_np(np.array([n_detected // per_group]), device, dist.ReduceOp.MIN)[0])
        if world > 1
        else None
    )
    val = None
    if rank == 0:
        val = worker.materialize(ray.train.get_dataset_shard("val"), needed)
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

    def read_features(directory: Path) -> None:
        nonlocal features
        features = EmulatorFeatures.from_json((directory / CHECKPOINT_FEATURES).read_text())

    progress = worker.restore(m, device, read_features)
    data = to_device_data(columns, features, device)
    del columns

    # the flow's step builds zuko distribution objects each call: run it eagerly
    graphs = cfg.cuda_graphs and not is_flow
    runner = GroupRunner(m, data, cfg.optim, GradientSync(world), cuda_graph=graphs)

    def plan(epoch: int, order: torch.Generator):
        idx_critic, idx_det = epoch_indices(data, cfg.optim, order, groups, steps)

        def step(g: int) -> None:
            runner(idx_critic[g], idx_det[g])

        return step, idx_critic.shape[0], idx_critic.numel()

    worker.run_epochs(
        cfg,
        ctx,
        m,
        progress,
        mlflow_info,
        plan=plan,
        rate="rows_per_second",
        validate=lambda epoch: validation_metrics(m, features, val, seed=cfg.seed + epoch),
        line=lambda metrics, epoch, seconds: _progress_line(metrics, epoch, cfg.epochs),
        last_metrics=lambda: {"max_param_divergence": _param_divergence(m, device)},
        files=lambda: {CHECKPOINT_FEATURES: features.to_json()},
    )
