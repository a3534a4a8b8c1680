"""Inside a Ray Train worker: what every product's training loop does around its own steps.

A loop calls :func:`worker_context` first, reads its Ray Data shards with :func:`materialize`,
restores with :func:`restore`, then runs :func:`run_epochs` with its own steps: each epoch takes
its seeds from :func:`epoch_seeds`, its learning rate and stop decision from :class:`EpochClock`,
and a reported epoch ends with :func:`report` (rank 0: a checkpoint; other ranks: metrics only).
:func:`maybe_fail` is the fault injection the tests use.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from galray.training.config import TrainJobConfig
from galray.training.modules import lr_scale

CHECKPOINT_STATE = "state.pt"
CHECKPOINT_PROGRESS = "progress.json"


@dataclass
class WorkerContext:
    rank: int
    world: int
    device: torch.device


def worker_context(mlflow_info: dict | None = None) -> WorkerContext:
    """This worker's rank, world size and device.  ``mlflow_info``: the driver's MLflow run;
    rank 0 starts opening its client now, in a thread, so that importing MLflow and opening
    its tracking store (~2 s) overlap with reading the data (:class:`MlflowEpochLogger`)."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    if ctx.get_world_rank() == 0:
        timing_mark("worker started")
        if (mlflow_info or {}).get("tracking_uri") and mlflow_info.get("run_id"):
            _open_client(mlflow_info["tracking_uri"])
    return WorkerContext(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())


def use_torch_threads(scaling) -> None:
    """``scaling.torch_threads`` torch CPU threads, when set -- called once the worker's data is
    read, so reading keeps Ray's one thread per reserved CPU."""
    if scaling.torch_threads:
        torch.set_num_threads(int(scaling.torch_threads))


def all_reduce_np(x: np.ndarray, device: torch.device, op=None) -> np.ndarray:
    """``x`` summed (or reduced by ``op``) over all ranks; ``x`` itself on one rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    t = torch.as_tensor(x, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t.cpu().numpy()


def materialize(shard, columns: list[str]) -> dict[str, np.ndarray]:
    """A Ray Data shard (DataIterator) as numpy columns, read block by block (an empty shard:
    empty arrays)."""
    parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    for batch in shard.iter_batches(batch_size=None, batch_format="numpy"):
        for c in columns:
            parts[c].append(np.asarray(batch[c]))
    timing_mark("shard read")
    return {c: np.concatenate(v) if v else np.empty(0) for c, v in parts.items()}


def timing_mark(stage: str) -> None:
    """With ``GALRAY_TIMING`` set (``scripts/startup_breakdown.py`` sets it): a line saying when
    (Unix time) this worker reached ``stage``, into the job's log file with the driver's marks."""
    if os.environ.get("GALRAY_TIMING"):
        worker_print(f"[galray] timing: {stage} at {time.time():.3f}")


def epoch_seeds(seed: int, epoch: int, rank: int) -> tuple[torch.Generator, int]:
    """The data-order generator of an epoch and the seed of torch's global generator (noise):
    both depend on (seed, epoch, rank) only, so a restarted worker group replays the epoch, and
    the two streams are distinct."""
    base = seed * 1_000_003 + epoch * 7919 + rank
    return torch.Generator().manual_seed(base), base + 1


class EpochClock:
    """Training time and where training stands, shared by all ranks.

    :meth:`lr_scale` gives an epoch's learning-rate multiplier from the fraction of training done
    before it -- of ``epochs`` or of ``time_budget_s``, whichever is further.  :meth:`end_epoch`
    counts an epoch's time (the slowest rank's when a budget is set, so all ranks stop after the
    same epoch) and says whether the epoch reports; then :attr:`last` says whether it was the
    last, :meth:`metrics` gives its timing metrics and :meth:`progress` what a checkpoint
    records."""

    def __init__(self, cfg: TrainJobConfig, device: torch.device, world: int, progress: dict):
        self.epochs, self.budget, self.report_every = (
            cfg.epochs,
            cfg.time_budget_s,
            cfg.report_every,
        )
        self.device, self.world = device, world
        self.seconds = progress.get("train_seconds", 0.0)
        self.history = list(progress.get("history", []))
        self.start = progress.get("epoch", 0) + 1
        self.epoch, self.epoch_seconds, self.last = 0, 0.0, False

    def lr_scale(self, epoch: int, warmdown: float) -> float:
        progress = (epoch - 1) / self.epochs
        if self.budget is not None:
            progress = max(progress, self.seconds / self.budget)
        return lr_scale(progress, warmdown)

    def end_epoch(self, epoch: int, seconds: float) -> bool:
        self.seconds += seconds
        if self.world > 1 and self.budget is not None:
            one = np.array([self.seconds])
            self.seconds = float(all_reduce_np(one, self.device, dist.ReduceOp.MAX)[0])
        out_of_time = self.budget is not None and self.seconds >= self.budget
        self.epoch, self.epoch_seconds = epoch, seconds
        self.last = epoch == self.epochs or out_of_time
        return self.last or epoch % self.report_every == 0

    def metrics(self) -> dict[str, float]:
        return {
            "epoch": self.epoch,
            "epoch_seconds": self.epoch_seconds,
            "train_seconds": self.seconds,
        }

    def progress(self) -> dict:
        """What a checkpoint records (rank 0 adds the epoch to the history)."""
        return {"epoch": self.epoch, "history": self.history, "train_seconds": self.seconds}


def restore(state, device: torch.device, extra: Callable[[Path], None] | None = None) -> dict:
    """Load the latest checkpoint of a restarted worker group into ``state`` (a
    :class:`~galray.training.modules.TrainingState`); returns its progress
    (``{"epoch", "history", "train_seconds"}``), or ``{}`` on a fresh start.  ``extra(dir)``
    reads a product's own files from the checkpoint directory."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return {}
    with checkpoint.as_directory() as d:
        d = Path(d)
        state.load_state_dict(
            torch.load(d / CHECKPOINT_STATE, map_location=device, weights_only=True)
        )
        progress = json.loads((d / CHECKPOINT_PROGRESS).read_text())
        if extra is not None:
            extra(d)
    return progress


def report(
    metrics: dict[str, float],
    *,
    rank: int,
    state,
    clock: EpochClock,
    files: dict[str, str] | None = None,
) -> None:
    """End of a reported epoch: rank 0 saves ``state``, the clock's progress and ``files``
    (name -> text) as a checkpoint and reports it with ``metrics``; other ranks report
    ``metrics``."""
    import ray.train

    if rank != 0:
        ray.train.report(metrics)
        return
    clock.history.append(clock.epoch)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(state.state_dict(), Path(tmp) / CHECKPOINT_STATE)
        (Path(tmp) / CHECKPOINT_PROGRESS).write_text(json.dumps(clock.progress()))
        for name, text in (files or {}).items():
            (Path(tmp) / name).write_text(text)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def load_state(checkpoint_dir: str | Path) -> dict:
    """The state dict saved in a checkpoint directory (on the CPU)."""
    return torch.load(
        Path(checkpoint_dir) / CHECKPOINT_STATE, map_location="cpu", weights_only=True
    )


_OPENING: dict[str, Future] = {}  # tracking URI -> its MlflowClient, being opened


def _open_client(uri: str) -> Future:
    """The MlflowClient of ``uri``, opened in a thread (once; an error is raised by
    ``result()``)."""
    if uri not in _OPENING:
        future: Future = Future()

        def open_client() -> None:
            try:
                from mlflow.tracking import MlflowClient

                future.set_result(MlflowClient(uri))
            except BaseException as exc:  # raised again by result()
                future.set_exception(exc)

        _OPENING[uri] = future
        threading.Thread(target=open_client, name="galray-mlflow-client", daemon=True).start()
    return _OPENING[uri]


class MlflowEpochLogger:
    """Rank 0 logs per-epoch metrics (and images) into the MLflow run the driver opened, named
    ``train/...`` and ``val/...`` (:func:`galray.tracking.metric_name`; the reports to Ray Train
    keep the bare names Tune ranks by); without a run (``mlflow_info`` empty) it does nothing."""

    def __init__(self, mlflow_info: dict | None):
        mlflow_info = mlflow_info or {}
        self.client, self.run_id = None, mlflow_info.get("run_id")
        if mlflow_info.get("tracking_uri") and self.run_id:
            opening = _open_client(mlflow_info["tracking_uri"])  # started by worker_context
            _OPENING.pop(mlflow_info["tracking_uri"])  # a later logger opens its own
            self.client = opening.result()

    @property
    def enabled(self) -> bool:
        """Whether there is a run to log to (else logging does nothing)."""
        return self.client is not None

    def log(self, metrics: dict[str, float], epoch: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        from galray.tracking import metric_name

        now = int(time.time() * 1000)
        batch = [
            Metric(metric_name(k), float(v), now, epoch)  # train/..., val/...
            for k, v in metrics.items()
            if np.isfinite(v)
        ]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_image(self, image: np.ndarray, artifact_file: str) -> None:
        if self.client is not None:
            self.client.log_image(self.run_id, image, artifact_file=artifact_file)


BATCH_LINE_EVERY_S = 10.0  # within an epoch longer than this, rank 0 says which batch it is on


def worker_print(line: str) -> None:
    """One progress line from a Train worker to the job's console, once.  Ray Train patches
    ``print`` in its workers to go through the root logger *and*, because the worker's
    ``sys.stdout`` is wrapped, to the stream as well, so a plain ``print`` reaches the driver
    twice; the process's own stdout is forwarded once."""
    sys.__stdout__.write(line + "\n")
    sys.__stdout__.flush()


def maybe_fail(cfg: TrainJobConfig, epoch: int, rank: int, world: int) -> None:
    """Fault injection (``debug_fail_at_epoch``): the last rank dies (``os._exit``) once,
    mid-way through that epoch."""
    if cfg.debug_fail_at_epoch != epoch or rank != world - 1:
        return
    marker = Path(cfg.storage_path) / f".debug-failed-{cfg.tracking.run_name or 'run'}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("died once")
    time.sleep(3.0)  # let the controller register the previous epoch's checkpoint
    os._exit(1)


def same_steps(optim, step: Callable[[torch.Generator], None]):
    """A ``plan`` for :func:`run_epochs`: every epoch ``optim.steps_per_epoch`` calls of
    ``step(order)``, each on ``optim.batch_size`` rows."""
    n = optim.steps_per_epoch
    return lambda epoch, order: ((lambda k: step(order)), n, n * optim.batch_size)


def run_epochs(
    cfg: TrainJobConfig,
    ctx: WorkerContext,
    state,
    progress: dict,
    mlflow_info: dict,
    *,
    plan: Callable[[int, torch.Generator], tuple[Callable[[int], None], int, int]],
    rate: str,
    validate: Callable[[int], dict[str, float]],
    line: Callable[[dict[str, float], int, float], str],
    last_metrics: Callable[[], dict[str, float]] | None = None,
    after_log: Callable[[MlflowEpochLogger, int, bool], None] | None = None,
    files: Callable[[], dict[str, str]] | None = None,
) -> None:
    """The epochs of a training loop, from where ``progress`` (:func:`restore`) left off to
    ``cfg.epochs`` or the time budget (:class:`EpochClock`).

    Each epoch seeds its data order and torch's generator (:func:`epoch_seeds`), scales the
    learning rate of ``state`` (a :class:`~galray.training.modules.TrainingState`) and runs the
    product's steps: ``plan(epoch, order) -> (step, n, items)``, then ``step(k)`` for ``k`` in
    ``range(n)`` on ``items`` rows of this rank (:func:`maybe_fail` halfway; :func:`same_steps`
    is the plan of a fixed number of alike steps).  A reported epoch's metrics are the steps'
    (``state.pop_metrics()``), the clock's, ``rate`` (items per second over all ranks) and, on
    the last epoch, ``last_metrics()`` (every rank: it may be collective).  Rank 0 adds
    ``validate(epoch)``, logs them to the MLflow run of ``mlflow_info``, calls
    ``after_log(logger, epoch, last)`` and prints ``line(metrics, epoch, seconds)``; every rank
    then reports, rank 0 with a checkpoint holding ``files()`` (name -> text) too."""
    rank, world = ctx.rank, ctx.world
    clock = EpochClock(cfg, ctx.device, world, progress)
    logger = MlflowEpochLogger(mlflow_info) if rank == 0 else None
    if rank == 0:
        timing_mark("epoch loop starts")
    for epoch in range(clock.start, cfg.epochs + 1):
        order, noise_seed = epoch_seeds(cfg.seed, epoch, rank)
        torch.manual_seed(noise_seed)
        state.set_lr_scale(clock.lr_scale(epoch, cfg.optim.warmdown))
        t0 = time.perf_counter()
        step, n, items = plan(epoch, order)
        shown = t0
        for k in range(n):
            if k == n // 2:
                maybe_fail(cfg, epoch, rank, world)
            step(k)
            if rank == 0 and time.perf_counter() - shown >= BATCH_LINE_EVERY_S and k + 1 < n:
                shown = time.perf_counter()  # a long epoch: the driver shows how far it is
                worker_print(f"[galray] batch {k + 1}/{n} of epoch {epoch}/{cfg.epochs}")
        metrics = state.pop_metrics()  # the one host sync of the epoch
        seconds = time.perf_counter() - t0
        if rank == 0 and epoch == clock.start:
            timing_mark("first epoch's steps done")
        if not clock.end_epoch(epoch, seconds):
            continue
        metrics.update(clock.metrics(), **{rate: items * world / seconds})
        if clock.last and last_metrics is not None:
            metrics.update(last_metrics())
        if rank == 0:
            metrics.update(validate(epoch))
            timing_mark(f"epoch {epoch} validated")
            logger.log(metrics, epoch)
            timing_mark(f"epoch {epoch} logged to MLflow")
            if after_log is not None:
                after_log(logger, epoch, clock.last)
            worker_print(line(metrics, epoch, seconds))
        report(metrics, rank=rank, state=state, clock=clock, files=files() if files else None)
        if clock.last:
            break
