"""Train an emulator from Python: :func:`train_emulator`, what ``galray train emulator`` runs.

::

    import galray

    result = galray.train_emulator("configs/emulator-flow-smoke.yaml", overrides=["epochs=3"])
    emulator = galray.load_emulator(result.registered_uri or result.bundle_path)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from galray.emulator.config import EmulatorTrainConfig
    from galray.training.job import TrainResult


def emulator_config(
    config: str | os.PathLike | Mapping[str, Any] | EmulatorTrainConfig | None,
    overrides: Sequence[str] = (),
) -> EmulatorTrainConfig:
    """An :class:`~galray.emulator.config.EmulatorTrainConfig` from a YAML file, a dict of the
    same fields (nested sections as dicts) or a config object, with ``key=value`` overrides
    (``--set``) applied; ConfigError naming the field otherwise
    (:func:`galray.config.resolve_config`)."""
    from galray.config import resolve_config
    from galray.emulator.config import EmulatorTrainConfig

    return resolve_config(EmulatorTrainConfig, config, overrides)


def train_emulator(
    config: str | os.PathLike | Mapping[str, Any] | EmulatorTrainConfig | None,
    *,
    overrides: Sequence[str] = (),
    resume: str | None = None,
    log=print,
) -> TrainResult:
    """Train the transfer-function emulator as ``config`` says (:func:`emulator_config`): Ray
    Train, the bundle under ``storage_path``, MLflow logging and registration, the test-split
    report -- what ``galray train emulator --config FILE --set ...`` does
    (:func:`galray.train` ``("emulator", ...)``, the entry point of every product).

    resume: an interrupted run's MLflow run id or name, continued from its latest checkpoint.
    Returns the :class:`~galray.training.job.TrainResult` (``run_id``, ``model_uri``,
    ``registered_uri``, ``bundle_path``, ``metrics``, ``report``)."""
    from galray.emulator.spec import SPEC
    from galray.training.job import run_training

    cfg = emulator_config(config, overrides)
    return run_training(SPEC, cfg, resume=resume, log=log)
