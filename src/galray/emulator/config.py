"""The emulator's training job config (``galray train emulator --config FILE``): its data,
optimiser and job sections; networks are shaped by :class:`~galray.models.emulator.NetConfig`
and :class:`~galray.models.flow.FlowConfig`, scaling and tracking by :mod:`galray.training`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from galray.config import require
from galray.datasets.simulate import SurveyConfig
from galray.models.emulator import NetConfig
from galray.models.flow import FlowConfig
from galray.training.config import (
    AdversarialOptim,
    TrackingConfig,
    TrainJobConfig,
)


@dataclass
class CatalogDataConfig:
    """Where the training rows come from.

    survey: a directory written by ``galray simulate survey`` or laid out the same way
    (``injections/`` Parquet shards and ``maps/conditions.parquet``); or give ``catalog`` and
    ``maps`` explicitly.  catalog / maps: the injection catalog's Parquet shards and the
    condition-map table (default: those under ``survey``).  fractions: train/val/test split by id.  salt: the split's hash salt.
    max_outside_fraction: refuse a catalog with more rows outside the maps' footprint.
    spec: the survey spec (:mod:`galray.datasets.survey`: a preset name such as ``des-y6`` or a
    YAML file); default: the ``survey.json`` of the survey or catalog directory, else ``riz``.
    use_size: give the model ``true_size`` as an input (default: when the catalog has it).
    max_val_rows: validation rows scored each reported epoch.  simulate: the
    :class:`~galray.datasets.simulate.SurveyConfig` fields of a synthetic survey.
    simulate_if_missing: if ``survey`` does not exist, write that synthetic survey there first
    (and say so); off (the default), a missing path is an error naming the field -- a config
    pointing at real data must never train on a simulation of a mistyped path.
    """

    survey: str | None = None
    catalog: str | None = None
    maps: str | None = None
    fractions: tuple[float, float, float] = (0.9, 0.05, 0.05)
    salt: int = 0
    max_outside_fraction: float = 0.01
    spec: str | None = None
    use_size: bool | None = None
    max_val_rows: int = 20_000
    simulate: SurveyConfig | None = None
    simulate_if_missing: bool = False

    def __post_init__(self) -> None:
        require(
            self.survey is not None or (self.catalog is not None and self.maps is not None),
            "data",
            "give data.survey, or both data.catalog and data.maps",
        )
        if self.survey is not None:
            self.catalog = self.catalog or str(Path(self.survey) / "injections")
            self.maps = self.maps or str(Path(self.survey) / "maps" / "conditions.parquet")
        require(
            len(self.fractions) == 3
            and all(f >= 0 for f in self.fractions)
            and abs(sum(self.fractions) - 1) < 1e-6,
            "data.fractions",
            f"must be three non-negative numbers summing to 1, got {self.fractions}",
        )
        self.fractions = tuple(float(f) for f in self.fractions)
        require(
            0 <= self.max_outside_fraction <= 1, "data.max_outside_fraction", "must be in [0, 1]"
        )
        require(self.max_val_rows >= 100, "data.max_val_rows", "must be >= 100")


@dataclass
class EmulatorTracking(TrackingConfig):
    """MLflow for the emulator: experiment ``galray-emulator``, registered as
    ``galray-emulator@champion`` (see :class:`~galray.training.config.TrackingConfig`)."""

    experiment: str = "galray-emulator"
    registered_name: str | None = "galray-emulator"


@dataclass
class EmulatorOptimConfig(AdversarialOptim):
    """WGAN-GP optimisation (defaults from Gulrajani et al. 2017: lr 1e-4, Adam betas (0, 0.9),
    5 critic steps per generator step, penalty weight 10).  The flow uses ``batch_size``,
    ``lr_generator`` (its learning rate), the detection settings, ``ema_decay`` and ``warmdown``;
    it trains with Adam's default betas and clips its gradient norm at 10.

    batch_size: rows per critic (and generator) batch, per worker.  gp_weight: gradient-penalty
    weight.  one_sided_penalty: penalise only gradient norms above 1.  lr_detection /
    detection_batch_size: the detection model's learning rate and batch (all rows, detected or
    not).  See :class:`~galray.training.config.AdversarialOptim` for the rest.
    """

    gp_weight: float = 10.0
    one_sided_penalty: bool = True
    lr_detection: float = 1e-3
    detection_batch_size: int = 2048

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.gp_weight >= 0, "gp_weight", f"must be >= 0, got {self.gp_weight}")
        require(self.detection_batch_size >= 2, "detection_batch_size", "must be >= 2")

    def _learning_rates(self) -> tuple[str, ...]:
        return ("lr_generator", "lr_critic", "lr_detection")


@dataclass
class EmulatorTrainConfig(TrainJobConfig):
    """One emulator training job (``galray train emulator --config FILE``).

    model: ``gan`` (the cWGAN-GP, shaped by ``net``) or ``flow`` (a conditional neural-spline
    flow, shaped by ``flow``); both share the detection model (``net.detection_*``), the data,
    checkpoints, tracking and the saved emulator's interface.  epochs: passes of the critic (or
    flow) over the detected training rows.  cuda_graphs: capture the training step as a CUDA
    graph on GPUs.  evaluate: write a fidelity report on the test split at the end.
    eval_rows: at most this many test rows are scored.  whiten_targets: divide each band's
    measured-minus-true by its median and spread at the row's brightness relative to the depth
    (:mod:`galray.emulator.features`) before the networks see it.

    The job fields (epochs, seed, storage_path, ...) are
    :class:`~galray.training.config.TrainJobConfig`'s.
    """

    data: CatalogDataConfig = field(default_factory=lambda: CatalogDataConfig(survey="survey"))
    model: Literal["gan", "flow"] = "gan"
    net: NetConfig = field(default_factory=NetConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    optim: EmulatorOptimConfig = field(default_factory=EmulatorOptimConfig)
    tracking: EmulatorTracking = field(default_factory=EmulatorTracking)
    cuda_graphs: bool = True
    evaluate: bool = True
    eval_rows: int = 50_000
    whiten_targets: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.eval_rows >= 1000, "eval_rows", f"must be >= 1000, got {self.eval_rows}")
