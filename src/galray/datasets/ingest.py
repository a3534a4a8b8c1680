"""What ingest reads: the YAML column map, checked against a survey's column contract.

The pipelines live in :mod:`galray.datasets.ingest_catalog` (``galray ingest catalog`` and
``galray ingest deep``) and :mod:`galray.datasets.ingest_maps` (``galray ingest maps``); the source
readers (FITS, HDF5, Parquet) in :mod:`galray.datasets.ingest_sources`.

A *column map* says which source column makes each output column and how it is converted
(:func:`load_column_map`; format in ``configs/columns/des_y3_example.yaml`` and
``des_y6_example.yaml``).  Which output columns exist, and their types, is the :class:`Contract` of
a :class:`~galray.datasets.survey.SurveySpec` (default: the ``riz`` preset, the catalog contract of
:mod:`galray.datasets.schema`): ``id``, ``deep_id``, ``ra``, ``dec``, the true magnitudes
``true_mag_<b>`` of the spec's deep bands, its morphology and redshift columns, the measured
``obs_flux_<b>``, ``obs_flux_err_<b>`` and ``obs_mag_<b>`` of its wide bands, its other outputs
``obs_<name>`` (float32; flags int32) and ``detected``.  Any other column is an extra column and
needs a ``dtype``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import healpy as hp
import pyarrow as pa

from galray.config import load_yaml, require
from galray.datasets import schema
from galray.datasets.survey import SurveySpec
from galray.errors import ConfigError

CONVERSIONS = ("flux_to_mag", "mag", "flux", "bool")
DEFAULT_SENTINELS: tuple[float, ...] = (99.0, -99.0, -9999.0, 9999.0)
REQUIRED_COLUMNS = ("id", "ra", "dec")
DEEP_REQUIRED_COLUMNS = ("id",)
KINDS = ("catalog", "deep")
EXTRA_DTYPES: dict[str, pa.DataType] = {
    "float32": pa.float32(),
    "float64": pa.float64(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "bool": pa.bool_(),
}
_MAG_CONVERSIONS = (None, "mag", "flux_to_mag")
_FLUX_CONVERSIONS = (None, "flux")


# --------------------------------------------------------------------------------------------
# The contract
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Contract:
    """The columns an ingested table may hold, and their Arrow types, for a survey ``spec``.

    kind: ``"catalog"`` (an injection catalog: positions, truth, measurements) or ``"deep"`` (a
    deep-field catalog: ``id``, truth and redshift, optionally ``ra``/``dec``).
    """

    spec: SurveySpec = field(default_factory=SurveySpec)
    kind: str = "catalog"

    def __post_init__(self) -> None:
        require(self.kind in KINDS, "kind", f"must be one of {KINDS}, got {self.kind!r}")

    @property
    def required(self) -> tuple[str, ...]:
        """Columns every row needs (rows without a valid value are dropped)."""
        return REQUIRED_COLUMNS if self.kind == "catalog" else DEEP_REQUIRED_COLUMNS

    @cached_property
    def band_prefixes(self) -> dict[str, tuple[list[str], tuple[str | None, ...]]]:
        """Band-resolved columns: prefix -> (its valid bands, the conversions that fit it)."""
        out = {"true_mag": (list(self.spec.deep.bands), _MAG_CONVERSIONS)}
        if self.kind == "catalog":
            wide = list(self.spec.bands)
            out["obs_mag"] = (wide, _MAG_CONVERSIONS)
            out["obs_flux"] = (wide, _FLUX_CONVERSIONS)
            out["obs_flux_err"] = (wide, _FLUX_CONVERSIONS)
        return out

    @cached_property
    def types(self) -> dict[str, pa.DataType]:
        """Every contract column, in output order, with its Arrow type."""
        spec, f32, catalog = self.spec, pa.float32(), self.kind == "catalog"
        types: dict[str, pa.DataType] = {"id": pa.int64()}
        if catalog:
            types["deep_id"] = pa.int64()
        types |= {"ra": pa.float64(), "dec": pa.float64()}
        if catalog:
            types["pixel"] = pa.int64()
        types |= {schema.true_mag(b): f32 for b in spec.deep.bands}
        types |= dict.fromkeys(spec.deep.morphology, f32)
        if spec.deep.redshift:
            types[spec.deep.redshift] = f32
        if catalog:
            types |= {schema.obs_flux(b): f32 for b in spec.bands}
            types |= {f"obs_flux_err_{b}": f32 for b in spec.bands}
            types |= {schema.obs_mag(b): f32 for b in spec.bands}
            types |= {f"obs_{name}": f32 for name in spec.outputs.continuous}
            types |= {f"obs_{name}": pa.int32() for name in spec.outputs.flags}
            types["detected"] = pa.bool_()
        return types

    @property
    def truth_columns(self) -> list[str]:
        """The deep-field columns an injection inherits from its deep galaxy."""
        extra = [self.spec.deep.redshift] if self.spec.deep.redshift else []
        return self.spec.truth_columns + extra

    def band(self, name: str) -> str | None:
        prefix, _, band = name.rpartition("_")
        return band if prefix in self.band_prefixes else None

    def column_type(
        self, name: str, convert: str | None, dtype: str | None, where: str
    ) -> pa.DataType:
        """The Arrow type of output column ``name``; ConfigError naming ``where`` if the name,
        its conversion or its dtype do not fit the contract."""
        prefix, _, band = name.rpartition("_")
        if prefix in self.band_prefixes:
            bands, conversions = self.band_prefixes[prefix]
            require(
                band in bands,
                where,
                f"unknown band {band!r} (valid bands of survey {self.spec.name}: "
                f"{', '.join(bands)}; pass --survey for others)",
            )
            require(
                convert in conversions,
                f"{where}.convert",
                f"{convert!r} does not fit a {prefix} column "
                f"(use one of {[c for c in conversions if c]} or none)",
            )
        what = "catalog" if self.kind == "catalog" else "deep-catalog"
        if name in self.types:
            fixed = self.types[name]
            require(
                dtype is None or EXTRA_DTYPES.get(dtype) == fixed,
                f"{where}.dtype",
                f"fixed by the {what} contract ({fixed}); remove it",
            )
            return fixed
        require(
            dtype in EXTRA_DTYPES,
            f"{where}.dtype" if dtype is not None else where,
            f"not a {what} column of survey {self.spec.name} (known: {', '.join(self.types)}); "
            f"to keep it as an extra column give dtype: one of {', '.join(EXTRA_DTYPES)}",
        )
        return EXTRA_DTYPES[dtype]


# --------------------------------------------------------------------------------------------
# Column map
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnSpec:
    """How one output column is made from one source column.

    name: output column (a contract column such as ``true_mag_r``, or an extra column that then
        needs ``dtype``).
    source: source column -- a FITS or Parquet column name, or an HDF5 dataset path such as
        ``unsheared/flux_r`` (a field of a compound dataset is addressed as ``table/field``).
        YAML key ``from``.
    arrow_type: the output type (the contract's, or the extra column's ``dtype``).
    convert: ``None`` (cast only), ``"flux_to_mag"`` (flux at zeropoint 30 -> AB mag, NaN for
        flux <= 0), ``"mag"`` / ``"flux"`` (identity; states the unit), ``"bool"`` (non-zero ->
        True).
    sentinels: source values meaning "missing"; ``None`` means the column map's global list.
    """

    name: str
    source: str
    arrow_type: pa.DataType
    convert: str | None = None
    sentinels: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        where = f"columns.{self.name}"
        require(self.name != "pixel", where, "pixel is computed from ra/dec; do not map it")
        require(
            self.convert is None or self.convert in CONVERSIONS,
            f"{where}.convert",
            f"unknown conversion {self.convert!r} (known: {', '.join(CONVERSIONS)})",
        )
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


@dataclass(frozen=True)
class ColumnMap:
    """Which source columns make the output table, and the HEALPix grid of its ``pixel``.

    sentinels: source values meaning "missing" in every float column except ``ra``/``dec``
        (those are range-checked instead); integer and bool columns use only the sentinels given
        on the column itself.
    nside, ordering: HEALPix grid of ``pixel`` (command-line values take precedence; a deep
        catalog has no ``pixel``).
    contract: the survey's column contract the names were checked against.
    """

    columns: tuple[ColumnSpec, ...]
    sentinels: tuple[float, ...] = DEFAULT_SENTINELS
    nside: int | None = None
    ordering: str = "RING"
    contract: Contract = field(default_factory=Contract)

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        for name in self.contract.required:
            require(name in names, f"columns.{name}", "required (map it from a source column)")
        require(len(set(names)) == len(names), "columns", "an output column is mapped twice")
        if self.nside is not None:
            check_nside(self.nside, "nside")
        require(self.ordering in schema.ORDERINGS, "ordering", f"must be one of {schema.ORDERINGS}")

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def spec(self) -> SurveySpec:
        return self.contract.spec

    def sentinels_for(self, spec: ColumnSpec) -> tuple[float, ...]:
        if spec.sentinels is not None:
            return spec.sentinels
        if spec.name in ("ra", "dec") or not pa.types.is_floating(spec.arrow_type):
            return ()
        return self.sentinels

    @property
    def bands(self) -> list[str]:
        """The bands of the band-resolved columns mapped (the spec's order), else the spec's."""
        used = {self.contract.band(c.name) for c in self.columns}
        order = list(dict.fromkeys([*self.spec.bands, *self.spec.deep.bands]))
        return [b for b in order if b in used] or list(self.spec.bands)

    def output_schema(
        self,
        nside: int | None,
        ordering: str | None,
        extra: dict | None = None,
        joined: dict[str, pa.DataType] | None = None,
    ) -> pa.Schema:
        """Contract columns in contract order (``pixel`` after ``dec``; ``joined`` deep-catalog
        columns in their places), then extra columns.  A catalog records its HEALPix grid in the
        metadata, a deep catalog (``nside`` None) only its kind, bands and ``extra``."""
        types = {c.name: c.arrow_type for c in self.columns} | dict(joined or {})
        if nside is not None:
            types["pixel"] = pa.int64()
        contract = self.contract.types
        order = [n for n in contract if n in types]
        order += [n for n in types if n not in contract]
        if nside is not None:
            meta = schema.healpix_metadata(
                nside, ordering or "RING", kind=self.contract.kind, bands=self.bands, extra=extra
            )
        else:
            meta = {
                schema.META_KIND: self.contract.kind.encode(),
                schema.META_BANDS: json.dumps(self.bands).encode(),
            }
            for k, v in (extra or {}).items():
                meta[f"galray.{k}".encode()] = json.dumps(v).encode()
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


def _parse_column(name: Any, raw: Any, contract: Contract) -> ColumnSpec:
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
    require(
        convert is None or convert in CONVERSIONS,
        f"{where}.convert",
        f"unknown conversion {convert!r} (known: {', '.join(CONVERSIONS)})",
    )
    require(str(name) != "pixel", where, "pixel is computed from ra/dec; do not map it")
    arrow_type = contract.column_type(str(name), convert, dtype, where)
    return ColumnSpec(str(name), source, arrow_type, convert, sentinels)


def column_map_from_dict(
    data: dict[str, Any], spec: SurveySpec | None = None, kind: str = "catalog"
) -> ColumnMap:
    """Build a :class:`ColumnMap` from its YAML form, its names checked against the contract of
    ``spec`` (None: the ``riz`` preset) for a ``kind`` table; ConfigError names the field."""
    contract = Contract(spec if spec is not None else SurveySpec(), kind)
    _check_known(data, ("columns", "nside", "ordering", "sentinels"), "")
    columns = data.get("columns")
    require(isinstance(columns, dict) and columns, "columns", "required: output column -> source")
    specs = tuple(_parse_column(name, raw, contract) for name, raw in columns.items())
    sentinels = data.get("sentinels", list(DEFAULT_SENTINELS))
    nside = data.get("nside")
    ordering = data.get("ordering", "RING")
    require(isinstance(ordering, str), "ordering", f"must be one of {schema.ORDERINGS}")
    return ColumnMap(
        columns=specs,
        sentinels=_parse_sentinels(sentinels, "sentinels"),
        nside=None if nside is None else check_nside(nside, "nside"),
        ordering=ordering.upper(),
        contract=contract,
    )


def load_column_map(
    path: str | os.PathLike, spec: SurveySpec | None = None, kind: str = "catalog"
) -> ColumnMap:
    """Read a YAML column map (see :func:`column_map_from_dict`); a bad field raises ConfigError
    naming the file and the field."""
    data = load_yaml(path)
    try:
        return column_map_from_dict(data, spec, kind)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
