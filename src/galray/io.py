"""File helpers shared by every writer and reader: atomic writes, Parquet shards, clear errors.

Every file galray writes first goes to a hidden temporary name in the destination directory and is
renamed into place only once complete, so an interrupted or failed write never leaves a file that
looks finished.  Directories are built the same way (:func:`atomic_directory`).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from galray.errors import DataError, ModelNotFoundError, OutputExistsError


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink()


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a whole directory under a temporary name; it appears at ``path`` only when complete.

    Raises :class:`OutputExistsError` if ``path`` exists and is not empty, unless ``overwrite``.
    """
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"{path}: output directory exists and is not empty (pass --overwrite)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            old = _tmp_sibling(path)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(data, path: str | os.PathLike) -> Path:
    """Write ``data`` as strict JSON to ``path`` atomically: NaN and infinities become null,
    numpy scalars plain numbers."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(data), indent=2) + "\n")
    return path


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_parquet(table: pa.Table, path: str | os.PathLike, **kwargs) -> Path:
    """Write ``table`` to ``path`` atomically (zstd, statistics on)."""
    path = Path(path)
    kwargs.setdefault("compression", "zstd")
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **kwargs)
    return path


def parquet_files(source: str | os.PathLike) -> list[Path]:
    """The Parquet files of a shard directory (sorted), or ``[source]`` for a single file."""
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise DataError(f"{source}: no such file or directory")
    files = sorted(p for p in source.rglob("*.parquet") if not p.name.startswith("."))
    if not files:
        raise DataError(f"{source}: directory holds no .parquet files")
    return files


def read_parquet_schema(path: str | os.PathLike) -> pa.Schema:
    """Schema of a Parquet file; a truncated or corrupt file raises DataError naming it."""
    try:
        return pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc


def read_parquet(path: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet file (or shard directory); corrupt input raises DataError naming the file."""
    files = parquet_files(path)
    tables = []
    for f in files:
        schema = read_parquet_schema(f)
        if columns is not None:
            missing = [c for c in columns if c not in schema.names]
            if missing:
                raise DataError(f"{f}: missing column(s) {missing}; it has {schema.names}")
        try:
            tables.append(pq.read_table(f, columns=columns))
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{f}: not a readable Parquet file ({exc})") from exc
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="default")


# ---------------------------------------------------------------------- model bundles
@contextlib.contextmanager
def reading_bundle(path: str | os.PathLike, label: str) -> Iterator[None]:
    """Turn any failure to read a saved bundle (missing or truncated file, bad JSON, mismatched
    tensors) into ModelNotFoundError naming ``path`` and what the bundle is (``label``)."""
    try:
        yield
    except ModelNotFoundError:
        raise
    except (
        OSError,
        ValueError,
        KeyError,
        TypeError,
        RuntimeError,
        pickle.UnpicklingError,
        struct.error,  # torch.load of a file that is not a checkpoint at all
    ) as exc:
        raise ModelNotFoundError(
            f"{path}: damaged {label} bundle ({type(exc).__name__}: {exc})"
        ) from exc


def read_bundle_meta(
    path: str | os.PathLike, meta_file: str, fmt: str, version: int, label: str
) -> dict:
    """The metadata file ``meta_file`` of bundle directory ``path``, checked to be of format
    ``fmt`` and ``version``; anything else raises ModelNotFoundError."""
    meta_path = Path(path) / meta_file
    if not meta_path.is_file():
        raise ModelNotFoundError(f"{path}: not a galray {label} (no {meta_file})")
    with reading_bundle(path, label):
        meta = json.loads(meta_path.read_text())
    if meta.get("format") != fmt or meta.get("version") != version:
        raise ModelNotFoundError(
            f"{meta_path}: unsupported {label} format {meta.get('format')!r} v{meta.get('version')}"
        )
    return meta


def save_weights_bundle(
    path: str | os.PathLike,
    meta_file: str,
    meta: dict,
    weights_file: str,
    module,
    *,
    overwrite: bool = False,
) -> Path:
    """Write bundle directory ``path`` atomically: ``meta`` as indented JSON in ``meta_file`` and
    the ``torch.nn.Module``'s state dict (on the CPU, contiguous) in ``weights_file``."""
    import torch

    with atomic_directory(path, overwrite=overwrite) as tmp:
        (tmp / meta_file).write_text(json.dumps(meta, indent=2))
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        torch.save(state, tmp / weights_file)
    return Path(path)


def load_weights_bundle(
    path: str | os.PathLike,
    meta_file: str,
    weights_file: str,
    fmt: str,
    version: int,
    label: str,
    build,
):
    """``build(meta, state)`` of the bundle :func:`save_weights_bundle` wrote at ``path`` (its
    metadata checked by :func:`read_bundle_meta`, the weights read on the CPU); any failure to
    read or build raises ModelNotFoundError naming ``path`` and ``label``."""
    import torch

    path = Path(path)
    meta = read_bundle_meta(path, meta_file, fmt, version, label)
    with reading_bundle(path, label):
        state = torch.load(path / weights_file, map_location="cpu", weights_only=True)
        return build(meta, state)
