"""What every galray Ray Train job shares: the ``TorchTrainer`` built from a job's scaling,
failure and checkpoint settings (used by the emulator and SGAN drivers and by Tune trials)."""

from __future__ import annotations

from collections.abc import Callable, Sequence


def torch_trainer(
    train_loop: Callable[[dict], None],
    loop_config: dict,
    scaling,
    *,
    name: str,
    storage: str,
    max_failures: int,
    callbacks: Sequence = (),
    keep_best: tuple[str, str] | None = None,
    datasets: dict | None = None,
    datasets_to_split: Sequence[str] = (),
):
    """A ``TorchTrainer`` running ``train_loop(loop_config)`` on ``scaling``
    (:class:`~galray.trainers.emulator.ScalingConfig`) workers, checkpointing under
    ``storage/name`` and restarting a failed worker group up to ``max_failures`` times.

    callbacks: Ray Train ``UserCallback``s (a Tune trial passes ``TuneReportCallback``).
    keep_best: ``(metric, "min"|"max")`` keeps the best checkpoint by that metric besides the
    latest (default: the two latest).  datasets: Ray Data datasets handed to the workers; those
    in ``datasets_to_split`` are sharded across them, the others reach every worker whole.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker
    keep = {}
    if keep_best is not None:
        keep = {"checkpoint_score_attribute": keep_best[0], "checkpoint_score_order": keep_best[1]}
    extra = {}
    if datasets:
        split = list(datasets_to_split)
        extra = {"datasets": datasets, "dataset_config": ray.train.DataConfig(split)}
    return TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker=resources,
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2, **keep),
            callbacks=list(callbacks),
        ),
        **extra,
    )
