"""Config sections shared by every training job (validated on construction; errors name the field).

A product's job config subclasses :class:`TrainJobConfig` and adds its own ``data``, ``net`` and
``optim`` sections; :class:`AdversarialOptim` holds the fields every GAN optimiser has.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from galray.config import check_choices, require


@dataclass
class WorkerScaling:
    """Ray Train workers of a job (named so as not to shadow ``ray.train.ScalingConfig``).

    num_workers: Ray Train workers (DDP ranks).  use_gpu: give each worker a GPU.
    cpus_per_worker: CPU share of each worker (0.5 lets 2 workers share 2 cores with Ray Data).
    gpus_per_worker: GPU share of each worker when ``use_gpu`` (a fraction, e.g. 0.25, lets
    several Tune trials share one GPU).  torch_threads: threads of each worker's torch CPU
    operations once its data is read (default: Ray's, one per whole CPU reserved).  On a
    machine of its own, ``cpus_per_worker: 1`` with ``torch_threads`` = its cores trains on all
    of them while leaving Ray Data a CPU to read with."""

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        require(
            self.num_workers >= 1, "scaling.num_workers", f"must be >= 1, got {self.num_workers}"
        )
        require(self.cpus_per_worker > 0, "scaling.cpus_per_worker", "must be > 0")
        require(
            0 < self.gpus_per_worker <= 1 or float(self.gpus_per_worker).is_integer(),
            "scaling.gpus_per_worker",
            f"must be a fraction in (0, 1] or a whole number, got {self.gpus_per_worker}",
        )
        require(
            self.torch_threads is None or self.torch_threads >= 1,
            "scaling.torch_threads",
            f"must be >= 1, got {self.torch_threads}",
        )


@dataclass
class TrackingConfig:
    """MLflow tracking of a training job.  Each product subclasses it with its own defaults, so a
    partial ``tracking:`` section or ``--set tracking.run_name=...`` keeps the product's
    experiment and name.

    enabled: false skips MLflow entirely (the bundle is still saved under storage_path).
    experiment: the MLflow experiment the run goes to.  run_name: the run's name (default: one
    galray makes from the product and the run id).  registered_name: the registered model a new version is added to (empty:
    don't register).  alias: the alias that version gets (empty: none).
    """

    enabled: bool = True
    experiment: str = "galray"
    run_name: str | None = None
    registered_name: str | None = None
    alias: str | None = "champion"


@dataclass
class AdversarialOptim:
    """Fields every GAN optimiser has (a product's optim section subclasses it and may change
    the defaults).

    batch_size: samples per batch per worker.  critic_steps: critic updates per generator
    update.  lr_generator / lr_critic: Adam learning rates.  betas: Adam's betas.
    ema_decay: the exported generator is an exponential moving average of the trained one
    (0 disables it); averaging damps the GAN's oscillation around the equilibrium.
    warmdown: final fraction of training over which every learning rate decays linearly to 0
    (of ``epochs`` or of ``time_budget_s``, whichever runs out first).
    """

    batch_size: int = 512
    critic_steps: int = 5
    lr_generator: float = 1e-4
    lr_critic: float = 1e-4
    betas: tuple[float, float] = (0.0, 0.9)
    ema_decay: float = 0.999
    warmdown: float = 0.3

    def __post_init__(self) -> None:
        require(self.batch_size >= 2, "batch_size", f"must be >= 2, got {self.batch_size}")
        require(self.critic_steps >= 1, "critic_steps", f"must be >= 1, got {self.critic_steps}")
        for name in self._learning_rates():
            value = getattr(self, name)
            require(0 < value < 1, name, f"must be in (0, 1), got {value}")
        betas = tuple(self.betas)
        require(
            len(betas) == 2 and all(0 <= b < 1 for b in betas),
            "betas",
            f"must be two numbers in [0, 1), got {self.betas}",
        )
        self.betas = (float(betas[0]), float(betas[1]))
        require(0 <= self.ema_decay < 1, "ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        require(0 <= self.warmdown <= 1, "warmdown", f"must be in [0, 1], got {self.warmdown}")

    def _learning_rates(self) -> tuple[str, ...]:
        return ("lr_generator", "lr_critic")


@dataclass
class TrainJobConfig:
    """Fields every training job has (``galray train PRODUCT --config FILE``).

    epochs: training epochs (each product says what one is).  seed: initialisation, data order
    and noise.  storage_path: where Ray Train keeps checkpoints and the final bundle.
    max_failures: worker-group restarts allowed.  report_every: epochs between reports
    (metrics, validation, checkpoint); raise it when epochs take well under a second.
    time_budget_s: stop after the epoch in which this much training time has been spent.
    debug_fail_at_epoch: fault injection for tests: the last rank dies once in that epoch.
    """

    scaling: WorkerScaling = field(default_factory=WorkerScaling)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    epochs: int = 20
    seed: int = 0
    storage_path: str = "galray-runs"
    max_failures: int = 2
    report_every: int = 1
    time_budget_s: float | None = None
    debug_fail_at_epoch: int | None = None

    def __post_init__(self) -> None:
        check_choices(self)
        require(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        require(self.max_failures >= 0, "max_failures", f"must be >= 0, got {self.max_failures}")
        require(self.report_every >= 1, "report_every", f"must be >= 1, got {self.report_every}")
        require(
            self.time_budget_s is None or self.time_budget_s > 0,
            "time_budget_s",
            f"must be positive, got {self.time_budget_s}",
        )


def with_absolute_paths(cfg: TrainJobConfig, *data_fields: str) -> TrainJobConfig:
    """``cfg`` with ``storage_path`` and the ``data`` section's path fields ``data_fields``
    absolute (a sweep's trials run in other directories, possibly on other nodes); a path that
    is None stays None."""

    def absolute(path: str | None) -> str | None:
        return None if path is None else str(Path(path).resolve())

    data = replace(cfg.data, **{name: absolute(getattr(cfg.data, name)) for name in data_fields})
    return replace(cfg, data=data, storage_path=absolute(cfg.storage_path))
