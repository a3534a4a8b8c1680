"""Throughput of the deep-field SGAN: training time per epoch and generation pixels per second.

Training: the plain step function (:func:`galray.deepfield.step.train_batch`, no Ray) on a
random image resident on the device; an "epoch" is ``--batches`` batches of ``--batch`` crops of
``--crop`` px (the paper: 30 batches of 128 crops, 64 px; 120 s per epoch on a K40c).
Generation: the generator alone on one ``--gen-tile`` px tile's noise window (tile plus the
noise halo), counting kept pixels per second, and the whole tile path of
:meth:`DeepFieldModel.tile` (noise drawn on the host, inverse scaling) in fp32.

Modes, each against eager fp32 measured in the same run: ``bf16`` (autocast) + channels_last,
and ``compile`` (the same plus ``torch.compile``) -- on a GPU; on a CPU only eager fp32 and
channels_last run unless ``--modes`` asks for more.

    python benchmarks/bench_sgan.py                       # paper settings on a GPU
    python benchmarks/bench_sgan.py --net debug --batch 16 --batches 5 --gen-tile 256  # CPU
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import numpy as np
import torch

from galray.deepfield.bundle import DeepFieldModel
from galray.deepfield.config import DeepFieldOptimConfig
from galray.deepfield.scaling import IntensityScaling
from galray.deepfield.step import (
    batch_sizes,
    build_sgan_modules,
    random_crops,
    train_batch,
)
from galray.models.sgan import Generator, SGANNetConfig, noise_halo
from galray.training.modules import GradientSync

PAPER_EPOCH_SECONDS = 120.0  # Smith & Geach 2019, K40c, 30 batches of 128 crops


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _mode_flags(mode: str) -> tuple[torch.dtype | None, bool, bool]:
    """(autocast dtype, channels_last, compile) of a mode name."""
    return {
        "eager": (None, False, False),
        "channels_last": (None, True, False),
        "bf16": (torch.bfloat16, True, False),
        "compile": (torch.bfloat16, True, True),
        "compile_fp32": (None, False, True),
    }[mode]


def time_training(net, args, mode: str, device: torch.device) -> float:
    """Median seconds per epoch."""
    amp, channels_last, compiled = _mode_flags(mode)
    crops = tuple(int(c) for c in args.crop.split(",")) if args.crop != "mixed" else (64, 128, 256)
    opt = DeepFieldOptimConfig(
        batch_size=args.batch, crop_sizes=crops, batches_per_epoch=args.batches
    )
    m = build_sgan_modules(net, opt, device, 0, amp_dtype=amp, channels_last=channels_last)
    if compiled:
        m.generator.forward = torch.compile(m.generator.forward)
        m.critic.forward = torch.compile(m.critic.forward)
    image = torch.rand(net.bands, args.image, args.image, device=device)
    gen = torch.Generator().manual_seed(0)
    sync = GradientSync(1)
    for size in crops:  # warm up every shape (and compile it)
        for _ in range(2):
            train_batch(m, random_crops(image, args.batch, size, gen), opt, sync)
    _sync(device)
    times = []
    for _ in range(args.repeats):
        sizes = batch_sizes(opt, gen)
        t0 = time.perf_counter()
        for size in sizes:
            train_batch(m, random_crops(image, args.batch, size, gen), opt, sync)
        m.pop_metrics()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


@torch.no_grad()
def time_generation(net, args, mode: str, device: torch.device) -> float:
    """Kept output pixels per second of the generator on one tile's noise window."""
    amp, channels_last, compiled = _mode_flags(mode)
    generator = Generator(net).to(device).eval()
    before, after = noise_halo(generator.geometry, generator.upsampling)
    cells = args.gen_tile // generator.upsampling + before + after
    z = torch.randn(1, net.noise_channels, cells, cells, device=device)
    if channels_last:
        generator.to(memory_format=torch.channels_last)
        z = z.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(generator) if compiled else generator
    ctx = (
        torch.autocast(device.type, dtype=amp)
        if amp
        else torch.autocast(device.type, enabled=False)
    )
    with ctx:
        for _ in range(2):
            forward(z)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            forward(z)
        _sync(device)
    return args.repeats * args.gen_tile**2 / (time.perf_counter() - t0)


def time_tile_path(net, args, device: torch.device) -> float:
    """Kept pixels per second of DeepFieldModel.tile (noise drawn on the host, generator and
    inverse scaling on the device) over a 3x3-tile field; every tile shape is warmed up first
    (cuDNN autotunes each new shape; edge tiles differ from interior ones)."""
    scaling = IntensityScaling.fit(np.random.default_rng(0).normal(size=(net.bands, 64, 64)))
    model = DeepFieldModel(Generator(net), scaling, ["r", "i", "z"][: net.bands], [None] * 3, 0.06)
    model.to(device)
    tiles = model.plan(args.gen_tile * 3, args.gen_tile * 3, args.gen_tile)
    for t in tiles:
        model.tile(t, 0)
    _sync(device)
    t0 = time.perf_counter()
    for t in tiles:
        model.tile(t, 1)
    return sum(t.pixels for t in tiles) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--net", choices=["paper", "debug"], default="paper")
    p.add_argument("--batch", type=int, default=128, help="crops per batch")
    p.add_argument("--batches", type=int, default=30, help="batches per epoch")
    p.add_argument("--crop", default="64", help="crop px: 64, a list '64,128', or 'mixed'")
    p.add_argument("--image", type=int, default=1024, help="side of the random training image")
    p.add_argument("--gen-tile", type=int, default=1024, help="generation tile side, px")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--modes", default=None, help="comma list of eager,channels_last,bf16,compile")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-generate", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    if gpu:
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name() if gpu else f"{platform.processor() or 'cpu'}"
    modes = (args.modes or ("eager,bf16,compile" if gpu else "eager,channels_last")).split(",")
    net = SGANNetConfig() if args.net == "paper" else SGANNetConfig.debug()
    print(
        f"# {datetime.date.today()}  {name}  ({os.cpu_count()} CPUs)  torch {torch.__version__}  "
        f"net={args.net}  batch={args.batch}x{args.batches}  crop={args.crop}"
    )
    if not args.skip_train:
        base = None
        print(f"{'train mode':>14} {'s/epoch':>9} {'crops/s':>9} {'vs eager':>9} {'vs paper':>9}")
        for mode in modes:
            seconds = time_training(net, args, mode, device)
            base = base or seconds
            crops = args.batch * args.batches / seconds
            print(
                f"{mode:>14} {seconds:9.3f} {crops:9.0f} {base / seconds:8.2f}x "
                f"{PAPER_EPOCH_SECONDS / seconds:8.0f}x",
                flush=True,
            )
    if not args.skip_generate:
        base = None
        print(f"{'generate mode':>14} {'Mpix/s':>9} {'vs eager':>9}")
        for mode in modes:
            rate = time_generation(net, args, mode, device)
            base = base or rate
            print(f"{mode:>14} {rate / 1e6:9.2f} {rate / base:8.2f}x", flush=True)
        rate = time_tile_path(net, args, device)
        print(f"{'tile path fp32':>14} {rate / 1e6:9.2f} {rate / base:8.2f}x", flush=True)


if __name__ == "__main__":
    main()
