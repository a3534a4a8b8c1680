"""Side by side: PZFlow, galray's conditional flow and galray's cWGAN-GP on one simulated survey.

All three learn the same thing -- the observed r, i, z measurement of a *detected* galaxy given
its truth and observing conditions -- from the same training rows (the survey's train split,
detected rows), in the same representation (galray's standardised ``lupt(obs) - true`` per band
given the standardised condition features), on the same machine, one after the other.  Each is
scored on the same held-out detected rows of the test split: every row's measurement is drawn
once from the emulator and compared with the simulator's by galray's classifier two-sample test
(``c2st_auc``: 0.5 = indistinguishable) and per-band KS D of the observed magnitude.

The clock.  PZFlow (defaults: ShiftBounds + RollingSplineCoupling, Adam lr 1e-3, batch 1024)
trains in segments of doubling epochs (1, 1, 2, 4, ...) and is scored after each, until
``--budget`` seconds of training; its *time to its best AUC* sets the budget of galray's flow and
GAN, which train with the plain training step (:mod:`galray.emulator.step`, the step
Ray Train runs; no Ray here) with the learning rate decayed over that budget.  Scoring time is
not training time.  Each segment restarts PZFlow's optimiser (its ``train`` makes a fresh one);
that is PZFlow's own API.

Requires the ``compare`` extra (``pip install -e ".[compare]"``: pzflow, jax).  Without pzflow,
``--budget`` is the budget of galray's models.

    python benchmarks/bench_flow_compare.py --injections 1700000 --budget 300
    python benchmarks/bench_flow_compare.py --methods flow,gan --budget 60     # no pzflow

Results (2026-11-24, 2-vCPU Intel Xeon VM with AMX, no GPU, torch 2.13 CPU, pzflow 4.0.0 on
jax 0.10.2 CPU; 1.7M simulated injections at nside 512, 1.36M train rows of which 285k detected,
60k held-out detected rows scored; flow: 4 coupling transforms, width 64; GAN: 256x3, batch 512,
5 critic steps)::

    method                c2st_auc   ks_max  train_s  epochs
    pzflow                   0.513    0.007      851     256   (0.516 after 79 s, 16 epochs)
    galray-flow x0.25        0.501    0.005      213      40
    galray-flow              0.500    0.005      851     155
    galray-gan               0.562    0.005      851     129

That table predates target whitening (:mod:`galray.emulator.features`).  With whitened targets (the
default now; same machine and survey, 50k held-out detected rows, 300 s each, no pzflow)::

    method                c2st_auc   ks_max  train_s  epochs
    galray-flow              0.497    0.004      300      51
    galray-gan               0.525    0.004      301      48

The GAN went from 0.562 after 851 s to 0.525 after 300 s: it had been making bright galaxies'
measurements 1.6x too wide.  The flow was already at the classifier's floor.

On an H100 (the issue's reference: PZFlow 0.524 in 45 s) not measured yet.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from galray.datasets import schema
from galray.datasets.conditions import read_condition_map
from galray.datasets.simulate import SurveyConfig, simulate_survey
from galray.datasets.split import SplitSpec
from galray.emulator.config import EmulatorOptimConfig as OptimConfig
from galray.emulator.features import EmulatorFeatures
from galray.emulator.step import (
    DeviceData,
    GroupRunner,
    build_modules,
    epoch_indices,
    steps_per_group,
)
from galray.evaluation.emulator import classifier_two_sample_test, ks_statistics
from galray.models.emulator import NetConfig
from galray.models.flow import FlowConfig
from galray.training.modules import GradientSync, lr_scale

BANDS = schema.BANDS
COLUMNS = (
    ["id", "pixel", "true_size", "detected"]
    + [schema.true_mag(b) for b in BANDS]
    + [schema.obs_flux(b) for b in BANDS]
    + [schema.obs_mag(b) for b in BANDS]
)


# ----------------------------------------------------------------------------- data


def load_split(survey: Path, split: str, spec: SplitSpec) -> dict[str, np.ndarray]:
    """Rows of one split with their conditions joined by HEALPix pixel."""
    files = sorted(glob.glob(str(survey / "injections" / "*.parquet")))
    table = pd.concat([pq.read_table(f, columns=COLUMNS).to_pandas() for f in files])
    table = table[spec.mask(table["id"].to_numpy(), split)]
    conditions = read_condition_map(survey / "maps" / "conditions.parquet")
    values, inside = conditions.lookup(table["pixel"].to_numpy())
    columns = {c: table[c].to_numpy() for c in table.columns}
    for j, name in enumerate(conditions.columns):
        columns[name] = values[:, j]
    return {c: v[inside] for c, v in columns.items()}


def detected_rows(columns: dict[str, np.ndarray], limit: int | None = None) -> dict:
    det = columns["detected"].astype(bool)
    out = {c: v[det] for c, v in columns.items()}
    return {c: v[:limit] for c, v in out.items()} if limit else out


# ----------------------------------------------------------------------------- scoring


def score(features: EmulatorFeatures, test: dict, y: np.ndarray, seed: int = 0) -> dict[str, float]:
    """C2ST AUC and max per-band KS D of emulated standardised targets ``y`` [N, 3] for the
    detected test rows ``test``."""
    reference = pd.DataFrame({c: test[c] for c in test if c != "pixel"})
    emulated = reference.copy()
    for name, values in features.decode_target(y, test).items():
        emulated[name] = values
    ref = reference.assign(detected=True)
    emu = emulated.assign(detected=True)
    ks = ks_statistics(ref, emu, BANDS)
    auc = classifier_two_sample_test(ref, emu, BANDS, seed)
    return {"c2st_auc": auc, "ks_max": ks["ks_max"]}


# ----------------------------------------------------------------------------- galray


def train_galray(
    kind: str,
    features: EmulatorFeatures,
    train: dict,
    budget: float,
    device: torch.device,
    seed: int,
    args,
):
    """Train galray's flow or GAN with the plain step for ``budget`` seconds; returns the
    exported generator and the training seconds spent."""
    det = train["detected"].astype(bool)
    cond = torch.from_numpy(features.encode_cond(train))
    data = DeviceData(
        cond_det=cond[torch.from_numpy(det)].to(device),
        target=torch.from_numpy(features.encode_target(train, det)).to(device),
        cond_all=cond.to(device),
        label=torch.from_numpy(det.astype(np.float32)).to(device),
    )
    is_flow = kind == "flow"
    if is_flow:
        net = NetConfig(detection_width=64, detection_depth=2)
        flow = FlowConfig(
            transforms=args.flow_transforms, width=args.flow_width, passes=args.flow_passes
        )
        opt = OptimConfig(batch_size=args.flow_batch, lr_generator=args.flow_lr, ema_decay=0.99)
    else:
        net = NetConfig(width=256, depth=3, noise_dim=8, detection_width=64, detection_depth=2)
        flow = None
        opt = OptimConfig(
            batch_size=args.gan_batch,
            critic_steps=5,
            lr_generator=2e-4,
            lr_critic=2e-4,
            betas=(0.5, 0.9),
            ema_decay=0.999,
        )
    m = build_modules(features.n_cond, features.n_target, net, opt, device, seed, flow=flow)
    runner = GroupRunner(m, data, opt, GradientSync(1), cuda_graph=not is_flow)
    order = torch.Generator().manual_seed(seed)
    steps = steps_per_group(opt, is_flow)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0, spent, epochs = time.perf_counter(), 0.0, 0
    while spent < budget:
        idx_c, idx_d = epoch_indices(data, opt, order, steps=steps)
        for g in range(idx_c.shape[0]):
            if g % 16 == 0:
                sync()
                spent = time.perf_counter() - t0
                if spent >= budget:
                    break
                m.set_lr_scale(lr_scale(spent / budget, opt.warmdown))
            runner(idx_c[g], idx_d[g])
        epochs += 1
    sync()
    return m.exported_generator.eval(), time.perf_counter() - t0, epochs


@torch.no_grad()
def sample_galray(generator, features, test, device, seed) -> np.ndarray:
    cond = torch.from_numpy(features.encode_cond(test)).to(device)
    g = torch.Generator(device=device).manual_seed(seed)
    z = torch.randn(cond.shape[0], generator.noise_dim, generator=g, device=device)
    return generator(z, cond).float().cpu().numpy()


# ----------------------------------------------------------------------------- pzflow


def run_pzflow(features, train, test, budget: float, seed: int, log) -> list[dict]:
    """PZFlow with its defaults, scored after each segment; returns one row per segment."""
    from pzflow import Flow

    cond_names = [f"c{j}" for j in range(features.n_cond)]
    data_names = [f"y_{b}" for b in BANDS]

    def frame(columns, with_target: bool) -> pd.DataFrame:
        out = pd.DataFrame(features.encode_cond(columns), columns=cond_names)
        if with_target:
            target = features.encode_target(columns, np.ones(len(out), bool))
            out[data_names] = target
        return out

    train_frame = frame(detected_rows(train), True)
    test_frame = frame(test, False)
    flow = Flow(data_columns=data_names, conditional_columns=cond_names, seed=seed)
    rows, spent, epochs, segment = [], 0.0, 0, 1
    while spent < budget:
        t0 = time.perf_counter()
        flow.train(train_frame, epochs=segment, seed=seed + epochs, verbose=False)
        spent += time.perf_counter() - t0
        epochs += segment
        drawn = flow.sample(1, conditions=test_frame, seed=seed)
        y = drawn[data_names].to_numpy(np.float32)
        result = score(features, test, y, seed) | {"epochs": epochs, "train_s": spent}
        log(f"  pzflow: {epochs} epochs, {spent:.0f} s: {result}")
        rows.append(result)
        segment = epochs  # doubling
    return rows


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--survey", type=Path, help="a simulated survey (written if missing)")
    parser.add_argument("--injections", type=int, default=1_000_000)
    parser.add_argument("--budget", type=float, default=120.0, help="max seconds per method")
    parser.add_argument("--methods", default="pzflow,flow,gan")
    parser.add_argument("--eval-rows", type=int, default=50_000)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--flow-batch", type=int, default=1024)
    parser.add_argument("--flow-lr", type=float, default=2e-3)
    parser.add_argument("--flow-transforms", type=int, default=4)
    parser.add_argument("--flow-width", type=int, default=64)
    parser.add_argument("--flow-passes", type=int, default=2, help="0: fully autoregressive")
    parser.add_argument("--gan-batch", type=int, default=512)
    parser.add_argument(
        "--flow-fractions",
        default="0.25,1",
        help="also train galray's flow for these fractions of the budget (time to reach)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    log = print
    methods = args.methods.split(",")

    scratch = tempfile.TemporaryDirectory()
    survey = args.survey or Path(scratch.name) / "survey"
    if not survey.exists():
        cfg = SurveyConfig(n_injections=args.injections, n_deep=200_000, nside=256, seed=1)
        simulate_survey(survey, cfg, log=lambda *_: None)
    spec = SplitSpec((1.0 - args.test_fraction, 0.0, args.test_fraction), salt=0)
    train, test_all = load_split(survey, "train", spec), load_split(survey, "test", spec)
    test = detected_rows(test_all, args.eval_rows)
    features = EmulatorFeatures.fit(train)
    n_det = int(train["detected"].sum())
    log(
        f"survey {survey}: {len(train['id']):,} train rows ({n_det:,} detected), "
        f"{len(test['id']):,} held-out detected rows scored; device {device}"
    )

    results: dict[str, dict] = {}
    budget = args.budget
    if "pzflow" in methods:
        rows = run_pzflow(features, train, test, args.budget, args.seed, log)
        best = min(rows, key=lambda r: r["c2st_auc"])
        results["pzflow"] = best | {"best_of": len(rows)}
        budget = best["train_s"]  # galray gets PZFlow's time to its best
        log(f"pzflow best AUC {best['c2st_auc']:.3f} after {budget:.0f} s: galray's budget")
    runs = []
    if "flow" in methods:
        fractions = sorted({float(f) for f in args.flow_fractions.split(",")} | {1.0})
        runs += [("flow", f) for f in fractions]
    if "gan" in methods:
        runs.append(("gan", 1.0))
    for kind, fraction in runs:
        generator, seconds, epochs = train_galray(
            kind, features, train, fraction * budget, device, args.seed, args
        )
        y = sample_galray(generator, features, test, device, args.seed)
        name = f"galray-{kind}" + ("" if fraction == 1.0 else f" x{fraction:g}")
        results[name] = score(features, test, y, args.seed) | {
            "train_s": seconds,
            "epochs": epochs,
        }
        log(f"  {name}: {results[name]}")

    stamp = datetime.date.today().isoformat()
    host = f"{platform.node()} ({platform.processor() or platform.machine()}), {device}"
    if device.type == "cuda":
        host += f" {torch.cuda.get_device_name(device)}"
    print(f"\n{stamp}  {host}  torch {torch.__version__}")
    print(f"{'method':<20} {'c2st_auc':>9} {'ks_max':>8} {'train_s':>8} {'epochs':>7}")
    for name, r in results.items():
        print(
            f"{name:<20} {r['c2st_auc']:>9.3f} {r['ks_max']:>8.3f} {r['train_s']:>8.0f} "
            f"{r['epochs']:>7}"
        )


if __name__ == "__main__":
    main()
