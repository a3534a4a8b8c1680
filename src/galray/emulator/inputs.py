"""The inputs of an emulation, checked at the door: the deep catalog, given positions, the maps.

Every check runs on the driver before Ray starts and fails with a one-line DataError naming the
file and the column: missing columns, wrong types (ids integer, truth numeric), nulls, NaN or
infinite truth, an empty table, duplicated deep ids, positions off the sphere or naming deep ids
the catalog lacks.  Shards of one input may differ in integer/float width; they are read file
by file and concatenated.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from galray.datasets.conditions import ConditionMap
from galray.datasets.survey import SurveySpec
from galray.errors import DataError
from galray.io import parquet_files, read_parquet, read_parquet_schema


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def _read_columns(path, wanted: dict[str, tuple], what: str) -> dict[str, np.ndarray]:
    """``wanted``: column -> (type test, the type it asks for, required).  Every file of
    ``path`` is checked (required columns present, types, no nulls, floats finite) and read into
    one numpy array per column (an optional column only if every file has it); DataError naming
    the file and the column otherwise."""
    files = parquet_files(path)
    present = None
    for f in files:
        schema = read_parquet_schema(f)
        missing = [c for c, spec in wanted.items() if spec[2] and c not in schema.names]
        if missing:
            raise DataError(f"{f}: {what} lacks column(s) {missing}")
        names = {c for c in wanted if c in schema.names}
        present = names if present is None else present & names
        for c in names:
            test, kind = wanted[c][:2]
            if not test(schema.field(c).type):
                raise DataError(f"{f}: {what} column {c} is {schema.field(c).type}, not {kind}")
    columns = [c for c in wanted if c in present]
    parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    for f in files:
        table = read_parquet(f, columns)
        for c in columns:
            if table[c].null_count:
                raise DataError(f"{f}: {what} column {c} has {table[c].null_count} null value(s)")
            values = table[c].to_numpy(zero_copy_only=False)
            if values.dtype.kind == "f" and not np.isfinite(values).all():
                bad = int((~np.isfinite(values)).sum())
                raise DataError(f"{f}: {what} column {c} has {bad} non-finite value(s) (NaN/inf)")
            parts[c].append(values)
    out = {c: np.concatenate(parts[c]) for c in columns}
    if not out or len(next(iter(out.values()))) == 0:
        raise DataError(f"{path}: {what} is empty")
    return out


def load_deep(path: str | Path, spec: SurveySpec) -> dict[str, np.ndarray]:
    """The deep catalog's ``id`` and the truth columns the emulator needs (and the spec's
    redshift column when every shard has it, carried into the output), checked: every column
    present, ids integer, unique and non-null, truth numeric and finite, not empty; DataError
    naming the file and the column otherwise."""
    wanted = {"id": (pa.types.is_integer, "an integer", True)}
    wanted |= {c: (_numeric, "numeric", True) for c in spec.truth_columns}
    if spec.deep.redshift:
        wanted[spec.deep.redshift] = (_numeric, "numeric", False)
    out = _read_columns(path, wanted, "deep catalog")
    ids, counts = np.unique(out["id"], return_counts=True)
    if (counts > 1).any():
        dup = ids[counts > 1]
        raise DataError(
            f"{path}: deep catalog column id has {dup.size} duplicated value(s) (e.g. {dup[0]}); "
            "ids must be unique"
        )
    return out


def load_positions(path: str | Path, cmap: ConditionMap, deep_ids: np.ndarray) -> dict:
    """Given positions: ra/dec (deg), their pixel and deep galaxy (``deep_id``: the deep
    catalog's ``id`` of the galaxy to place there; default: the deep rows in turn);
    off-footprint rows dropped.  DataError naming the file and column for anything else."""
    wanted = {c: (_numeric, "numeric", True) for c in ("ra", "dec")}
    wanted["deep_id"] = (pa.types.is_integer, "an integer", False)
    table = _read_columns(path, wanted, "positions")
    ra, dec = table["ra"].astype(np.float64), table["dec"].astype(np.float64)
    if (np.abs(dec) > 90).any():
        raise DataError(f"{path}: positions column dec has {(np.abs(dec) > 90).sum()} value(s) "
                        "outside [-90, 90] deg")  # fmt: skip
    if "deep_id" in table:
        order = np.argsort(deep_ids, kind="stable")
        found = np.minimum(np.searchsorted(deep_ids[order], table["deep_id"]), order.size - 1)
        deep_idx = order[found]
        unknown = deep_ids[deep_idx] != table["deep_id"]
        if unknown.any():
            raise DataError(
                f"{path}: positions column deep_id has {unknown.sum()} value(s) not among the deep "
                f"catalog's ids (e.g. {table['deep_id'][unknown][0]})"
            )
    else:
        deep_idx = np.arange(ra.size, dtype=np.int64) % deep_ids.size
    import healpy as hp  # not at the top: emulation workers import this module (0.7 s)

    pixel = hp.ang2pix(cmap.nside, ra, dec, lonlat=True, nest=cmap.ordering == "NESTED")
    rows, inside = cmap.index(pixel)
    if not inside.any():
        raise DataError(f"{path}: no position falls on the footprint of {cmap.source}")
    return {
        "ra": ra[inside],
        "dec": dec[inside],
        "pixel": pixel[inside].astype(np.int64),
        "map_row": rows[inside],
        "deep_index": deep_idx[inside],
        "n_outside": np.int64((~inside).sum()),
    }


def check_model_against_maps(emulator, cmap: ConditionMap, maps: str) -> None:
    """The maps must carry the model's conditions, and its training nside/ordering if
    recorded."""
    missing = [c for c in emulator.spec.condition_columns if c not in cmap.columns]
    if missing:
        raise DataError(f"{maps}: condition map lacks {missing} that the model's survey needs")
    trained = emulator.info.get("maps", {})
    for key, have in (("nside", cmap.nside), ("ordering", cmap.ordering)):
        want = trained.get(key)
        if want is not None and want != have:
            raise DataError(f"{maps}: {key} {have} differs from the model's training maps ({want})")
