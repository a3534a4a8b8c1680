"""``galray ingest catalog|maps``: survey catalogs and healpy maps -> galray Parquet tables."""

from __future__ import annotations

import argparse

from galray.commands.common import add_ordering, add_output, command, group

REPLACE = "replace an existing output directory"


def register(sub, groups) -> None:
    ingest = group(
        sub, groups, "ingest", help="convert survey catalogs and HEALPix maps to Parquet"
    )
    p = command(ingest, "catalog", _catalog)
    p.add_argument("sources", nargs="+", metavar="SRC", help="FITS, HDF5 or Parquet files")
    add_output(p, "output directory of Parquet shards", overwrite=REPLACE)
    p.add_argument("--columns", required=True, metavar="MAP.yaml", help="YAML column map")
    p.add_argument(
        "--nside", type=int, help="HEALPix nside of the pixel column (default: the column map's)"
    )
    add_ordering(p, None, "HEALPix ordering (default: the column map's, else RING)")
    p.add_argument("--shard-rows", type=int, default=1_000_000, help="rows per Parquet shard")

    p = command(ingest, "maps", _maps)
    p.add_argument("specs", nargs="+", metavar="SPEC", help="COLUMN=path.fits or path.fits")
    add_output(p, "output directory", overwrite=REPLACE)
    add_ordering(p, None, "output HEALPix ordering (default: the first map's)")


def _catalog(args: argparse.Namespace) -> int:
    r"""FITS/HDF5/Parquet catalogs -> Parquet shards with a HEALPix pixel column.

    Rename and convert catalog columns by a YAML column map (see
    configs/columns/des_y3_example.yaml), drop rows without id/ra/dec, add the HEALPix pixel of
    (ra, dec) and write part-NNNNN.parquet shards.  Example:
        galray ingest catalog balrog_*.fits --columns configs/columns/des_y3_example.yaml \
            --out data/cat --nside 4096
    """
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
    r"""Healpy FITS maps -> one Parquet condition table (pixel -> value per map).

    Each SPEC is COLUMN=path.fits or path.fits (column = file stem).  Maps may be full-sky or
    partial, RING or NESTED, but must share nside.  Only pixels where every map is defined are
    kept, in DIR/conditions.parquet.  Example:
        galray ingest maps psf_fwhm_r=maps/r_fwhm.fits depth_r=maps/r_depth.fits --out data/maps
    """
    from galray.datasets.ingest_maps import ingest_maps

    ingest_maps(args.specs, args.out, ordering=args.ordering, overwrite=args.overwrite)
    return 0
