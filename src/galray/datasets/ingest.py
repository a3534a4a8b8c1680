"""What ingest reads: the YAML column map, and survey source files (FITS, HDF5, Parquet).

The pipelines live in :mod:`galray.datasets.ingest_catalog` (``galray ingest catalog``) and
:mod:`galray.datasets.ingest_maps` (``galray ingest maps``).

A *column map* says which source column makes each output catalog column and how it is converted
(:func:`load_column_map`; format in ``configs/columns/des_y3_example.yaml``).  Source readers yield
chunks of native-byte-order masked arrays, one per requested column, so memory stays bounded by
the chunk size; masked entries are FITS ``TNULL`` values and Parquet nulls.  Every reader error is
a :class:`~galray.errors.DataError` naming the file and the column.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import h5py
import healpy as hp
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from astropy.io import fits

from galray.config import load_yaml, require
from galray.datasets import schema
from galray.errors import ConfigError, DataError
from galray.io import parquet_files

CONVERSIONS = ("flux_to_mag", "mag", "flux", "bool")
DEFAULT_SENTINELS: tuple[float, ...] = (99.0, -99.0, -9999.0, 9999.0)
REQUIRED_COLUMNS = ("id", "ra", "dec")
EXTRA_DTYPES: dict[str, pa.DataType] = {
    "float32": pa.float32(),
    "float64": pa.float64(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "bool": pa.bool_(),
}
# Band-resolved catalog columns: prefix -> the conversions that make sense for it.
_BAND_PREFIXES = {
    "true_mag": (None, "mag", "flux_to_mag"),
    "obs_mag": (None, "mag", "flux_to_mag"),
    "obs_flux": (None, "flux"),
}
_FORMATS = {
    ".fits": "fits",
    ".fit": "fits",
    ".fts": "fits",
    ".fits.gz": "fits",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".hdf": "hdf5",
    ".parquet": "parquet",
    ".pq": "parquet",
}


# --------------------------------------------------------------------------------------------
# Column map
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnSpec:
    """How one output column is made from one source column.

    name: output column (a catalog-contract column such as ``true_mag_r``, or an extra column
        that then needs ``dtype``).
    source: source column -- a FITS or Parquet column name, or an HDF5 dataset path such as
        ``unsheared/flux_r`` (a field of a compound dataset is addressed as ``table/field``).
        YAML key ``from``.
    convert: ``None`` (cast only), ``"flux_to_mag"`` (flux at zeropoint 30 -> AB mag, NaN for
        flux <= 0), ``"mag"`` / ``"flux"`` (identity; states the unit), ``"bool"`` (non-zero ->
        True).
    sentinels: source values meaning "missing"; ``None`` means the column map's global list.
    dtype: output type of an extra column (one of :data:`EXTRA_DTYPES`).
    """

    name: str
    source: str
    convert: str | None = None
    sentinels: tuple[float, ...] | None = None
    dtype: str | None = None

    def __post_init__(self) -> None:
        where = f"columns.{self.name}"
        require(self.name != "pixel", where, "pixel is computed from ra/dec; do not map it")
        require(
            self.convert is None or self.convert in CONVERSIONS,
            f"{where}.convert",
            f"unknown conversion {self.convert!r} (known: {', '.join(CONVERSIONS)})",
        )
        self._check_name(where)
        out = self.arrow_type
        if self.convert == "bool" or pa.types.is_boolean(out):
            require(
                self.convert in (None, "bool") and pa.types.is_boolean(out),
                f"{where}.convert",
                f"convert {self.convert!r} does not make a {out} column",
            )
        if self.convert in ("flux_to_mag", "mag", "flux"):
            require(
                pa.types.is_floating(out),
                f"{where}.convert",
                f"{self.convert} needs a float column",
            )

    def _check_name(self, where: str) -> None:
        prefix, _, band = self.name.rpartition("_")
        if prefix in _BAND_PREFIXES:
            require(
                band in schema.BANDS,
                where,
                f"unknown band {band!r} (valid bands: {', '.join(schema.BANDS)})",
            )
            require(
                self.convert in _BAND_PREFIXES[prefix],
                f"{where}.convert",
                f"{self.convert!r} does not fit a {prefix} column "
                f"(use one of {[c for c in _BAND_PREFIXES[prefix] if c]} or none)",
            )
        if self.name in schema.INJECTION_FIELDS:
            require(
                self.dtype is None, f"{where}.dtype", "fixed by the catalog contract; remove it"
            )
        else:
            require(
                self.dtype in EXTRA_DTYPES,
                f"{where}.dtype" if self.dtype is not None else where,
                f"not a catalog column (known: {', '.join(schema.INJECTION_FIELDS)}); to keep it "
                f"as an extra column give dtype: one of {', '.join(EXTRA_DTYPES)}",
            )

    @property
    def arrow_type(self) -> pa.DataType:
        if self.name in schema.INJECTION_FIELDS:
            return schema.INJECTION_FIELDS[self.name]
        return EXTRA_DTYPES[self.dtype]

    @property
    def band(self) -> str | None:
        prefix, _, band = self.name.rpartition("_")
        return band if prefix in _BAND_PREFIXES else None


@dataclass(frozen=True)
class ColumnMap:
    """Which source columns make the output catalog, and the HEALPix grid of its ``pixel``.

    sentinels: source values meaning "missing" in every float column except ``ra``/``dec``
        (those are range-checked instead); integer and bool columns use only the sentinels given
        on the column itself.
    nside, ordering: HEALPix grid of ``pixel`` (command-line values take precedence).
    """

    columns: tuple[ColumnSpec, ...]
    sentinels: tuple[float, ...] = DEFAULT_SENTINELS
    nside: int | None = None
    ordering: str = "RING"

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        for name in REQUIRED_COLUMNS:
            require(name in names, f"columns.{name}", "required (map it from a source column)")
        require(len(set(names)) == len(names), "columns", "an output column is mapped twice")
        if self.nside is not None:
            check_nside(self.nside, "nside")
        require(self.ordering in schema.ORDERINGS, "ordering", f"must be one of {schema.ORDERINGS}")

    def sentinels_for(self, spec: ColumnSpec) -> tuple[float, ...]:
        if spec.sentinels is not None:
            return spec.sentinels
        if spec.name in ("ra", "dec") or not pa.types.is_floating(spec.arrow_type):
            return ()
        return self.sentinels

    @property
    def bands(self) -> list[str]:
        used = {c.band for c in self.columns}
        return [b for b in schema.BANDS if b in used] or list(schema.BANDS)

    def output_schema(self, nside: int, ordering: str, extra: dict | None = None) -> pa.Schema:
        """Contract columns in contract order (``pixel`` after ``dec``), then extra columns."""
        types = {c.name: c.arrow_type for c in self.columns} | {"pixel": pa.int64()}
        order = [n for n in schema.INJECTION_FIELDS if n in types]
        order += [c.name for c in self.columns if c.name not in schema.INJECTION_FIELDS]
        meta = schema.healpix_metadata(
            nside, ordering, kind="catalog", bands=self.bands, extra=extra
        )
        return pa.schema([pa.field(n, types[n]) for n in order], metadata=meta)


def check_nside(nside: Any, where: str) -> int:
    """``nside`` if it is a power of two (valid for RING and NESTED), else ConfigError."""
    ok = isinstance(nside, int) and not isinstance(nside, bool) and hp.isnsideok(nside, nest=True)
    require(ok, where, f"must be a power of two >= 1, got {nside!r}")
    return nside


def _parse_sentinels(raw: Any, where: str) -> tuple[float, ...]:
    ok = isinstance(raw, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in raw
    )
    require(ok, where, f"expected a list of numbers, got {raw!r}")
    return tuple(float(v) for v in raw)


def _check_known(data: dict, known: tuple[str, ...], prefix: str) -> None:
    for key in data:
        require(key in known, f"{prefix}{key}", f"unknown field (known: {', '.join(known)})")


def _parse_column(name: Any, raw: Any) -> ColumnSpec:
    where = f"columns.{name}"
    if isinstance(raw, str):
        raw = {"from": raw}
    require(isinstance(raw, dict), where, "expected a source column name or a mapping with from:")
    _check_known(raw, ("convert", "dtype", "from", "sentinels"), f"{where}.")
    source = raw.get("from")
    require(
        isinstance(source, str) and source != "", f"{where}.from", "required: the source column"
    )
    sentinels = raw.get("sentinels")
    if sentinels is not None:
        sentinels = _parse_sentinels(sentinels, f"{where}.sentinels")
    convert, dtype = raw.get("convert"), raw.get("dtype")
    require(convert is None or isinstance(convert, str), f"{where}.convert", "expected a name")
    require(dtype is None or isinstance(dtype, str), f"{where}.dtype", "expected a type name")
    return ColumnSpec(str(name), source, convert, sentinels, dtype)


def column_map_from_dict(data: dict[str, Any]) -> ColumnMap:
    """Build a :class:`ColumnMap` from its YAML form; ConfigError names the field."""
    _check_known(data, ("columns", "nside", "ordering", "sentinels"), "")
    columns = data.get("columns")
    require(isinstance(columns, dict) and columns, "columns", "required: output column -> source")
    specs = tuple(_parse_column(name, raw) for name, raw in columns.items())
    sentinels = data.get("sentinels", list(DEFAULT_SENTINELS))
    nside = data.get("nside")
    ordering = data.get("ordering", "RING")
    require(isinstance(ordering, str), "ordering", f"must be one of {schema.ORDERINGS}")
    return ColumnMap(
        columns=specs,
        sentinels=_parse_sentinels(sentinels, "sentinels"),
        nside=None if nside is None else check_nside(nside, "nside"),
        ordering=ordering.upper(),
    )


def load_column_map(path: str | os.PathLike) -> ColumnMap:
    """Read a YAML column map; a bad field raises ConfigError naming the file and the field."""
    data = load_yaml(path)
    try:
        return column_map_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


# --------------------------------------------------------------------------------------------
# Source readers
# --------------------------------------------------------------------------------------------


class CatalogSource(Protocol):
    """A table in one source file; columns are addressed by the column map's ``from`` names."""

    path: Path

    def n_rows(self, columns: Sequence[str]) -> int:
        """Row count; DataError if a column is missing or not 1-D."""

    def sample(self, column: str) -> np.ndarray:
        """At most one row of ``column``, to check its dtype and shape."""

    def chunks(self, columns: Sequence[str], chunk_rows: int) -> Iterator[dict[str, Any]]:
        """Successive row chunks: column -> ``np.ma.MaskedArray`` (native byte order)."""


def _native(values: np.ndarray) -> np.ndarray:
    if values.dtype.byteorder not in ("=", "|"):
        return values.astype(values.dtype.newbyteorder("="))
    return values


@contextlib.contextmanager
def open_fits(path: Path) -> Iterator[fits.HDUList]:
    """Open a FITS file (memory-mapped); truncated or corrupt files raise DataError naming it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hdul = fits.open(path, memmap=True, mode="readonly")
            hdul.readall()
    except (OSError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: not a readable FITS file ({exc})") from exc
    try:
        size = os.path.getsize(path)
        for i, hdu in enumerate(hdul):
            end = hdu.fileinfo()["datLoc"] + hdu.size
            if end > size and not str(path).endswith(".gz"):
                raise DataError(
                    f"{path}: truncated FITS file (HDU {i} needs {end} bytes, file has {size})"
                )
        yield hdul
    finally:
        hdul.close()


def fits_table_hdu(hdul: fits.HDUList, path: Path) -> tuple[int, fits.BinTableHDU]:
    """The first binary-table HDU of a FITS file, with its index."""
    for i, hdu in enumerate(hdul):
        if isinstance(hdu, fits.BinTableHDU):
            return i, hdu
    raise DataError(f"{path}: no binary table HDU (HDUs: {[type(h).__name__ for h in hdul]})")


class _FitsSource:
    def __init__(self, path: Path, stack: contextlib.ExitStack):
        self.path = path
        _, self.hdu = fits_table_hdu(stack.enter_context(open_fits(path)), path)
        self.names = list(self.hdu.columns.names)

    def _resolve(self, column: str) -> str:
        if column in self.names:
            return column
        matches = [n for n in self.names if n.lower() == column.lower()]
        if len(matches) != 1:
            raise DataError(
                f"{self.path}: missing column {column!r} (table has {_preview(self.names)})"
            )
        return matches[0]

    def n_rows(self, columns: Sequence[str]) -> int:
        for column in columns:
            self._resolve(column)
        return int(self.hdu.header.get("NAXIS2", 0))

    def sample(self, column: str) -> np.ndarray:
        return self._read(self._resolve(column), 0, 1).data

    def _read(self, name: str, start: int, stop: int) -> np.ma.MaskedArray:
        values = _native(np.asarray(self.hdu.data[start:stop].field(name)))
        null = self.hdu.columns[name].null
        mask = values == null if null is not None and values.dtype.kind in "iu" else None
        return np.ma.MaskedArray(values, mask=mask)

    def chunks(self, columns: Sequence[str], chunk_rows: int) -> Iterator[dict[str, Any]]:
        names = {c: self._resolve(c) for c in columns}
        n = self.n_rows(columns)
        for start in range(0, n, chunk_rows):
            yield {c: self._read(name, start, start + chunk_rows) for c, name in names.items()}


class _Hdf5Source:
    def __init__(self, path: Path, stack: contextlib.ExitStack):
        self.path = path
        try:
            self.file = stack.enter_context(h5py.File(path, "r"))
        except OSError as exc:
            raise DataError(f"{path}: not a readable HDF5 file ({exc})") from exc

    def _dataset(self, column: str) -> tuple[h5py.Dataset, str | None]:
        """The dataset at path ``column``, or (compound dataset, field) for ``table/field``."""
        key = column.strip("/")
        node = self.file.get(key)
        if isinstance(node, h5py.Dataset):
            return node, None
        parent, _, name = key.rpartition("/")
        node = self.file.get(parent) if parent else None
        if isinstance(node, h5py.Dataset) and node.dtype.names and name in node.dtype.names:
            return node, name
        raise DataError(
            f"{self.path}: missing dataset {column!r} (file has {_preview(self._names())})"
        )

    def _names(self) -> list[str]:
        names: list[str] = []
        self.file.visititems(
            lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None
        )
        return names

    def n_rows(self, columns: Sequence[str]) -> int:
        lengths = {}
        for column in columns:
            ds, _ = self._dataset(column)
            if ds.ndim != 1:
                raise DataError(f"{self.path}: dataset {column!r} has shape {ds.shape}; need 1-D")
            lengths[column] = ds.shape[0]
        if len(set(lengths.values())) > 1:
            raise DataError(f"{self.path}: datasets have different lengths {lengths}")
        return next(iter(lengths.values()))

    def sample(self, column: str) -> np.ndarray:
        return self._read(column, 0, 1).data

    def _read(self, column: str, start: int, stop: int) -> np.ma.MaskedArray:
        ds, name = self._dataset(column)
        try:
            values = ds.fields(name)[start:stop] if name else ds[start:stop]
        except (OSError, TypeError, ValueError) as exc:
            raise DataError(f"{self.path}: cannot read dataset {column!r} ({exc})") from exc
        return np.ma.MaskedArray(_native(np.asarray(values)))

    def chunks(self, columns: Sequence[str], chunk_rows: int) -> Iterator[dict[str, Any]]:
        n = self.n_rows(columns)
        for start in range(0, n, chunk_rows):
            yield {c: self._read(c, start, start + chunk_rows) for c in columns}


class _ParquetSource:
    def __init__(self, path: Path, stack: contextlib.ExitStack):
        self.path = path
        try:
            self.file = stack.enter_context(pq.ParquetFile(path))
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
        self.schema = self.file.schema_arrow

    def n_rows(self, columns: Sequence[str]) -> int:
        for column in columns:
            self.sample(column)
        return self.file.metadata.num_rows

    def sample(self, column: str) -> np.ndarray:
        if column not in self.schema.names:
            raise DataError(
                f"{self.path}: missing column {column!r} (table has {_preview(self.schema.names)})"
            )
        try:
            return np.empty(0, dtype=self.schema.field(column).type.to_pandas_dtype())
        except (NotImplementedError, TypeError):
            return np.empty(0, dtype=object)

    def chunks(self, columns: Sequence[str], chunk_rows: int) -> Iterator[dict[str, Any]]:
        batches = self.file.iter_batches(batch_size=chunk_rows, columns=list(columns))
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except (pa.ArrowInvalid, OSError) as exc:
                raise DataError(f"{self.path}: not a readable Parquet file ({exc})") from exc
            yield {c: _arrow_masked(batch.column(c)) for c in columns}


def _arrow_masked(array: pa.Array) -> np.ma.MaskedArray:
    mask = array.is_null().to_numpy(zero_copy_only=False)
    fill = False if pa.types.is_boolean(array.type) else 0
    values = pc.fill_null(array, fill).to_numpy(zero_copy_only=False)
    return np.ma.MaskedArray(values, mask=mask)


def _preview(names: Sequence[str], n: int = 12) -> str:
    shown = ", ".join(repr(x) for x in names[:n])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > n else shown or "no columns"


def _source_format(path: Path) -> str:
    name = path.name.lower()
    for suffix, kind in _FORMATS.items():
        if name.endswith(suffix):
            return kind
    raise DataError(f"{path}: unknown catalog format (known suffixes: {', '.join(_FORMATS)})")


def open_source(path: Path, stack: contextlib.ExitStack) -> CatalogSource:
    """Open a FITS, HDF5 or Parquet catalog (chosen by suffix) for the life of ``stack``."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    kind = _source_format(path)
    return {"fits": _FitsSource, "hdf5": _Hdf5Source, "parquet": _ParquetSource}[kind](path, stack)


def expand_sources(sources: Sequence[str | os.PathLike]) -> list[Path]:
    """Source files in order; a directory stands for the Parquet files it holds."""
    paths: list[Path] = []
    for source in sources:
        path = Path(source)
        paths.extend(parquet_files(path) if path.is_dir() else [path])
    if not paths:
        raise DataError("no catalog sources given")
    return paths
