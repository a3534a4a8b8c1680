"""The job skeleton every product's training runs: ``galray train``, ``galray tune`` and
``jobs/`` all go through :func:`run_training` (or, for a sweep's trials and winner,
:meth:`ProductSpec.build_trainer` and :func:`publish`).

A product declares what differs in a :class:`ProductSpec` -- its config class, how to prepare
and load its data, its ``TorchTrainer``, how a checkpoint becomes its bundle, its registry entry
and its evaluation -- and nothing else::

    prepare(cfg)        driver, before Ray: check the data exists (or simulate it, if asked)
    load_data(cfg)      driver: the training data's handle (a catalog, an image), checked
    run                 new or resumed (galray.training.runs): directory, lock, MLflow run
                        with the config as params; ended FINISHED, KILLED or FAILED
    build_trainer(...)  the product's Ray Train job; .fit() trains, checkpoints, resumes
    publish(...)        checkpoint -> bundle (saved) -> MLflow model (registered) -> report
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from galray.config import to_dict
from galray.registry import BundleKind
from galray.training.config import TrainJobConfig


@dataclass(frozen=True)
class ProductSpec:
    """What a product declares so that ``train``, ``tune`` and ``jobs/`` can run it.

    name: the CLI and sweep name (``galray train NAME``).  config_cls: its
    :class:`~galray.training.config.TrainJobConfig` subclass.  bundle_dir: the subdirectory of
    ``storage_path/<run>`` the bundle is saved to (and the prefix of default run names).
    kind: its :class:`galray.registry.BundleKind`.  metric, mode: the default metric a sweep
    ranks trials by (reported every epoch).  fixed: config fields a sweep may not search.
    reads_data: the trainer reads Ray Data datasets (so a local Ray instance must keep a CPU free).
    shape_fields: config fields (dotted prefixes) a checkpoint's state depends on: resuming a
    run with any of them changed is refused, naming them.
    model_kind(cfg) -> str: the model a config trains (``flow``, ``gan``, ``sgan``, ``stamps``;
    default: ``name``), the run's tag ``galray.model``.  inactive_params(cfg) -> dotted
    prefixes of the config fields that model does not use (a flow run's GAN-only ``net.*``):
    left out of the run's params.  training_data(cfg, data) -> the
    :class:`~galray.tracking.TrainingData` the run records as its input (None: nothing).

    prepare(cfg, log) -> cfg: driver side, before Ray starts; check that the data exists, or
    write it when ``data.simulate_if_missing`` asks (saying so in one line).  absolute_paths(cfg) -> cfg: the config with every path absolute
    (trials run in other directories, possibly other nodes).  load_data(cfg) -> data: the
    training data's handle.  log_data(data): MLflow params/artifacts describing the data (in
    the active run); describe_data(data): one line about it for the console (rows, rows
    dropped).  provenance(cfg, data) -> dict: what the bundle records of its data.
    build_trainer(cfg, data, *, storage, name, mlflow_info, callbacks, keep_best) -> the
    ``TorchTrainer``.  export(checkpoint_dir, cfg, data, info) -> the bundle object (with
    ``save(path, overwrite=)``).  evaluate(cfg, model, data, out_dir) -> report dict or None.
    """

    name: str
    config_cls: type[TrainJobConfig]
    bundle_dir: str
    kind: BundleKind
    metric: str
    mode: str
    prepare: Callable[..., TrainJobConfig]
    absolute_paths: Callable[[TrainJobConfig], TrainJobConfig]
    load_data: Callable[[TrainJobConfig], Any]
    log_data: Callable[[Any], None]
    describe_data: Callable[[Any], str]
    provenance: Callable[[TrainJobConfig, Any], dict]
    build_trainer: Callable[..., Any]
    export: Callable[..., Any]
    evaluate: Callable[..., dict | None]
    reads_data: bool = False
    shape_fields: tuple[str, ...] = ("net",)
    fixed: tuple[str, ...] = ("epochs", "tracking", "storage_path", "data", "debug_fail_at_epoch")
    model_kind: Callable[[TrainJobConfig], str] | None = None
    inactive_params: Callable[[TrainJobConfig], tuple[str, ...]] = lambda cfg: ()
    training_data: Callable[[TrainJobConfig, Any], Any] = lambda cfg, data: None

    def model_of(self, cfg: TrainJobConfig) -> str:
        """The model ``cfg`` trains (:attr:`model_kind`, default the product's name)."""
        return self.model_kind(cfg) if self.model_kind is not None else self.name

    def params(self, cfg: TrainJobConfig) -> dict[str, str]:
        """The run's MLflow params: the config, flattened, without :attr:`inactive_params`."""
        from galray.tracking import active_params

        return active_params(to_dict(cfg), self.inactive_params(cfg))


@dataclass
class Published:
    """A checkpoint turned into a model: the saved bundle, its MLflow URIs and its report."""

    bundle: str
    model_uri: str
    registered_uri: str | None = None
    report: dict | None = None
    report_dir: str | None = None


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


def run_training(
    spec: ProductSpec, cfg: TrainJobConfig, *, resume: str | None = None, log=print
) -> TrainResult:
    """Train ``spec``'s model as ``cfg`` says: save its bundle under ``storage_path/<run
    name>/<bundle_dir>``, log and register it in MLflow (unless ``tracking.enabled`` is false)
    and score it (when the product's evaluation is on).

    resume: an interrupted run's MLflow run id or name (without tracking: its name) to continue
    -- the same MLflow run, from its latest checkpoint (:mod:`galray.training.runs`)."""
    import ray.data

    from galray import console
    from galray.training import runs
    from galray.training.ray_env import init_ray
    from galray.training.trainer import check_room_for_data

    t0 = time.perf_counter()
    console.mark("training imports done")
    cfg = spec.prepare(cfg, log)
    data = spec.load_data(cfg)  # bad input fails before Ray starts
    log(spec.describe_data(data))
    console.mark("data loaded")
    storage = Path(cfg.storage_path).resolve()
    target = runs.resolve(spec, cfg, storage, resume, log)  # so does a bad --resume
    console.mark("run resolved")
    console.set_log_dir(storage)  # the CLI's log file: <storage_path>/galray-logs/
    opening = _open_tracking_store(cfg)
    init_ray()
    console.mark("Ray started")
    if opening is not None:
        opening.join()
    check_room_for_data(cfg.scaling, reads_data=spec.reads_data)  # before anything is logged
    # per-epoch lines from rank 0 are the progress display; Ray Data's bars would interleave
    ray.data.DataContext.get_current().enable_progress_bars = False

    with runs.driver_run(spec, cfg, target, storage, log) as run:
        if run.tracked:
            import mlflow

            if not run.resumed:
                spec.log_data(data)
            record_run(spec, cfg, data, resumed=run.resumed)
            log(f"MLflow run {run.run_id} ({run.mlflow_info['tracking_uri']})")
        console.mark("MLflow run open")
        trainer = spec.build_trainer(
            cfg,
            data,
            storage=str(run.directory.parent),
            name=run.name,
            mlflow_info=run.mlflow_info,
        )
        console.mark("trainer built (datasets planned)")
        budget = getattr(cfg, "time_budget_s", None)
        with console.epoch_progress(cfg.epochs, budget):  # advanced by rank 0's epoch lines
            result = trainer.fit()
        console.mark("training done")
        if result.checkpoint is None:
            raise RuntimeError(f"training produced no checkpoint ({result.error})")
        published = publish(
            spec,
            cfg,
            result.checkpoint,
            run.directory,
            data=data,
            run_id=run.run_id if run.tracked else None,
            info={"run_id": run.run_id},  # the job's id even without MLflow
            log=log,
        )
        seconds = time.perf_counter() - t0
        if run.tracked:
            mlflow.log_metric("train/job_seconds", seconds)
    return TrainResult(
        run_id=run.run_id,
        model_uri=published.model_uri,
        registered_uri=published.registered_uri,
        bundle_path=published.bundle,
        checkpoint_path=result.checkpoint.path,
        metrics=dict(result.metrics or {}),
        report=published.report,
        report_dir=published.report_dir,
        seconds=seconds,
    )


def _open_tracking_store(cfg: TrainJobConfig) -> threading.Thread | None:
    """Open the run's MLflow tracking store in a thread while Ray starts (importing SQLAlchemy,
    checking the database's schema: ~1 s); MLflow keeps one store per URI, so the run opens on
    it.  A failure is left to the run's own opening, which raises it as before."""
    if not cfg.tracking.enabled:
        return None
    from galray.tracking import tracking_uri

    uri = tracking_uri()  # what runs.driver_run configures

    def open_store() -> None:
        try:
            from mlflow.tracking import MlflowClient

            MlflowClient(uri)  # resolves (and caches) the tracking store
        except Exception:  # driver_run opens it again and raises the error
            pass

    thread = threading.Thread(target=open_store, name="galray-mlflow-store", daemon=True)
    thread.start()
    return thread


def record_run(
    spec: ProductSpec,
    cfg: TrainJobConfig,
    data,
    *,
    resumed: bool = False,
    run_id: str | None = None,
) -> None:
    """What the MLflow run (default: the active one) says about itself: its description,
    tags (galray version, git commit, product, model, survey) and, for a new run, its training
    data as a dataset input (:func:`galray.tracking.describe_run`)."""
    from galray import tracking

    model = spec.model_of(cfg)
    record = spec.training_data(cfg, data)
    registered = cfg.tracking.registered_name
    if registered and cfg.tracking.alias:
        registered = f"{registered}@{cfg.tracking.alias}"
    lines = [
        f"galray {spec.name} ({model} model): {cfg.epochs} epochs, seed {cfg.seed}, "
        f"{cfg.scaling.num_workers} {'GPU' if cfg.scaling.use_gpu else 'CPU'} worker(s).",
        "",
        "Data: " + spec.describe_data(data).removeprefix("data: ") + ".",
    ]
    if record is not None:
        lines += ["", f"Training data: `{record.source}` (digest {record.digest})."]
    if registered:
        lines += ["", f"Registers `models:/{registered}`."]
    inactive = spec.inactive_params(cfg)
    if inactive:
        lines += [
            "",
            f"Params: the config fields this model uses ({', '.join(inactive)} left out).",
        ]
    tracking.describe_run(
        spec.name, model, record, "\n".join(lines), run_id=run_id, log_input=not resumed
    )


def publish(
    spec: ProductSpec,
    cfg: TrainJobConfig,
    checkpoint,
    out_dir: str | Path,
    *,
    data=None,
    run_id: str | None,
    info: dict | None = None,
    log=print,
) -> Published:
    """A checkpoint (a ``ray.train.Checkpoint`` or its directory) -> the product's bundle under
    ``out_dir/<bundle_dir>`` -> the MLflow model of run ``run_id`` (None: MLflow off),
    registered as ``tracking.registered_name@alias`` -> its report under ``out_dir/report``
    (logged to the same run).  ``data``: the training data's handle (loaded if None); ``info``:
    provenance recorded in the bundle besides the data and config (``run_id`` defaults to the
    MLflow run's)."""
    from ray.train import Checkpoint

    from galray import registry

    out_dir = Path(out_dir)
    data = spec.load_data(cfg) if data is None else data
    info = {"run_id": run_id, **(info or {}), **spec.provenance(cfg, data), "config": to_dict(cfg)}
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = Checkpoint(checkpoint)
    with checkpoint.as_directory() as directory:
        model = spec.export(directory, cfg, data=data, info=info)
    bundle = model.save(out_dir / spec.bundle_dir, overwrite=True)
    out = Published(bundle=str(bundle), model_uri=str(bundle))
    if run_id is not None:
        ref = registry.log_bundle(
            spec.kind,
            bundle,
            registered_name=cfg.tracking.registered_name or None,
            alias=(cfg.tracking.alias or None) if cfg.tracking.registered_name else None,
            run_id=run_id,
        )
        out.model_uri, out.registered_uri = ref.model_uri, ref.registered_uri
        log(f"model logged: {out.registered_uri or out.model_uri}")
    report_dir = out_dir / "report"
    out.report = spec.evaluate(cfg, model, data, report_dir)
    if out.report is not None:
        out.report_dir = str(report_dir)
        if run_id is not None:
            from galray import tracking

            tracking.log_report(out.report, report_dir, run_id=run_id)
    return out
