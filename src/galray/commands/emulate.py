"""``galray emulate``: many realizations of a survey's injection catalog from a trained emulator."""

from __future__ import annotations

import argparse

from galray.commands.common import add_deprecated, add_model, add_output, command

# galray.models.precision.PRECISIONS, spelled out: importing it would import torch for --help
PRECISION_CHOICES = ("auto", "fp32", "bf16")


def register(sub, groups) -> None:
    p = command(sub, "emulate", _emulate)
    add_model(p, "emulator")
    p.add_argument("--deep", required=True, help="deep catalog (Parquet file or directory)")
    p.add_argument("--maps", required=True, help="condition-map table or its directory")
    add_output(
        p,
        "output directory: new, empty, or an emulation output",
        overwrite="replace the emulation in --out once the new run completes",
    )
    p.add_argument("--realizations", type=int, default=1, help="placements of the deep catalog")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--positions", help="Parquet with ra, dec [, deep_id: a deep catalog id]")
    p.add_argument(
        "--shard-rows",
        dest="chunk_rows",
        metavar="N",
        type=int,
        default=500_000,
        help="deep rows (or positions) per output shard",
    )
    add_deprecated(p, "--chunk-rows", "--shard-rows", "chunk_rows", type=int)
    p.add_argument(
        "--workers",
        type=int,
        help="actors, all started at once (default: one per CPU; with GPUs one fewer per GPU "
        "node, sharing its GPUs)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default="auto",
        help="the networks' hidden-layer arithmetic: auto is bf16 if this machine's CPU "
        "multiplies it natively (AVX512-BF16, AMX), else fp32 -- so it depends on the hardware; "
        "resolved once, recorded, and a --resume must match it; fp32 gives the same output "
        "anywhere. Inputs, outputs and the flow's splines are always float32",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted run in --out (shards checked; damaged ones redone)",
    )


def _emulate(args: argparse.Namespace) -> int:
    r"""Emulate survey catalogs with a trained emulator (Ray Data, resumable).

    Place the deep catalog at random footprint positions (or the given ones) K times, look up
    observing conditions, and emulate measurement and detection.  Output: Parquet shards
    part-rKKKK-cJJJJJ.parquet plus _emulation.json (rows and SHA-256 of every shard);
    deterministic for a seed.  --out must be new, empty or an emulation output; --overwrite
    builds the new run beside it and swaps it in when complete; --resume verifies the shards
    on disk and redoes damaged ones.  Example:
        galray emulate --model models:/galray-emulator-smoke@champion \
            --deep data/smoke-survey/deep --maps data/smoke-survey/maps --out emulated/ \
            --realizations 20 --seed 1
    """
    from pathlib import Path

    from galray.emulator.emulate import EmulateConfig, emulate

    fields = (
        "model deep out realizations seed positions chunk_rows workers precision resume overwrite"
    )
    options = {name: getattr(args, name) for name in fields.split()}
    maps = Path(args.maps)
    maps = maps / "conditions.parquet" if maps.is_dir() else maps
    emulate(EmulateConfig(maps=str(maps), **options))
    return 0
