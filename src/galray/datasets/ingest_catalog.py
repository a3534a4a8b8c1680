"""``galray ingest catalog`` and ``galray ingest deep``: survey catalogs (FITS, HDF5, Parquet) ->
galray Parquet shards.

Values that mean "missing" -- sentinels (99, -9999, ...), NaN, inf and masked entries -- become
NaN in float columns and null in integer and bool columns.  Rows without a valid ``id``, ``ra`` or
``dec`` are dropped and counted by reason; ``ra``/``dec`` (deg) outside [-180, 360] x [-90, 90]
are a DataError, and ``ra`` is stored in [0, 360).  The HEALPix ``pixel`` of each row is computed
from ``ra``/``dec`` and its ``nside`` and ordering are recorded in the Parquet schema metadata
(:func:`galray.datasets.schema.healpix_metadata`, kind ``"catalog"``).

With a survey spec (``survey=``) the column map may name every column of the spec's contract
(:class:`~galray.datasets.ingest.Contract`), must cover its ``training_columns``, and the spec is
written as ``survey.json`` into the output directory.  A deep-field catalog written by
:func:`ingest_deep` (``id``, truth, redshift; no positions, no ``pixel``) can be joined onto the
injections by their ``deep_id`` (``deep=``): every ``deep_id`` must be in it.
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
from galray.datasets.ingest import ColumnMap, ColumnSpec, check_nside, load_column_map
from galray.datasets.ingest_deep import DeepTable
from galray.datasets.ingest_sources import count_rows, expand_sources, open_source
from galray.datasets.ingest_values import UniqueIds, check_integer_range, output_errors
from galray.datasets.progress import ProgressFactory, counting
from galray.datasets.survey import SurveySpec, load_spec
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
    check_integer_range(data, missing, out, f"{path}: column {spec.source!r} (for {spec.name})")
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
    deep_missing: int = 0
    deep_missing_ids: list[np.ndarray] = field(default_factory=list)


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
    nside: int | None
    ordering: str | None
    shard_rows: int
    files: list[FileSummary] = field(default_factory=list)
    n_shards: int = 0
    kind: str = "catalog"

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
        grid = f" (HEALPix nside {self.nside}, {self.ordering})" if self.nside else ""
        out = [f"ingest {self.kind} -> {self.out}{grid}"]
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
    """What every chunk needs: the column map, the HEALPix grid (None for a deep catalog), the
    output schema, the rows' required columns and the deep catalog to join (or None)."""

    cmap: ColumnMap
    nside: int | None
    ordering: str | None
    schema: pa.Schema
    required: tuple[str, ...]
    deep: DeepTable | None = None
    ids: UniqueIds = field(default_factory=lambda: UniqueIds("id"))


def _required_rows(
    missing: dict[str, np.ndarray], summary: FileSummary, required: Sequence[str]
) -> np.ndarray:
    """Rows to drop (no valid id, ra or dec, ...), counted under their first reason."""
    drop = np.zeros(len(missing["id"]), dtype=bool)
    for name in required:
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
    drop = _required_rows(missing, summary, job.required)
    for name, miss in missing.items():
        _add(summary.missing, name, (miss & ~drop).sum())
    keep = pa.array(~drop)
    columns = {name: pc.filter(array, keep) for name, array in arrays.items()}
    if job.nside is not None:
        columns["ra"], columns["pixel"] = _positions(
            columns["ra"].to_numpy(), columns["dec"].to_numpy(), job, path
        )
    if job.deep is not None:
        deep_ids = columns["deep_id"].to_numpy()
        rows, found = job.deep.lookup(deep_ids)
        if not found.all():
            summary.deep_missing += int((~found).sum())
            summary.deep_missing_ids.append(np.unique(deep_ids[~found]))
        columns.update(job.deep.take(rows))
    summary.rows_kept += len(columns["id"])
    job.ids.add(columns["id"].to_numpy(zero_copy_only=False))
    return pa.Table.from_arrays([columns[n] for n in job.schema.names], schema=job.schema)


def _ingest_file(
    path: Path, job: _Job, writer: _ShardWriter, chunk_rows: int, step: Callable[[int], None]
) -> FileSummary:
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
            step(len(next(iter(raw.values()))))
    job.ids.end_file(path)
    for spec in specs:
        if valid[spec.name] == 0:
            raise DataError(
                f"{path}: column {spec.source!r} (for {spec.name}) has no valid value "
                "(all NaN, masked or sentinel)"
            )
    if summary.deep_missing:
        ids = np.unique(np.concatenate(summary.deep_missing_ids))
        raise DataError(
            f"{path}: {summary.deep_missing:,} injection(s) have a deep_id that is not in the "
            f"deep catalog {job.deep.source} ({ids.size:,} id(s) missing, e.g. {ids[0]})"
        )
    return summary


def _resolve_spec(survey: SurveySpec | str | os.PathLike | None) -> SurveySpec | None:
    return survey if survey is None or isinstance(survey, SurveySpec) else load_spec(survey)


def _column_map(
    mapping: ColumnMap | str | os.PathLike, spec: SurveySpec | None, kind: str
) -> tuple[ColumnMap, str]:
    """The column map and how errors name it (its file)."""
    if isinstance(mapping, ColumnMap):
        return mapping, "column map"
    return load_column_map(mapping, spec, kind), str(mapping)


def _check_covers(
    needed: Sequence[str], have: Sequence[str], spec: SurveySpec, where: str, deep: Any
) -> None:
    """ConfigError naming ``where`` unless every ``needed`` column is in ``have``."""
    missing = [c for c in needed if c not in have]
    if missing:
        also = f" nor holds the deep catalog {deep.source}" if deep is not None else ""
        raise ConfigError(
            f"{where}: survey {spec.name} needs column(s) {missing}, which the column map does "
            f"not map{also}"
        )


def _run(
    paths: list[Path],
    out: str | os.PathLike,
    job: _Job,
    summary: IngestSummary,
    *,
    chunk_rows: int,
    overwrite: bool,
    spec: SurveySpec | None,
    log: Callable[[str], Any],
    progress: ProgressFactory | None,
) -> IngestSummary:
    """Ingest every file into shards in a temporary directory, renamed to ``out`` at the end;
    ``progress``: counts the rows read (:mod:`galray.datasets.progress`)."""
    require(summary.shard_rows > 0, "shard_rows", f"must be positive, got {summary.shard_rows}")
    require(chunk_rows > 0, "chunk_rows", f"must be positive, got {chunk_rows}")
    sources = list(dict.fromkeys(s.source for s in job.cmap.columns))
    total = sum(count_rows(p, sources) for p in paths) if progress is not None else 0
    counter = counting(progress, total, "rows read", "row")
    with output_errors(out), atomic_directory(out, overwrite=overwrite) as tmp, counter as step:
        writer = _ShardWriter(tmp, job.schema, summary.shard_rows)
        for path in paths:
            summary.files.append(_ingest_file(path, job, writer, chunk_rows, step))
        if summary.rows_kept == 0:
            needs = ", ".join(job.required)
            raise DataError(f"{', '.join(map(str, paths))}: no row has a valid {needs}")
        job.ids.check()
        writer.close()
        summary.n_shards = writer.n_shards
        if spec is not None:
            spec.save(tmp)
    for line in summary.lines():
        log(line)
    return summary


def ingest_catalogs(
    sources: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    mapping: ColumnMap | str | os.PathLike,
    *,
    nside: int | None = None,
    ordering: str | None = None,
    survey: SurveySpec | str | os.PathLike | None = None,
    deep: str | os.PathLike | None = None,
    shard_rows: int = 1_000_000,
    chunk_rows: int = 500_000,
    overwrite: bool = False,
    log: Callable[[str], Any] = print,
    progress: ProgressFactory | None = None,
) -> IngestSummary:
    """Ingest FITS/HDF5/Parquet catalogs into Parquet shards ``out/part-NNNNN.parquet``.

    ``mapping`` is a :class:`ColumnMap` or the path of its YAML file.  ``nside`` and ``ordering``
    (``"RING"``/``"NESTED"``) of the HEALPix ``pixel`` column override the mapping's.
    ``survey`` (a :class:`SurveySpec`, preset name, YAML file or survey directory): the column
    map is read against its contract, must cover ``id``, ``ra``, ``dec`` and its
    ``training_columns`` (with ``deep``'s columns), and the spec is written to
    ``out/survey.json``.  ``deep``: a deep catalog written by :func:`ingest_deep`, whose columns
    (truth, redshift) every injection inherits from the deep galaxy its ``deep_id`` names.
    Shards hold ``shard_rows`` rows (the last fewer); sources are read ``chunk_rows`` rows at a
    time.  ``progress``: count the rows read.  The output directory appears only once
    everything succeeded: on error nothing is left behind.
    """
    spec = _resolve_spec(survey)
    cmap, where = _column_map(mapping, spec, "catalog")
    nside, ordering = _grid(cmap, nside, ordering)
    table = DeepTable.load(deep) if deep is not None else None
    joined = table.types if table is not None else {}
    required = cmap.contract.required
    if table is not None:
        require("deep_id" in cmap.names, f"{where}: columns.deep_id", "required to join --deep")
        clash = [n for n in cmap.names if n in joined]
        require(
            not clash,
            f"{where}: columns.{clash[0] if clash else ''}",
            f"also a column of the deep catalog {deep}; take it from one of them",
        )
        required = (*required, "deep_id")
    if spec is not None:
        needed = ["id", "ra", "dec", *spec.training_columns]
        _check_covers(needed, [*cmap.names, *joined], spec, where, table)
    paths = expand_sources(sources)
    extra: dict[str, Any] = {
        "sources": [p.name for p in paths],
        "columns": {c.name: c.source for c in cmap.columns},
    }
    if spec is not None:
        extra["survey"] = spec.name
    if table is not None:
        extra["deep"] = str(table.source)
    out_schema = cmap.output_schema(nside, ordering, extra=extra, joined=joined)
    job = _Job(cmap, nside, ordering, out_schema, required, table, _ids(cmap))
    summary = IngestSummary(Path(out), nside, ordering, shard_rows)
    run = dict(chunk_rows=chunk_rows, overwrite=overwrite, spec=spec, log=log, progress=progress)
    return _run(paths, out, job, summary, **run)


def ingest_deep(
    sources: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    mapping: ColumnMap | str | os.PathLike,
    *,
    survey: SurveySpec | str | os.PathLike | None = None,
    shard_rows: int = 1_000_000,
    chunk_rows: int = 500_000,
    overwrite: bool = False,
    log: Callable[[str], Any] = print,
    progress: ProgressFactory | None = None,
) -> IngestSummary:
    """Ingest a deep-field catalog (FITS/HDF5/Parquet) into Parquet shards ``out/part-*.parquet``
    of ``id``, true magnitudes, morphology and redshift (and any extra columns mapped), for
    :func:`ingest_catalogs` ``deep=``.  Rows without a valid ``id`` are dropped.  ``survey``:
    the column map is read against the spec's contract and must cover ``id``, its
    ``truth_columns`` and its redshift column.  Nothing is left behind on error."""
    spec = _resolve_spec(survey)
    cmap, where = _column_map(mapping, spec, "deep")
    if spec is not None:
        _check_covers(["id", *cmap.contract.truth_columns], cmap.names, spec, where, None)
    paths = expand_sources(sources)
    extra = {
        "sources": [p.name for p in paths],
        "columns": {c.name: c.source for c in cmap.columns},
    }
    job = _Job(
        cmap, None, None, cmap.output_schema(None, None, extra=extra), ("id",), ids=_ids(cmap)
    )
    summary = IngestSummary(Path(out), None, None, shard_rows, kind="deep")
    run = dict(chunk_rows=chunk_rows, overwrite=overwrite, spec=None, log=log, progress=progress)
    return _run(paths, out, job, summary, **run)


def _ids(cmap: ColumnMap) -> UniqueIds:
    return UniqueIds(next(c.source for c in cmap.columns if c.name == "id"))


def _grid(cmap: ColumnMap, nside: int | None, ordering: str | None) -> tuple[int, str]:
    """HEALPix nside and ordering: the arguments, else the column map's."""
    nside = nside if nside is not None else cmap.nside
    if nside is None:
        raise ConfigError("nside: not set; pass --nside or set nside: in the column map")
    check_nside(nside, "nside")
    ordering = (ordering or cmap.ordering).upper()
    require(ordering in schema.ORDERINGS, "ordering", f"must be one of {schema.ORDERINGS}")
    return nside, ordering
