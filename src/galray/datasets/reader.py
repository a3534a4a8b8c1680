"""Training-ready rows: an injection catalog joined to its condition maps, split by id, in Ray Data.

:class:`TrainingCatalog` validates a catalog and its maps once, eagerly, before any Ray work:

1. every shard's footer is read (a truncated or corrupt file raises DataError naming it) and must
   hold ``id``, ``pixel`` and ``true_mag_b`` for every band;
2. every shard's HEALPix nside/ordering must equal the condition maps' (DataError naming both);
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
``ray.data.read_parquet`` was measured and not used: in Ray 2.60 its default (DataSource V2) packs
every shard under 128 MiB into a single read task after a separate file-listing task, and the V1
datasource samples files in extra tasks before reading; on 1.7M rows x 2 cores both were 1.5-4x
slower end to end than reading the pieces inside the join task (see benchmarks/bench_join.py),
and a corrupt data page read here raises DataError naming the shard.

:meth:`TrainingCatalog.norm_stats` computes per-column mean/std/min/max/count over the train split
(finite values only) in one pass of the same fused pipeline, saves them as JSON next to the catalog and reloads
them while the catalog, maps and split are unchanged, so training and inference standardise alike.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.data

from galray.config import require
from galray.datasets import schema
from galray.datasets.conditions import ConditionMap, read_condition_map
from galray.datasets.split import DEFAULT_FRACTIONS, SplitSpec, split_index
from galray.errors import DataError, FootprintError
from galray.io import atomic_path, parquet_files

log = logging.getLogger(__name__)

NORM_STATS_NAME = "norm_stats.json"


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
    bands: the bands whose true magnitudes and conditions are used.
    fractions, salt: the id-hash split (see :mod:`galray.datasets.split`).
    max_outside_fraction: largest tolerated share of galaxies off the footprint (0..1).
    """

    def __init__(
        self,
        catalog: str | os.PathLike,
        maps: str | os.PathLike,
        *,
        bands: Sequence[str] = schema.BANDS,
        fractions: Sequence[float] = DEFAULT_FRACTIONS,
        salt: int = 0,
        max_outside_fraction: float = 0.01,
    ) -> None:
        require(
            0.0 <= max_outside_fraction <= 1.0,
            "max_outside_fraction",
            f"must lie in [0, 1], got {max_outside_fraction}",
        )
        self.catalog = Path(catalog)
        self.maps = _condition_map_path(maps)
        self.bands = tuple(bands)
        self.split_spec = SplitSpec(tuple(fractions), salt)
        self.files = parquet_files(self.catalog)
        self.conditions = read_condition_map(self.maps, self.bands)
        self.columns, self._row_groups = _check_shards(self.files, self.bands, self.conditions)
        self.footprint = count_outside(self.files, self.conditions, self.catalog)
        self.footprint.check(max_outside_fraction)
        log.info(
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

    @property
    def feature_columns(self) -> list[str]:
        """Numeric columns that get normalisation statistics, in a fixed order."""
        return _feature_columns(self.columns, self.bands)

    def dataset(
        self, split: str | None = "train", columns: Sequence[str] | None = None
    ) -> ray.data.Dataset:
        """Lazy Dataset of on-footprint rows of ``split`` (None: all rows) with conditions added.

        columns: catalog columns to keep (default all that every shard holds); the condition
        columns ``psf_fwhm_b`` (arcsec) and ``depth_b`` (AB) are always appended.
        """
        keep = list(self.columns if columns is None else columns)
        missing = [c for c in keep if c not in self.columns]
        if missing:
            raise DataError(f"{self.catalog}: no column(s) {missing}; it has {self.columns}")
        code = None if split is None else split_index(split)
        needed = ["pixel"] + (["id"] if code is not None else [])
        read = keep + [c for c in needed if c not in keep]
        plan = plan_pieces(self.files, self._row_groups, _cluster_cpus())
        pieces = ray.data.from_items(plan, override_num_blocks=len(plan))
        join = _ShardJoin(self._put_conditions(), self.split_spec, code, tuple(read), tuple(keep))
        ds = pieces.map_batches(join, batch_format="pyarrow", batch_size=1)
        # A DataError raised in a task (a corrupt data page) reaches the caller as DataError.
        ds.context.raise_original_map_exception = True
        return ds

    def norm_stats(
        self, path: str | os.PathLike | None = None, *, recompute: bool = False
    ) -> NormStats:
        """Normalisation statistics of the train split, loaded from ``path`` or computed and saved.

        path: default ``<catalog dir>/norm_stats.json`` (``<stem>.norm_stats.json`` beside a
        single-file catalog).  A saved file is reused only if its fingerprint (shard names,
        sizes and mtimes, the maps file, bands, split fractions and salt) equals this catalog's.
        """
        path = Path(path) if path is not None else default_norm_stats_path(self.catalog)
        fingerprint = self.fingerprint()
        if path.exists() and not recompute:
            stats = NormStats.load(path)
            if stats.fingerprint == fingerprint:
                return stats
            log.info("%s: fingerprint differs from %s; recomputing", path, self.catalog)
        features = self.feature_columns
        train = self.dataset("train", [c for c in features if c in self.columns])
        stats = compute_norm_stats(train, features, fingerprint)
        stats.save(path)
        return stats

    def fingerprint(self) -> dict[str, Any]:
        """What the normalisation statistics depend on, as plain JSON-able data."""
        root = self.catalog if self.catalog.is_dir() else self.catalog.parent
        return {
            "catalog": [_file_stamp(f, f.relative_to(root).as_posix()) for f in self.files],
            "maps": _file_stamp(self.maps, self.maps.name),
            "bands": list(self.bands),
            "split": {"fractions": list(self.split_spec.fractions), "salt": self.split_spec.salt},
        }

    def _put_conditions(self) -> ray.ObjectRef:
        if self._conditions_ref is None:
            self._conditions_ref = ray.put(self.conditions)
        return self._conditions_ref


def read_training_rows(
    catalog: str | os.PathLike,
    maps: str | os.PathLike,
    *,
    split: str | None = "train",
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    salt: int = 0,
    max_outside_fraction: float = 0.01,
    bands: Sequence[str] = schema.BANDS,
    columns: Sequence[str] | None = None,
) -> ray.data.Dataset:
    """Shorthand for ``TrainingCatalog(catalog, maps, ...).dataset(split, columns)``."""
    training = TrainingCatalog(
        catalog,
        maps,
        bands=bands,
        fractions=fractions,
        salt=salt,
        max_outside_fraction=max_outside_fraction,
    )
    return training.dataset(split, columns)


# --------------------------------------------------------------------------- validation


def _condition_map_path(maps: str | os.PathLike) -> Path:
    path = Path(maps)
    if path.is_dir():
        path = path / "conditions.parquet"
    if not path.is_file():
        raise DataError(f"{path}: condition-map table not found")
    return path


def _check_shards(
    files: list[Path], bands: Sequence[str], conditions: ConditionMap
) -> tuple[list[str], list[list[int]]]:
    """Validate every shard's footer.

    Returns the catalog columns all shards share (first shard's order, condition columns left
    out) and each shard's uncompressed bytes per row group.
    """
    required = ["id", "pixel", *(schema.true_mag(b) for b in bands)]
    common: list[str] | None = None
    row_groups = []
    for f in files:
        sch, rows = _read_footer(f)
        missing = [c for c in required if c not in sch.names]
        if missing:
            raise DataError(f"{f}: missing required column(s) {missing}; it has {sch.names}")
        for name in ("id", "pixel"):
            if not pa.types.is_integer(sch.field(name).type):
                raise DataError(f"{f}: column {name!r} must be integer, got {sch.field(name).type}")
        nside, ordering = schema.read_healpix_metadata(sch, str(f))
        if (nside, ordering) != (conditions.nside, conditions.ordering):
            raise DataError(
                f"{f}: HEALPix nside={nside}, ordering={ordering} does not match the condition "
                f"maps {conditions.source} (nside={conditions.nside}, "
                f"ordering={conditions.ordering})"
            )
        common = sch.names if common is None else [c for c in common if c in sch.names]
        row_groups.append(rows)
    return [c for c in common or [] if c not in conditions.columns], row_groups


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


def _read_pixels(path: Path) -> np.ndarray:
    try:
        column = pq.read_table(path, columns=["pixel"]).column("pixel")
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
    if column.null_count:
        raise DataError(f"{path}: column 'pixel' has {column.null_count} null value(s)")
    return column.to_numpy().astype(np.int64, copy=False)


def _file_stamp(path: Path, name: str) -> dict[str, Any]:
    st = path.stat()
    return {"name": name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


# --------------------------------------------------------------------------- the join


@dataclass(frozen=True)
class _ShardJoin:
    """The ``map_batches`` UDF: read a piece, add conditions, drop off-footprint rows, split."""

    conditions_ref: ray.ObjectRef
    split_spec: SplitSpec
    split_code: int | None
    read: tuple[str, ...]
    keep: tuple[str, ...]

    def __call__(self, pieces: pa.Table) -> pa.Table:
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


# --------------------------------------------------------------------------- numpy


def to_numpy(
    ds: ray.data.Dataset, columns: Sequence[str], *, order_by: str | None = "id"
) -> dict[str, np.ndarray]:
    """Materialise ``columns`` of ``ds`` as one numpy array each (e.g. to hold on the device).

    order_by: sort the rows by this column (default ``id``), so the arrays do not depend on how
    Ray scheduled the blocks; None keeps the block order Ray returned.
    """
    wanted = list(columns) + ([order_by] if order_by and order_by not in columns else [])
    refs = ds.select_columns(wanted).to_arrow_refs()
    tables = [t for t in ray.get(refs) if t.num_rows]
    if not tables:
        return {c: np.empty(0, dtype=_numpy_dtype(ds, c)) for c in columns}
    table = pa.concat_tables(tables)
    arrays = {c: table.column(c).to_numpy() for c in wanted}
    if order_by:
        order = np.argsort(arrays[order_by], kind="stable")
        return {c: arrays[c][order] for c in columns}
    return {c: arrays[c] for c in columns}


def _numpy_dtype(ds: ray.data.Dataset, column: str) -> np.dtype:
    field = ds.schema().base_schema.field(column)
    return np.dtype(field.type.to_pandas_dtype())


# --------------------------------------------------------------------------- normalisation


@dataclass(frozen=True)
class ColumnStats:
    """Statistics of one column's finite values (std is the population std, ddof=0)."""

    mean: float
    std: float
    min: float
    max: float
    count: int


@dataclass(frozen=True)
class NormStats:
    """Per-column normalisation statistics of a catalog's train split, with its fingerprint.

    Units are the columns' own: magnitudes AB, sizes and PSF FWHM arcsec, fluxes at ZP 30;
    ``detected`` is 0/1, so its mean is the detection fraction.
    """

    columns: dict[str, ColumnStats]
    fingerprint: dict[str, Any]
    split: str = "train"

    @property
    def detection_fraction(self) -> float:
        return self.columns["detected"].mean

    def mean(self, names: Sequence[str]) -> np.ndarray:
        return np.array([self.columns[n].mean for n in names], dtype=np.float64)

    def std(self, names: Sequence[str]) -> np.ndarray:
        return np.array([self.columns[n].std for n in names], dtype=np.float64)

    def to_json(self) -> str:
        columns = {name: _json_floats(asdict(s)) for name, s in self.columns.items()}
        doc = {"split": self.split, "fingerprint": self.fingerprint, "columns": columns}
        return json.dumps(doc, indent=2, allow_nan=False)

    @classmethod
    def from_json(cls, text: str, source: str = "<json>") -> NormStats:
        try:
            doc = json.loads(text)
            columns = {
                name: ColumnStats(**{k: _from_json_float(v) for k, v in s.items()})
                for name, s in doc["columns"].items()
            }
            return cls(columns, doc["fingerprint"], doc.get("split", "train"))
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{source}: not a galray norm-stats JSON file ({exc})") from exc

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> NormStats:
        return cls.from_json(Path(path).read_text(), str(path))


def default_norm_stats_path(catalog: str | os.PathLike) -> Path:
    catalog = Path(catalog)
    if catalog.is_dir():
        return catalog / NORM_STATS_NAME
    return catalog.with_name(f"{catalog.stem}.{NORM_STATS_NAME}")


def compute_norm_stats(
    ds: ray.data.Dataset, columns: Sequence[str], fingerprint: dict[str, Any]
) -> NormStats:
    """Statistics of ``columns`` in one pass: per-block moments, merged exactly on the driver.

    Each block yields one row of (count, mean, M2, min, max) per column inside ``map_batches``
    (fused with the read and the join, so the rows are never shipped); the driver merges them
    with the pairwise update of Chan, Golub & LeVeque, which is exact and stable in float64.
    """
    partials = ds.map_batches(
        _block_moments,
        fn_kwargs={"columns": list(columns)},
        batch_format="pyarrow",
        batch_size=None,
        zero_copy_batch=True,
    )
    merged = {c: _Moments.empty() for c in columns}
    for table in ray.get(partials.to_arrow_refs()):
        for row in table.to_pylist():
            for c in columns:
                merged[c] = merged[c].merge(_Moments(*(row[f"{c}/{k}"] for k in _Moments.KEYS)))
    return NormStats({c: m.stats() for c, m in merged.items()}, fingerprint)


def _feature_columns(columns: Sequence[str], bands: Sequence[str]) -> list[str]:
    ordered = [schema.true_mag(b) for b in bands] + ["true_size"]
    ordered += schema.condition_columns(bands)
    ordered += [schema.obs_mag(b) for b in bands] + [schema.obs_flux(b) for b in bands]
    ordered += ["detected"]
    available = set(columns) | set(schema.condition_columns(bands))
    return [c for c in ordered if c in available]


@dataclass(frozen=True)
class _Moments:
    """Count, mean, sum of squared deviations, min and max of finite values (Chan et al. merge)."""

    n: int
    mean: float
    m2: float
    min: float
    max: float

    KEYS = ("n", "mean", "m2", "min", "max")

    @classmethod
    def empty(cls) -> _Moments:
        return cls(0, 0.0, 0.0, float("inf"), float("-inf"))

    @classmethod
    def of(cls, values: np.ndarray) -> _Moments:
        x = values[np.isfinite(values)]
        if x.size == 0:
            return cls.empty()
        mean = float(x.mean())
        return cls(
            int(x.size), mean, float(np.square(x - mean).sum()), float(x.min()), float(x.max())
        )

    def merge(self, other: _Moments) -> _Moments:
        n = self.n + other.n
        if n == 0:
            return self
        delta = other.mean - self.mean
        mean = self.mean + delta * other.n / n
        m2 = self.m2 + other.m2 + delta * delta * self.n * other.n / n
        return _Moments(n, mean, m2, min(self.min, other.min), max(self.max, other.max))

    def stats(self) -> ColumnStats:
        if self.n == 0:
            return ColumnStats(float("nan"), float("nan"), float("nan"), float("nan"), 0)
        return ColumnStats(self.mean, float(np.sqrt(self.m2 / self.n)), self.min, self.max, self.n)


def _block_moments(table: pa.Table, columns: Sequence[str]) -> pa.Table:
    row: dict[str, list] = {}
    for c in columns:
        values = table.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
        moments = _Moments.of(values)
        for k in _Moments.KEYS:
            row[f"{c}/{k}"] = [getattr(moments, k)]
    return pa.table(row)


def _json_floats(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in d.items()}


def _from_json_float(v: Any) -> Any:
    return float("nan") if v is None else v
