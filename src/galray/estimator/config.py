"""The measurement yardstick's training job config (``galray train estimator --config FILE``):
the training stamps and what is measured on them, the optimiser and the end-of-training
evaluation; the network is shaped by :class:`~galray.models.estimator.EstimatorNetConfig`,
scaling and tracking by :mod:`galray.training`."""

from __future__ import annotations

from dataclasses import dataclass, field

from galray.config import require
from galray.datasets.stamps import StampSimConfig
from galray.models.estimator import EstimatorNetConfig
from galray.training.config import TrackingConfig, TrainJobConfig

# what is measured by default, per stamp population, and how each parameter is transformed
DEFAULT_TARGETS = {
    "sersic": ("flux", "sersic_n", "hlr", "g1", "g2"),
    "rich": ("mag", "hlr", "z", "ellipticity"),
}
DEFAULT_TRANSFORMS = {"flux": "logflux", "mag": "mag", "hlr": "log", "disk_hlr": "log"}


@dataclass
class EstimatorDataConfig:
    """The training stamps and what is measured on them.

    stamps: a directory written by ``galray simulate stamps`` (either population; train split
    ``id % 10 < 8``, validation ``8``, test ``9``).  simulate: the
    :class:`~galray.datasets.stamps.StampSimConfig` fields of stamps to render there when
    ``simulate_if_missing`` is on (off: a missing directory is an error naming the field).
    targets: the numeric stamp columns measured (empty: the population's defaults, sersic
    ``flux, sersic_n, hlr, g1, g2``, rich ``mag, hlr, z, ellipticity``).  fresh_noise: when the
    stamps hold noiseless images (the sersic population), every batch draws new noise of each
    stamp's sigma (an endless supply of noise realisations; off: the stored noisy stamps).
    max_val_rows: validation stamps rank 0 scores each reported epoch.
    """

    stamps: str = "data/sersic"
    simulate: StampSimConfig | None = None
    simulate_if_missing: bool = False
    targets: list[str] = field(default_factory=list)
    fresh_noise: bool = True
    max_val_rows: int = 2000

    def __post_init__(self) -> None:
        require(bool(self.stamps), "data.stamps", "must name a directory")
        require(self.max_val_rows >= 1, "data.max_val_rows", "must be >= 1")
        self.targets = [str(t) for t in self.targets]
        require(len(set(self.targets)) == len(self.targets), "data.targets", "has duplicates")


@dataclass
class EstimatorTracking(TrackingConfig):
    """MLflow for the estimator: experiment ``galray-estimator``, registered as
    ``galray-estimator@champion``."""

    experiment: str = "galray-estimator"
    registered_name: str | None = "galray-estimator"


@dataclass
class EstimatorOptimConfig:
    """Adam on the beta-NLL of the standardised targets (:func:`galray.models.estimator.
    gaussian_nll`).

    batch_size: stamps per batch per worker.  steps_per_epoch: batches per epoch.  lr: Adam's
    learning rate.  beta_nll: the beta of beta-NLL (0: plain Gaussian NLL).  weight_decay:
    AdamW's decoupled decay.  clip_norm: gradient norm clip (None: off).  ema_decay: the exported
    network is an exponential moving average of the trained one (0: off).  warmdown: final
    fraction of training over which the learning rate decays linearly to 0.
    """

    batch_size: int = 128
    steps_per_epoch: int = 200
    lr: float = 1e-3
    beta_nll: float = 0.5
    weight_decay: float = 0.0
    clip_norm: float | None = 10.0
    ema_decay: float = 0.999
    warmdown: float = 0.3

    def __post_init__(self) -> None:
        require(self.batch_size >= 2, "optim.batch_size", f"must be >= 2, got {self.batch_size}")
        require(self.steps_per_epoch >= 1, "optim.steps_per_epoch", "must be >= 1")
        require(0 < self.lr < 1, "optim.lr", f"must be in (0, 1), got {self.lr}")
        require(0 <= self.beta_nll <= 1, "optim.beta_nll", "must be in [0, 1]")
        require(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        require(self.clip_norm is None or self.clip_norm > 0, "optim.clip_norm", "must be positive")
        require(0 <= self.ema_decay < 1, "optim.ema_decay", "must be in [0, 1)")
        require(0 <= self.warmdown <= 1, "optim.warmdown", "must be in [0, 1]")


@dataclass
class EstimatorEvalConfig:
    """The end-of-training evaluation (``galray evaluate estimator`` runs the same).

    enabled: score the model on the test split at the end.  rows: at most this many test stamps
    measured by the CNN.  bound_rows / fit_rows: of those, how many get the Cramér–Rao bound and
    the maximum-likelihood fit (sersic population only; each costs ~0.1 s and ~1 s of CPU).
    snr_bins: edges of the optimal-S/N bins of the table.  workers: processes for the bound and
    the fit.
    """

    enabled: bool = True
    rows: int = 5000
    bound_rows: int = 1000
    fit_rows: int = 400
    snr_bins: list[float] = field(default_factory=lambda: [10.0, 20.0, 50.0, 100.0, 1e9])
    workers: int = 2

    def __post_init__(self) -> None:
        require(self.rows >= 20, "evaluate.rows", f"must be >= 20, got {self.rows}")
        require(self.bound_rows >= 0, "evaluate.bound_rows", "must be >= 0")
        require(self.fit_rows >= 0, "evaluate.fit_rows", "must be >= 0")
        self.snr_bins = [float(v) for v in self.snr_bins]
        require(
            len(self.snr_bins) >= 2 and self.snr_bins == sorted(set(self.snr_bins)),
            "evaluate.snr_bins",
            "must be at least two increasing edges",
        )
        require(self.workers >= 1, "evaluate.workers", "must be >= 1")


@dataclass
class EstimatorTrainConfig(TrainJobConfig):
    """One estimator training job (``galray train estimator --config FILE``).

    epochs: of ``optim.steps_per_epoch`` batches.  The job fields (seed, storage_path, scaling,
    time_budget_s, ...) are :class:`~galray.training.config.TrainJobConfig`'s.
    """

    data: EstimatorDataConfig = field(default_factory=EstimatorDataConfig)
    net: EstimatorNetConfig = field(default_factory=EstimatorNetConfig)
    optim: EstimatorOptimConfig = field(default_factory=EstimatorOptimConfig)
    tracking: EstimatorTracking = field(default_factory=EstimatorTracking)
    evaluate: EstimatorEvalConfig = field(default_factory=EstimatorEvalConfig)
