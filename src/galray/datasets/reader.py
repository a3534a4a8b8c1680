"""Training-ready rows: an injection catalog joined to its condition maps, split by id, in Ray Data.

:class:`TrainingCatalog` validates a catalog and its maps once, eagerly, before any Ray work:

1. every shard's footer is read (a truncated or corrupt file raises DataError naming it) and must
   hold ``id``, ``pixel`` (integers) and the truth columns (numbers; a survey spec's
   ``truth_columns``; without a spec ``true_mag_b`` for every band), and every shard the same
   columns with the same types as the first (a mixed catalog is refused, naming the shard and
   the column, before any Ray work); the truth inputs must be finite and the ids unique
   (:func:`check_finite`, :func:`check_unique_ids`: one read of those columns);
2. every shard must share one HEALPix nside/ordering (DataError naming two that differ); when it
   differs from the condition maps', the maps are moved onto the catalog's grid
   (:meth:`ConditionMap.regrid`: pixel indices reordered, healpy ``ud_grade`` for another nside)
   and a warning names both;
3. the galaxies off the footprint are counted exactly in a pre-pass over the ``pixel`` column
   only (pyarrow reads ~8 bytes per row and one vectorised lookup per shard: ~0.06 s for 1.7M
   rows, a tenth of the pipeline) and above ``max_outside_fraction`` of the catalog raise FootprintError.  Counting
   up front, rather than inside the lazy pipeline, means the error arrives before training starts
   and the counts are known without materialising anything.

The catalog's row groups are grouped into pieces of about ``total / n_cpus`` bytes, at most Ray's
target block size (see :func:`plan_pieces`).  :meth:`TrainingCatalog.dataset` builds a lazy pipeline with one hop: a Ray Data
``map_batches`` task per piece reads it with pyarrow, looks the conditions up by pixel (the
:class:`ConditionMap` travels once as an object ref; one vectorised gather per piece, no per-row
Python), drops off-footprint rows and keeps one split.  Blocks stay pyarrow tables, zero-copy.
:meth:`TrainingCatalog.table` is the same join in this process, without Ray, for a sample that
fits in memory (an evaluation's).
``ray.data.read_parquet`` was measured and not used: in Ray 2.60 its default (DataSource V2) packs
every shard under 128 MiB into a single read task after a separate file-listing task, and the V1
datasource samples files in extra tasks before reading; on 1.7M rows x 2 cores both were 1.5-4x
slower end to end than reading the pieces inside the join task (see benchmarks/bench_join.py),
and a corrupt data page read here raises DataError naming the shard.  Rows off the footprint are
dropped; when there are any, a warning says how many.

The module computes no normalisation statistics.  Emulator training hands the train and val
Datasets to Ray Train (train sharded over the workers); each worker reads its shard into numpy and
standardises with :class:`~galray.emulator.features.EmulatorFeatures`, fitted inside the training
loop from moments all-reduced over ranks (:func:`galray.emulator.loop.fit_features`), so every
rank encodes rows alike; the fitted features travel in the emulator bundle to inference.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from galray.config import require
from galray.datasets import schema
from galray.datasets.conditions import ConditionMap, read_condition_map
from galray.datasets.split import DEFAULT_FRACTIONS, SplitSpec, split_index
from galray.errors import DataError, FootprintError
from galray.io import parquet_files

if TYPE_CHECKING:
    import ray
    import ray.data

    from galray.datasets.survey import SurveySpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FootprintReport:
    """How many catalog rows fall on and off the condition-map footprint."""

    catalog: str
    maps: str
    n_rows: int
    n_outside: int

    @property
    def n_inside(self) -> int:
        return self.n_rows - self.n_outside

    @property
    def outside_fraction(self) -> float:
        return self.n_outside / self.n_rows if self.n_rows else 0.0

    def check(self, max_outside_fraction: float) -> None:
        """Raise FootprintError if more than ``max_outside_fraction`` of the rows are outside."""
        if self.outside_fraction > max_outside_fraction:
            raise FootprintError(
                f"{self.catalog}: {self.n_outside:,} of {self.n_rows:,} galaxies "
                f"({self.outside_fraction:.2%}) fall outside the footprint of {self.maps}, "
                f"more than max_outside_fraction={max_outside_fraction:.2%}; "
                "do the catalog and the maps belong to the same survey and HEALPix scheme?"
            )


class TrainingCatalog:
    """An injection catalog and its condition maps, validated once; Ray Datasets of its splits.

    catalog: a Parquet file or a directory of shards (schema.INJECTION_FIELDS).
    maps: the condition-map Parquet table, or a directory holding ``conditions.parquet``.
    spec: the survey's data contract: the catalog must hold ``id``, ``pixel`` and
        ``spec.truth_columns``, and the maps ``spec.condition_columns``.  None: the legacy
        contract, ``true_mag_b`` and ``psf_fwhm_b``/``depth_b`` for every band in ``bands``.
    bands: the bands whose true magnitudes and conditions are used (default r, i, z; with a
        spec, the spec's bands, and any other value is a ConfigError).
    fractions, salt: the id-hash split (see :mod:`galray.datasets.split`).
    max_outside_fraction: largest tolerated share of galaxies off the footprint (0..1).
    """

    def __init__(
        self,
        catalog: str | os.PathLike,
        maps: str | os.PathLike,
        *,
        spec: SurveySpec | None = None,
        bands: Sequence[str] | None = None,
        fractions: Sequence[float] = DEFAULT_FRACTIONS,
        salt: int = 0,
        max_outside_fraction: float = 0.01,
    ) -> None:
        require(
            0.0 <= max_outside_fraction <= 1.0,
            "max_outside_fraction",
            f"must lie in [0, 1], got {max_outside_fraction}",
        )
        if spec is not None:
            require(
                bands is None or list(bands) == list(spec.bands),
                "bands",
                f"{list(bands or [])} differ from the bands {spec.bands} of survey {spec.name}",
            )
            bands = spec.bands
        self.spec = spec
        self.catalog = Path(catalog)
        self.maps = _condition_map_path(maps)
        self.bands = tuple(schema.BANDS if bands is None else bands)
        self.split_spec = SplitSpec(tuple(fractions), salt)
        self.files = parquet_files(self.catalog)
        if spec is None:
            required = [schema.true_mag(b) for b in self.bands]
            conditions = read_condition_map(self.maps, self.bands)
        else:
            required = list(spec.truth_columns)
            conditions = read_condition_map(self.maps, columns=spec.condition_columns)
        self.columns, self._row_groups, grid = _check_shards(self.files, required, conditions)
        check_finite(self.files, required)
        check_unique_ids(self.files)
        self.conditions = _on_grid(conditions, grid, self.catalog)
        self.footprint = count_outside(self.files, self.conditions, self.catalog)
        self.footprint.check(max_outside_fraction)
        level = logging.WARNING if self.footprint.n_outside else logging.INFO
        log.log(
            level,
            "%s: dropping %d of %d galaxies (%.3f%%) outside the footprint of %s",
            self.catalog,
            self.footprint.n_outside,
            self.footprint.n_rows,
            100 * self.footprint.outside_fraction,
            self.maps,
        )
        self._conditions_ref: ray.ObjectRef | None = None

    @property
    def condition_columns(self) -> list[str]:
        return list(self.conditions.columns)

    def dataset(
        self, split: str | None = "train", columns: Sequence[str] | None = None
    ) -> ray.data.Dataset:
        """Lazy Dataset of on-footprint rows of ``split`` (None: all rows) with conditions added.

        columns: catalog columns to keep (default all that every shard holds); the condition
        columns (:attr:`condition_columns`, e.g. ``psf_fwhm_b`` in arcsec and ``depth_b`` in AB
        mag) are always appended.
        """
        import ray.data

        join = replace(self._join(split, columns), conditions_ref=self._put_conditions())
        plan = plan_pieces(self.files, self._row_groups, _cluster_cpus())
        pieces = ray.data.from_items(plan, override_num_blocks=len(plan))
        ds = pieces.map_batches(join, batch_format="pyarrow", batch_size=1)
        # A DataError raised in a task (a corrupt data page) reaches the caller as DataError.
        ds.context.raise_original_map_exception = True
        return ds

    def table(
        self,
        split: str | None = "test",
        columns: Sequence[str] | None = None,
        max_rows: int | None = None,
    ) -> pa.Table:
        """The rows :meth:`dataset` holds, read here with pyarrow, without Ray: the first
        ``max_rows`` (None: all) on-footprint rows of ``split`` in catalog order (shard, then
        row group), conditions appended.  For a sample that fits in this process's memory (an
        evaluation's): it reads one row group at a time and stops once it has ``max_rows``."""
        join = self._join(split, columns)
        tables: list[pa.Table] = []
        n = 0
        for f, sizes in zip(self.files, self._row_groups):
            for i in range(len(sizes)):
                if max_rows is not None and n >= max_rows:
                    break
                tables.append(join.join(_read_part(str(f), [i], join.read), self.conditions))
                n += tables[-1].num_rows
        if not tables:  # no row groups: the columns, no rows
            tables = [join.join(_read_part(str(self.files[0]), [], join.read), self.conditions)]
        table = pa.concat_tables(tables)
        return table if max_rows is None else table.slice(0, max_rows)

    def _join(self, split: str | None, columns: Sequence[str] | None) -> _ShardJoin:
        """The join of :meth:`dataset` and :meth:`table`: keep ``columns`` (default all), read
        what the footprint and the split need besides."""
        keep = list(self.columns if columns is None else columns)
        missing = [c for c in keep if c not in self.columns]
        if missing:
            raise DataError(f"{self.catalog}: no column(s) {missing}; it has {self.columns}")
        code = None if split is None else split_index(split)
        needed = ["pixel"] + (["id"] if code is not None else [])
        read = keep + [c for c in needed if c not in keep]
        return _ShardJoin(None, self.split_spec, code, tuple(read), tuple(keep))

    def _put_conditions(self) -> ray.ObjectRef:
        import ray

        if self._conditions_ref is None:
            self._conditions_ref = ray.put(self.conditions)
        return self._conditions_ref


# --------------------------------------------------------------------------- validation


def _condition_map_path(maps: str | os.PathLike) -> Path:
    path = Path(maps)
    if path.is_dir():
        path = path / "conditions.parquet"
    if not path.is_file():
        raise DataError(f"{path}: condition-map table not found")
    return path


def _check_shards(
    files: list[Path], required: Sequence[str], conditions: ConditionMap
) -> tuple[list[str], list[list[int]], tuple[int, str]]:
    """Validate every shard's footer.

    Returns the catalog columns all shards share (first shard's order, condition columns left
    out), each shard's uncompressed bytes per row group, and the shards' HEALPix
    ``(nside, ordering)``.
    """
    truth = list(required)
    required = ["id", "pixel", *required]
    common: list[str] | None = None
    row_groups = []
    grid: tuple[int, str] | None = None
    first: pa.Schema | None = None
    for f in files:
        sch, rows = _read_footer(f)
        missing = [c for c in required if c not in sch.names]
        if missing:
            raise DataError(f"{f}: missing required column(s) {missing}; it has {sch.names}")
        for name in ("id", "pixel"):
            if not pa.types.is_integer(sch.field(name).type):
                raise DataError(f"{f}: column {name!r} must be integer, got {sch.field(name).type}")
        for name in truth:
            kind = sch.field(name).type
            if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
                raise DataError(f"{f}: column {name!r} must be a number, got {kind}")
        if first is None:
            first = sch
        _same_schema(f, sch, files[0], first)
        shard_grid = schema.read_healpix_metadata(sch, str(f))
        if grid is None:
            grid = shard_grid
        elif shard_grid != grid:
            raise DataError(
                f"{f}: HEALPix nside={shard_grid[0]}, ordering={shard_grid[1]} differs from "
                f"{files[0]} (nside={grid[0]}, ordering={grid[1]}); every shard needs one grid"
            )
        common = sch.names if common is None else [c for c in common if c in sch.names]
        row_groups.append(rows)
    columns = [c for c in common or [] if c not in conditions.columns]
    return columns, row_groups, grid or (conditions.nside, conditions.ordering)


def _same_schema(path: Path, sch: pa.Schema, first_path: Path, first: pa.Schema) -> None:
    """DataError naming ``path`` and the column if its columns or their types differ from the
    first shard's: a mixed catalog would fail later, inside Ray tasks, or mix units silently."""
    extra = [c for c in sch.names if c not in first.names]
    lacking = [c for c in first.names if c not in sch.names]
    if extra or lacking:
        raise DataError(
            f"{path}: shard columns differ from {first_path}: "
            + "; ".join(
                f"{what} {cols}" for what, cols in (("extra", extra), ("missing", lacking)) if cols
            )
            + "; every shard of a catalog needs the same columns"
        )
    for name in first.names:
        a, b = first.field(name).type, sch.field(name).type
        if a != b:
            raise DataError(
                f"{path}: column {name!r} is {b}, but {a} in {first_path}; every shard of a "
                "catalog needs the same column types"
            )


def check_unique_ids(files: Sequence[Path]) -> None:
    """Every row's ``id`` must be unique across the catalog (the split hashes it and the
    emulator's bookkeeping keys on it): DataError naming the shard(s) and an example id."""
    ids = []
    for f in files:
        try:
            column = pq.read_table(f, columns=["id"]).column("id")
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{f}: not a readable Parquet file ({exc})") from exc
        if column.null_count:
            raise DataError(f"{f}: column 'id' has {column.null_count} null value(s)")
        ids.append(column.to_numpy().astype(np.int64, copy=False))
    ordered = np.sort(np.concatenate(ids))
    repeated = np.unique(ordered[1:][np.diff(ordered) == 0])
    if repeated.size:  # name the shards that hold the first repeated id
        holders = [f for f, shard in zip(files, ids) if np.any(shard == repeated[0])]
        where = f"{holders[-1]}: column 'id' repeats id {repeated[0]}"
        where += f" of {holders[0]}" if len(holders) > 1 else ""
        raise DataError(
            f"{where} ({repeated.size:,} id(s) appear more than once); every row needs its own "
            "id: re-run galray ingest"
        )


def _on_grid(conditions: ConditionMap, grid: tuple[int, str], catalog: Path) -> ConditionMap:
    """The condition maps on the catalog's HEALPix grid, moved there with a warning if need be."""
    nside, ordering = grid
    if (nside, ordering) == (conditions.nside, conditions.ordering):
        return conditions
    how = "healpy ud_grade" if nside != conditions.nside else "reordering the pixel indices"
    log.warning(
        "%s: HEALPix nside=%d, ordering=%s differs from the condition maps %s (nside=%d, "
        "ordering=%s); converting the maps to the catalog's grid (%s)",
        catalog,
        nside,
        ordering,
        conditions.source,
        conditions.nside,
        conditions.ordering,
        how,
    )
    return conditions.regrid(nside, ordering)


def _read_footer(path: Path) -> tuple[pa.Schema, list[int]]:
    """Arrow schema (with metadata) and uncompressed bytes per row group; DataError if corrupt."""
    try:
        meta = pq.read_metadata(path)
        arrow_schema = meta.schema.to_arrow_schema()
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
    return arrow_schema, [meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)]


def plan_pieces(
    files: Sequence[Path],
    row_group_bytes: Sequence[Sequence[int]],
    n_cpus: int,
    max_bytes: int | None = None,
) -> list[dict[str, Any]]:
    """Group the catalog's row groups, in file order, into read pieces (one Ray task each).

    A piece holds consecutive row groups (possibly from several small shards) up to
    ``min(total / n_cpus, max_bytes)`` uncompressed bytes, so every CPU gets work, a task is
    not mostly overhead, and blocks stay near Ray's target block size (``max_bytes``, default
    ``DataContext.target_max_block_size``).  A row group bigger than that is a piece alone.
    Each piece is ``{"parts": [{"path": str, "row_groups": [int, ...]}, ...]}``.
    """
    if max_bytes is None:
        import ray.data

        max_bytes = ray.data.DataContext.get_current().target_max_block_size or 2**27
    total = sum(sum(sizes) for sizes in row_group_bytes)
    target = max(1, min(-(-total // max(1, n_cpus)), max_bytes))
    pieces: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    filled = 0
    for f, sizes in zip(files, row_group_bytes):
        for i, size in enumerate(sizes):
            if parts and filled + size > target:
                pieces.append({"parts": parts})
                parts, filled = [], 0
            if not parts or parts[-1]["path"] != str(f):
                parts.append({"path": str(f), "row_groups": []})
            parts[-1]["row_groups"].append(i)
            filled += size
    if parts:
        pieces.append({"parts": parts})
    return pieces


def _cluster_cpus() -> int:
    import ray

    return int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else 1


def count_outside(
    files: Sequence[Path], conditions: ConditionMap, catalog: str | os.PathLike = ""
) -> FootprintReport:
    """Exact count of rows whose pixel is off the footprint, reading only the ``pixel`` column."""
    n_rows = n_outside = 0
    for f in files:
        pixels = _read_pixels(f)
        _, inside = conditions.index(pixels)
        n_rows += pixels.size
        n_outside += int(pixels.size - np.count_nonzero(inside))
    return FootprintReport(str(catalog or files[0]), conditions.source, n_rows, n_outside)


def check_finite(files: Sequence[Path], columns: Sequence[str]) -> None:
    """Every truth input must be a number: a NaN (a sentinel ingest turned into NaN, a deep-field
    galaxy unmeasured in one band) raises DataError naming the shard, the column and the count,
    here on the driver rather than later in every training worker."""
    for f in files:
        try:
            table = pq.read_table(f, columns=list(columns))
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{f}: not a readable Parquet file ({exc})") from exc
        for name in columns:
            values = table.column(name).to_numpy(zero_copy_only=False)
            bad = int(np.count_nonzero(~np.isfinite(values.astype(np.float64))))
            if bad:
                raise DataError(
                    f"{f}: column {name!r} has {bad} non-finite value(s) (sentinels?); the "
                    "emulator needs every truth input: drop those rows before training"
                )


def _read_pixels(path: Path) -> np.ndarray:
    try:
        column = pq.read_table(path, columns=["pixel"]).column("pixel")
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
    if column.null_count:
        raise DataError(f"{path}: column 'pixel' has {column.null_count} null value(s)")
    return column.to_numpy().astype(np.int64, copy=False)


# --------------------------------------------------------------------------- the join


@dataclass(frozen=True)
class _ShardJoin:
    """The ``map_batches`` UDF: read a piece, add conditions, drop off-footprint rows, split."""

    conditions_ref: ray.ObjectRef | None  # None: called in-process by TrainingCatalog.table
    split_spec: SplitSpec
    split_code: int | None
    read: tuple[str, ...]
    keep: tuple[str, ...]

    def __call__(self, pieces: pa.Table) -> pa.Table:
        import ray

        conditions: ConditionMap = ray.get(self.conditions_ref)
        parts = [part for piece in pieces.column("parts").to_pylist() for part in piece]
        tables = [
            self.join(_read_part(p["path"], p["row_groups"], self.read), conditions) for p in parts
        ]
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables)

    def join(self, table: pa.Table, conditions: ConditionMap) -> pa.Table:
        rows, mask = conditions.index(table.column("pixel").to_numpy())
        if self.split_code is not None:
            mask &= self.split_spec.codes(table.column("id").to_numpy()) == self.split_code
        table = table.select(list(self.keep))
        if not mask.all():
            table = table.filter(mask)
            rows = rows[mask]
        for j, name in enumerate(conditions.columns):
            table = table.append_column(name, pa.array(conditions.values[:, j].take(rows)))
        return table


def _read_part(path: str, row_groups: list[int], columns: Sequence[str]) -> pa.Table:
    try:
        table = pq.ParquetFile(path).read_row_groups(row_groups, columns=list(columns))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: row group(s) {row_groups} not readable ({exc})") from exc
    for name in ("id", "pixel"):
        if name in table.column_names and table.column(name).null_count:
            raise DataError(f"{path}: column {name!r} has null values")
    return table
