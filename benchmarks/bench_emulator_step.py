"""Training throughput of the emulator's WGAN-GP step (rows the critic consumes per second).

Runs the plain training step (no Ray) on data resident on the device, eagerly and replayed from a
CUDA graph, and prints rows/s and ratios: graph vs eager (same run) and vs the published cWGAN-GP
code's 11.8k rows/s on an H100 (batch 200, 5 critic steps per generator step).

    python benchmarks/bench_emulator_step.py --batch-size 200 --critic-steps 5
    python benchmarks/bench_emulator_step.py --batch-size 200,1024,4096 --seconds 5
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time

import torch

from galray.emulator.config import EmulatorOptimConfig as OptimConfig
from galray.emulator.step import (
    DeviceData,
    GroupRunner,
    build_modules,
    epoch_indices,
)
from galray.models.emulator import NetConfig
from galray.training.modules import GradientSync

PUBLISHED_ROWS_PER_S = 11_800  # published cWGAN-GP code, one H100, batch 200, 5 critic steps


def synthetic_data(n: int, n_cond: int, n_target: int, device: torch.device) -> DeviceData:
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(n, n_cond, generator=g)
    target = 0.5 * cond[:, :n_target] + 0.3 * torch.randn(n, n_target, generator=g)
    label = (cond[:, 0] > 0).float()
    return DeviceData(cond.to(device), target.to(device), cond.to(device), label.to(device))


def measure(
    batch: int, critic_steps: int, graph: bool, device, seconds: float, net: NetConfig
) -> float:
    opt = OptimConfig(batch_size=batch, critic_steps=critic_steps, detection_batch_size=batch)
    data = synthetic_data(max(200_000, 40 * batch * critic_steps), 10, 3, device)
    m = build_modules(10, 3, net, opt, device, seed=0)
    runner = GroupRunner(m, data, opt, GradientSync(1), cuda_graph=graph)
    order = torch.Generator().manual_seed(0)
    idx_c, idx_d = epoch_indices(data, opt, order)
    for g in range(min(5, idx_c.shape[0])):  # warm up (and capture)
        runner(idx_c[g], idx_d[g])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    rows, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for g in range(idx_c.shape[0]):
            runner(idx_c[g], idx_d[g])
        sync()
        rows += idx_c.numel()
    return rows / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--batch-size", default="200", help="comma-separated batch sizes")
    p.add_argument("--critic-steps", type=int, default=5)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per measurement")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    net = NetConfig(width=args.width, depth=args.depth)
    print(
        f"# {datetime.date.today()}  device: {name}  torch {torch.__version__}  MLP {args.width}x{args.depth}"
    )
    print(
        f"{'batch':>7} {'eager rows/s':>14} {'graph rows/s':>14} {'graph/eager':>12} {'vs published':>13}"
    )
    for batch in (int(b) for b in args.batch_size.split(",")):
        eager = measure(batch, args.critic_steps, False, device, args.seconds, net)
        graph = (
            measure(batch, args.critic_steps, True, device, args.seconds, net)
            if device.type == "cuda"
            else float("nan")
        )
        best = max(eager, graph) if graph == graph else eager
        print(
            f"{batch:>7} {eager:>14,.0f} {graph:>14,.0f} {graph / eager:>12.2f} "
            f"{best / PUBLISHED_ROWS_PER_S:>12.1f}x"
        )


if __name__ == "__main__":
    main()
