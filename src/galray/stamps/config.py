"""The stamp generator's training job config (``galray train stamps --config FILE``): the
training stamps, the VAE + flow optimiser and the end-of-training evaluation; networks are shaped
by :class:`~galray.models.stamps.StampNetConfig`, scaling and tracking by :mod:`galray.training`."""

from __future__ import annotations

from dataclasses import dataclass, field

from galray.config import require
from galray.datasets.stamps import StampSimConfig
from galray.models.stamps import StampNetConfig
from galray.training.config import TrackingConfig, TrainJobConfig


@dataclass
class StampDataConfig:
    """The training stamps.

    stamps: a directory written by ``galray simulate stamps`` (train split: ``id % 10 < 8``,
    validation ``8``, test ``9``).  simulate: the :class:`~galray.datasets.stamps.StampSimConfig`
    fields of synthetic stamps.  simulate_if_missing: if ``stamps`` does not exist, render those
    there first (and say so); off (the default), a missing directory is an error naming the
    field.  max_val_rows: validation stamps rank 0 scores each reported epoch.
    """

    stamps: str = "data/stamps"
    simulate: StampSimConfig | None = None
    simulate_if_missing: bool = False
    max_val_rows: int = 512

    def __post_init__(self) -> None:
        require(bool(self.stamps), "data.stamps", "must name a directory")
        require(self.max_val_rows >= 1, "data.max_val_rows", "must be >= 1")


@dataclass
class StampsTracking(TrackingConfig):
    """MLflow for the stamp generator: experiment ``galray-stamps``, registered as
    ``galray-stamps@champion``."""

    experiment: str = "galray-stamps"
    registered_name: str | None = "galray-stamps"


@dataclass
class StampOptimConfig:
    """Adam on the negative ELBO (per pixel).

    batch_size: stamps per batch per worker.  steps_per_epoch: batches per epoch.  lr: Adam's
    learning rate.  beta: weight of the KL term (1: the ELBO); below 1 the code is kept
    informative (galsim-hub's "high-KL" VAE), and the flow prior still fits the codes, as Adam's
    steps do not depend on the scale of its gradient.
    clip_norm: gradient norm clip (None: off).  ema_decay: the exported VAE is an exponential
    moving average of the trained one (0: off).  warmdown: final fraction of training over which
    the learning rate decays linearly to 0.
    """

    batch_size: int = 64
    steps_per_epoch: int = 50
    lr: float = 1e-3
    beta: float = 0.05
    clip_norm: float | None = 100.0
    ema_decay: float = 0.99
    warmdown: float = 0.3

    def __post_init__(self) -> None:
        require(self.batch_size >= 2, "optim.batch_size", f"must be >= 2, got {self.batch_size}")
        require(self.steps_per_epoch >= 1, "optim.steps_per_epoch", "must be >= 1")
        require(0 < self.lr < 1, "optim.lr", f"must be in (0, 1), got {self.lr}")
        require(self.beta >= 0, "optim.beta", f"must be >= 0, got {self.beta}")
        require(self.clip_norm is None or self.clip_norm > 0, "optim.clip_norm", "must be positive")
        require(0 <= self.ema_decay < 1, "optim.ema_decay", "must be in [0, 1)")
        require(0 <= self.warmdown <= 1, "optim.warmdown", "must be in [0, 1]")


@dataclass
class StampEvalConfig:
    """The end-of-training evaluation (``galray evaluate stamps`` runs the same).

    enabled: score the model on the test split at the end.  rows: at most this many test stamps.
    sweep_points / sweep_draws: grid points per condition and galaxies drawn at each for the
    monotonicity sweeps (common draws along each sweep).  morphology_rows: stamps of each kind
    (real, generated, baseline) measured with statmorph too (~0.15 s each on one core; 0: none;
    the classifier test sees the morphology only on these rows, so fewer than ``rows`` weakens
    it).
    """

    enabled: bool = True
    rows: int = 1000
    sweep_points: int = 8
    sweep_draws: int = 12
    morphology_rows: int = 1000

    def __post_init__(self) -> None:
        require(self.rows >= 40, "evaluate.rows", f"must be >= 40, got {self.rows}")
        require(self.sweep_points >= 3, "evaluate.sweep_points", "must be >= 3")
        require(self.sweep_draws >= 1, "evaluate.sweep_draws", "must be >= 1")
        require(self.morphology_rows >= 0, "evaluate.morphology_rows", "must be >= 0")


@dataclass
class StampsTrainConfig(TrainJobConfig):
    """One stamp-generator training job (``galray train stamps --config FILE``).

    epochs: of ``optim.steps_per_epoch`` batches.  The job fields (seed, storage_path, scaling,
    time_budget_s, ...) are :class:`~galray.training.config.TrainJobConfig`'s.
    """

    data: StampDataConfig = field(default_factory=StampDataConfig)
    net: StampNetConfig = field(default_factory=StampNetConfig)
    optim: StampOptimConfig = field(default_factory=StampOptimConfig)
    tracking: StampsTracking = field(default_factory=StampsTracking)
    evaluate: StampEvalConfig = field(default_factory=StampEvalConfig)
