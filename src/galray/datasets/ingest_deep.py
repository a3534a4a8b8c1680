"""The deep-field catalog injections are joined to (``galray ingest catalog --deep DIR``).

``galray ingest deep`` writes it (:func:`galray.datasets.ingest_catalog.ingest_deep`): Parquet
shards of ``id``, the true magnitudes and morphology of a survey spec's deep inputs and its
redshift.  :class:`DeepTable` holds it in memory sorted by ``id`` and gives every injection the
columns of the deep galaxy its ``deep_id`` names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from galray.errors import DataError
from galray.io import read_parquet

# Columns of a deep catalog that an injection does not inherit.
NOT_JOINED = ("id", "ra", "dec")


@dataclass(frozen=True, eq=False)
class DeepTable:
    """A deep-field catalog: ``ids`` (int64, ascending, unique) and, per joined column, its
    values in the same order.  ``source`` names the file or directory in errors."""

    source: Path
    ids: np.ndarray
    columns: dict[str, pa.Array]

    @classmethod
    def load(cls, path: str | os.PathLike) -> DeepTable:
        """Read a deep catalog (a Parquet file or directory); DataError naming it if ``id`` is
        missing, not integer, null or repeated, or the table is empty."""
        path = Path(path)
        table = read_parquet(path)
        if "id" not in table.column_names:
            raise DataError(f"{path}: no column 'id' (deep catalog has {table.column_names})")
        column = table.column("id")
        if not pa.types.is_integer(column.type) or column.null_count:
            raise DataError(
                f"{path}: column 'id' must be a non-null integer, got {column.type} with "
                f"{column.null_count} null(s)"
            )
        if table.num_rows == 0:
            raise DataError(f"{path}: the deep catalog has zero rows")
        ids = column.to_numpy().astype(np.int64, copy=False)
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        repeated = np.flatnonzero(np.diff(ids) == 0)
        if repeated.size:
            raise DataError(
                f"{path}: column 'id' holds {repeated.size:,} repeated id(s), e.g. "
                f"{ids[repeated[0]]}; a deep catalog needs one row per galaxy"
            )
        take = pa.array(order)
        columns = {
            name: table.column(name).combine_chunks().take(take)
            for name in table.column_names
            if name not in NOT_JOINED
        }
        return cls(path, ids, columns)

    @property
    def types(self) -> dict[str, pa.DataType]:
        return {name: array.type for name, array in self.columns.items()}

    def lookup(self, deep_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row of each ``deep_id`` in the table, and whether it is there at all."""
        query = np.asarray(deep_ids, dtype=np.int64)
        rows = np.minimum(np.searchsorted(self.ids, query), self.ids.size - 1)
        return rows, self.ids[rows] == query

    def take(self, rows: np.ndarray) -> dict[str, pa.Array]:
        """The joined columns at ``rows``."""
        index = pa.array(np.asarray(rows, dtype=np.int64))
        return {name: array.take(index) for name, array in self.columns.items()}
