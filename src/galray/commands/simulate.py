"""``galray simulate survey|deepfield``: synthetic data with known truth."""

from __future__ import annotations

import argparse

from galray.commands.common import add_ordering, add_output, add_size, command, group


def register(sub, groups) -> None:
    sim = group(sub, groups, "simulate", help="write synthetic survey data with known truth")
    p = command(sim, "survey", _survey)
    add_output(p, "output directory", overwrite="replace an existing output directory")
    p.add_argument("--n-injections", type=int, default=200_000, help="injection catalog rows")
    p.add_argument("--n-deep", type=int, default=100_000, help="deep-field truth galaxies")
    p.add_argument("--nside", type=int, default=512, help="HEALPix nside of the condition maps")
    add_ordering(p, "RING", "HEALPix ordering")
    p.add_argument("--seed", type=int, default=0, help="random seed (output is deterministic)")
    p.add_argument("--shard-rows", type=int, default=1_000_000, help="rows per Parquet shard")
    p.add_argument(
        "--no-fits-maps", action="store_true", help="skip the healpy FITS copies of the maps"
    )

    p = command(sim, "deepfield", _deepfield)
    add_output(p, "output FITS file")
    add_size(p, "2048")
    p.add_argument("--seed", type=int, default=0, help="random seed (output is deterministic)")
    p.add_argument("--density", type=float, help="galaxies per arcmin² (default: 350)")


def _survey(args: argparse.Namespace) -> int:
    r"""Deep catalog + HEALPix condition maps + Balrog-style injection catalog.

    The transfer function is known (see galray.datasets.simulate), so an emulator trained on
    it can be scored against the truth.  Example:
        galray simulate survey --out data/survey --n-injections 1700000 --nside 512 --seed 1
    """
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


def _deepfield(args: argparse.Namespace) -> int:
    r"""A 3-band GalSim deep field (FITS, one HDU per band, WCS) and its true catalog.

    Sersic galaxies with deep number counts, sizes, ellipticities and colours, convolved with a
    Moffat PSF per band, on a 0.06" grid with sky noise; pixel values in nJy (MAGZERO 31.4).
    The catalog goes to FILE.catalog.parquet.  Example:
        galray simulate deepfield --out data/deepfield-1024.fits --size 1024 --seed 0
    """
    from galray.datasets.deepfield import DeepFieldConfig, simulate_deepfield

    h, w = args.size
    extra = {} if args.density is None else {"density": args.density}
    cfg = DeepFieldConfig(height=h, width=w, seed=args.seed, **extra)
    simulate_deepfield(args.out, cfg)
    return 0
