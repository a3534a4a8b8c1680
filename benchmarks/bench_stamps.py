"""Galaxy-stamp generation speed: the stamp generator against GalSim rendering the same kind of
galaxy (the simulator's bulge + disk + knots, intrinsic image), measured in the same run; and the
training step's stamps/s.

    python benchmarks/bench_stamps.py                      # the stamps-cpu.yaml network, CPU
    python benchmarks/bench_stamps.py --device cuda --rows 65536 --batch 4096
    python benchmarks/bench_stamps.py --net smoke --rows 256   # seconds, to check the script

Rates are per wall-second and per CPU-second (the latter is insensitive to other load on a shared
machine).  The generator's weights are untrained (speed does not depend on them).  GalSim's side
is skipped where GalSim is not installed (the lent GPU machine).

Results (2026-11-29, 2-vCPU Intel Xeon VM shared with other jobs, load 20-30; torch 2.13 CPU, one
thread; 48x48 stamps): see README, "Galaxy stamps".
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from galray.models.stamps import StampNetConfig, StampVAE
from galray.stamps.config import StampOptimConfig
from galray.stamps.step import StampBatchData, build_stamp_modules, train_batch
from galray.training.modules import GradientSync

NETS = {
    "cpu": StampNetConfig(size=48, channels=(16, 32, 64), hidden=128, flow_hidden=(64, 64)),
    "default": StampNetConfig(size=48),
    "smoke": StampNetConfig(
        size=32, latent_dim=4, channels=(8, 16), hidden=32, flow_hidden=(32, 32)
    ),
}


def timed(fn, repeats: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of ``repeats`` calls after a warm-up call."""
    fn()
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--net", choices=sorted(NETS), default="cpu")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rows", type=int, default=2048, help="stamps generated per repeat")
    ap.add_argument("--batch", type=int, default=512, help="stamps per network call")
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--galsim-rows", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    device = torch.device(args.device)
    net = NETS[args.net]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, "
          f"net {args.net} ({net.size}x{net.size}, channels {net.channels})")  # fmt: skip

    torch.manual_seed(0)
    vae = StampVAE(net).to(device).eval()
    c = torch.randn(args.rows, net.n_cond, device=device)
    eps = torch.randn(args.rows, net.latent_dim, device=device)
    angle = torch.rand(args.rows, device=device) * 3.14159

    @torch.no_grad()
    def generate():
        for a in range(0, args.rows, args.batch):
            b = slice(a, a + args.batch)
            vae.generate(c[b], eps[b], angle[b]).cpu()

    wall, cpu = timed(generate, args.repeats)
    gen_rate = args.rows * args.repeats / wall
    print(
        f"generator   {gen_rate:12,.0f} stamps/s  {args.rows * args.repeats / cpu:12,.0f} stamps/cpu-s"
    )

    opt = StampOptimConfig(batch_size=args.train_batch)
    m = build_stamp_modules(net, opt, device, seed=0)
    n = 4 * args.train_batch
    s = net.size
    data = StampBatchData(
        stamp=torch.rand(n, s, s, device=device) * 10,
        psf=torch.softmax(torch.randn(n, s * s, device=device), 1).view(n, s, s),
        sigma=torch.ones(n, device=device),
        flux=torch.full((n,), 1000.0, device=device),
        cond=torch.randn(n, net.n_cond, device=device),
    )
    gen = torch.Generator().manual_seed(0)
    steps = max(1, args.repeats)
    wall, cpu = timed(lambda: train_batch(m, data, opt, GradientSync(1), gen), steps)
    print(f"train step  {args.train_batch * steps / wall:12,.0f} stamps/s  "
          f"{args.train_batch * steps / cpu:12,.0f} stamps/cpu-s  (batch {args.train_batch})")  # fmt: skip

    try:
        from galray.datasets.stamps import StampSimConfig, render
    except ImportError:
        return
    try:
        import galsim  # noqa: F401
    except ImportError:
        print("galsim      not installed: no baseline")
        return
    cfg = StampSimConfig(n=args.galsim_rows, size=s, intrinsic=True)
    render(np.arange(50), cfg)  # GalSim builds its Sersic tables once per index
    ids = np.arange(50, 50 + args.galsim_rows)
    w0, c0 = time.perf_counter(), time.process_time()
    render(ids, cfg)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    galsim_rate = args.galsim_rows / wall
    print(f"galsim      {galsim_rate:12,.0f} stamps/s  {args.galsim_rows / cpu:12,.0f} stamps/cpu-s"
          "  (simulator: intrinsic + observed + PSF image per stamp)")  # fmt: skip
    print(f"ratio       {gen_rate / galsim_rate:12,.1f}x generator / GalSim (wall)")


if __name__ == "__main__":
    main()
