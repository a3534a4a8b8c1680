"""The shared parts of every product's Ray Train loop (galray.training.worker), without Ray:
reading a shard into columns and the epoch skeleton :func:`run_epochs`."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from galray.training import worker


class FakeShard:
    def __init__(self, batches):
        self.batches = batches

    def iter_batches(self, batch_size=None, batch_format="numpy"):
        assert batch_size is None and batch_format == "numpy"
        yield from self.batches


def test_materialize_concatenates_blocks_and_keeps_empty_columns():
    shard = FakeShard(
        [{"a": [1, 2], "b": [0.5, 1.5], "x": [9, 9]}, {"a": [3], "b": [2.5], "x": [9]}]
    )
    out = worker.materialize(shard, ["a", "b"])
    assert set(out) == {"a", "b"}
    np.testing.assert_array_equal(out["a"], [1, 2, 3])
    np.testing.assert_array_equal(out["b"], [0.5, 1.5, 2.5])
    empty = worker.materialize(FakeShard([]), ["a"])
    assert empty["a"].shape == (0,)


class FakeState:
    """A TrainingState stand-in: records learning-rate scales and counts steps."""

    def __init__(self):
        self.lr_scales, self.steps = [], 0

    def set_lr_scale(self, scale: float) -> None:
        self.lr_scales.append(scale)

    def pop_metrics(self) -> dict:
        return {"loss": float(self.steps)}


def _cfg(epochs: int = 3, report_every: int = 1):
    optim = SimpleNamespace(warmdown=0.5, steps_per_epoch=4, batch_size=8)
    return SimpleNamespace(
        epochs=epochs,
        time_budget_s=None,
        report_every=report_every,
        seed=7,
        debug_fail_at_epoch=None,
        optim=optim,
    )


@pytest.fixture
def reports(monkeypatch):
    sent, printed = [], []

    def report(metrics, *, rank, state, clock, files=None):
        sent.append((clock.epoch, dict(metrics), files))

    monkeypatch.setattr(worker, "report", report)
    monkeypatch.setattr(worker, "worker_print", printed.append)
    return SimpleNamespace(sent=sent, printed=printed)


@pytest.mark.parametrize("rank", [0, 1])
def test_run_epochs_runs_the_plan_and_reports_each_epoch(reports, rank):
    cfg, state = _cfg(), FakeState()
    ctx = worker.WorkerContext(rank=rank, world=2, device=torch.device("cpu"))
    orders, validated, logged = [], [], []

    def step(order):
        orders.append(order.initial_seed())
        state.steps += 1

    worker.run_epochs(
        cfg,
        ctx,
        state,
        {},
        {},
        plan=worker.same_steps(cfg.optim, step),
        rate="rows_per_second",
        validate=lambda epoch: validated.append(epoch) or {"val_loss": 0.25},
        line=lambda metrics, epoch, seconds: f"epoch {epoch} loss={metrics['loss']:.0f}",
        last_metrics=lambda: {"divergence": 0.0},
        after_log=lambda logger, epoch, last: logged.append((epoch, last)),
        files=lambda: {"features.json": "{}"},
    )
    assert state.steps == 3 * 4
    # each epoch's steps see that epoch's data-order generator of this rank
    expected = [worker.epoch_seeds(7, e, rank)[0].initial_seed() for e in (1, 2, 3) for _ in "abcd"]
    assert orders == expected
    assert state.lr_scales[0] == 1.0 and state.lr_scales[-1] < 1.0  # warmdown over the last half
    assert [epoch for epoch, _, _ in reports.sent] == [1, 2, 3]
    for epoch, metrics, files in reports.sent:
        assert metrics["rows_per_second"] > 0 and metrics["epoch"] == epoch
        assert ("divergence" in metrics) == (epoch == 3)  # the last epoch only
        assert ("val_loss" in metrics) == (rank == 0)
        assert files == {"features.json": "{}"}
    if rank == 0:
        assert validated == [1, 2, 3] and logged == [(1, False), (2, False), (3, True)]
        assert reports.printed == ["epoch 1 loss=4", "epoch 2 loss=8", "epoch 3 loss=12"]
    else:
        assert validated == [] and logged == [] and reports.printed == []


def test_run_epochs_reports_every_nth_epoch_and_the_last(reports):
    cfg, state = _cfg(epochs=5, report_every=2), FakeState()
    ctx = worker.WorkerContext(rank=0, world=1, device=torch.device("cpu"))
    worker.run_epochs(
        cfg,
        ctx,
        state,
        {"epoch": 1, "history": [1], "train_seconds": 1.0},  # resumed after epoch 1
        {},
        plan=lambda epoch, order: ((lambda k: None), 3, 30),
        rate="items_per_second",
        validate=lambda epoch: {},
        line=lambda metrics, epoch, seconds: "",
    )
    assert [epoch for epoch, _, _ in reports.sent] == [2, 4, 5]
    assert len(state.lr_scales) == 4  # epochs 2..5


def test_epoch_logger_takes_the_client_opened_in_the_background(tmp_path):
    """Rank 0 starts opening the MLflow client in worker_context (overlapping the data read);
    the epoch logger takes that client, logs through it, and a failure to open it is raised
    when the logger is made, as before."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("worker"))
    opening = worker._open_client(uri)  # what worker_context starts on rank 0
    assert worker._open_client(uri) is opening  # once
    logger = worker.MlflowEpochLogger({"tracking_uri": uri, "run_id": run.info.run_id})
    assert logger.client is opening.result() and uri not in worker._OPENING
    logger.log({"critic_loss": 1.5, "val_swd": 0.25, "val_ks_max": float("nan")}, epoch=2)
    metrics = client.get_run(run.info.run_id).data.metrics
    assert metrics == {"train/critic_loss": 1.5, "val/swd": 0.25}

    bad = {"tracking_uri": "nosuchscheme://x", "run_id": "r"}
    worker._open_client(bad["tracking_uri"])
    with pytest.raises(Exception, match="nosuchscheme"):
        worker.MlflowEpochLogger(bad)
    assert "nosuchscheme://x" not in worker._OPENING  # the next logger tries again


def test_a_long_epoch_says_which_batch_rank_0_is_on(reports, monkeypatch):
    """Within an epoch longer than BATCH_LINE_EVERY_S rank 0 prints which batch it is on, and
    the driver's epoch progress (galray.console) turns that line into its batch display."""
    import io
    import sys

    from galray import console

    monkeypatch.setattr(worker, "BATCH_LINE_EVERY_S", 0.0)  # every batch counts as long
    for rank in (1, 0):
        worker.run_epochs(
            _cfg(epochs=1),
            worker.WorkerContext(rank=rank, world=2, device=torch.device("cpu")),
            FakeState(),
            {},
            {},
            plan=lambda epoch, order: ((lambda k: None), 3, 30),
            rate="items_per_second",
            validate=lambda epoch: {},
            line=lambda metrics, epoch, seconds: f"[galray] epoch {epoch}/1",
        )
    batches = ["[galray] batch 1/3 of epoch 1/1", "[galray] batch 2/3 of epoch 1/1"]
    assert reports.printed == [*batches, "[galray] epoch 1/1"]  # rank 1 printed nothing

    buf = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buf)
    now = [100.0]
    monkeypatch.setattr(console.time, "monotonic", lambda: now[0])
    with console.epoch_progress(1):
        for line in batches:  # 10 s apart, as the workers' forwarded output brings them
            console._worker_output({"pid": 7, "lines": [line]})
            now[0] += 10.0
        now[0] += 30.0
        console._worker_output({"pid": 7, "lines": ["[galray] batch 3/4 of epoch 1/1"]})
    # piped: a line at once, then none until 30 s have passed
    assert buf.getvalue().splitlines() == [
        "epoch 1/1: batch 1/3 (33 %)",
        "epoch 1/1: batch 3/4 (75 %)",
    ]


def test_batch_lines_never_hide_a_long_epochs_line(monkeypatch):
    """100 s epochs of 100, batch lines every 10 s: each epoch's own line (its metrics) is
    printed, whatever the batch lines' clock says."""
    import io
    import sys

    from galray import console

    buf = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buf)
    now = [0.0]
    monkeypatch.setattr(console.time, "monotonic", lambda: now[0])
    with console.epoch_progress(100) as bar:
        for epoch in range(1, 6):
            for k in range(1, 10):
                now[0] += 10.0
                bar.batch(k * 10, 100, epoch, 100)
            now[0] += 10.0
            bar.epoch(epoch, 100, f"epoch {epoch}/100  loss=1")
    lines = buf.getvalue().splitlines()
    epochs = [line for line in lines if "loss=1" in line]
    assert [line.split()[1] for line in epochs] == [f"{e}/100" for e in range(1, 6)]
    batches = [line for line in lines if ": batch " in line]
    assert 5 <= len(batches) <= 20  # about every 30 s, not every 10 s
