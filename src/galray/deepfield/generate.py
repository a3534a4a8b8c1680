"""Generate a deep field of any size with Ray tasks, streamed tile by tile into a FITS file.

The noise array is cut into overlapping tiles (:mod:`galray.deepfield.noise`); each tile is a Ray
task that builds (once per worker process) the generator, draws the tile's noise window itself
from the seed, and returns only its kept pixels in physical units.  The driver writes each
finished tile into a pre-sized FITS file (:class:`~galray.datasets.fitsfield.
StreamingFieldWriter`) and keeps at most ``max_in_flight`` tiles outstanding, so the memory
used is a few tiles whatever the field's size.  The result equals generating the whole field in
one pass, for any tile size.

The file appears at ``out`` only once complete (written under a hidden temporary name, renamed at
the end), so a killed run leaves any earlier file as it was.  An existing ``out`` is replaced only
with ``overwrite`` and only if galray generated it (its primary header's ``ORIGIN``); anything
else -- a real image, a directory -- is refused.  Temporaries of killed runs writing the same
``out`` are removed.

Provenance: the primary header records what made the field (:func:`provenance_cards`) --
``GRMODEL`` the model's registered name (else its URI), ``GRMVER`` its registry version,
``GRMALIAS`` the alias it was named by, ``GRRUNID`` the MLflow run that trained it, ``GRMURI`` the
URI as given, ``GRVERS`` galray's version and ``GRSEED`` the noise seed.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.wcs import WCS

from galray.datasets.fitsfield import StreamingFieldWriter
from galray.deepfield.bundle import DeepFieldModel
from galray.deepfield.noise import Tile
from galray.errors import ConfigError, OutputExistsError

_WORKER_MODELS: dict[str, DeepFieldModel] = {}  # per Ray worker process: token -> model
ORIGIN = "galray generate deepfield"  # primary header ORIGIN of every field generated


@dataclass
class GenerateResult:
    path: str
    height: int
    width: int
    tiles: int
    seconds: float
    halo: tuple[int, int]

    @property
    def pixels_per_second(self) -> float:
        return self.height * self.width / max(self.seconds, 1e-9)


def check_field_output(out: str | Path, overwrite: bool = False, log=print) -> Path:
    """Refuse an ``out`` that generation must not replace (OutputExistsError naming it): a
    directory, or an existing file unless ``overwrite`` and galray generated it.  Removes the
    temporaries (``.NAME.tmp-XXXXXXXX``) that killed runs writing ``out`` left."""
    from astropy.io import fits

    out = Path(out)
    if out.is_dir():
        raise OutputExistsError(f"{out}: is a directory; --out must name a FITS file")
    if out.exists():
        if not overwrite:
            raise OutputExistsError(f"{out}: exists; pass --overwrite to replace it")
        try:
            origin = fits.getheader(out, 0).get("ORIGIN")
        except (OSError, ValueError):
            origin = None
        if origin != ORIGIN:
            raise OutputExistsError(
                f"{out}: not a deep field galray generated (FITS ORIGIN {origin!r}); "
                "--overwrite replaces only those: choose another --out"
            )
    pattern = re.compile(rf"\.{re.escape(out.name)}\.tmp-[0-9a-f]{{8}}")
    parent = out.parent if out.parent.is_dir() else None
    stale = (
        [p for p in parent.iterdir() if pattern.fullmatch(p.name) and p.is_file()] if parent else []
    )
    for p in stale:
        p.unlink(missing_ok=True)
    if stale and log is not None:
        log(f"{out}: removed {len(stale)} temporary file(s) left by a killed run")
    return out


def output_wcs(model: DeepFieldModel, height: int, width: int):
    """A TAN WCS for a generated field: the training image's pixel scale and sky centre (the
    sky position of a generated field means nothing; the scale sets areas and sizes)."""
    if model.pixel_scale is None:
        return None
    ra, dec = model.center if model.center is not None else (0.0, 0.0)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [(width + 1) / 2.0, (height + 1) / 2.0]
    wcs.wcs.cdelt = [-model.pixel_scale / 3600.0, model.pixel_scale / 3600.0]
    wcs.wcs.cunit = ["deg", "deg"]
    return wcs.to_header()


def provenance_cards(model: DeepFieldModel, provenance: dict | None, seed: int) -> dict:
    """Primary-header cards (keyword -> (value, comment)) recording the model, galray's version
    and the seed.  ``provenance``: :func:`galray.registry.model_provenance` of the model's URI
    (None: only what the bundle itself recorded)."""
    from importlib.metadata import PackageNotFoundError, version

    prov = dict(provenance or {})
    run_id = prov.get("run_id") or model.info.get("run_id")
    uri = prov.get("uri") or model.info.get("model_uri")
    try:
        galray_version = version("galray")
    except PackageNotFoundError:
        galray_version = None
    cards = {
        "GRMODEL": (prov.get("registered_name") or uri, "model: registered name, else its URI"),
        "GRMVER": (prov.get("version"), "model version in the MLflow registry"),
        "GRMALIAS": (prov.get("alias"), "registry alias the model was named by"),
        "GRRUNID": (run_id, "MLflow run that trained the model"),
        "GRMURI": (uri, "model URI as given"),
        "GRVERS": (galray_version, "galray version that generated this field"),
        "GRSEED": (seed, "noise seed"),
    }
    return {
        key: (str(v) if key != "GRSEED" else int(v), c)
        for key, (v, c) in cards.items()
        if v is not None
    }


def _payload(model: DeepFieldModel) -> dict:
    state = {k: v.detach().cpu().contiguous() for k, v in model.generator.state_dict().items()}
    return {"token": uuid.uuid4().hex, "meta": model.meta(), "state": state}


def _tile_task(payload_box: list, tile: Tile, seed: int, use_gpu: bool) -> np.ndarray:
    """Ray task body: the physical pixels of ``tile``.  ``payload_box`` holds the ObjectRef of
    the model payload inside a list, so it is fetched only on a worker's first tile."""
    import ray
    import torch

    ref = payload_box[0]
    key = ref.hex()
    model = _WORKER_MODELS.get(key)
    if model is None:
        payload = ray.get(ref)
        model = DeepFieldModel.from_meta(payload["meta"], payload["state"])
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        _WORKER_MODELS.clear()  # one model per worker process
        _WORKER_MODELS[key] = model.to(device)
    return model.tile(tile, seed)


def generate_fits(
    model: DeepFieldModel,
    out: str | Path,
    height: int,
    width: int,
    *,
    seed: int = 0,
    tile: int = 1024,
    max_in_flight: int | None = None,
    cpus_per_task: float = 1.0,
    gpus_per_task: float = 0.0,
    overwrite: bool = False,
    provenance: dict | None = None,
    log=print,
) -> GenerateResult:
    """Generate a ``height x width`` field with Ray tasks and stream it into the FITS file ``out``
    (one HDU per band, WCS, zeropoints).  Ray must be initialised (or is started locally).
    ``out`` must be new, or a field galray generated with ``overwrite``
    (:func:`check_field_output`).  provenance: the model's registry entry
    (:func:`galray.registry.model_provenance`), recorded in the primary header
    (:func:`provenance_cards`)."""
    import ray

    check_field_output(out, overwrite, log)
    if height < 1 or width < 1:
        raise ConfigError(f"--size: must be positive, got {height}x{width}")
    s = model.upsampling
    if tile < s or tile % s:
        raise ConfigError(f"--tile: must be a positive multiple of {s} pixels, got {tile}")
    if not ray.is_initialized():
        ray.init()
    tiles = model.plan(height, width, tile)
    if max_in_flight is None:
        cpus = ray.cluster_resources().get("CPU", 1.0)
        max_in_flight = max(2, int(2 * cpus / max(cpus_per_task, 1e-3)))
    task = ray.remote(_tile_task).options(num_cpus=cpus_per_task, num_gpus=gpus_per_task)
    payload_box = [ray.put(_payload(model))]
    primary = {
        "ORIGIN": ORIGIN,
        **provenance_cards(model, provenance, seed),
        "GRTILE": (tile, "tile side, pixels"),
        "GRHALO": (f"{model.halo[0]},{model.halo[1]}", "noise halo cells before,after"),
    }
    if model.pixel_scale is not None:
        primary["PIXSCALE"] = (model.pixel_scale, "arcsec per pixel")
    t0 = time.perf_counter()
    with StreamingFieldWriter(
        out,
        height,
        width,
        model.bands,
        model.zeropoints,
        output_wcs(model, height, width),
        bunit=model.bunit,
        primary=primary,
    ) as writer:
        pending: dict = {}
        queue = list(reversed(tiles))
        done_tiles = 0
        while queue or pending:
            while queue and len(pending) < max_in_flight:
                t = queue.pop()
                pending[task.remote(payload_box, t, seed, gpus_per_task > 0)] = t
            ready, _ = ray.wait(list(pending), num_returns=1)
            t = pending.pop(ready[0])
            writer.write_tile(t.y0, t.x0, ray.get(ready[0]))
            done_tiles += 1
            if log is not None and (done_tiles % max(1, len(tiles) // 10) == 0):
                log(f"  {done_tiles}/{len(tiles)} tiles")
    seconds = time.perf_counter() - t0
    return GenerateResult(str(out), height, width, len(tiles), seconds, model.halo)
