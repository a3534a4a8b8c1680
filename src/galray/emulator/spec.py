"""The emulator as a product of the job skeleton (:mod:`galray.training.job`): what ``galray
train emulator``, ``galray tune emulator`` and ``jobs/train_emulator.py`` run.

Data: the injection catalog and condition maps ``data`` names, as a
:class:`~galray.datasets.reader.TrainingCatalog` (train/val/test split by id); the train split is
sharded across the workers, the validation split reaches rank 0 whole.  Export: the generator (or
flow) and detection model of a checkpoint as an :class:`~galray.emulator.bundle.Emulator`.
Evaluation: the fidelity report on the test split (:func:`evaluate_on_split`).

Sweeps rank trials by ``val_swd``, the sliced Wasserstein distance between the emulated and the
simulated joint (conditions, measurement) of detected validation rows: it needs no classifier,
costs milliseconds, and unlike ``val_ks_max`` (per-band marginals) it penalises a generator whose
scatter ignores depth or PSF.
"""

from __future__ import annotations

import json
from pathlib import Path

from galray.datasets.survey import spec_for_catalog
from galray.emulator import registry
from galray.emulator.bundle import Emulator, build_generator
from galray.emulator.config import EmulatorTrainConfig
from galray.emulator.features import EmulatorFeatures
from galray.emulator.loop import CHECKPOINT_FEATURES, train_loop
from galray.errors import ConfigError
from galray.tracking import TrainingData, files_digest
from galray.training.config import with_absolute_paths
from galray.training.job import ProductSpec, run_training
from galray.training.worker import load_state


def prepare(cfg: EmulatorTrainConfig, log) -> EmulatorTrainConfig:
    """Check that the data ``cfg.data`` names exists; with ``data.simulate_if_missing``, write
    the synthetic survey ``data.simulate`` describes at a missing ``data.survey`` first."""
    data = cfg.data
    if data.survey is not None and not Path(data.survey).exists():
        if not (data.simulate_if_missing and data.simulate is not None):
            raise ConfigError(f"data.survey: {data.survey} does not exist{_hint(data)}")
        from galray.datasets.simulate import simulate_survey

        log(
            f"data.survey: {data.survey} does not exist: simulating a synthetic survey there "
            "(data.simulate_if_missing)"
        )
        simulate_survey(data.survey, data.simulate, log=log)
    for name in ("catalog", "maps"):
        path = getattr(data, name)
        if not Path(path).exists():
            raise ConfigError(f"data.{name}: {path} does not exist")
    return cfg


def _hint(data) -> str:
    if data.simulate is not None and not data.simulate_if_missing:
        return (
            " (a typo?  To write the synthetic survey data.simulate describes there, set "
            "data.simulate_if_missing: true)"
        )
    if data.simulate_if_missing:
        return " (data.simulate_if_missing is on, but there is no data.simulate section)"
    return " (ingest a catalog there, or write a synthetic one: galray simulate survey)"


def open_catalog(cfg: EmulatorTrainConfig):
    """The :class:`~galray.datasets.reader.TrainingCatalog` that ``cfg.data`` names, read by
    its survey spec (:func:`~galray.datasets.survey.spec_for_catalog`; ``catalog.spec``)."""
    from galray.datasets.reader import TrainingCatalog

    spec = spec_for_catalog(cfg.data.spec, cfg.data.catalog, use_size=cfg.data.use_size)
    return TrainingCatalog(
        cfg.data.catalog,
        cfg.data.maps,
        spec=spec,
        fractions=cfg.data.fractions,
        salt=cfg.data.salt,
        max_outside_fraction=cfg.data.max_outside_fraction,
    )


def _log_data(catalog) -> None:
    import mlflow

    footprint = catalog.footprint
    mlflow.log_params(
        {"data.n_rows": footprint.n_rows, "data.n_outside_footprint": footprint.n_outside}
    )
    mlflow.log_dict(catalog.spec.to_dict(), "survey.json")


def _describe(catalog) -> str:
    fp = catalog.footprint
    return (
        f"data: {fp.n_rows:,} injections in {catalog.catalog} ({catalog.spec.name} survey); "
        f"{fp.n_outside:,} ({fp.outside_fraction:.2%}) outside the footprint of {catalog.maps} "
        "left out"
    )


# config fields only the cWGAN-GP uses (the flow shares net.detection_* and the rest of optim)
GAN_ONLY = (
    "net.width",
    "net.depth",
    "net.noise_dim",
    "net.activation",
    "optim.critic_steps",
    "optim.lr_critic",
    "optim.betas",
    "optim.gp_weight",
    "optim.one_sided_penalty",
    "cuda_graphs",
)


def _inactive(cfg: EmulatorTrainConfig) -> tuple[str, ...]:
    """The config fields the run's model does not use: the GAN's for a flow, ``flow`` for a GAN."""
    return GAN_ONLY if cfg.model == "flow" else ("flow",)


def _training_data(cfg: EmulatorTrainConfig, catalog) -> TrainingData:
    """The injection catalog as the run's input: its path, and a digest of its survey spec,
    simulation record and shard listing."""
    source = Path(cfg.data.catalog).resolve()
    manifests = [d / f for d in (source, source.parent) for f in ("survey.json", "simulation.json")]
    return TrainingData(
        source=str(source),
        name=(Path(cfg.data.survey) if cfg.data.survey else source).name,
        digest=files_digest(manifests, listing=source),
        survey=catalog.spec.name,
        rows=catalog.footprint.n_rows,
    )


def _provenance(cfg: EmulatorTrainConfig, catalog) -> dict:
    maps = {"nside": catalog.conditions.nside, "ordering": catalog.conditions.ordering}
    return {"data": cfg.data.catalog, "maps": maps}


def build_trainer(
    cfg: EmulatorTrainConfig,
    catalog,
    *,
    mlflow_info: dict,
    **run,
):
    """The ``TorchTrainer`` of one training run (``run``: the run name, storage and
    callbacks of :func:`~galray.training.trainer.torch_trainer`): the train split sharded across the
    workers, the validation split whole on each."""
    from galray.training.trainer import torch_trainer

    return torch_trainer(
        train_loop,
        cfg,
        loop_extra={"_mlflow": mlflow_info, "_survey": catalog.spec.to_dict()},
        datasets={
            "train": catalog.dataset("train", catalog.spec.training_columns),
            "val": catalog.dataset("val", catalog.spec.training_columns),
        },
        datasets_to_split=["train"],
        **run,
    )


def emulator_from_checkpoint(
    path: str | Path, cfg: EmulatorTrainConfig, *, data=None, info: dict | None = None
) -> Emulator:
    """The generator (or flow) and detection model of a training checkpoint as an
    :class:`Emulator` (``data``, the training catalog, is not needed: the features travel in
    the checkpoint)."""
    from galray.models.emulator import DetectionModel

    path = Path(path)
    features = EmulatorFeatures.from_json((path / CHECKPOINT_FEATURES).read_text())
    state = load_state(path)
    flow = cfg.flow if cfg.model == "flow" else None
    generator = build_generator(features, cfg.net, flow)
    detection = DetectionModel(features.n_cond, cfg.net)
    generator.load_state_dict(state["ema_generator" if cfg.optim.ema_decay > 0 else "generator"])
    detection.load_state_dict(state["detection"])
    return Emulator(generator, detection, features, cfg.net, info, flow)


def _evaluate(cfg: EmulatorTrainConfig, emulator: Emulator, catalog, out_dir: Path):
    if not cfg.evaluate:
        return None
    return evaluate_on_split(emulator, catalog, out_dir, cfg.eval_rows, seed=cfg.seed)


def evaluate_on_split(
    emulator: Emulator,
    catalog,
    out_dir: str | Path,
    max_rows: int,
    *,
    split: str | None = "test",
    seed: int = 0,
    model: str | None = None,
) -> dict:
    """Emulate held-out rows of ``catalog`` and score them against its measurements (by the
    emulator's survey spec: every output, the selection and, with a redshift, its n(z)).  The
    rows: the first ``max_rows`` of ``split`` in catalog order, read in this process without
    Ray (:meth:`~galray.datasets.reader.TrainingCatalog.table`).
    model: what the figures' titles call the emulator (its registered name and version)."""
    from galray.datasets import selection
    from galray.evaluation.emulator import fidelity_report

    spec = emulator.spec
    extra = [spec.deep.redshift, "p_detect"]
    cols = spec.truth_columns + [c for c in spec.output_columns if c in catalog.columns]
    cols += [c for c in extra if c and c in catalog.columns]
    reference = catalog.table(split, cols, max_rows).to_pandas()  # in memory: no Ray
    reference["selected"] = selection.select(spec.selection, reference)
    emulated = reference.drop(columns=["p_detect"], errors="ignore")
    for name, values in emulator.sample(reference, seed=seed).items():
        emulated[name] = values
    report = fidelity_report(reference, emulated, Path(out_dir), spec=spec, seed=seed, model=model)
    (Path(out_dir) / "emulator.json").write_text(json.dumps(emulator.info, indent=2))
    return report


SPEC = ProductSpec(
    name="emulator",
    config_cls=EmulatorTrainConfig,
    bundle_dir="emulator",
    kind=registry.KIND,
    metric="val_swd",
    mode="min",
    prepare=prepare,
    absolute_paths=lambda cfg: with_absolute_paths(cfg, "survey", "catalog", "maps"),
    load_data=open_catalog,
    log_data=_log_data,
    describe_data=_describe,
    provenance=_provenance,
    build_trainer=build_trainer,
    export=emulator_from_checkpoint,
    evaluate=_evaluate,
    reads_data=True,
    # what the networks' and the features' shapes depend on (a resumed run must keep them)
    shape_fields=("model", "net", "flow", "whiten_targets", "data.spec", "data.use_size"),
    model_kind=lambda cfg: cfg.model,
    inactive_params=_inactive,
    training_data=_training_data,
)


def train_emulator(cfg: EmulatorTrainConfig, *, log=print):
    """Train the emulator ``cfg`` describes (:func:`galray.training.job.run_training`)."""
    return run_training(SPEC, cfg, log=log)
