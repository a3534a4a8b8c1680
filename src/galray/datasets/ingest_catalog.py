"""``galray ingest catalog``: survey catalogs (FITS, HDF5, Parquet) -> galray Parquet shards.

Values that mean "missing" -- sentinels (99, -9999, ...), NaN, inf and masked entries -- become
NaN in float columns and null in integer and bool columns.  Rows without a valid ``id``, ``ra`` or
``dec`` are dropped and counted by reason; ``ra``/``dec`` (deg) outside [-180, 360] x [-90, 90]
are a DataError, and ``ra`` is stored in [0, 360).  The HEALPix ``pixel`` of each row is computed
from ``ra``/``dec`` and its ``nside`` and ordering are recorded in the Parquet schema metadata
(:func:`galray.datasets.schema.healpix_metadata`, kind ``"catalog"``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import healpy as hp
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from galray.config import require
from galray.datasets import schema
from galray.datasets.ingest import (
    REQUIRED_COLUMNS,
    ColumnMap,
    ColumnSpec,
    check_nside,
    expand_sources,
    load_column_map,
    open_source,
)
from galray.errors import ConfigError, DataError
from galray.io import atomic_directory, write_parquet

# --------------------------------------------------------------------------------------------
# Conversion of one chunk
# --------------------------------------------------------------------------------------------


def _check_dtype(sample: np.ndarray, spec: ColumnSpec, path: Path) -> None:
    out = spec.arrow_type
    if pa.types.is_boolean(out):
        kinds, expected = "biu", "a bool or integer"
    elif pa.types.is_integer(out):
        kinds, expected = "iuf", "an integer"
    else:
        kinds, expected = "iuf", "a number"
    if sample.ndim != 1:
        raise DataError(
            f"{path}: column {spec.source!r} (for {spec.name}) has shape {sample.shape[1:]} per row;"
            " need a scalar column"
        )
    if sample.dtype.kind not in kinds:
        raise DataError(
            f"{path}: column {spec.source!r} (for {spec.name}) has dtype {_dtype_name(sample)}; "
            f"expected {expected}"
        )


def _dtype_name(sample: np.ndarray) -> str:
    return "string/object" if sample.dtype.kind in "OSU" else str(sample.dtype)


def _convert(
    raw: np.ma.MaskedArray, spec: ColumnSpec, sentinels: tuple[float, ...], path: Path
) -> tuple[pa.Array, np.ndarray]:
    """One source column chunk -> (output Arrow array, missing mask)."""
    data = np.ma.getdata(raw)
    missing = np.ma.getmaskarray(raw).copy()
    if data.dtype.kind == "f":
        missing |= ~np.isfinite(data)
    if sentinels:
        missing |= np.isin(data, sentinels)
    out = spec.arrow_type
    if pa.types.is_floating(out):
        values = schema.flux_to_mag(data) if spec.convert == "flux_to_mag" else data
        with np.errstate(over="ignore"):  # beyond float32 -> inf -> missing
            values = np.asarray(values).astype(out.to_pandas_dtype())
        missing |= ~np.isfinite(values)  # includes flux <= 0 under flux_to_mag
        values[missing] = np.nan
        return pa.array(values, type=out), missing
    if pa.types.is_boolean(out):
        return pa.array(data != 0, mask=missing, type=out), missing
    bad = ~missing & (data != np.round(data)) if data.dtype.kind == "f" else None
    if bad is not None and bad.any():
        raise DataError(
            f"{path}: column {spec.source!r} (for {spec.name}) holds non-integer values, "
            f"e.g. {data[bad][0].item()!r}"
        )
    values = np.where(missing, 0, data).astype(out.to_pandas_dtype())
    return pa.array(values, mask=missing, type=out), missing


def _check_range(values: np.ndarray, lo: float, hi: float, what: str) -> None:
    bad = (values < lo) | (values > hi)
    if bad.any():
        raise DataError(
            f"{what}: {int(bad.sum())} value(s) outside [{lo:g}, {hi:g}] deg, "
            f"e.g. {values[bad][0].item()!r}"
        )


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------


@dataclass
class FileSummary:
    """What ingest did with one source file; ``dropped`` maps a reason to a row count."""

    path: Path
    rows_read: int = 0
    rows_kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)


def _add(counts: dict[str, int], key: str, n: int) -> None:
    if n:
        counts[key] = counts.get(key, 0) + int(n)


def _total(dicts: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for d in dicts:
        for key, n in d.items():
            _add(total, key, n)
    return total


@dataclass
class IngestSummary:
    """What :func:`ingest_catalogs` read, kept and dropped.

    ``dropped`` maps a reason (``"ra missing"``) to a row count, each dropped row counted under
    its first reason in the order id, ra, dec; ``missing`` counts NaN/null values per output
    column among the kept rows.
    """

    out: Path
    nside: int
    ordering: str
    shard_rows: int
    files: list[FileSummary] = field(default_factory=list)
    n_shards: int = 0

    @property
    def rows_read(self) -> int:
        return sum(f.rows_read for f in self.files)

    @property
    def rows_kept(self) -> int:
        return sum(f.rows_kept for f in self.files)

    @property
    def dropped(self) -> dict[str, int]:
        return _total([f.dropped for f in self.files])

    @property
    def missing(self) -> dict[str, int]:
        return _total([f.missing for f in self.files])

    def lines(self) -> list[str]:
        out = [f"ingest catalog -> {self.out} (HEALPix nside {self.nside}, {self.ordering})"]
        for f in self.files:
            out.append(
                f"  {f.path}: {f.rows_read:,} rows read, {f.rows_kept:,} kept, "
                f"{sum(f.dropped.values()):,} dropped{_reasons(f.dropped)}"
            )
        out.append(
            f"  total: {self.rows_read:,} rows read, {self.rows_kept:,} kept in {self.n_shards} "
            f"shard(s), {sum(self.dropped.values()):,} dropped{_reasons(self.dropped)}"
        )
        counts = ", ".join(f"{k} {v:,}" for k, v in self.missing.items()) or "none"
        out.append(f"  NaN/null values among kept rows: {counts}")
        return out


def _reasons(dropped: dict[str, int]) -> str:
    return f" ({', '.join(f'{k}: {n:,}' for k, n in dropped.items())})" if dropped else ""


class _ShardWriter:
    """Buffers converted chunks and writes ``part-NNNNN.parquet`` files of ``shard_rows`` rows."""

    def __init__(self, directory: Path, out_schema: pa.Schema, shard_rows: int):
        self.directory, self.schema, self.shard_rows = directory, out_schema, shard_rows
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.n_shards = 0

    def add(self, table: pa.Table) -> None:
        self.buffer.append(table)
        self.buffered += table.num_rows
        while self.buffered >= self.shard_rows:
            self._flush(self.shard_rows)

    def close(self) -> None:
        if self.buffered:
            self._flush(self.buffered)

    def _flush(self, n: int) -> None:
        table = pa.concat_tables(self.buffer)
        write_parquet(table.slice(0, n), self.directory / f"part-{self.n_shards:05d}.parquet")
        self.n_shards += 1
        rest = table.slice(n)
        self.buffer, self.buffered = ([rest] if rest.num_rows else []), rest.num_rows


@dataclass(frozen=True)
class _Job:
    """What every chunk needs: the column map, the HEALPix grid and the output schema."""

    cmap: ColumnMap
    nside: int
    ordering: str
    schema: pa.Schema


def _required_rows(missing: dict[str, np.ndarray], summary: FileSummary) -> np.ndarray:
    """Rows to drop (no valid id, ra or dec), counted under their first reason."""
    drop = np.zeros(len(missing["id"]), dtype=bool)
    for name in REQUIRED_COLUMNS:
        reason = missing[name] & ~drop
        _add(summary.dropped, f"{name} missing", reason.sum())
        drop |= reason
    return drop


def _positions(ra: np.ndarray, dec: np.ndarray, job: _Job, path: Path) -> tuple[pa.Array, pa.Array]:
    """Range-checked ``ra`` wrapped into [0, 360) deg, and the HEALPix pixel of each row."""
    sources = {s.name: s.source for s in job.cmap.columns}
    _check_range(ra, -180.0, 360.0, f"{path}: column {sources['ra']!r} (for ra)")
    _check_range(dec, -90.0, 90.0, f"{path}: column {sources['dec']!r} (for dec)")
    ra = np.where(ra < 0, ra + 360.0, ra)
    ra = np.where(ra >= 360.0, ra - 360.0, ra)
    pixel = hp.ang2pix(job.nside, ra, dec, lonlat=True, nest=job.ordering == "NESTED")
    return pa.array(ra, type=pa.float64()), pa.array(np.asarray(pixel, dtype=np.int64))


def _chunk_table(
    raw: dict[str, Any], job: _Job, path: Path, summary: FileSummary, valid: dict[str, int]
) -> pa.Table:
    """Convert one chunk of source columns into output rows; counts go to ``summary``."""
    arrays, missing = {}, {}
    for spec in job.cmap.columns:
        sentinels = job.cmap.sentinels_for(spec)
        arrays[spec.name], missing[spec.name] = _convert(raw[spec.source], spec, sentinels, path)
        valid[spec.name] += int((~missing[spec.name]).sum())
    drop = _required_rows(missing, summary)
    for name, miss in missing.items():
        _add(summary.missing, name, (miss & ~drop).sum())
    keep = pa.array(~drop)
    columns = {name: pc.filter(array, keep) for name, array in arrays.items()}
    columns["ra"], columns["pixel"] = _positions(
        columns["ra"].to_numpy(), columns["dec"].to_numpy(), job, path
    )
    summary.rows_kept += len(columns["pixel"])
    return pa.Table.from_arrays([columns[n] for n in job.schema.names], schema=job.schema)


def _ingest_file(path: Path, job: _Job, writer: _ShardWriter, chunk_rows: int) -> FileSummary:
    summary = FileSummary(path)
    specs = job.cmap.columns
    sources = list(dict.fromkeys(s.source for s in specs))
    valid = dict.fromkeys((s.name for s in specs), 0)
    with contextlib.ExitStack() as stack:
        source = open_source(path, stack)
        summary.rows_read = source.n_rows(sources)
        if summary.rows_read == 0:
            raise DataError(f"{path}: the table has zero rows")
        for spec in specs:
            _check_dtype(source.sample(spec.source), spec, path)
        for raw in source.chunks(sources, chunk_rows):
            writer.add(_chunk_table(raw, job, path, summary, valid))
    for spec in specs:
        if valid[spec.name] == 0:
            raise DataError(
                f"{path}: column {spec.source!r} (for {spec.name}) has no valid value "
                "(all NaN, masked or sentinel)"
            )
    return summary


def ingest_catalogs(
    sources: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    mapping: ColumnMap | str | os.PathLike,
    *,
    nside: int | None = None,
    ordering: str | None = None,
    shard_rows: int = 1_000_000,
    chunk_rows: int = 500_000,
    overwrite: bool = False,
    log: Callable[[str], Any] = print,
) -> IngestSummary:
    """Ingest FITS/HDF5/Parquet catalogs into Parquet shards ``out/part-NNNNN.parquet``.

    ``mapping`` is a :class:`ColumnMap` or the path of its YAML file.  ``nside`` and ``ordering``
    (``"RING"``/``"NESTED"``) of the HEALPix ``pixel`` column override the mapping's.  Shards hold
    ``shard_rows`` rows (the last fewer); sources are read ``chunk_rows`` rows at a time.  The
    output directory appears only once everything succeeded: on error nothing is left behind.
    """
    cmap = mapping if isinstance(mapping, ColumnMap) else load_column_map(mapping)
    nside, ordering = _grid(cmap, nside, ordering)
    require(shard_rows > 0, "shard_rows", f"must be positive, got {shard_rows}")
    require(chunk_rows > 0, "chunk_rows", f"must be positive, got {chunk_rows}")
    paths = expand_sources(sources)
    extra = {
        "sources": [p.name for p in paths],
        "columns": {c.name: c.source for c in cmap.columns},
    }
    job = _Job(cmap, nside, ordering, cmap.output_schema(nside, ordering, extra=extra))
    summary = IngestSummary(Path(out), nside, ordering, shard_rows)
    with atomic_directory(out, overwrite=overwrite) as tmp:
        writer = _ShardWriter(tmp, job.schema, shard_rows)
        for path in paths:
            summary.files.append(_ingest_file(path, job, writer, chunk_rows))
        if summary.rows_kept == 0:
            raise DataError(f"{', '.join(map(str, paths))}: no row has a valid id, ra and dec")
        writer.close()
        summary.n_shards = writer.n_shards
    for line in summary.lines():
        log(line)
    return summary


def _grid(cmap: ColumnMap, nside: int | None, ordering: str | None) -> tuple[int, str]:
    """HEALPix nside and ordering: the arguments, else the column map's."""
    nside = nside if nside is not None else cmap.nside
    if nside is None:
        raise ConfigError("nside: not set; pass --nside or set nside: in the column map")
    check_nside(nside, "nside")
    ordering = (ordering or cmap.ordering).upper()
    require(ordering in schema.ORDERINGS, "ordering", f"must be one of {schema.ORDERINGS}")
    return nside, ordering
