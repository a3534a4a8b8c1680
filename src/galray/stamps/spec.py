"""The stamp generator as a product of the job skeleton (:mod:`galray.training.job`): what
``galray train stamps``, ``galray tune stamps`` and ``jobs/train_stamps.py`` run.

Data: a stamps directory (``galray simulate stamps``; rendered first if
``data.simulate_if_missing`` asks for it); the train and validation splits reach the workers through Ray Data, the conditions'
standardisation and training range are fitted once on the driver from the train split's
properties.  Export: the VAE of a checkpoint (EMA weights if kept) as a
:class:`~galray.stamps.bundle.StampModel`.  Evaluation: generated vs simulated stamps of the test
split through the same PSFs and noise, and monotonicity sweeps
(:func:`galray.stamps.evaluate.evaluate_model`).  Sweeps rank trials by ``val_loss``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from galray.datasets.stamp_training import (
    count_splits,
    data_params,
    require_stamps,
    split_dataset,
)
from galray.datasets.stamps import MANIFEST, PROPERTIES, read_manifest, read_stamps, split_of
from galray.errors import ConfigError
from galray.models.stamps import StampVAE
from galray.stamps import registry
from galray.stamps.bundle import Conditions, StampModel
from galray.stamps.config import StampsTrainConfig
from galray.stamps.loop import NEEDED, train_loop
from galray.tracking import TrainingData
from galray.training.config import with_absolute_paths
from galray.training.job import ProductSpec, run_training
from galray.training.worker import load_state


@dataclass
class TrainingStamps:
    """A stamps directory, its manifest and the conditions fitted to its train split."""

    path: str
    manifest: dict
    conditions: Conditions
    rows: dict[str, int]


def prepare(cfg: StampsTrainConfig, log) -> StampsTrainConfig:
    """Check that ``data.stamps`` exists; with ``data.simulate_if_missing``, render the stamps
    ``data.simulate`` describes there first."""
    require_stamps(cfg.data, log, hint=" (or render synthetic ones: galray simulate stamps)")
    return cfg


def load_training_stamps(cfg: StampsTrainConfig) -> TrainingStamps:
    """The stamps ``data.stamps`` names, checked against ``net.size``, with the conditions
    fitted on the train split."""
    path = cfg.data.stamps
    manifest = read_manifest(path)
    if manifest["size"] != cfg.net.size:
        raise ConfigError(
            f"net.size: {cfg.net.size} px, but the stamps in {path} are {manifest['size']} px"
        )
    if cfg.net.n_cond != len(PROPERTIES):
        raise ConfigError(f"net.n_cond: the stamps have {len(PROPERTIES)} conditions")
    props = read_stamps(path, columns=list(PROPERTIES))
    rows = count_splits(path, props["id"], cfg.optim.batch_size)
    train = {k: v[split_of(props["id"]) == "train"] for k, v in props.items()}
    return TrainingStamps(str(path), manifest, Conditions.fit(train), rows)


def dataset(stamps: TrainingStamps, split: str):
    """Ray Data dataset of one split's stamps (the columns training reads)."""
    return split_dataset(stamps.path, split, NEEDED)


def _log_data(stamps: TrainingStamps) -> None:
    import mlflow

    mlflow.log_params(data_params(stamps.manifest, stamps.rows))
    mlflow.log_dict(stamps.manifest, "stamps_simulation.json")


def build_trainer(cfg: StampsTrainConfig, stamps: TrainingStamps, *, mlflow_info: dict, **run):
    """The ``TorchTrainer`` of one run: train split sharded across workers, validation whole."""
    from dataclasses import asdict

    from galray.training.trainer import torch_trainer

    return torch_trainer(
        train_loop,
        cfg,
        loop_extra={"_conditions": asdict(stamps.conditions), "_mlflow": mlflow_info},
        datasets={"train": dataset(stamps, "train"), "val": dataset(stamps, "val")},
        datasets_to_split=["train"],
        **run,
    )


def model_from_checkpoint(
    path: str | Path, cfg: StampsTrainConfig, *, data: TrainingStamps, info: dict | None = None
) -> StampModel:
    """The exported VAE (EMA weights if kept) of a checkpoint as a StampModel."""
    state = load_state(path)
    vae = StampVAE(cfg.net)
    vae.load_state_dict(state["ema_generator" if cfg.optim.ema_decay > 0 else "vae"])
    return StampModel(
        vae, data.conditions, data.manifest["pixel_scale"], data.manifest["zeropoint"], info
    )


def _evaluate(cfg: StampsTrainConfig, model: StampModel, data: TrainingStamps, out_dir):
    if not cfg.evaluate.enabled:
        return None
    from galray.stamps.evaluate import evaluate_model

    return evaluate_model(model, data.path, out_dir, cfg.evaluate, seed=cfg.seed)


SPEC = ProductSpec(
    name="stamps",
    config_cls=StampsTrainConfig,
    bundle_dir="stamps",
    kind=registry.KIND,
    metric="val_loss",
    mode="min",
    prepare=prepare,
    absolute_paths=lambda cfg: with_absolute_paths(cfg, "stamps"),
    load_data=load_training_stamps,
    log_data=_log_data,
    describe_data=lambda s: (
        f"data: {s.path}: {s.rows['train']:,} training, {s.rows['val']:,} validation stamps of "
        f"{s.manifest['size']}x{s.manifest['size']} px"
    ),
    provenance=lambda cfg, s: {"data": cfg.data.stamps},
    model_kind=lambda cfg: "stamps",
    training_data=lambda cfg, s: TrainingData.of_path(s.path, [MANIFEST], s.rows["train"]),
    build_trainer=build_trainer,
    export=model_from_checkpoint,
    evaluate=_evaluate,
    reads_data=True,
)


def train_stamps(cfg: StampsTrainConfig, *, log=print):
    """Train the stamp generator ``cfg`` describes (:func:`galray.training.job.run_training`)."""
    return run_training(SPEC, cfg, log=log)
