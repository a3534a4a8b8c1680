"""The transfer-function emulator as a Tune trainer (``galray tune emulator``).

A trial is exactly ``galray train emulator``'s Ray Train job (:func:`~galray.trainers.
emulator_job._trainer`, same loop, same checkpoints, same per-epoch MLflow metrics); the best
checkpoint becomes an emulator bundle with :func:`~galray.trainers.emulator_job.
emulator_from_checkpoint`, logged and registered like a trained one, and scored on the test split
when ``evaluate`` is on.

Default metric: ``val_swd``, the sliced Wasserstein distance between the emulated and the
simulated joint (conditions, measurement) of detected validation rows.  It needs no classifier,
costs milliseconds, and unlike ``val_ks_max`` (per-band marginals) it penalises a generator whose
scatter ignores depth or PSF.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from galray.config import to_dict
from galray.trainers.emulator import EmulatorTrainConfig
from galray.tune.sweep import Tunable


def _prepare(cfg: EmulatorTrainConfig, log) -> EmulatorTrainConfig:
    """Write the survey if ``data.simulate`` asks for it, and make every path absolute (trials
    run in their own directories, possibly on other nodes of a shared file system)."""
    from galray.trainers.emulator_job import _simulate_if_missing, open_catalog

    _simulate_if_missing(cfg, log)
    data = replace(
        cfg.data,
        survey=_absolute(cfg.data.survey),
        catalog=_absolute(cfg.data.catalog),
        maps=_absolute(cfg.data.maps),
    )
    cfg = replace(cfg, data=data, storage_path=_absolute(cfg.storage_path))
    open_catalog(cfg)  # validate the data once, here, rather than in every trial
    return cfg


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


def _train_trial(
    cfg: EmulatorTrainConfig, *, name, storage, mlflow_info, callbacks, keep_best
) -> None:
    from galray.trainers.emulator_job import _trainer, open_catalog

    catalog = open_catalog(cfg)
    trainer = _trainer(
        cfg, catalog, storage, name, mlflow_info, callbacks=callbacks, keep_best=keep_best
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error


def _publish(cfg: EmulatorTrainConfig, checkpoint, out_dir: Path, *, run_id, info, log) -> dict:
    """Best checkpoint -> emulator bundle -> MLflow model (registered) -> fidelity report."""
    from ray.train import Checkpoint

    from galray.trainers.emulator_job import (
        emulator_from_checkpoint,
        evaluate_on_split,
        open_catalog,
    )

    catalog = open_catalog(cfg)
    maps = {"nside": catalog.conditions.nside, "ordering": catalog.conditions.ordering}
    info = dict(info, run_id=run_id, data=cfg.data.catalog, maps=maps, config=to_dict(cfg))
    with Checkpoint(checkpoint).as_directory() as directory:
        emulator = emulator_from_checkpoint(directory, cfg, info)
    bundle = emulator.save(Path(out_dir) / "emulator", overwrite=True)
    out = {"bundle": str(bundle), "model_uri": str(bundle), "registered_uri": None, "report": None}
    if run_id is not None:
        from galray import tracking

        ref = tracking.log_emulator(
            bundle,
            registered_name=cfg.tracking.registered_name or None,
            alias=(cfg.tracking.alias or None) if cfg.tracking.registered_name else None,
            run_id=run_id,
        )
        out["model_uri"] = ref.model_uri
        out["registered_uri"] = ref.uri if ref.registered_name else None
        log(f"best model logged: {out['registered_uri'] or ref.model_uri}")
    if cfg.evaluate:
        report_dir = Path(out_dir) / "report"
        out["report"] = evaluate_on_split(
            emulator, catalog, report_dir, cfg.eval_rows, seed=cfg.seed
        )
        out["report_dir"] = str(report_dir)
        if run_id is not None:
            import mlflow

            from galray.evaluation.emulator import log_report_to_mlflow

            with mlflow.start_run(run_id=run_id):
                log_report_to_mlflow(out["report"], report_dir)
    return out


EMULATOR = Tunable(
    name="emulator",
    config_cls=EmulatorTrainConfig,
    metric="val_swd",
    mode="min",
    prepare=_prepare,
    train_trial=_train_trial,
    publish=_publish,
    fixed=("epochs", "tracking", "storage_path", "data", "debug_fail_at_epoch"),
)
