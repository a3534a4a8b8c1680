"""``galray emulate``: many realizations of a survey's injection catalog from a trained emulator."""

from __future__ import annotations

import argparse


def register(sub, groups) -> None:
    p = sub.add_parser(
        "emulate",
        help="emulate survey catalogs with a trained emulator (Ray Data, resumable)",
        description="Place the deep catalog at random footprint positions (or the given ones) "
        "K times, look up observing conditions, and emulate measurement and detection. Output: "
        "Parquet shards part-rKKKK-cJJJJJ.parquet plus _emulation.json; deterministic for a seed.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--model", required=True, help="models:/NAME@ALIAS, runs:/ID/PATH or a bundle dir"
    )
    p.add_argument("--deep", required=True, help="deep catalog (Parquet file or directory)")
    p.add_argument("--maps", required=True, help="condition-map table or its directory")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--realizations", type=int, default=1, help="placements of the deep catalog")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--positions", default=None, help="Parquet with ra, dec [, deep_id] to use")
    p.add_argument("--chunk-rows", type=int, default=500_000, help="rows per output shard")
    p.add_argument("--workers", type=int, default=None, help="actors (default: GPUs, else CPUs)")
    p.add_argument("--resume", action="store_true", help="finish an interrupted run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    p.set_defaults(handler=_emulate)


def _emulate(args: argparse.Namespace) -> int:
    from galray.emulator.emulate import EmulateConfig, emulate

    maps = args.maps
    from pathlib import Path

    if Path(maps).is_dir():
        maps = str(Path(maps) / "conditions.parquet")
    cfg = EmulateConfig(
        model=args.model,
        deep=args.deep,
        maps=maps,
        out=args.out,
        realizations=args.realizations,
        seed=args.seed,
        positions=args.positions,
        chunk_rows=args.chunk_rows,
        workers=args.workers,
        resume=args.resume,
        overwrite=args.overwrite,
    )
    emulate(cfg)
    return 0
