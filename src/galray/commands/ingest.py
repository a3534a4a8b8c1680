"""``galray ingest catalog|deep|maps``: survey catalogs and healpy maps -> galray Parquet tables."""

from __future__ import annotations

import argparse

from galray import console
from galray.commands.common import add_ordering, add_output, command, group

REPLACE = "replace an existing output directory"
SURVEY = "survey spec: a preset (riz, des-y6, lsst), a YAML file or a survey directory"


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
    p.add_argument("--survey", metavar="SPEC", help=f"{SURVEY}; written as DIR/survey.json")
    p.add_argument(
        "--deep",
        metavar="DIR",
        help="deep catalog (galray ingest deep) whose truth columns every injection inherits "
        "by its deep_id",
    )
    p.add_argument("--shard-rows", type=int, default=1_000_000, help="rows per Parquet shard")

    p = command(ingest, "deep", _deep)
    p.add_argument("sources", nargs="+", metavar="FILE", help="FITS, HDF5 or Parquet files")
    add_output(p, "output directory of Parquet shards", overwrite=REPLACE)
    p.add_argument("--columns", required=True, metavar="MAP.yaml", help="YAML column map")
    p.add_argument("--survey", metavar="SPEC", help=SURVEY)
    p.add_argument("--shard-rows", type=int, default=1_000_000, help="rows per Parquet shard")

    p = command(ingest, "maps", _maps)
    p.add_argument("specs", nargs="+", metavar="SPEC", help="COLUMN=path.fits or path.fits")
    add_output(p, "output directory", overwrite=REPLACE)
    p.add_argument("--nside", type=int, help="output HEALPix nside (default: the first map's)")
    add_ordering(p, None, "output HEALPix ordering (default: the first map's)")
    p.add_argument(
        "--survey", metavar="SPEC", help=f"{SURVEY}; the maps must cover its condition columns"
    )


def _catalog(args: argparse.Namespace) -> int:
    r"""FITS/HDF5/Parquet catalogs -> Parquet shards with a HEALPix pixel column.

    Rename and convert catalog columns by a YAML column map (see
    configs/columns/des_y3_example.yaml and des_y6_example.yaml), drop rows without id/ra/dec,
    add the HEALPix pixel of (ra, dec) and write part-NNNNN.parquet shards.  The column map may
    name any column of the survey spec (--survey; default riz): true_mag_<b> in its deep bands,
    its morphology and redshift, obs_flux_<b>, obs_flux_err_<b>, obs_mag_<b>, its other outputs
    obs_<name> (flags stay int32) and detected.  With --survey the map must cover the spec's
    training columns and the spec is written to DIR/survey.json.  With --deep DIR every
    injection takes the truth columns (and redshift) of the deep galaxy its deep_id names; a
    deep_id missing from the deep catalog is an error.  On any error nothing is written.
    Example:
        galray ingest catalog balrog_*.fits --columns configs/columns/des_y6_example.yaml \
            --survey des-y6 --out data/cat --nside 4096
    """
    from galray.datasets.ingest_catalog import ingest_catalogs

    grid = {"nside": args.nside, "ordering": args.ordering, "deep": args.deep}
    ingest_catalogs(
        args.sources,
        args.out,
        args.columns,
        **grid,
        **_shared(args),
        progress=console.data_progress,
    )
    return 0


def _deep(args: argparse.Namespace) -> int:
    r"""A deep-field catalog -> Parquet shards of id, truth and redshift.

    Rename and convert columns by a YAML column map (id required; true_mag_<b> in the survey's
    deep bands, its morphology such as true_T and true_G, its redshift), drop rows without an
    id, and write part-NNNNN.parquet shards for galray ingest catalog --deep.  With --survey the
    map must cover the spec's truth columns and redshift.  Example:
        galray ingest deep deep_fields.fits --columns configs/columns/des_y6_deep_example.yaml \
            --survey des-y6 --out data/deep
    """
    from galray.datasets.ingest_catalog import ingest_deep

    ingest_deep(
        args.sources, args.out, args.columns, **_shared(args), progress=console.data_progress
    )
    return 0


def _shared(args: argparse.Namespace) -> dict:
    """The options ``ingest catalog`` and ``ingest deep`` share."""
    return {"survey": args.survey, "shard_rows": args.shard_rows, "overwrite": args.overwrite}


def _maps(args: argparse.Namespace) -> int:
    r"""Healpy FITS maps -> one Parquet condition table (pixel -> value per map).

    Each SPEC is COLUMN=path.fits or path.fits (column = file stem); columns are per-band
    quantities <q>_<b> or band-independent ones such as ebv.  Maps may be full-sky or partial,
    RING or NESTED, at any nside: each is converted to the output grid (the first map's, or
    --nside/--ordering; healpy ud_grade for another nside) with a warning.  Only pixels where
    every map is defined are kept, in DIR/conditions.parquet.  With --survey the maps must cover
    the spec's condition columns.  Example:
        galray ingest maps psf_fwhm_r=maps/r_fwhm.fits depth_r=maps/r_depth.fits \
            ebv=maps/ebv.fits --out data/maps
    """
    from galray.datasets.ingest_maps import ingest_maps

    ingest_maps(
        args.specs,
        args.out,
        nside=args.nside,
        ordering=args.ordering,
        survey=args.survey,
        overwrite=args.overwrite,
        progress=console.data_progress,
    )
    return 0
