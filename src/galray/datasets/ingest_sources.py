"""Source readers for ingest: FITS, HDF5 and Parquet catalogs, read in chunks.

Readers yield chunks of native-byte-order masked arrays, one per requested column, so memory stays
bounded by the chunk size; masked entries are FITS ``TNULL`` values and Parquet nulls.  Every
reader error is a :class:`~galray.errors.DataError` naming the file and the column.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from astropy.io import fits

from galray.errors import DataError
from galray.io import parquet_files

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


def count_rows(path: Path, columns: Sequence[str]) -> int:
    """A catalog's row count, read cheaply for a progress bar: a FITS table's header (a gzipped
    file is not decompressed past it), HDF5 dataset shapes, Parquet metadata; 0 if it cannot be
    read (ingesting the file then says why)."""
    try:
        if _source_format(path) != "fits":
            with contextlib.ExitStack() as stack:
                return open_source(path, stack).n_rows(columns)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path, memmap=True, lazy_load_hdus=True) as hdul:
                for hdu in hdul:
                    if isinstance(hdu, fits.BinTableHDU):
                        return int(hdu.header.get("NAXIS2", 0))
    except (DataError, OSError, ValueError, TypeError, KeyError):
        pass
    return 0


def expand_sources(sources: Sequence[str | os.PathLike]) -> list[Path]:
    """Source files in order; a directory stands for the Parquet files it holds."""
    paths: list[Path] = []
    for source in sources:
        path = Path(source)
        paths.extend(parquet_files(path) if path.is_dir() else [path])
    if not paths:
        raise DataError("no catalog sources given")
    return paths
