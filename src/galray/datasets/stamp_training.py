"""A stamps directory (:mod:`galray.datasets.stamps`) as the training data of a product: what the
stamp generator and the estimator both do before and while they train on one.

:func:`require_stamps` checks that ``data.stamps`` exists (or renders ``data.simulate`` there
when ``data.simulate_if_missing`` asks), :func:`count_splits` counts the train/val/test rows (``id % 10``) and checks them
against the batch size, :func:`split_dataset` reads one split as a Ray Data dataset, and
:func:`data_params` is what every stamps run logs about its data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from galray.datasets.stamps import split_of, stamp_files
from galray.errors import ConfigError

# the hint of a missing data.stamps when data.simulate is there but simulate_if_missing is off
SET_SIMULATE_IF_MISSING = (
    " (to render the stamps data.simulate describes, set data.simulate_if_missing)"
)
NO_SIMULATE_SECTION = " (data.simulate_if_missing is on, but there is no data.simulate section)"


def require_stamps(
    data,
    log,
    *,
    hint: str,
    no_section_hint: str = NO_SIMULATE_SECTION,
    workers: int | None = None,
) -> None:
    """Check that ``data.stamps`` (``data``: a config's data section with ``stamps``,
    ``simulate`` and ``simulate_if_missing``) exists; with ``data.simulate_if_missing``, render
    the stamps ``data.simulate`` describes there first (on ``workers`` processes), saying so in
    one line.  Else ConfigError naming the field, with ``hint`` (what to do when there is no
    ``data.simulate``) or ``no_section_hint`` (simulate_if_missing on without a section)."""
    path, sim = data.stamps, data.simulate
    if Path(path).exists():
        return
    if not (data.simulate_if_missing and sim is not None):
        if sim is not None:
            hint = SET_SIMULATE_IF_MISSING
        elif data.simulate_if_missing:
            hint = no_section_hint
        raise ConfigError(f"data.stamps: {path} does not exist{hint}")
    from galray.datasets.stamps import simulate_stamps

    log(f"data.stamps: {path} does not exist: simulating stamps there (data.simulate_if_missing)")
    simulate_stamps(path, sim, log=lambda _: None, workers=workers)


def count_splits(path: str, ids, batch_size: int) -> dict[str, int]:
    """Rows of each split (``train``, ``val``, ``test``) among the stamp ``ids`` of ``path``;
    ConfigError when there are fewer training stamps than ``optim.batch_size`` or no
    validation stamp."""
    split = np.asarray(ids) % 10
    rows = {"train": int((split < 8).sum()), "val": int((split == 8).sum())}
    rows["test"] = int((split == 9).sum())
    if rows["train"] < batch_size or rows["val"] < 1:
        raise ConfigError(
            f"data.stamps: {path} holds {rows['train']} training and {rows['val']} validation "
            f"stamps; optim.batch_size is {batch_size}"
        )
    return rows


def keep_split(batch: dict, split: str) -> dict:
    """The rows of a numpy batch that belong to ``split`` (by their ``id``)."""
    keep = split_of(batch["id"]) == split
    return {k: v[keep] for k, v in batch.items()}


def split_dataset(path: str, split: str, columns: list[str]):
    """Ray Data dataset of one split's stamps in ``path``: ``id`` and ``columns``."""
    import ray.data

    files = [str(f) for f in stamp_files(path)]
    ds = ray.data.read_parquet(files, columns=["id", *columns])
    return ds.map_batches(keep_split, fn_kwargs={"split": split}, batch_format="numpy")


def data_params(manifest: dict, rows: dict[str, int]) -> dict:
    """The MLflow params every stamps run logs about its data (split sizes, stamp geometry)."""
    return {
        "data.rows_train": rows["train"],
        "data.rows_val": rows["val"],
        "data.size": manifest["size"],
        "data.pixel_scale": manifest["pixel_scale"],
    }
