"""``galray simulate survey|deepfield``: synthetic data with known truth (a Balrog-style survey
with a known transfer function; a GalSim deep field and its true catalog)."""

from __future__ import annotations

import argparse

from galray.commands.common import group, parse_size


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
    _register_deepfield(sim)


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


def _register_deepfield(sim) -> None:
    p = sim.add_parser(
        "deepfield",
        help="a 3-band GalSim deep field (FITS, one HDU per band, WCS) and its true catalog",
        description="Render Sersic galaxies with deep number counts, sizes, ellipticities and "
        'colours, convolved with a Moffat PSF per band, on a 0.06" grid with sky noise; pixel '
        "values in nJy (MAGZERO 31.4).  The catalog goes to FILE.catalog.parquet.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output FITS file")
    p.add_argument("--size", default="2048", help="pixels per side, N or HxW")
    p.add_argument("--seed", type=int, default=0, help="random seed (output is deterministic)")
    p.add_argument(
        "--density", type=float, default=None, help="galaxies per arcmin² (default: 350)"
    )
    p.set_defaults(handler=_deepfield)


def _deepfield(args: argparse.Namespace) -> int:
    from galray.datasets.deepfield import DeepFieldConfig, simulate_deepfield

    h, w = parse_size(args.size)
    extra = {} if args.density is None else {"density": args.density}
    cfg = DeepFieldConfig(height=h, width=w, seed=args.seed, **extra)
    simulate_deepfield(args.out, cfg)
    return 0
