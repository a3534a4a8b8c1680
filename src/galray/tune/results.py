"""The trials of a finished sweep: one row each, the pick of the best, and a text table."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrialRow:
    """One line of the trials table."""

    trial_id: str
    params: dict
    epochs: int
    best: float
    last: float
    status: str
    train_seconds: float
    checkpoint: str | None = None  # the checkpoint of the best epoch (else the last)
    run_id: str | None = None


@dataclass
class SweepResult:
    """A sweep's outcome: its trials (best first), the published trial and model, the parent
    MLflow run (None when tracking is off)."""

    product: str
    name: str
    path: str
    metric: str
    mode: str
    parent_run_id: str | None
    trials: list[TrialRow]
    best: TrialRow | None
    model: dict = field(default_factory=dict)
    seconds: float = 0.0
    interrupted: bool = False  # stopped before every trial finished (Ctrl-C): resume it

    @property
    def trial_epochs(self) -> int:
        """Epochs trained over all trials: the sweep's compute in units of one epoch."""
        return sum(t.epochs for t in self.trials)


def trial_rows(grid, metric: str, mode: str, epochs: int) -> list[TrialRow]:
    """One row per trial of a Tune ``ResultGrid``, best first."""
    rows = []
    for result in grid:
        trial_id = Path(result.path).name
        df = result.metrics_dataframe
        params = {k: v for k, v in (result.config or {}).items()}
        if df is None or df.empty or metric not in df:
            status = "error" if result.error is not None else "no results"
            rows.append(TrialRow(trial_id, params, 0, math.nan, math.nan, status, 0.0))
            continue
        df = df.dropna(subset=[metric])
        values = df[metric].to_numpy(dtype=float)
        best_i = int(values.argmin() if mode == "min" else values.argmax())
        reached = int(df["epoch"].max())
        if result.error is not None:
            status = "error"
        elif reached >= epochs:
            status = "completed"
        else:
            status = "stopped early"
        checkpoints = [p for p in df.get("checkpoint_path", []) if isinstance(p, str)]
        best_ckpt = df["checkpoint_path"].iloc[best_i] if "checkpoint_path" in df else None
        rows.append(
            TrialRow(
                trial_id=trial_id,
                params=params,
                epochs=reached,
                best=float(values[best_i]),
                last=float(values[-1]),
                status=status,
                train_seconds=float(df["train_seconds"].max()) if "train_seconds" in df else 0.0,
                checkpoint=_existing(best_ckpt)
                or _existing(checkpoints[-1] if checkpoints else None),
            )
        )
    sign = 1 if mode == "min" else -1
    return sorted(
        rows, key=lambda r: (math.isnan(r.best), sign * r.best if not math.isnan(r.best) else 0)
    )


def pick_best(rows: list[TrialRow]) -> TrialRow | None:
    """The trial whose model is published: the best (``rows`` are sorted) among those that ran
    their full budget -- ASHA judged the others worse at some rung, and the minimum of a noisy
    curve over a few early epochs flatters them -- else the best of all.  Only trials with a
    checkpoint qualify."""
    usable = [r for r in rows if r.checkpoint is not None and not math.isnan(r.best)]
    completed = [r for r in usable if r.status == "completed"]
    return (completed or usable or [None])[0]


def _existing(path: Any) -> str | None:
    return path if isinstance(path, str) and Path(path).exists() else None


def format_table(result: SweepResult) -> str:
    """The trials as a text table: params, epochs run, best and last metric, status."""
    keys = sorted({k for row in result.trials for k in row.params})
    header = ["trial", *keys, "epochs", f"best {result.metric}", "last", "status"]
    lines = [header]
    for row in result.trials:
        lines.append(
            [
                row.trial_id,
                *[_short(row.params.get(k)) for k in keys],
                str(row.epochs),
                f"{row.best:.4f}",
                f"{row.last:.4f}",
                row.status + (" *" if result.best is row else ""),
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
