"""The measurement yardstick as a product of the job skeleton (:mod:`galray.training.job`): what
``galray train estimator``, ``galray tune estimator`` and ``jobs/train_estimator.py`` run.

Data: a stamps directory (``galray simulate stamps``, either population; rendered first if
``data.simulate_if_missing`` asks for it); the train and validation splits reach the workers
through Ray Data.  The targets' transforms and standardisation are fitted once on the driver from
(at most 20,000 of) the train split's stamps.  Export: the CNN of a checkpoint (EMA weights if
kept) as an :class:`~galray.estimator.bundle.EstimatorModel`, its uncertainties calibrated on the
validation split.  Evaluation: bias, RMSE and coverage per S/N bin against the Cramér–Rao bound
and a maximum-likelihood fit (:func:`galray.estimator.evaluate.evaluate_estimator`).  Sweeps rank
trials by ``val_nll`` (comparable across ``optim.beta_nll``, unlike ``val_loss``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from galray.datasets.stamp_training import (
    count_splits,
    data_params,
    require_stamps,
    split_dataset,
)
from galray.datasets.stamps import MANIFEST, read_manifest, read_stamps
from galray.errors import ConfigError
from galray.estimator import registry
from galray.estimator.bundle import EstimatorModel
from galray.estimator.config import DEFAULT_TARGETS, DEFAULT_TRANSFORMS, EstimatorTrainConfig
from galray.estimator.loop import needed_columns, train_loop
from galray.models.estimator import Estimator, Targets, brightness_scale
from galray.tracking import TrainingData
from galray.training.config import with_absolute_paths
from galray.training.job import ProductSpec, run_training
from galray.training.worker import load_state

FIT_ROWS = 20_000  # train stamps the targets' standardisation is fitted on
CALIBRATION_ROWS = 5_000  # validation stamps the uncertainties are calibrated on


@dataclass
class TrainingStamps:
    """A stamps directory, its manifest, what is measured and the split sizes."""

    path: str
    manifest: dict
    targets: Targets
    clean: bool  # the stamps hold noiseless images (fresh noise possible)
    rows: dict[str, int]

    @property
    def population(self) -> str:
        return self.manifest.get("population", "rich")


def prepare(cfg: EstimatorTrainConfig, log) -> EstimatorTrainConfig:
    """Check that ``data.stamps`` exists; with ``data.simulate_if_missing``, render the stamps
    ``data.simulate`` describes there first."""
    hint = " (render them: galray simulate stamps --population sersic)"
    require_stamps(cfg.data, log, hint=hint, no_section_hint=hint, workers=2)
    return cfg


def target_names(cfg: EstimatorTrainConfig, manifest: dict) -> list[str]:
    """``data.targets``, or the population's defaults; ConfigError naming a missing column."""
    population = manifest.get("population", "rich")
    names = list(cfg.data.targets) or list(DEFAULT_TARGETS[population])
    columns = set(manifest.get("columns", []))
    missing = [n for n in names if n not in columns]
    if missing:
        raise ConfigError(
            f"data.targets: {missing[0]!r} is not a column of the stamps in {cfg.data.stamps} "
            f"(columns: {', '.join(sorted(columns))})"
        )
    if cfg.net.n_targets != len(names):
        raise ConfigError(f"net.n_targets: {cfg.net.n_targets}, but {len(names)} data.targets")
    return names


def load_training_stamps(cfg: EstimatorTrainConfig) -> TrainingStamps:
    """The stamps ``data.stamps`` names, checked against ``net.size``, with the targets'
    standardisation fitted on the train split."""
    path = cfg.data.stamps
    manifest = read_manifest(path)
    if manifest["size"] != cfg.net.size:
        raise ConfigError(
            f"net.size: {cfg.net.size} px, but the stamps in {path} are {manifest['size']} px"
        )
    names = target_names(cfg, manifest)
    meta = read_stamps(path, columns=names)
    rows = count_splits(path, meta["id"], cfg.optim.batch_size)
    for name in names:
        values = np.asarray(meta[name], np.float64)
        transform = DEFAULT_TRANSFORMS.get(name, "linear")
        if not np.isfinite(values).all() or (transform != "linear" and transform != "mag"
                                             and (values <= 0).any()):  # fmt: skip
            raise ConfigError(
                f"data.targets: column {name!r} of {path} has non-finite or (for a {transform} "
                "target) non-positive values"
            )
    clean = "noiseless" in manifest.get("columns", [])
    targets = fit_targets(path, names, cfg.seed)
    return TrainingStamps(str(path), manifest, targets, clean, rows)


def fit_targets(path: str, names: list[str], seed: int) -> Targets:
    """Transforms of ``names`` and their mean and spread over (at most :data:`FIT_ROWS`) train
    stamps (the brightness scale measured on the stored noisy stamps)."""
    data = read_stamps(path, split="train", columns=["stamp", "noise_sigma", *names])
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.permutation(len(data["id"]))[:FIT_ROWS])
    transforms = [DEFAULT_TRANSFORMS.get(n, "linear") for n in names]
    identity = Targets(names, transforms, [0.0] * len(names), [1.0] * len(names))
    stamp = torch.from_numpy(np.asarray(data["stamp"][keep], np.float32))
    sigma = torch.from_numpy(np.asarray(data["noise_sigma"][keep], np.float32))
    values = torch.from_numpy(np.stack([data[n][keep] for n in names], 1).astype(np.float64))
    log_scale = torch.log10(brightness_scale(stamp, sigma)).double()
    t = identity.forward(values, log_scale)
    std = t.std(0).clamp_min(1e-12)
    return Targets(names, transforms, t.mean(0).tolist(), std.tolist())


def dataset(stamps: TrainingStamps, split: str, clean: bool):
    """Ray Data dataset of one split's stamps (the columns training reads)."""
    return split_dataset(stamps.path, split, needed_columns(stamps.targets.names, clean))


def _log_data(stamps: TrainingStamps) -> None:
    import mlflow

    mlflow.log_params(
        {
            **data_params(stamps.manifest, stamps.rows),
            "data.population": stamps.population,
            "data.measured": ",".join(stamps.targets.names),
        }
    )
    mlflow.log_dict(stamps.manifest, "stamps_simulation.json")


def build_trainer(cfg: EstimatorTrainConfig, stamps: TrainingStamps, *, mlflow_info: dict, **run):
    """The ``TorchTrainer`` of one run: train split sharded across workers, validation whole."""
    from galray.training.trainer import torch_trainer

    fresh = cfg.data.fresh_noise and stamps.clean
    return torch_trainer(
        train_loop,
        cfg,
        loop_extra={
            "_targets": asdict(stamps.targets),
            "_clean": stamps.clean,
            "_mlflow": mlflow_info,
        },
        datasets={"train": dataset(stamps, "train", fresh), "val": dataset(stamps, "val", False)},
        datasets_to_split=["train"],
        **run,
    )


def model_from_checkpoint(
    path: str | Path, cfg: EstimatorTrainConfig, *, data: TrainingStamps, info: dict | None = None
) -> EstimatorModel:
    """The exported CNN (EMA weights if kept) of a checkpoint, its uncertainties calibrated on
    (at most :data:`CALIBRATION_ROWS`) validation stamps."""
    state = load_state(path)
    net = Estimator(cfg.net)
    net.load_state_dict(state["ema_generator" if cfg.optim.ema_decay > 0 else "net"])
    scale = data.manifest["pixel_scale"]
    model = EstimatorModel(net, data.targets, scale, data.population, info=info)
    names = data.targets.names
    val = read_stamps(data.path, split="val", columns=["stamp", "psf", "noise_sigma", *names])
    val = {k: v[:CALIBRATION_ROWS] for k, v in val.items()}
    truth = np.stack([val[n] for n in names], 1).astype(np.float64)
    model.calibrate(val["stamp"], val["psf"], val["noise_sigma"], truth)
    return model


def _evaluate(cfg: EstimatorTrainConfig, model: EstimatorModel, data: TrainingStamps, out_dir):
    if not cfg.evaluate.enabled:
        return None
    from galray.estimator.evaluate import evaluate_estimator

    return evaluate_estimator(model, data.path, out_dir, cfg.evaluate)


SPEC = ProductSpec(
    name="estimator",
    config_cls=EstimatorTrainConfig,
    bundle_dir="estimator",
    kind=registry.KIND,
    metric="val_nll",
    mode="min",
    prepare=prepare,
    absolute_paths=lambda cfg: with_absolute_paths(cfg, "stamps"),
    load_data=load_training_stamps,
    log_data=_log_data,
    describe_data=lambda s: (
        f"data: {s.path}: {s.rows['train']:,} training, {s.rows['val']:,} validation "
        f"{s.population} stamps of {s.manifest['size']}x{s.manifest['size']} px; measuring "
        f"{', '.join(s.targets.names)}"
    ),
    provenance=lambda cfg, s: {"data": cfg.data.stamps, "population": s.population},
    model_kind=lambda cfg: "estimator",
    training_data=lambda cfg, s: TrainingData.of_path(s.path, [MANIFEST], s.rows["train"]),
    build_trainer=build_trainer,
    export=model_from_checkpoint,
    evaluate=_evaluate,
    reads_data=True,
)


def train_estimator(cfg: EstimatorTrainConfig, *, log=print):
    """Train the estimator ``cfg`` describes (:func:`galray.training.job.run_training`)."""
    return run_training(SPEC, cfg, log=log)
