"""``galray simulate survey``: write a synthetic Balrog-style survey with a known transfer function."""

from __future__ import annotations

import argparse

from galray.cli import group


def register(sub, groups) -> None:
    sim = group(sub, groups, "simulate", help="write synthetic survey data with known truth")
    p = sim.add_parser(
        "survey",
        help="deep catalog + HEALPix condition maps + Balrog-style injection catalog",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--n-injections", type=int, default=200_000, help="injection catalog rows")
    p.add_argument("--n-deep", type=int, default=100_000, help="deep-field truth galaxies")
    p.add_argument("--nside", type=int, default=512, help="HEALPix nside of the condition maps")
    p.add_argument(
        "--ordering", default="RING", choices=["RING", "NESTED"], help="HEALPix ordering"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (output is deterministic)")
    p.add_argument("--shard-rows", type=int, default=1_000_000, help="rows per Parquet shard")
    p.add_argument(
        "--no-fits-maps", action="store_true", help="skip the healpy FITS copies of the maps"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.set_defaults(handler=_survey)


def _survey(args: argparse.Namespace) -> int:
    from galray.datasets.simulate import SurveyConfig, simulate_survey

    cfg = SurveyConfig(
        n_injections=args.n_injections,
        n_deep=args.n_deep,
        nside=args.nside,
        ordering=args.ordering,
        seed=args.seed,
        shard_rows=args.shard_rows,
        write_fits_maps=not args.no_fits_maps,
    )
    simulate_survey(args.out, cfg, overwrite=args.overwrite)
    return 0
