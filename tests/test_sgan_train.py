"""SGAN training: crop sampling, the step function, and a Ray Train fit with a worker death,
resume from checkpoint, and the generator registered in MLflow and loaded back."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from galray.config import load_config
from galray.datasets.deepfield import DeepFieldConfig, simulate_deepfield
from galray.deepfield.config import DeepFieldOptimConfig, DeepFieldTrainConfig
from galray.deepfield.registry import load_deepfield_model
from galray.deepfield.spec import train_deepfield
from galray.deepfield.step import (
    batch_sizes,
    build_sgan_modules,
    random_crops,
    train_batch,
)
from galray.errors import ConfigError
from galray.models.sgan import SGANNetConfig
from galray.training.modules import GradientSync


def _dihedral(x: torch.Tensor) -> list[torch.Tensor]:
    out = []
    for t in (x, x.transpose(-1, -2)):
        out += [t, t.flip(-1), t.flip(-2), t.flip(-1, -2)]
    return out


def test_random_crops_are_slices_of_the_image():
    h, w, size = 40, 56, 16
    image = torch.arange(3 * h * w, dtype=torch.float32).reshape(3, h, w)
    gen = torch.Generator().manual_seed(0)
    plain = random_crops(image, 20, size, gen, augment=False)
    assert plain.shape == (20, 3, size, size)
    seen = set()
    for crop in random_crops(image, 50, size, gen, augment=True):
        # values grow along both axes, so the crop's smallest value is its slice's corner
        y, x = divmod(int(crop[0].min()), w)
        window = image[:, y : y + size, x : x + size]
        matches = [k for k, t in enumerate(_dihedral(window)) if torch.equal(t, crop)]
        assert matches
        seen.add(matches[0])
    assert len(seen) >= 6  # the augmentations are used
    for crop in plain:
        y, x = divmod(int(crop[0, 0, 0]), w)
        assert torch.equal(crop, image[:, y : y + size, x : x + size])


def test_train_batch_updates_both_networks():
    net = SGANNetConfig.debug()
    opt = DeepFieldOptimConfig(batch_size=4, crop_sizes=(32, 64), ema_decay=0.9)
    m = build_sgan_modules(net, opt, torch.device("cpu"), seed=0)
    before_g = [p.detach().clone() for p in m.generator.parameters()]
    # the relativistic average loss compares each logit with the other side's mean, so it does
    # not depend on the critic's output bias: that parameter's gradient is zero (up to rounding)
    before_d = {n: p.detach().clone() for n, p in m.critic.named_parameters() if n != "dense.bias"}
    image = torch.rand(3, 96, 96)
    gen = torch.Generator().manual_seed(1)
    for size in batch_sizes(
        DeepFieldOptimConfig(batch_size=4, crop_sizes=(32, 64), batches_per_epoch=3), gen
    ):
        train_batch(m, random_crops(image, 4, size, gen), opt, GradientSync(1))
    metrics = m.pop_metrics()
    assert all(np.isfinite(v) for v in metrics.values())
    assert metrics["critic_loss"] > 0 and metrics["generator_loss"] > 0
    assert all(not torch.equal(a, b) for a, b in zip(before_g, m.generator.parameters()))
    critic = dict(m.critic.named_parameters())
    assert all(not torch.equal(before, critic[n]) for n, before in before_d.items())
    assert float(critic["dense.bias"].grad.abs().max()) < 1e-6
    assert all(p.requires_grad for p in m.critic.parameters())
    ema = list(m.ema_generator.parameters())
    assert not torch.equal(ema[0], next(m.generator.parameters()))
    assert m.pop_metrics()["critic_loss"] == 0.0  # popped: the sums restart


@pytest.fixture(scope="module")
def training_field(tmp_path_factory):
    path = tmp_path_factory.mktemp("field") / "field.fits"
    simulate_deepfield(path, DeepFieldConfig(size=192, seed=2, density=600), log=lambda *_: None)
    return path


def _config(tmp_path, image, **sets) -> DeepFieldTrainConfig:
    base = {
        "data.image": str(image),
        "net.noise_channels": 8,
        "net.gen_channels": "[8, 8, 8, 8]",
        "net.stride1_layers": 1,
        "net.critic_channels": "[8, 8, 16, 16, 16]",
        "optim.batch_size": 4,
        "optim.crop_sizes": "[32, 64]",
        "optim.batches_per_epoch": 2,
        "epochs": 3,
        "sample_every": 2,
        "sample_size": 64,
        "storage_path": str(tmp_path / "runs"),
        "tracking.registered_name": "sgan-test",
        "scaling.cpus_per_worker": 1,
    }
    base.update(sets)
    return load_config(DeepFieldTrainConfig, None, [f"{k}={v}" for k, v in base.items()])


@pytest.mark.ray
@pytest.mark.slow
def test_fit_survives_a_worker_death_and_registers_the_generator(
    tmp_path, training_field, ray_session, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    cfg = _config(
        tmp_path,
        training_field,
        max_failures=1,
        debug_fail_at_epoch=2,
        **{"tracking.run_name": "faulty"},
    )
    result = train_deepfield(cfg, log=lambda *_: None)
    assert (tmp_path / "runs" / ".debug-failed-faulty").exists()  # the worker did die
    assert result.metrics["epoch"] == 3
    client = mlflow.MlflowClient()
    history = client.get_metric_history(result.run_id, "epoch")
    assert sorted(m.step for m in history) == [1, 2, 3]  # resumed: each epoch finished once
    assert {m.key for m in client.get_metric_history(result.run_id, "train/critic_loss")} == {
        "train/critic_loss"
    }
    samples = [a.path for a in client.list_artifacts(result.run_id, "samples")]
    assert "samples/epoch_000002.png" in samples and "samples/epoch_000003.png" in samples
    assert client.get_run(result.run_id).data.params["optim.batch_size"] == "4"

    assert result.registered_uri == "models:/sgan-test@champion"
    model = load_deepfield_model("models:/sgan-test@champion")
    assert model.bands == ["r", "i", "z"] and model.pixel_scale == pytest.approx(0.06)
    image = model.generate(40, 72, seed=1)
    assert image.shape == (3, 40, 72) and np.isfinite(image).all()
    # in the training image's units: the background sits near 0 nJy, within a few sigma
    assert abs(float(np.median(image))) < 5 * max(model.scaling.noise_sigma)
    pyfunc = mlflow.pyfunc.load_model("models:/sgan-test@champion")
    out = pyfunc.predict(pd.DataFrame({"height": [32, 32], "width": [48, 48], "seed": [1, 2]}))
    assert out.shape == (2, 3, 32, 48)
    np.testing.assert_allclose(out[0], model.generate(32, 48, seed=1), rtol=0, atol=1e-5)


def test_bad_config_names_the_field(tmp_path, training_field):
    with pytest.raises(ConfigError, match=r"optim\.batch_size"):
        _config(tmp_path, training_field, **{"optim.batch_size": 5})
    with pytest.raises(ConfigError, match=r"optim\.crop_sizes"):
        _config(tmp_path, training_field, **{"optim.crop_sizes": "[16]"})
    with pytest.raises(ConfigError, match=r"optim\.crop_sizes"):
        _config(tmp_path, training_field, **{"optim.crop_sizes": "[40]"})
    with pytest.raises(ConfigError, match=r"net\.gen_chanels"):
        _config(tmp_path, training_field, **{"net.gen_chanels": "[8]"})
    with pytest.raises(ConfigError, match="precision"):
        _config(tmp_path, training_field, precision="fp8")
    with pytest.raises(ConfigError, match=r"data\.simulate\.sise"):
        _config(tmp_path, training_field, **{"data.simulate": "{sise: 3}"})
    from galray.deepfield.spec import load_training_field

    too_big = _config(tmp_path, training_field, **{"optim.crop_sizes": "[256]"})
    with pytest.raises(ConfigError, match=r"optim\.crop_sizes.*192x192"):
        load_training_field(too_big)


@pytest.mark.ray
@pytest.mark.slow
def test_tune_sgan_runs_an_asha_sweep_and_scores_the_winner(
    tmp_path, training_field, ray_session, monkeypatch, capsys
):
    """``galray tune sgan``: the same sweep machinery as the emulator's, on the SGAN's metric;
    the winner is registered and evaluated by source extraction against the training image."""
    import json

    import yaml

    from galray.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    train = _config(tmp_path, training_field, sample_every=0)
    sweep = {
        "train": {
            "data": {"image": str(training_field)},
            "net": {
                "noise_channels": 8,
                "gen_channels": [8, 8, 8, 8],
                "stride1_layers": 1,
                "critic_channels": [8, 8, 16, 16, 16],
            },
            "optim": {"batch_size": 4, "crop_sizes": [32, 64], "batches_per_epoch": 2},
            "scaling": {"cpus_per_worker": 0.4},
            "tracking": {"experiment": "tune-sgan", "registered_name": "sgan-tuned"},
            "epochs": 2,
            "sample_every": 0,
            "sample_size": train.sample_size,
            "storage_path": str(tmp_path / "runs"),
        },
        "search": {"optim.lr_generator": {"loguniform": [1.0e-4, 1.0e-3]}},
        "tune": {
            "num_samples": 2,
            "max_concurrent_trials": 2,
            "grace_period": 1,
            "name": "sgan-sweep",
            "storage_path": str(tmp_path / "sweeps"),
        },
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    assert main(["tune", "sgan", "--config", str(tmp_path / "sweep.yaml")]) == 0
    out = capsys.readouterr().out
    assert "best val_pixel_ks_max" in out and "models:/sgan-tuned@champion" in out
    report = json.loads(
        (tmp_path / "sweeps" / "sgan-sweep" / "best" / "report" / "report.json").read_text()
    )
    assert report["n_real"] > 0 and "ks_p_min" in report
    model = load_deepfield_model("models:/sgan-tuned@champion")
    assert model.generate(32, 32, seed=0).shape == (3, 32, 32)
    client = mlflow.MlflowClient()
    parent = client.search_runs(
        [client.get_experiment_by_name("tune-sgan").experiment_id],
        filter_string="tags.`galray.sweep` = 'sgan-sweep' and attributes.run_name = 'sgan-sweep'",
    )
    assert parent and "best_val_pixel_ks_max" in parent[0].data.metrics
