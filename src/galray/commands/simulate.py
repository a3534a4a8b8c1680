"""``galray simulate survey|deepfield|stamps``: synthetic data with known truth."""

from __future__ import annotations

import argparse

from galray import console
from galray.commands.common import add_ordering, add_output, add_size, command, group


def register(sub, groups) -> None:
    sim = group(sub, groups, "simulate", help="write synthetic survey data with known truth")
    p = command(sim, "survey", _survey)
    add_output(p, "output directory", overwrite="replace an existing output directory")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--preset", metavar="NAME", help="survey spec preset: riz (default), des-y6 or lsst"
    )
    which.add_argument(
        "--spec", metavar="FILE", help="survey spec YAML file (see galray.datasets.survey)"
    )
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

    p = command(sim, "stamps", _stamps)
    add_output(p, "output directory", overwrite="replace an existing output directory")
    p.add_argument("--n", type=int, default=2000, help="galaxy stamps")
    p.add_argument(
        "--population",
        choices=("rich", "sersic"),
        default="rich",
        help="bulge + disk + knots, or single sheared Sersic profiles (the yardstick's)",
    )
    p.add_argument("--size", type=int, help="pixels per side, even (default: 48; sersic: 32)")
    p.add_argument(
        "--pixel-scale", type=float, help="arcsec per pixel (default: 0.15; sersic: 0.2)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (output is deterministic)")
    p.add_argument("--shard-rows", type=int, default=2000, help="stamps per Parquet shard")
    p.add_argument("--workers", type=int, default=1, help="processes rendering shards")
    p.add_argument("--no-intrinsic", action="store_true", help="skip the noiseless pre-PSF images")


def _survey(args: argparse.Namespace) -> int:
    r"""Deep catalog + HEALPix condition maps + Balrog-style injection catalog.

    For any survey spec: --preset riz (the default: r, i, z fluxes), des-y6 (griz fluxes and
    errors, S/N, size T, size ratio and flags under PSF, airmass, sky, depth and E(B-V); ugriz
    JHKs truth with T, G and redshift) or lsst (ugrizy), or --spec FILE.yaml.  The spec goes to
    OUT/survey.json, the run's manifest to OUT/simulation.json.  The transfer function is known
    (see galray.datasets.simulate for riz, galray.datasets.simulate_spec for any other spec),
    so an emulator trained on it can be scored against the truth.  Examples:
        galray simulate survey --out data/survey --n-injections 1700000 --nside 512 --seed 1
        galray simulate survey --preset des-y6 --out data/des --n-injections 500000 --nside 256
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
        spec=args.spec or args.preset or "riz",
    )
    simulate_survey(args.out, cfg, overwrite=args.overwrite, progress=console.data_progress)
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
    simulate_deepfield(args.out, cfg, progress=console.data_progress)
    return 0


def _stamps(args: argparse.Namespace) -> int:
    r"""Galaxy postage stamps (GalSim) with known properties, PSFs and noise.

    Bulge + disk galaxies with star-forming knots (galsim.RandomKnots), drawn from a documented
    population of magnitude, half-light radius, a redshift-like z (bulge fraction and knots) and
    ellipticity, each convolved with its own Moffat PSF and given white noise.  Sharded Parquet
    with tensor columns (stamp, psf, intrinsic) under OUT/stamps/, read by Ray Data; the
    population is documented in galray.datasets.stamps.  --population sersic: single sheared
    Sersic profiles (flux, index, half-light radius, g1, g2) with their noiseless images and
    optimal S/N, the population the measurement yardstick (galray train estimator) is judged on
    against the Cramér-Rao bound (galray.datasets.sersic).  Examples:
        galray simulate stamps --out data/stamps --n 20000 --size 48 --seed 0
        galray simulate stamps --population sersic --out data/sersic --n 60000 --workers 2
    """
    from galray.datasets.stamps import SERSIC_DEFAULTS, StampSimConfig, simulate_stamps

    fields = dict(SERSIC_DEFAULTS) if args.population == "sersic" else {}
    given = {"size": args.size, "pixel_scale": args.pixel_scale}
    fields |= {k: v for k, v in given.items() if v is not None}
    if args.no_intrinsic:
        fields["intrinsic"] = False
    cfg = StampSimConfig(
        n=args.n,
        seed=args.seed,
        shard_rows=args.shard_rows,
        population=args.population,
        **fields,
    )
    simulate_stamps(
        args.out,
        cfg,
        overwrite=args.overwrite,
        workers=args.workers,
        progress=console.data_progress,
    )
    return 0
