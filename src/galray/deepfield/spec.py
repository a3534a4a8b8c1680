"""The deep-field generator as a product of the job skeleton (:mod:`galray.training.job`): what
``galray train deepfield``, ``galray tune deepfield`` and ``jobs/train_deepfield.py`` run.

Data: the multi-band FITS field ``data.image`` (rendered first if ``data.simulate_if_missing`` asks for
it), with its intensity scaling fitted once on the driver; the scaled image reaches every worker
through Ray's object store.  Export: the generator of a checkpoint (EMA weights if kept) as a
:class:`~galray.deepfield.bundle.DeepFieldModel`.  Evaluation: a field the size of the training
image is generated and compared with it by source extraction
(:func:`~galray.evaluation.deepfield.deepfield_report`).

Sweeps rank trials by ``val_pixel_ks_max``, the largest per-band KS D between the scaled pixel
values of real crops and generated images, which the training loop reports every epoch at the
cost of a few generated crops; the source-extraction comparison runs once, on the winner.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from galray.datasets.fitsfield import FieldImage, read_field
from galray.deepfield import registry
from galray.deepfield.bundle import DeepFieldModel
from galray.deepfield.config import DeepFieldTrainConfig
from galray.deepfield.loop import train_loop
from galray.deepfield.scaling import IntensityScaling
from galray.errors import ConfigError
from galray.models.sgan import Generator
from galray.tracking import TrainingData
from galray.training.config import with_absolute_paths
from galray.training.job import ProductSpec, run_training
from galray.training.worker import load_state


@dataclass
class TrainingField:
    """The training image and the intensity scaling fitted to it."""

    image: FieldImage
    scaling: IntensityScaling


def prepare(cfg: DeepFieldTrainConfig, log) -> DeepFieldTrainConfig:
    """Check that ``data.image`` exists; with ``data.simulate_if_missing``, render the synthetic
    deep field ``data.simulate`` describes there first."""
    image, sim = cfg.data.image, cfg.data.simulate
    if Path(image).exists():
        return cfg
    if not (cfg.data.simulate_if_missing and sim is not None):
        if sim is not None and not cfg.data.simulate_if_missing:
            hint = (
                " (a typo?  To render the synthetic field data.simulate describes there, set "
                "data.simulate_if_missing: true)"
            )
        elif cfg.data.simulate_if_missing:
            hint = " (data.simulate_if_missing is on, but there is no data.simulate section)"
        else:
            hint = " (or render a synthetic one: galray simulate deepfield)"
        raise ConfigError(f"data.image: {image} does not exist{hint}")
    from galray.datasets.deepfield import simulate_deepfield

    log(
        f"data.image: {image} does not exist: simulating a synthetic deep field there "
        "(data.simulate_if_missing)"
    )
    simulate_deepfield(image, sim, log=log)
    return cfg


def load_training_field(cfg: DeepFieldTrainConfig) -> TrainingField:
    """The training image, checked against the config (band count, crop sizes), and its fitted
    intensity scaling."""
    image = read_field(cfg.data.image, bands=cfg.data.bands or cfg.net.bands)
    if image.data.shape[0] != cfg.net.bands:
        raise ConfigError(
            f"net.bands: {cfg.net.bands}, but {cfg.data.image} gives {image.data.shape[0]} bands"
        )
    h, w = image.shape
    if max(cfg.optim.crop_sizes) > min(h, w):
        raise ConfigError(
            f"optim.crop_sizes: crops of {max(cfg.optim.crop_sizes)} px do not fit the "
            f"{h}x{w} image {cfg.data.image}"
        )
    return TrainingField(image, IntensityScaling.fit(image.data, cfg.data.intensity))


def _log_data(field: TrainingField) -> None:
    import mlflow

    image = field.image
    h, w = image.shape
    mlflow.log_params(
        {
            "data.height": h,
            "data.width": w,
            "data.bands_read": ",".join(image.bands),
            "data.pixel_scale": image.pixel_scale,
        }
    )
    mlflow.log_dict(field.scaling.to_dict(), "intensity_scaling.json")


def build_trainer(
    cfg: DeepFieldTrainConfig,
    field: TrainingField,
    *,
    mlflow_info: dict,
    **run,
):
    """The ``TorchTrainer`` of one run (``run``: the run name, storage and callbacks of
    :func:`~galray.training.trainer.torch_trainer`); workers crop from the scaled image in the object store."""
    import ray

    from galray.training.trainer import torch_trainer

    field_ref = ray.put(field.scaling.forward(field.image.data))
    return torch_trainer(
        train_loop,
        cfg,
        loop_extra={"_field": field_ref, "_mlflow": mlflow_info},
        **run,
    )


def model_from_checkpoint(
    path: str | Path, cfg: DeepFieldTrainConfig, *, data: TrainingField, info: dict | None = None
) -> DeepFieldModel:
    """The exported generator (EMA weights if kept) of a checkpoint as a DeepFieldModel, with
    the training field's scaling, bands, zeropoints, pixel scale and centre."""
    field = data
    state = load_state(path)
    generator = Generator(cfg.net)
    key = "ema_generator" if cfg.optim.ema_decay > 0 else "generator"
    generator.load_state_dict(state[key])  # (compile patches forward only: keys are plain)
    image = field.image
    center = None
    if image.wcs is not None:
        h, w = image.shape
        ra, dec = image.wcs.all_pix2world([(w - 1) / 2.0], [(h - 1) / 2.0], 0)
        center = (float(ra[0]), float(dec[0]))
    return DeepFieldModel(
        generator,
        field.scaling,
        image.bands,
        image.zeropoints,
        image.pixel_scale,
        image.bunit,
        center,
        info,
    )


def _evaluate(cfg: DeepFieldTrainConfig, model: DeepFieldModel, field: TrainingField, out_dir):
    """Source extraction on a generated field of the training image's size (whole multiples of
    the upsampling factor) against the training image."""
    if not cfg.evaluate:
        return None
    from galray.evaluation.deepfield import deepfield_report

    image = field.image
    step = model.upsampling
    h, w = (n // step * step for n in image.shape)
    generated = FieldImage(
        model.generate(h, w, seed=cfg.seed, tile=1024),  # tiled: bounded memory, same field
        list(image.bands),
        list(image.zeropoints),
        pixel_scale=image.pixel_scale,
        bunit=image.bunit,
        path="generated by the trained model",
    )
    return deepfield_report(image, [generated], out_dir)


SPEC = ProductSpec(
    name="deepfield",
    config_cls=DeepFieldTrainConfig,
    bundle_dir="sgan",  # the run directory and bundle names of models trained before
    kind=registry.KIND,
    metric="val_pixel_ks_max",
    mode="min",
    prepare=prepare,
    absolute_paths=lambda cfg: with_absolute_paths(cfg, "image"),
    load_data=load_training_field,
    log_data=_log_data,
    describe_data=lambda field: (
        f"data: {field.image.path}: {len(field.image.bands)} bands of "
        f"{field.image.shape[0]}x{field.image.shape[1]} px"
    ),
    provenance=lambda cfg, field: {"data": cfg.data.image},
    model_kind=lambda cfg: "sgan",
    training_data=lambda cfg, field: TrainingData.of_path(cfg.data.image),
    build_trainer=build_trainer,
    export=model_from_checkpoint,
    evaluate=_evaluate,
)


def train_deepfield(cfg: DeepFieldTrainConfig, *, log=print):
    """Train the deep-field generator ``cfg`` describes
    (:func:`galray.training.job.run_training`)."""
    return run_training(SPEC, cfg, log=log)
