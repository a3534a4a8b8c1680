"""The deep-field generator's training job config (``galray train deepfield --config FILE``):
the training image, the SGAN optimiser and the job's precision settings; networks are shaped by
:class:`~galray.models.sgan.SGANNetConfig`, scaling and tracking by :mod:`galray.training`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from galray.config import require
from galray.datasets.deepfield import DeepFieldConfig
from galray.deepfield.scaling import IntensityConfig
from galray.models.sgan import SGANNetConfig
from galray.training.config import (
    AdversarialOptim,
    TrackingConfig,
    TrainJobConfig,
)


@dataclass
class FieldDataConfig:
    """The training image.

    image: a multi-band FITS field (one HDU per band or a cube).  bands: HDU names to use, in
    order (default: all).  simulate: the :class:`~galray.datasets.deepfield.DeepFieldConfig`
    fields of a synthetic deep field.  simulate_if_missing: if ``image`` does not exist, render
    that field there first (and say so); off (the default), a missing image is an error naming
    the field.
    intensity: how pixel values are scaled into the generator's (0, 1) range.
    """

    image: str = "data/deepfield.fits"
    bands: list[str] | None = None
    simulate: DeepFieldConfig | None = None
    simulate_if_missing: bool = False
    intensity: IntensityConfig = field(default_factory=IntensityConfig)

    def __post_init__(self) -> None:
        require(bool(self.image), "data.image", "must name a FITS file")


@dataclass
class DeepFieldTracking(TrackingConfig):
    """MLflow for the deep-field generator: experiment ``galray-sgan``, registered as
    ``galray-sgan@champion`` -- the names models trained before the product was called
    ``deepfield`` are in (see :class:`~galray.training.config.TrackingConfig`)."""

    experiment: str = "galray-sgan"
    registered_name: str | None = "galray-sgan"


@dataclass
class DeepFieldOptimConfig(AdversarialOptim):
    """SGAN optimisation (Smith & Geach 2019: Adam at 2e-4, 30 batches of 128 crops of 64, 128 or
    256 pixels per epoch; betas are DCGAN's, the paper does not state them).

    batch_size: crops per batch per worker (a multiple of the critic's ``pack``).
    crop_sizes: crop side choices in pixels (multiples of 16); one is drawn per batch.
    batches_per_epoch: batches per epoch.  augment: random flips and transposes of each crop (a
    deep field has no preferred axis).  ema_decay: a continuous version of the paper's
    self-ensemble of snapshots.  See :class:`~galray.training.config.AdversarialOptim` for the
    rest.
    """

    batch_size: int = 128
    critic_steps: int = 1
    lr_generator: float = 2e-4
    lr_critic: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    warmdown: float = 0.0
    crop_sizes: tuple[int, ...] = (64, 128, 256)
    batches_per_epoch: int = 30
    augment: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.crop_sizes = tuple(int(s) for s in self.crop_sizes)
        require(
            len(self.crop_sizes) >= 1 and all(s >= 16 and s % 16 == 0 for s in self.crop_sizes),
            "crop_sizes",
            f"must be multiples of 16 pixels, got {self.crop_sizes}",
        )
        require(self.batches_per_epoch >= 1, "batches_per_epoch", "must be >= 1")


@dataclass
class DeepFieldTrainConfig(TrainJobConfig):
    """One deep-field generator training job (``galray train deepfield --config FILE``).

    epochs: of ``optim.batches_per_epoch`` batches.  sample_every: epochs between sample images
    logged to MLflow (0: never).  sample_size: their side, pixels (a multiple of 16).
    precision: ``auto`` (bf16 autocast on GPU, fp32 on CPU), ``fp32`` or ``bf16``.
    channels_last: ``auto`` (on GPU), true or false.  compile: ``torch.compile`` the networks
    (GPU).  evaluate: at the end, generate a field the size of the training image and compare
    it with the image by source extraction.

    The job fields (seed, storage_path, ...) are
    :class:`~galray.training.config.TrainJobConfig`'s.
    """

    data: FieldDataConfig = field(default_factory=FieldDataConfig)
    net: SGANNetConfig = field(default_factory=SGANNetConfig)
    optim: DeepFieldOptimConfig = field(default_factory=DeepFieldOptimConfig)
    tracking: DeepFieldTracking = field(default_factory=DeepFieldTracking)
    epochs: int = 100
    sample_every: int = 10
    sample_size: int = 256
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: Literal["auto", "true", "false"] = "auto"
    compile: bool = False
    evaluate: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.sample_every >= 0, "sample_every", f"must be >= 0, got {self.sample_every}")
        require(
            self.sample_size >= 16 and self.sample_size % 16 == 0,
            "sample_size",
            f"must be a multiple of 16 pixels, got {self.sample_size}",
        )
        require(
            self.optim.batch_size % self.net.pack == 0,
            "optim.batch_size",
            f"must be a multiple of net.pack = {self.net.pack}, got {self.optim.batch_size}",
        )
        smallest = 2 ** len(self.net.critic_channels)
        require(
            min(self.optim.crop_sizes) >= smallest,
            "optim.crop_sizes",
            f"the critic's {len(self.net.critic_channels)} stride-2 layers need crops of at "
            f"least {smallest} px, got {self.optim.crop_sizes}",
        )

    def amp_dtype(self, device: torch.device) -> torch.dtype | None:
        if self.precision == "bf16" or (self.precision == "auto" and device.type == "cuda"):
            return torch.bfloat16
        return None

    def use_channels_last(self, device: torch.device) -> bool:
        if self.channels_last == "auto":
            return device.type == "cuda"
        return self.channels_last == "true"
