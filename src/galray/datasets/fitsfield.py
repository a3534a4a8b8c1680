"""Multi-band images in FITS: read a field, write one, and stream a large one tile by tile.

An image is held as float32 ``[C, H, W]`` (band, row ``y``, column ``x``) in a linear flux unit,
with one AB zeropoint per band: ``m = ZP - 2.5 log10(flux)``.  galray's simulator writes nJy per
pixel, whose AB zeropoint is 31.4.

On disk a field is one of:

* one image HDU per band (galray's own layout: an empty primary HDU, then one ``ImageHDU`` per
  band with ``EXTNAME`` = band name, ``MAGZERO`` and a celestial WCS), or
* a cube ``[C, H, W]`` in a single HDU (band names from ``BANDS = 'r,i,z'`` if present).

Zeropoints are read from ``MAGZERO``, ``ZEROPNT``, ``MAGZPT``, ``PHOTZP`` or ``ZP``, else derived
from HST's ``PHOTFLAM``/``PHOTPLAM`` (``ZP_AB = -2.5 log10 PHOTFLAM - 5 log10 PHOTPLAM - 2.408``);
a field without any keeps ``None`` and callers ask for one explicitly.

:class:`StreamingFieldWriter` writes a field of any size with memory bounded by one tile: the
file is laid out (headers and a sparse, zero-filled data area) before any pixel exists, and each
tile is written into place with ``os.pwrite``.  The file appears under its final name only when
complete (:func:`galray.io.atomic_path`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales

from galray.errors import DataError
from galray.io import atomic_path

FITS_BLOCK = 2880
ZEROPOINT_KEYS = ("MAGZERO", "ZEROPNT", "MAGZPT", "PHOTZP", "ZP")
NJY_ZEROPOINT = 31.4  # AB magnitude of 1 nJy
# keywords that describe an HDU's array layout, never copied from one header to another
_STRUCTURAL = {
    "SIMPLE",
    "XTENSION",
    "BITPIX",
    "NAXIS",
    "NAXIS1",
    "NAXIS2",
    "NAXIS3",
    "EXTEND",
    "PCOUNT",
    "GCOUNT",
    "EXTNAME",
    "BZERO",
    "BSCALE",
    "CHECKSUM",
    "DATASUM",
    "END",
}


@dataclass
class FieldImage:
    """A multi-band image and what is known about it.

    data: float32 ``[C, H, W]``.  bands: one name per channel.  zeropoints: AB zeropoint per band
    (None where unknown).  wcs_header: celestial WCS cards of the image (None if it has none).
    pixel_scale: arcsec per pixel (from the WCS, else ``PIXSCALE``), None if unknown.
    bunit: the pixel unit (``BUNIT``), if given.  path: the file it came from.
    """

    data: np.ndarray
    bands: list[str]
    zeropoints: list[float | None]
    wcs_header: fits.Header | None = None
    pixel_scale: float | None = None
    bunit: str | None = None
    path: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.data.shape[1]), int(self.data.shape[2])

    @property
    def wcs(self) -> WCS | None:
        return None if self.wcs_header is None else WCS(self.wcs_header)

    def area_arcmin2(self, margin: int = 0) -> float:
        """Sky area of the image (less ``margin`` pixels on every side) in arcmin²."""
        if self.pixel_scale is None:
            raise DataError(f"{self.path or 'image'}: pixel scale unknown (no WCS or PIXSCALE)")
        h, w = self.shape
        return max(h - 2 * margin, 0) * max(w - 2 * margin, 0) * (self.pixel_scale / 60.0) ** 2


# --------------------------------------------------------------------------- reading


def zeropoint_from_header(header: fits.Header) -> float | None:
    """AB zeropoint from the usual keywords (see the module docstring), or None."""
    for key in ZEROPOINT_KEYS:
        value = header.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    flam, plam = header.get("PHOTFLAM"), header.get("PHOTPLAM")
    if isinstance(flam, int | float) and isinstance(plam, int | float) and flam > 0 and plam > 0:
        return float(-2.5 * np.log10(flam) - 5.0 * np.log10(plam) - 2.408)
    return None


def _celestial_header(header: fits.Header) -> tuple[fits.Header | None, float | None]:
    try:
        wcs = WCS(header, naxis=2)
    except Exception:  # astropy raises many kinds for broken WCS cards: treat as none
        wcs = None
    if wcs is not None and wcs.has_celestial:
        celestial = wcs.celestial
        scale = float(np.mean(proj_plane_pixel_scales(celestial)) * 3600.0)
        return celestial.to_header(), scale
    for key in ("PIXSCALE", "PIXSCAL1", "PIXSCAL"):
        value = header.get(key)
        if isinstance(value, int | float) and value > 0:
            return None, float(value)
    return None, None


def read_field(
    path: str | os.PathLike,
    *,
    bands: Sequence[str] | int | None = None,
    allow_nonfinite: bool = False,
) -> FieldImage:
    """Read a multi-band field (one HDU per band, or a cube).

    bands: names of the HDUs (``EXTNAME``/``FILTER``) to read, in that order; or the number of
    bands the file must hold; None reads every band.  Non-finite pixels raise DataError naming
    the file and band unless ``allow_nonfinite`` (they are then set to 0).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with fits.open(path, memmap=True) as hdul:
            planes, headers, names = _image_planes(hdul, path)
            if isinstance(bands, Sequence) and not isinstance(bands, str):
                missing = [b for b in bands if b not in names]
                if missing:
                    raise DataError(f"{path}: no band(s) {missing}; it holds {names}")
                order = [names.index(b) for b in bands]
                planes = [planes[i] for i in order]
                headers = [headers[i] for i in order]
                names = list(bands)
            elif isinstance(bands, int) and len(planes) != bands:
                raise DataError(f"{path}: holds {len(planes)} band(s) {names}, expected {bands}")
            data = np.stack([np.asarray(p, dtype=np.float32) for p in planes])
    except OSError as exc:
        raise DataError(f"{path}: not a readable FITS file ({exc})") from exc
    bad = ~np.isfinite(data)
    if bad.any():
        if not allow_nonfinite:
            per_band = {names[c]: int(bad[c].sum()) for c in range(len(names)) if bad[c].any()}
            raise DataError(
                f"{path}: non-finite pixels (NaN/inf) in band(s) {per_band}; crop or fill them"
            )
        data[bad] = 0.0
    wcs_header, pixel_scale = _celestial_header(headers[0])
    return FieldImage(
        data=np.ascontiguousarray(data),
        bands=names,
        zeropoints=[zeropoint_from_header(h) for h in headers],
        wcs_header=wcs_header,
        pixel_scale=pixel_scale,
        bunit=headers[0].get("BUNIT"),
        path=str(path),
    )


def _image_planes(hdul: fits.HDUList, path: Path):
    """``(planes, headers, names)`` of the image bands of an open FITS file."""
    hdus = [h for h in hdul if h.is_image and h.data is not None and h.data.ndim >= 2]
    if not hdus:
        raise DataError(f"{path}: holds no image data")
    cubes = [h for h in hdus if h.data.ndim == 3]
    if cubes:
        if len(hdus) != 1:
            raise DataError(f"{path}: mixes a cube with other images; give one layout")
        cube = cubes[0]
        count = cube.data.shape[0]
        listed = [s.strip() for s in str(cube.header.get("BANDS", "")).split(",") if s.strip()]
        names = listed if len(listed) == count else [f"b{c}" for c in range(count)]
        return [cube.data[c] for c in range(count)], [cube.header] * count, names
    if any(h.data.ndim != 2 for h in hdus):
        raise DataError(f"{path}: image HDUs must be 2-D (or one 3-D cube)")
    shapes = {h.data.shape for h in hdus}
    if len(shapes) != 1:
        raise DataError(f"{path}: bands differ in shape {sorted(shapes)}")
    names = []
    for k, h in enumerate(hdus):
        name = str(h.header.get("EXTNAME") or h.header.get("FILTER") or f"b{k}")
        names.append(name if name not in names else f"{name}_{k}")
    return [h.data for h in hdus], [h.header for h in hdus], names


# --------------------------------------------------------------------------- writing


def band_header(
    band: str,
    zeropoint: float | None,
    wcs_header: fits.Header | None,
    bunit: str | None,
    extra: dict | None = None,
) -> fits.Header:
    """The non-structural cards of one band's image HDU."""
    header = fits.Header()
    header["EXTNAME"] = band
    header["FILTER"] = band
    if bunit:
        header["BUNIT"] = bunit
    if zeropoint is not None:
        header["MAGZERO"] = (float(zeropoint), "AB mag = MAGZERO - 2.5 log10(pixel value)")
    if wcs_header is not None:
        header.extend([c for c in wcs_header.cards if c.keyword not in _STRUCTURAL], update=True)
    for key, value in (extra or {}).items():
        header[key] = value
    return header


def write_field(path: str | os.PathLike, image: FieldImage, *, primary: dict | None = None) -> Path:
    """Write ``image`` atomically as an empty primary HDU plus one float32 HDU per band."""
    path = Path(path)
    hdus = [fits.PrimaryHDU(header=_primary_header(primary))]
    for c, band in enumerate(image.bands):
        header = band_header(band, image.zeropoints[c], image.wcs_header, image.bunit)
        hdus.append(fits.ImageHDU(np.asarray(image.data[c], dtype=np.float32), header=header))
    with atomic_path(path) as tmp:
        fits.HDUList(hdus).writeto(tmp, output_verify="exception")
    return path


def _primary_header(cards: dict | None) -> fits.Header:
    header = fits.Header()
    for key, value in (cards or {}).items():
        header[key] = value
    return header


def _padded(nbytes: int) -> int:
    return -(-nbytes // FITS_BLOCK) * FITS_BLOCK


class StreamingFieldWriter:
    """Write a ``[C, height, width]`` float32 field tile by tile, in any order.

    Use as a context manager::

        with StreamingFieldWriter(path, h, w, bands, zeropoints, wcs_header) as out:
            out.write_tile(y0, x0, tile)  # tile [C, th, tw]

    The layout (galray's one-HDU-per-band) is fixed up front, so a tile is written with one
    ``pwrite`` per band and row: memory stays that of a tile whatever the field's size.  Pixels
    never written stay 0.  The file is renamed to ``path`` when the block exits cleanly; on an
    exception nothing is left behind.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        height: int,
        width: int,
        bands: Sequence[str],
        zeropoints: Sequence[float | None] | None = None,
        wcs_header: fits.Header | None = None,
        *,
        bunit: str | None = None,
        primary: dict | None = None,
    ):
        if height < 1 or width < 1:
            raise ValueError(f"field size must be positive, got {height}x{width}")
        self.path = Path(path)
        self.height, self.width = int(height), int(width)
        self.bands = list(bands)
        zeropoints = list(zeropoints) if zeropoints is not None else [None] * len(self.bands)
        self._headers = [_structural_primary(primary)]
        for c, band in enumerate(self.bands):
            cards = band_header(band, zeropoints[c], wcs_header, bunit)
            self._headers.append(_structural_image(self.height, self.width, cards))
        self._offsets: list[int] = []  # byte offset of each band's data
        self._layout: list[tuple[int, bytes]] = []  # (offset, header bytes)
        offset = 0
        for k, header in enumerate(self._headers):
            raw = header.tostring(padding=True).encode("ascii")
            self._layout.append((offset, raw))
            offset += len(raw)
            if k > 0:
                self._offsets.append(offset)
                offset += _padded(self.height * self.width * 4)
        self.size = offset
        self._stack: contextlib.ExitStack | None = None
        self._fd: int | None = None
        self.tiles_written = 0

    def __enter__(self) -> StreamingFieldWriter:
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.path))
        self._fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self._stack.callback(os.close, self._fd)
        os.ftruncate(self._fd, self.size)  # sparse: the data area reads as zeros until written
        for offset, raw in self._layout:
            os.pwrite(self._fd, raw, offset)
        return self

    def write_tile(self, y0: int, x0: int, tile: np.ndarray) -> None:
        """Write ``tile`` ``[C, th, tw]`` with its top-left pixel at row ``y0``, column ``x0``."""
        if self._fd is None:
            raise RuntimeError("StreamingFieldWriter.write_tile outside its with-block")
        tile = np.asarray(tile)
        c, th, tw = tile.shape
        if c != len(self.bands) or y0 < 0 or x0 < 0:
            raise ValueError(f"tile of shape {tile.shape} at ({y0}, {x0}) does not fit")
        if y0 + th > self.height or x0 + tw > self.width:
            raise ValueError(
                f"tile {th}x{tw} at ({y0}, {x0}) overflows the {self.height}x{self.width} field"
            )
        big_endian = tile.astype(">f4", copy=False)
        for band in range(c):
            base = self._offsets[band]
            if x0 == 0 and tw == self.width:  # whole rows: one contiguous write
                os.pwrite(self._fd, big_endian[band].tobytes(), base + y0 * self.width * 4)
                continue
            for r in range(th):
                offset = base + ((y0 + r) * self.width + x0) * 4
                os.pwrite(self._fd, big_endian[band, r].tobytes(), offset)
        self.tiles_written += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        stack, self._stack = self._stack, None
        try:
            if exc_type is None:
                os.fsync(self._fd)
        finally:
            self._fd = None
            stack.__exit__(exc_type, exc, tb)


def _structural_primary(cards: dict | None) -> fits.Header:
    header = fits.Header()
    header["SIMPLE"] = True
    header["BITPIX"] = 8
    header["NAXIS"] = 0
    header["EXTEND"] = True
    for key, value in (cards or {}).items():
        header[key] = value
    return header


def _structural_image(height: int, width: int, cards: fits.Header) -> fits.Header:
    header = fits.Header()
    header["XTENSION"] = ("IMAGE", "image extension")
    header["BITPIX"] = (-32, "IEEE single precision")
    header["NAXIS"] = 2
    header["NAXIS1"] = width
    header["NAXIS2"] = height
    header["PCOUNT"] = 0
    header["GCOUNT"] = 1
    header.extend(cards.cards, update=True)
    return header
