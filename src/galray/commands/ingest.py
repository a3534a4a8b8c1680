"""``galray ingest catalog|maps``: survey catalogs and healpy maps -> galray Parquet tables."""

from __future__ import annotations

import argparse

from galray.commands.common import group


def register(sub, groups) -> None:
    ingest = group(
        sub, groups, "ingest", help="convert survey catalogs and HEALPix maps to Parquet"
    )
    _register_catalog(ingest)
    _register_maps(ingest)


def _register_catalog(ingest) -> None:
    p = ingest.add_parser(
        "catalog",
        help="FITS/HDF5/Parquet catalogs -> Parquet shards with a HEALPix pixel column",
        description="Rename and convert catalog columns by a YAML column map (see "
        "configs/columns/des_y3_example.yaml), drop rows without id/ra/dec, add the HEALPix "
        "pixel of (ra, dec) and write part-NNNNN.parquet shards.",
    )
    p.add_argument("sources", nargs="+", metavar="SRC", help="FITS, HDF5 or Parquet files")
    p.add_argument("--out", required=True, help="output directory of Parquet shards")
    p.add_argument("--columns", required=True, metavar="MAP.yaml", help="YAML column map")
    p.add_argument(
        "--nside",
        type=int,
        default=None,
        help="HEALPix nside of the pixel column (default: the column map's)",
    )
    p.add_argument(
        "--ordering",
        choices=["RING", "NESTED"],
        default=None,
        help="HEALPix ordering (default: the column map's, else RING)",
    )
    p.add_argument(
        "--shard-rows",
        type=int,
        default=1_000_000,
        help="rows per Parquet shard (default: 1000000)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.set_defaults(handler=_catalog)


def _register_maps(ingest) -> None:
    p = ingest.add_parser(
        "maps",
        help="healpy FITS maps -> one Parquet condition table (pixel -> value per map)",
        description="Each SPEC is COLUMN=path.fits or path.fits (column = file stem). Maps may "
        "be full-sky or partial, RING or NESTED, but must share nside. Only pixels where every "
        "map is defined are kept, in DIR/conditions.parquet.",
    )
    p.add_argument("specs", nargs="+", metavar="SPEC", help="COLUMN=path.fits or path.fits")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--ordering",
        choices=["RING", "NESTED"],
        default=None,
        help="output HEALPix ordering (default: the first map's)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.set_defaults(handler=_maps)


def _catalog(args: argparse.Namespace) -> int:
    from galray.datasets.ingest_catalog import ingest_catalogs

    ingest_catalogs(
        args.sources,
        args.out,
        args.columns,
        nside=args.nside,
        ordering=args.ordering,
        shard_rows=args.shard_rows,
        overwrite=args.overwrite,
    )
    return 0


def _maps(args: argparse.Namespace) -> int:
    from galray.datasets.ingest_maps import ingest_maps

    ingest_maps(args.specs, args.out, ordering=args.ordering, overwrite=args.overwrite)
    return 0
