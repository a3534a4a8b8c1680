"""An untrained r, i, z emulator for tests that need a bundle, not a model: fitted to a
simulated survey's injections (so its features are real), initialised with a fixed seed."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import torch

from galray.emulator.bundle import Emulator
from galray.emulator.features import EmulatorFeatures
from galray.models.emulator import ConditionalGenerator, DetectionModel, NetConfig

SMALL = NetConfig(width=16, depth=1, noise_dim=3, detection_width=8, detection_depth=1)


def untrained_emulator(
    survey: Path, nside: int, net: NetConfig = SMALL, info: dict | None = None
) -> Emulator:
    """The emulator for ``survey`` (``galray simulate survey`` output whose maps are at
    ``nside``, RING), with ``info`` added to its bundle's."""
    inj = pq.read_table(survey / "injections").to_pandas()
    cond = pq.read_table(survey / "maps" / "conditions.parquet").to_pandas()
    inj = inj.merge(cond, on="pixel")
    features = EmulatorFeatures.fit({c: inj[c].to_numpy() for c in inj.columns})
    torch.manual_seed(0)
    return Emulator(
        ConditionalGenerator(features.n_cond, 3, net),
        DetectionModel(features.n_cond, net),
        features,
        net,
        {"maps": {"nside": nside, "ordering": "RING"}, **(info or {})},
    )
