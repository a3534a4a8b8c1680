"""Driver of an SGAN training job: FITS field -> Ray Train -> MLflow model.

:func:`train_sgan` is what ``galray train sgan`` calls.  It reads the training field (rendering
a synthetic one first if ``data.simulate`` asks for it), fits the intensity scaling, opens the
MLflow run (params), runs :func:`~galray.trainers.sgan.train_loop` under a ``TorchTrainer``,
turns the last checkpoint into a generator bundle (:class:`~galray.deepfield.model.
DeepFieldModel`), and logs and registers it.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from galray.config import to_dict
from galray.datasets.fitsfield import FieldImage, read_field
from galray.deepfield.model import DeepFieldModel
from galray.deepfield.scaling import IntensityScaling
from galray.errors import ConfigError
from galray.models.sgan import Generator
from galray.trainers.emulator_job import init_ray
from galray.trainers.sgan import CHECKPOINT_STATE, SGANTrainConfig, train_loop


@dataclass
class SGANTrainResult:
    run_id: str
    model_uri: str
    registered_uri: str | None
    bundle_path: str
    checkpoint_path: str
    metrics: dict
    seconds: float


def _simulate_if_missing(cfg: SGANTrainConfig, log) -> None:
    if cfg.data.simulate is None or Path(cfg.data.image).exists():
        return
    from galray.config import from_dict
    from galray.datasets.deepfield import DeepFieldConfig, simulate_deepfield

    log(f"{cfg.data.image} does not exist: simulating it (data.simulate)")
    simulate_deepfield(cfg.data.image, from_dict(DeepFieldConfig, dict(cfg.data.simulate)), log=log)


def load_training_field(cfg: SGANTrainConfig) -> FieldImage:
    """The training image, checked against the config (band count, crop sizes)."""
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
    return image


def model_from_checkpoint(
    path: str | Path, cfg: SGANTrainConfig, scaling: IntensityScaling, image: FieldImage, info
) -> DeepFieldModel:
    """The exported generator (EMA weights if kept) of a checkpoint as a DeepFieldModel."""
    state = torch.load(Path(path) / CHECKPOINT_STATE, map_location="cpu", weights_only=False)
    generator = Generator(cfg.net)
    key = "ema_generator" if cfg.optim.ema_decay > 0 else "generator"
    generator.load_state_dict(state[key])  # (compile patches forward only: keys are plain)
    center = None
    if image.wcs is not None:
        h, w = image.shape
        ra, dec = image.wcs.all_pix2world([(w - 1) / 2.0], [(h - 1) / 2.0], 0)
        center = (float(ra[0]), float(dec[0]))
    return DeepFieldModel(
        generator,
        scaling,
        image.bands,
        image.zeropoints,
        image.pixel_scale,
        image.bunit,
        center,
        info,
    )


def _trainer(
    cfg: SGANTrainConfig,
    field_ref,
    storage: str,
    name: str,
    mlflow_info: dict,
    *,
    callbacks: Sequence = (),
    keep_best: tuple[str, str] | None = None,
):
    """The ``TorchTrainer`` of one SGAN run (see :func:`~galray.trainers.ray_run.
    torch_trainer` for ``callbacks`` and ``keep_best``); workers crop from ``field_ref``."""
    from galray.trainers.ray_run import torch_trainer

    return torch_trainer(
        train_loop,
        to_dict(cfg) | {"_field": field_ref, "_mlflow": mlflow_info},
        cfg.scaling,
        name=name,
        storage=storage,
        max_failures=cfg.max_failures,
        callbacks=callbacks,
        keep_best=keep_best,
    )


def put_scaled_field(cfg: SGANTrainConfig, image: FieldImage) -> tuple[IntensityScaling, object]:
    """The image's fitted intensity scaling, and the scaled image in Ray's object store (what
    every worker crops from)."""
    import ray

    scaling = IntensityScaling.fit(image.data, cfg.data.intensity)
    return scaling, ray.put(scaling.forward(image.data))


def train_sgan(cfg: SGANTrainConfig, *, log=print) -> SGANTrainResult:
    """Train, save the generator bundle under ``storage_path/<run name>/sgan``, and log and
    register it in MLflow (unless ``tracking.enabled`` is false)."""
    t0 = time.perf_counter()
    _simulate_if_missing(cfg, log)
    image = load_training_field(cfg)  # bad input fails before Ray starts
    init_ray()
    scaling, field_ref = put_scaled_field(cfg, image)
    storage = str(Path(cfg.storage_path).resolve())

    run_ctx, mlflow_info = contextlib.nullcontext(None), {}
    if cfg.tracking.enabled:  # MLflow is imported only when used
        import mlflow

        from galray import tracking

        uri = tracking.configure_tracking()
        experiment_id = tracking.get_or_create_experiment(cfg.tracking.experiment)
        run_ctx = mlflow.start_run(experiment_id=experiment_id, run_name=cfg.tracking.run_name)
    with run_ctx as run:
        run_id = run.info.run_id if run is not None else uuid.uuid4().hex
        name = cfg.tracking.run_name or f"sgan-{run_id[:8]}"
        if run is not None:
            mlflow_info = {"tracking_uri": uri, "run_id": run_id}
            tracking.log_params_flat(to_dict(cfg))
            h, w = image.shape
            mlflow.log_params(
                {
                    "data.height": h,
                    "data.width": w,
                    "data.bands_read": ",".join(image.bands),
                    "data.pixel_scale": image.pixel_scale,
                }
            )
            mlflow.log_dict(scaling.to_dict(), "intensity_scaling.json")
            log(f"MLflow run {run_id} ({uri})")
        result = _trainer(cfg, field_ref, storage, name, mlflow_info).fit()
        if result.checkpoint is None:
            raise RuntimeError(f"training produced no checkpoint ({result.error})")
        info = {"run_id": run_id, "data": cfg.data.image, "config": to_dict(cfg)}
        with result.checkpoint.as_directory() as ckpt:
            model = model_from_checkpoint(ckpt, cfg, scaling, image, info)
        bundle = model.save(Path(storage) / name / "sgan", overwrite=True)
        model_uri, registered_uri = str(bundle), None
        if run is not None:
            from galray.deepfield.registry import log_deepfield_model

            ref = log_deepfield_model(
                bundle,
                registered_name=cfg.tracking.registered_name or None,
                alias=(cfg.tracking.alias or None) if cfg.tracking.registered_name else None,
                run_id=run_id,
            )
            model_uri = ref.model_uri
            registered_uri = ref.uri if ref.registered_name else None
        seconds = time.perf_counter() - t0
        if run is not None:
            mlflow.log_metric("job_seconds", seconds)
    return SGANTrainResult(
        run_id=run_id,
        model_uri=model_uri,
        registered_uri=registered_uri,
        bundle_path=str(bundle),
        checkpoint_path=result.checkpoint.path,
        metrics=dict(result.metrics or {}),
        seconds=seconds,
    )
