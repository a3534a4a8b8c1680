"""``galray ingest maps``: healpy FITS maps -> one Parquet condition table, ``conditions.parquet``.

Each input is a healpy map file, full-sky (implicit indexing, read with :func:`healpy.read_map`) or
partial (explicit ``PIXEL``/``SIGNAL`` table, as written by ``healpy.write_map(..., partial=True)``),
in RING or NESTED ordering as its header says (``NSIDE``, ``ORDERING``, ``INDXSCHM``).  Pixels
holding ``healpy.UNSEEN`` or NaN lie outside that map's footprint.  Column names are free: per-band
quantities ``<q>_<b>`` and band-independent ones such as ``ebv``.  Maps on another grid than the
output's (the first map's, or the ``nside``/``ordering`` asked for) are moved onto it -- pixel
indices reordered, healpy ``ud_grade`` for another nside (:mod:`galray.datasets.regrid`) -- with a
warning.  The output keeps the pixels where *every* map is defined (the intersection), sorted
ascending, one float32 column per map, with ``nside``, ordering and bands in the Parquet schema
metadata (kind ``"conditions"``); read it with
:func:`galray.datasets.conditions.read_condition_map`.  Given a survey spec, the maps must cover
its ``condition_columns``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import healpy as hp
import numpy as np
import pyarrow as pa

from galray.config import require
from galray.datasets import schema
from galray.datasets.ingest import check_nside
from galray.datasets.ingest_sources import fits_table_hdu, open_fits
from galray.datasets.ingest_values import output_errors
from galray.datasets.progress import ProgressFactory, counting
from galray.datasets.regrid import describe, regrid
from galray.datasets.survey import SurveySpec, load_spec
from galray.errors import ConfigError, DataError
from galray.io import atomic_directory, write_parquet

logger = logging.getLogger(__name__)

CONDITIONS_FILE = "conditions.parquet"
_FITS_SUFFIXES = (".fits.gz", ".fits.fz", ".fits", ".fit", ".fts")
_COLUMN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# --------------------------------------------------------------------------------------------
# Reading one map
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MapHeader:
    """What a healpy map file's header says: ``nside``, ``ordering``, explicit indexing, HDU."""

    path: Path
    nside: int
    ordering: str
    partial: bool
    hdu: int


@dataclass(frozen=True)
class HealpixMap:
    """The defined pixels of one map: ``pixels`` (int64, ascending, in ``ordering``) and
    ``values`` (the file's dtype), with the file's ``nside``."""

    path: Path
    nside: int
    ordering: str
    partial: bool
    pixels: np.ndarray
    values: np.ndarray


def _header_ordering(header: Any, path: Path) -> str:
    ordering = str(header.get("ORDERING", "")).strip().upper()
    ordering = "NESTED" if ordering == "NEST" else ordering
    if ordering not in schema.ORDERINGS:
        raise DataError(
            f"{path}: header keyword ORDERING is {repr(ordering) if ordering else 'missing'}; "
            "expected RING or NESTED"
        )
    return ordering


def _header_partial(header: Any, path: Path) -> bool:
    scheme = str(header.get("INDXSCHM", "")).strip().upper()
    obj = str(header.get("OBJECT", "")).strip().upper()
    if scheme not in ("", "IMPLICIT", "EXPLICIT"):
        raise DataError(
            f"{path}: header keyword INDXSCHM is {scheme!r}; expected IMPLICIT or EXPLICIT"
        )
    explicit = scheme == "EXPLICIT" or (scheme == "" and obj == "PARTIAL")
    if (scheme == "EXPLICIT" and obj == "FULLSKY") or (scheme == "IMPLICIT" and obj == "PARTIAL"):
        raise DataError(f"{path}: header keywords INDXSCHM={scheme} and OBJECT={obj} disagree")
    return explicit


def read_map_header(path: str | os.PathLike) -> MapHeader:
    """Read the HEALPix keywords of a healpy map file; DataError names the file and keyword."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with open_fits(path) as hdul:
        index, hdu = fits_table_hdu(hdul, path)
        header = hdu.header
        pixtype = str(header.get("PIXTYPE", "HEALPIX")).strip().upper()
        if pixtype != "HEALPIX":
            raise DataError(f"{path}: header keyword PIXTYPE is {pixtype!r}, not HEALPIX")
        if "NSIDE" not in header:
            raise DataError(f"{path}: no NSIDE keyword in the header of HDU {index}")
        raw = header["NSIDE"]
        try:
            nside = check_nside(int(raw) if float(raw) == int(raw) else raw, "NSIDE")
        except (ConfigError, ValueError, TypeError):
            raise DataError(
                f"{path}: header keyword NSIDE is {raw!r}; must be a power of two >= 1"
            ) from None
        ordering = _header_ordering(header, path)
        return MapHeader(path, nside, ordering, _header_partial(header, path), index)


def _read_full(header: MapHeader, ordering: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        m = hp.read_map(str(header.path), field=0, hdu=header.hdu, nest=None, dtype=None)
    except (OSError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise DataError(f"{header.path}: not a readable healpy map ({exc})") from exc
    m = np.asarray(m)
    m = m.astype(m.dtype.newbyteorder("="), copy=False)
    if header.ordering != ordering:
        m = hp.reorder(m, r2n=header.ordering == "RING", n2r=header.ordering == "NESTED")
    pixels = np.flatnonzero(~(hp.mask_bad(m) | np.isnan(m))).astype(np.int64)
    return pixels, m[pixels]


def _table_column(hdu: Any, name: str, kinds: str, path: Path) -> np.ndarray:
    values = np.asarray(hdu.data.field(name)).ravel()
    if values.dtype.kind not in kinds:
        raise DataError(f"{path}: column {name!r} has dtype {values.dtype}; expected a number")
    return values.astype(values.dtype.newbyteorder("="))  # a copy, detached from the memmap


def _read_explicit(header: MapHeader) -> tuple[np.ndarray, np.ndarray]:
    """The PIXEL column and the first other column of a partial map, as stored."""
    path = header.path
    with open_fits(path) as hdul:
        hdu = hdul[header.hdu]
        names = list(hdu.columns.names)
        pix_names = [n for n in names if n.upper() == "PIXEL"]
        signal = [n for n in names if n.upper() != "PIXEL"]
        if not pix_names or not signal:
            raise DataError(f"{path}: a partial map needs a PIXEL and a value column, has {names}")
        if hdu.data is None or len(hdu.data) == 0:
            raise DataError(f"{path}: the partial map has zero rows")
        pixels = _table_column(hdu, pix_names[0], "iu", path).astype(np.int64)
        values = _table_column(hdu, signal[0], "iuf", path)
    if len(pixels) != len(values):
        raise DataError(f"{path}: PIXEL has {len(pixels)} entries, {signal[0]} has {len(values)}")
    return pixels, values


def _read_partial(header: MapHeader, ordering: str) -> tuple[np.ndarray, np.ndarray]:
    pixels, values = _read_explicit(header)
    npix = hp.nside2npix(header.nside)
    bad = (pixels < 0) | (pixels >= npix)
    if bad.any():
        raise DataError(
            f"{header.path}: column 'PIXEL' holds {int(bad.sum())} pixel(s) outside "
            f"[0, {npix}) for NSIDE {header.nside}, e.g. {pixels[bad][0].item()}"
        )
    defined = ~(hp.mask_bad(values) | np.isnan(values))
    pixels, values = pixels[defined], values[defined]
    if header.ordering != ordering:
        convert = hp.ring2nest if header.ordering == "RING" else hp.nest2ring
        pixels = np.asarray(convert(header.nside, pixels), dtype=np.int64)
    order = np.argsort(pixels, kind="stable")
    pixels, values = pixels[order], values[order]
    dup = np.flatnonzero(np.diff(pixels) == 0)
    if dup.size:
        raise DataError(f"{header.path}: column 'PIXEL' lists pixel {pixels[dup[0]]} twice")
    return pixels, values


def read_healpix_map(
    path: str | os.PathLike, ordering: str | None = None, nside: int | None = None
) -> HealpixMap:
    """The defined pixels and values of a healpy map file, in ``ordering`` and at ``nside``
    (default: the file's).

    Full-sky files go through :func:`healpy.read_map` and :func:`healpy.reorder`; partial files are
    read as a PIXEL/value table and their pixel indices converted with ring2nest/nest2ring.  Another
    ``nside`` goes through :func:`galray.datasets.regrid.regrid` (healpy ``ud_grade``).
    """
    header = read_map_header(path)
    ordering = (ordering or header.ordering).upper()
    require(ordering in schema.ORDERINGS, "ordering", f"must be one of {schema.ORDERINGS}")
    nside = header.nside if nside is None else check_nside(nside, "nside")
    read = _read_partial if header.partial else _read_full
    pixels, values = read(header, ordering if nside == header.nside else header.ordering)
    if pixels.size == 0:
        raise DataError(f"{header.path}: every pixel is UNSEEN or NaN (empty footprint)")
    if nside != header.nside:
        grid_in = (header.nside, header.ordering)
        pixels, values = regrid(pixels, values, grid_in, (nside, ordering), str(header.path))
    return HealpixMap(header.path, nside, ordering, header.partial, pixels, values)


# --------------------------------------------------------------------------------------------
# The condition table
# --------------------------------------------------------------------------------------------


def parse_map_spec(spec: str) -> tuple[str, Path]:
    """``COLUMN=path.fits`` -> (COLUMN, path); a bare ``path.fits`` names its column by stem."""
    left, sep, right = spec.partition("=")
    if sep and _COLUMN_NAME.fullmatch(left):
        column, path = left, Path(right)
    else:
        path = Path(spec)
        name = path.name
        suffix = next((s for s in _FITS_SUFFIXES if name.lower().endswith(s)), "")
        column = name[: len(name) - len(suffix)]
    if not _COLUMN_NAME.fullmatch(column) or column == "pixel":
        raise ConfigError(f"{spec}: column name {column!r} is not usable; write COLUMN=path.fits")
    return column, path


def _parse_specs(specs: Sequence[str]) -> dict[str, Path]:
    if not specs:
        raise ConfigError("maps: no map given")
    columns: dict[str, Path] = {}
    for spec in specs:
        column, path = parse_map_spec(spec)
        if column in columns:
            raise ConfigError(f"{spec}: column {column!r} is already given by {columns[column]}")
        columns[column] = path
    return columns


def _check_survey(columns: Sequence[str], spec: SurveySpec) -> None:
    """Every condition column of ``spec`` must have a map; ConfigError naming the missing ones."""
    missing = [c for c in spec.condition_columns if c not in columns]
    if not missing:
        return
    bands = [b for b in spec.bands if any(c.endswith(f"_{b}") for c in missing)]
    lacking = f"; band(s) {', '.join(bands)} lack a condition map" if bands else ""
    raise ConfigError(
        f"maps: survey {spec.name} needs condition map(s) {missing}{lacking}; give each as "
        "COLUMN=path.fits"
    )


def _conversions(
    headers: dict[str, MapHeader], nside: int, ordering: str
) -> dict[str, tuple[int, str]]:
    """The maps not on the output grid: column -> their (nside, ordering)."""
    return {
        column: (h.nside, h.ordering)
        for column, h in headers.items()
        if (h.nside, h.ordering) != (nside, ordering)
    }


def _in_sorted(values: np.ndarray, sorted_: np.ndarray) -> np.ndarray:
    """Boolean mask: which ``values`` occur in the ascending array ``sorted_``."""
    idx = np.minimum(np.searchsorted(sorted_, values), len(sorted_) - 1)
    return sorted_[idx] == values


def _footprint(maps: dict[str, HealpixMap]) -> np.ndarray:
    """Pixels where every map is defined (ascending)."""
    maps_ = list(maps.values())
    common = maps_[0].pixels
    for m in maps_[1:]:
        common = common[_in_sorted(common, m.pixels)]
    if common.size == 0:
        raise DataError(
            f"{', '.join(str(m.path) for m in maps_)}: the maps share no pixel where all are defined"
        )
    return common


def _checked_values(column: str, m: HealpixMap, footprint: np.ndarray) -> np.ndarray:
    """float32 values of map ``m`` on the footprint; non-finite or bad PSF values are a DataError."""
    with np.errstate(over="ignore"):  # beyond float32 -> inf, reported below
        values = m.values[np.searchsorted(m.pixels, footprint)].astype(np.float32)
    bad = ~np.isfinite(values)
    what = "non-finite (or beyond float32)"
    if column.startswith("psf_fwhm") and not bad.any():
        bad, what = values <= 0, "non-positive PSF FWHM"
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{m.path}: column {column!r}: {int(bad.sum())} {what} value(s) inside the footprint, "
            f"e.g. {values[first].item()!r} at pixel {footprint[first]} ({m.ordering}, nside {m.nside})"
        )
    return values


def _bands(columns: Sequence[str]) -> list[str]:
    bands: list[str] = []
    for column in columns:
        quantity, _, band = column.rpartition("_")
        if quantity in schema.CONDITION_QUANTITIES and band not in bands:
            bands.append(band)
    return bands


def condition_table(
    maps: dict[str, HealpixMap], footprint: np.ndarray, spec: SurveySpec | None = None
) -> pa.Table:
    """The ``pixel`` + one float32 column per map table, metadata included (the bands are the
    spec's, else those of the ``psf_fwhm_<b>``/``depth_<b>`` columns)."""
    first = next(iter(maps.values()))
    columns = {"pixel": pa.array(footprint, type=pa.int64())}
    for column, m in maps.items():
        columns[column] = pa.array(_checked_values(column, m, footprint), type=pa.float32())
    extra: dict[str, Any] = {"sources": {c: m.path.name for c, m in maps.items()}}
    if spec is not None:
        extra["survey"] = spec.name
    meta = schema.healpix_metadata(
        first.nside,
        first.ordering,
        kind="conditions",
        bands=spec.bands if spec is not None else _bands(list(maps)),
        extra=extra,
    )
    return pa.table(columns).replace_schema_metadata(meta)


@dataclass
class MapIngestSummary:
    """What :func:`ingest_maps` kept: ``n_footprint`` pixels common to every map, out of
    ``n_union`` defined in at least one; ``outside`` counts, per column, the pixels defined in
    that map but dropped because another map lacked them."""

    out: Path
    nside: int
    ordering: str
    sources: dict[str, MapHeader] = field(default_factory=dict)
    n_defined: dict[str, int] = field(default_factory=dict)
    outside: dict[str, int] = field(default_factory=dict)
    converted: dict[str, tuple[int, str]] = field(default_factory=dict)
    n_union: int = 0
    n_footprint: int = 0

    @property
    def n_dropped(self) -> int:
        return self.n_union - self.n_footprint

    def lines(self) -> list[str]:
        out = [f"ingest maps -> {self.out / CONDITIONS_FILE} (nside {self.nside}, {self.ordering})"]
        for column, h in self.sources.items():
            kind = "partial" if h.partial else "full-sky"
            moved = (
                f", converted from nside {h.nside} {h.ordering}" if column in self.converted else ""
            )
            out.append(
                f"  {column} <- {h.path} ({kind}, {h.ordering}{moved}): "
                f"{self.n_defined[column]:,} pixels defined, {self.outside[column]:,} outside the "
                "common footprint"
            )
        out.append(
            f"  kept {self.n_footprint:,} pixels where every map is defined; dropped "
            f"{self.n_dropped:,} of the {self.n_union:,} defined in some map"
        )
        return out


def _union_size(maps: dict[str, HealpixMap], chunk: int = 1 << 26) -> int:
    """How many pixels are defined in at least one map: a bitmap over one range of pixel indices
    at a time (each map's pixels are ascending), so O(total pixels) time and ``chunk`` bytes,
    where repeated ``np.union1d`` re-sorted the growing union for every map."""
    arrays = [m.pixels for m in maps.values() if m.pixels.size]
    if not arrays:
        return 0
    top = max(int(a[-1]) for a in arrays) + 1
    seen = np.zeros(min(chunk, top), dtype=bool)
    total = 0
    for lo in range(0, top, chunk):
        hi = min(lo + chunk, top)
        seen[:] = False
        for a in arrays:
            part = a[np.searchsorted(a, lo) : np.searchsorted(a, hi)]
            seen[part - lo] = True
        total += int(np.count_nonzero(seen[: hi - lo]))
    return total


def ingest_maps(
    specs: Sequence[str],
    out: str | os.PathLike,
    *,
    nside: int | None = None,
    ordering: str | None = None,
    survey: SurveySpec | str | os.PathLike | None = None,
    overwrite: bool = False,
    log: Callable[[str], Any] = print,
    progress: ProgressFactory | None = None,
) -> MapIngestSummary:
    """Ingest healpy maps (``COLUMN=path.fits`` or ``path.fits``) into ``out/conditions.parquet``.

    ``nside`` and ``ordering`` (``"RING"``/``"NESTED"``) of the output default to the first map's;
    maps on another grid are moved onto it (reordered; healpy ``ud_grade`` for another nside) and
    a warning says so.  ``survey`` (a :class:`SurveySpec`, preset name, YAML file or survey
    directory): the maps must cover its ``condition_columns`` (ConfigError naming the missing
    ones, before anything is read).  ``progress``: counts the maps read
    (:mod:`galray.datasets.progress`).  The output directory appears only if everything
    succeeded.
    """
    paths = _parse_specs(specs)
    spec = survey if isinstance(survey, SurveySpec) or survey is None else load_spec(survey)
    if spec is not None:
        _check_survey(list(paths), spec)
    headers = {column: read_map_header(path) for column, path in paths.items()}
    first = next(iter(headers.values()))
    nside = first.nside if nside is None else check_nside(nside, "nside")
    ordering = (ordering or first.ordering).upper()
    require(ordering in schema.ORDERINGS, "ordering", f"must be one of {schema.ORDERINGS}")
    converted = _conversions(headers, nside, ordering)
    for column, grid in converted.items():
        how = "healpy ud_grade" if grid[0] != nside else "reordering the pixel indices"
        logger.warning(
            "%s (%s): HEALPix %s differs from the output's %s; converting it (%s)",
            headers[column].path,
            column,
            describe(*grid),
            describe(nside, ordering),
            how,
        )
    maps = {}
    with counting(progress, len(paths), "maps read", "map") as step:
        for column, path in paths.items():
            maps[column] = read_healpix_map(path, ordering, nside)
            step(1)
    footprint = _footprint(maps)
    table = condition_table(maps, footprint, spec)
    summary = MapIngestSummary(Path(out), nside, ordering, headers)
    summary.n_defined = {c: int(m.pixels.size) for c, m in maps.items()}
    summary.outside = {c: int(m.pixels.size - footprint.size) for c, m in maps.items()}
    summary.converted = converted
    summary.n_union, summary.n_footprint = _union_size(maps), int(footprint.size)
    with output_errors(out), atomic_directory(out, overwrite=overwrite) as tmp:
        write_parquet(table, tmp / CONDITIONS_FILE)
    for line in summary.lines():
        log(line)
    return summary
