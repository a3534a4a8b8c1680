"""Checks on ingested values that one chunk cannot make alone, and the writers' error on a full disk.

* :class:`UniqueIds` -- ``id`` names one row: a repeated id, within a file or across the files of
  one ingest, is a DataError naming the file(s), the source column and an example id.  It keeps
  the kept rows' ids (8 bytes per row) until the end of the ingest.
* :func:`check_integer_range` -- integer output columns (``id``, ``deep_id``, ``int32`` flags)
  refuse source values their type cannot hold (an unsigned id above 2**63 - 1, a float id of
  1e20) instead of letting them wrap around.
* :func:`output_errors` -- a write that fails for lack of space (ENOSPC, EDQUOT, EFBIG) or on a
  read-only file system becomes one :class:`~galray.errors.OutputError` line naming the output;
  the writers build their output under a temporary name (:func:`galray.io.atomic_directory`), so
  nothing partial is left and an existing output is kept.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from galray.errors import DataError, OutputError

_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


class UniqueIds:
    """The ids kept so far, file by file; :meth:`end_file` and :meth:`check` refuse repeats.

    source: the source column ``id`` is read from (named in errors).
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self._chunks: list[np.ndarray] = []
        self._files: list[tuple[Path, np.ndarray]] = []

    def add(self, ids: np.ndarray) -> None:
        """The ids of one chunk's kept rows."""
        self._chunks.append(np.asarray(ids, dtype=np.int64))

    def end_file(self, path: Path) -> None:
        """Close ``path``'s ids; DataError if one repeats within it."""
        ids = np.sort(np.concatenate(self._chunks)) if self._chunks else np.zeros(0, np.int64)
        self._chunks = []
        repeated = np.unique(ids[1:][np.diff(ids) == 0])
        if repeated.size:
            raise DataError(
                f"{path}: column {self.source!r} (for id) repeats {repeated.size:,} id(s), e.g. "
                f"{repeated[0]}; every row needs its own id"
            )
        self._files.append((path, ids))

    def check(self) -> None:
        """DataError if an id of one file is also in another."""
        if len(self._files) < 2:
            return
        ordered = np.sort(np.concatenate([ids for _, ids in self._files]))
        repeated = np.unique(ordered[1:][np.diff(ordered) == 0])
        if repeated.size:  # each file's ids are unique: the first repeat is in two files
            first = repeated[0]
            a, b = [path for path, ids in self._files if _holds(ids, first)][:2]
            raise DataError(
                f"{b}: column {self.source!r} (for id) repeats id {first} of {a} "
                f"({repeated.size:,} id(s) in more than one file); every row needs its own id"
            )


def _holds(ordered: np.ndarray, value: int) -> bool:
    i = np.searchsorted(ordered, value)
    return bool(i < ordered.size and ordered[i] == value)


def check_integer_range(data: np.ndarray, missing: np.ndarray, out: pa.DataType, what: str) -> None:
    """DataError naming ``what`` if a present value of ``data`` does not fit integer type ``out``."""
    info = np.iinfo(out.to_pandas_dtype())
    values = data[~missing]
    if values.size == 0 or values.dtype.kind not in "iuf":
        return
    if values.dtype.kind == "f":  # 2**(bits-1) is exact in float64, info.max is not
        bad = (values < info.min) | (values >= -float(info.min))
    else:
        bad = (values < info.min) | (values > info.max)
    if bad.any():
        raise DataError(
            f"{what} holds {int(bad.sum()):,} value(s) outside the range of {out}, "
            f"e.g. {values[bad][0].item()!r}"
        )


@contextlib.contextmanager
def output_errors(out: str | os.PathLike) -> Iterator[None]:
    """Turn a write that fails for lack of space or a read-only file system into OutputError."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _WRITE_ERRNOS:
            raise
        reason = exc.strerror or errno.errorcode.get(exc.errno, str(exc))
        kept = " (the existing output is kept)" if Path(out).exists() else ""
        raise OutputError(
            f"{out}: cannot write the output: {reason}; nothing was written{kept}"
        ) from exc
