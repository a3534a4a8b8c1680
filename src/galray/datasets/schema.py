"""The data contracts every galray component reads and writes.

Conventions
-----------
* Bands are named by a single letter; the emulator works on ``BANDS = ("r", "i", "z")``.
* Magnitudes are AB.  Fluxes are in units with zeropoint ``FLUX_ZEROPOINT = 30``:
  ``mag = 30 - 2.5 log10(flux)`` (so a flux of 1 is mag 30; DES-style fluxes use the same ZP).
* Angles: ``ra``/``dec`` in degrees, PSF FWHM and galaxy half-light radius in arcsec.
* HEALPix: every table that carries a ``pixel`` column records ``nside`` and ``ordering``
  (``"RING"`` or ``"NESTED"``) in its Parquet schema metadata under :data:`META_NSIDE` and
  :data:`META_ORDERING`.

Injection catalog (Balrog style), one row per injection::

    id          int64    unique injection id
    deep_id     int64    id of the deep-field galaxy that was injected
    ra, dec     float64  deg
    pixel       int64    HEALPix pixel of (ra, dec)
    true_mag_b  float32  true AB magnitude, b in BANDS
    true_size   float32  true half-light radius, arcsec
    obs_flux_b  float32  measured flux (ZP 30); NaN when not detected
    obs_mag_b   float32  measured AB magnitude; NaN when not detected or flux <= 0
    detected    bool

and, in synthetic surveys only (:data:`SYNTHETIC_FIELDS`)::

    p_detect    float32  the probability the detection was drawn with

Condition-map table, one row per footprint pixel (sorted by ``pixel``)::

    pixel        int64
    psf_fwhm_b   float32  PSF FWHM, arcsec
    depth_b      float32  10-sigma point-source limiting AB magnitude
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import pyarrow as pa

BANDS: tuple[str, ...] = ("r", "i", "z")
FLUX_ZEROPOINT = 30.0
CONDITION_QUANTITIES: tuple[str, ...] = ("psf_fwhm", "depth")
ORDERINGS = ("RING", "NESTED")

META_NSIDE = b"galray.nside"
META_ORDERING = b"galray.ordering"
META_BANDS = b"galray.bands"
META_KIND = b"galray.kind"


def true_mag(band: str) -> str:
    return f"true_mag_{band}"


def obs_mag(band: str) -> str:
    return f"obs_mag_{band}"


def obs_flux(band: str) -> str:
    return f"obs_flux_{band}"


def condition(quantity: str, band: str) -> str:
    return f"{quantity}_{band}"


def condition_columns(bands: Sequence[str] = BANDS) -> list[str]:
    """Condition-map columns, ordered band-major: psf_fwhm_r, depth_r, psf_fwhm_i, ..."""
    return [condition(q, b) for b in bands for q in CONDITION_QUANTITIES]


def mag_to_flux(mag):
    """AB magnitude -> flux at :data:`FLUX_ZEROPOINT`."""
    return 10.0 ** (-0.4 * (mag - FLUX_ZEROPOINT))


def flux_to_mag(flux):
    """Flux at :data:`FLUX_ZEROPOINT` -> AB magnitude (NaN for flux <= 0)."""
    import numpy as np

    flux = np.asarray(flux, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(
            flux > 0, FLUX_ZEROPOINT - 2.5 * np.log10(np.where(flux > 0, flux, 1)), np.nan
        )


INJECTION_FIELDS: dict[str, pa.DataType] = {
    "id": pa.int64(),
    "deep_id": pa.int64(),
    "ra": pa.float64(),
    "dec": pa.float64(),
    "pixel": pa.int64(),
    **{true_mag(b): pa.float32() for b in BANDS},
    "true_size": pa.float32(),
    **{obs_flux(b): pa.float32() for b in BANDS},
    **{obs_mag(b): pa.float32() for b in BANDS},
    "detected": pa.bool_(),
}

# Columns only a synthetic survey can have (truth a real injection pipeline does not record).
SYNTHETIC_FIELDS: dict[str, pa.DataType] = {"p_detect": pa.float32()}

DEEP_FIELDS: dict[str, pa.DataType] = {
    "id": pa.int64(),
    **{true_mag(b): pa.float32() for b in BANDS},
    "true_size": pa.float32(),
}


def healpix_metadata(
    nside: int, ordering: str, *, kind: str, bands: Iterable[str] = BANDS, extra: dict | None = None
) -> dict[bytes, bytes]:
    """Schema metadata for a table with a ``pixel`` column."""
    meta = {
        META_NSIDE: str(int(nside)).encode(),
        META_ORDERING: ordering.upper().encode(),
        META_BANDS: json.dumps(list(bands)).encode(),
        META_KIND: kind.encode(),
    }
    for k, v in (extra or {}).items():
        meta[f"galray.{k}".encode()] = json.dumps(v).encode()
    return meta


def read_healpix_metadata(schema: pa.Schema, source: str) -> tuple[int, str]:
    """Return ``(nside, ordering)`` recorded in a table's schema; DataError naming ``source``."""
    from galray.errors import DataError

    meta = schema.metadata or {}
    if META_NSIDE not in meta or META_ORDERING not in meta:
        raise DataError(
            f"{source}: no HEALPix nside/ordering in the Parquet metadata "
            f"(keys {META_NSIDE.decode()!r}, {META_ORDERING.decode()!r}); "
            "write it with galray ingest or galray simulate"
        )
    raw = meta[META_NSIDE].decode(errors="replace")
    nside = int(raw) if raw.strip().isdigit() else 0
    if nside < 1 or nside & (nside - 1) or nside > 2**29:
        raise DataError(
            f"{source}: HEALPix nside {raw!r} (metadata key {META_NSIDE.decode()!r}) is not a "
            "power of two in [1, 2**29]"
        )
    ordering = meta[META_ORDERING].decode(errors="replace").upper()
    if ordering not in ORDERINGS:
        raise DataError(f"{source}: HEALPix ordering {ordering!r} is not one of {ORDERINGS}")
    return nside, ordering
