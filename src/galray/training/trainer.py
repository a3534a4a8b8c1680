"""The ``TorchTrainer`` of a galray training job, built from the job's worker scaling, failure
and checkpoint settings (used by :func:`galray.training.job.run_training` and by Tune trials)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from galray.config import to_dict
from galray.errors import ConfigError
from galray.training.config import TrainJobConfig

# CPUs a Ray Data read task asks for (its default): a local instance must keep this much free
DATA_TASK_CPUS = 1.0


def check_room_for_data(scaling, *, reads_data: bool) -> None:
    """On a fixed-size local Ray instance (no ``RAY_ADDRESS``: galray started it), refuse a
    worker group that would leave Ray Data no CPU to read with -- the job would wait forever."""
    import ray

    if not reads_data or os.environ.get("RAY_ADDRESS") or not ray.is_initialized():
        return
    total = float(ray.cluster_resources().get("CPU", 0.0))
    taken = scaling.num_workers * scaling.cpus_per_worker
    if total and total - taken < DATA_TASK_CPUS:
        raise ConfigError(
            f"scaling.cpus_per_worker: {scaling.num_workers} worker(s) x "
            f"{scaling.cpus_per_worker:g} CPUs leave {max(total - taken, 0):g} of this Ray "
            f"instance's {total:g} CPUs, and reading the data needs {DATA_TASK_CPUS:g} free: "
            "training would wait forever.  Reserve less per worker (scaling.torch_threads "
            "lets a worker still compute on more cores once its data is read)."
        )


def torch_trainer(
    train_loop: Callable[[dict], None],
    cfg: TrainJobConfig,
    *,
    name: str,
    storage: str,
    loop_extra: dict | None = None,
    callbacks: Sequence = (),
    keep_best: tuple[str, str] | None = None,
    datasets: dict | None = None,
    datasets_to_split: Sequence[str] = (),
):
    """A ``TorchTrainer`` running ``train_loop(config)`` -- ``config`` is ``cfg`` as a dict plus
    ``loop_extra`` -- on ``cfg.scaling`` workers, checkpointing under ``storage/name`` and
    restarting a failed worker group up to ``cfg.max_failures`` times.

    callbacks: Ray Train ``UserCallback``s (a Tune trial passes ``TuneReportCallback``).
    keep_best: ``(metric, "min"|"max")`` keeps the best checkpoint by that metric besides the
    latest (default: the two latest).  datasets: Ray Data datasets handed to the workers; those
    in ``datasets_to_split`` are sharded across them (with more than one worker), the others
    reach every worker whole.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    scaling = cfg.scaling
    check_room_for_data(scaling, reads_data=bool(datasets))
    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker
    keep = {}
    if keep_best is not None:
        keep = {"checkpoint_score_attribute": keep_best[0], "checkpoint_score_order": keep_best[1]}
    extra = {}
    if datasets:
        # One worker gets every row either way; unsplit, it reads the dataset itself instead
        # of through a split coordinator (an actor to start: ~3 s of a smoke run's start-up).
        split = list(datasets_to_split) if scaling.num_workers > 1 else []
        extra = {"datasets": datasets, "dataset_config": ray.train.DataConfig(split)}
    return TorchTrainer(
        train_loop,
        train_loop_config=to_dict(cfg) | (loop_extra or {}),
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker=resources,
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2, **keep),
            callbacks=list(callbacks),
        ),
        **extra,
    )
