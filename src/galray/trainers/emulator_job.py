"""Driver of an emulator training job: data -> Ray Train -> MLflow model -> fidelity report.

:func:`train_emulator` is what ``galray train emulator`` and ``jobs/train_emulator.py`` call.  It
opens the MLflow run (params), builds the Ray Data splits, runs :func:`~galray.trainers.emulator.
train_loop` under a ``TorchTrainer``, turns the last checkpoint into an emulator bundle, logs and
registers it, and (by default) scores it on held-out test rows.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from galray.config import to_dict
from galray.datasets import schema
from galray.features import EmulatorFeatures
from galray.inference import Emulator
from galray.trainers.emulator import (
    CHECKPOINT_FEATURES,
    CHECKPOINT_STATE,
    EmulatorTrainConfig,
    train_loop,
)
from galray.trainers.ray_run import check_room_for_data


@dataclass
class TrainResult:
    run_id: str
    model_uri: str
    registered_uri: str | None
    bundle_path: str
    checkpoint_path: str
    metrics: dict
    report: dict | None
    report_dir: str | None
    seconds: float


def init_ray(num_cpus: int | None = None, *, log_to_driver: bool = True) -> None:
    """Connect to the cluster in ``RAY_ADDRESS`` (``ray job submit`` sets it) or start a local one.

    A local instance gets its dashboard on a free port and tells its workers that address
    (``RAY_API_SERVER_ADDRESS``).  Ray Train's placement-group cleaner asks the state API whether
    a controller is alive; with several local Ray instances on one machine the API cannot tell
    which to ask, and the workers of a Tune trial stopped early (ASHA) are never freed.
    """
    import socket

    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(num_cpus=num_cpus, log_to_driver=log_to_driver)
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray.init(
        num_cpus=num_cpus,
        log_to_driver=log_to_driver,
        dashboard_port=port,
        runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}},
    )


def emulator_from_checkpoint(path: str | Path, cfg: EmulatorTrainConfig, info: dict) -> Emulator:
    """The generator (or flow) and detection model of a training checkpoint as an
    :class:`Emulator`."""
    from galray.inference import build_generator
    from galray.models.emulator import DetectionModel

    path = Path(path)
    features = EmulatorFeatures.from_json((path / CHECKPOINT_FEATURES).read_text())
    state = torch.load(path / CHECKPOINT_STATE, map_location="cpu", weights_only=False)
    flow = cfg.flow if cfg.model == "flow" else None
    generator = build_generator(features, cfg.net, flow)
    detection = DetectionModel(features.n_cond, cfg.net)
    generator.load_state_dict(state["ema_generator" if cfg.optim.ema_decay > 0 else "generator"])
    detection.load_state_dict(state["detection"])
    return Emulator(generator, detection, features, cfg.net, info, flow)


def _columns(cfg: EmulatorTrainConfig) -> list[str]:
    cols = [schema.true_mag(b) for b in schema.BANDS]
    if cfg.data.use_size:
        cols.append("true_size")
    return cols + [schema.obs_flux(b) for b in schema.BANDS] + ["detected"]


def _simulate_if_missing(cfg: EmulatorTrainConfig, log) -> None:
    """``data.simulate``: write the synthetic survey first if ``data.survey`` does not exist yet."""
    if cfg.data.simulate is None or cfg.data.survey is None or Path(cfg.data.survey).exists():
        return
    from galray.config import from_dict
    from galray.datasets.simulate import SurveyConfig, simulate_survey

    log(f"{cfg.data.survey} does not exist: simulating it (data.simulate)")
    simulate_survey(cfg.data.survey, from_dict(SurveyConfig, dict(cfg.data.simulate)), log=log)


def open_catalog(cfg: EmulatorTrainConfig):
    """The :class:`~galray.datasets.reader.TrainingCatalog` that ``cfg.data`` names."""
    from galray.datasets.reader import TrainingCatalog

    return TrainingCatalog(
        cfg.data.catalog,
        cfg.data.maps,
        fractions=cfg.data.fractions,
        salt=cfg.data.salt,
        max_outside_fraction=cfg.data.max_outside_fraction,
    )


def _trainer(
    cfg: EmulatorTrainConfig,
    catalog,
    storage: str,
    name: str,
    mlflow_info: dict,
    *,
    callbacks: Sequence = (),
    keep_best: tuple[str, str] | None = None,
):
    """The ``TorchTrainer`` of one training run (see :func:`~galray.trainers.ray_run.
    torch_trainer` for ``callbacks`` and ``keep_best``): the train split sharded across the
    workers, the validation split whole on each."""
    from galray.trainers.ray_run import torch_trainer

    return torch_trainer(
        train_loop,
        to_dict(cfg) | {"_mlflow": mlflow_info},
        cfg.scaling,
        name=name,
        storage=storage,
        max_failures=cfg.max_failures,
        callbacks=callbacks,
        keep_best=keep_best,
        datasets={
            "train": catalog.dataset("train", _columns(cfg)),
            "val": catalog.dataset("val", _columns(cfg)),
        },
        datasets_to_split=["train"],
    )


def train_emulator(cfg: EmulatorTrainConfig, *, log=print) -> TrainResult:
    """Train, save the emulator bundle under ``storage_path/<run name>/emulator``, log and
    register it in MLflow (unless ``tracking.enabled`` is false), and score it on the test split."""
    import contextlib
    import uuid

    import ray.data

    t0 = time.perf_counter()
    _simulate_if_missing(cfg, log)
    catalog = open_catalog(cfg)
    init_ray()
    check_room_for_data(cfg.scaling, reads_data=True)  # before anything is logged
    # per-epoch lines from rank 0 are the progress display; Ray Data's bars would interleave
    ray.data.DataContext.get_current().enable_progress_bars = False
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
        name = cfg.tracking.run_name or f"emulator-{run_id[:8]}"
        if run is not None:
            mlflow_info = {"tracking_uri": uri, "run_id": run_id}
            tracking.log_params_flat(to_dict(cfg))
            footprint = catalog.footprint
            mlflow.log_params(
                {"data.n_rows": footprint.n_rows, "data.n_outside_footprint": footprint.n_outside}
            )
            log(f"MLflow run {run_id} ({uri})")
        result = _trainer(cfg, catalog, storage, name, mlflow_info).fit()
        if result.checkpoint is None:
            raise RuntimeError(f"training produced no checkpoint ({result.error})")
        maps = {"nside": catalog.conditions.nside, "ordering": catalog.conditions.ordering}
        info = {"run_id": run_id, "data": cfg.data.catalog, "maps": maps, "config": to_dict(cfg)}
        with result.checkpoint.as_directory() as ckpt:
            emulator = emulator_from_checkpoint(ckpt, cfg, info)
        bundle = emulator.save(Path(storage) / name / "emulator", overwrite=True)
        model_uri, registered_uri = str(bundle), None
        if run is not None:
            ref = tracking.log_emulator(
                bundle,
                registered_name=cfg.tracking.registered_name or None,
                alias=(cfg.tracking.alias or None) if cfg.tracking.registered_name else None,
                run_id=run_id,
            )
            model_uri = ref.model_uri
            registered_uri = ref.uri if ref.registered_name else None
        report = report_dir = None
        if cfg.evaluate:
            report_dir = str(Path(storage) / name / "report")
            report = evaluate_on_split(emulator, catalog, report_dir, cfg.eval_rows, seed=cfg.seed)
            if run is not None:
                from galray.evaluation.emulator import log_report_to_mlflow

                log_report_to_mlflow(report, report_dir)
        seconds = time.perf_counter() - t0
        if run is not None:
            mlflow.log_metric("job_seconds", seconds)
    return TrainResult(
        run_id=run_id,
        model_uri=model_uri,
        registered_uri=registered_uri,
        bundle_path=str(bundle),
        checkpoint_path=result.checkpoint.path,
        metrics=dict(result.metrics or {}),
        report=report,
        report_dir=report_dir,
        seconds=seconds,
    )


def evaluate_on_split(
    emulator: Emulator,
    catalog,
    out_dir: str | Path,
    max_rows: int,
    *,
    split: str = "test",
    seed: int = 0,
) -> dict:
    """Emulate held-out rows of ``catalog`` and score them against the simulated measurements."""
    from galray.evaluation.emulator import fidelity_report

    cols = [schema.true_mag(b) for b in emulator.bands] + ["true_size"]
    cols += [schema.obs_mag(b) for b in emulator.bands] + [
        schema.obs_flux(b) for b in emulator.bands
    ]
    cols += ["detected"] + (["p_detect"] if "p_detect" in catalog.columns else [])
    reference = catalog.dataset(split, cols).limit(max_rows).to_pandas()
    emulated = reference.drop(columns=["p_detect"], errors="ignore")
    for name, values in emulator.sample(reference, seed=seed).items():
        emulated[name] = values
    report = fidelity_report(
        reference, emulated, Path(out_dir), bands=tuple(emulator.bands), seed=seed
    )
    (Path(out_dir) / "emulator.json").write_text(json.dumps(emulator.info, indent=2))
    return report
