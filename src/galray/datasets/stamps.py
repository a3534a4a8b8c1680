"""Galaxy postage stamps with known truth, rendered with GalSim: the training data of the stamp
generator (``galray simulate stamps``).

The population (units: arcsec, AB magnitudes, fluxes with zeropoint 30, ``flux = 10^(0.4 (30 -
mag))``), every draw deterministic for ``(seed, id)`` whatever the shard layout:

* ``mag``: total magnitude from number counts ``dN/dm ∝ 10^(0.3 m)`` between ``mag_range``.
* ``z``: a redshift-like parameter, ``2 Beta(2, 4)`` stretched by ``10^(0.1 (mag - 22))``
  (fainter galaxies lie further away), clipped to [0.02, 2].
* Bulge fraction ``B/T = clip(0.75 exp(-1.5 z) u, 0, 0.9)``, ``u ~ U(0.6, 1.2)``: nearby galaxies
  are bulgier.  The bulge is a Sersic profile, ``n ~ U(2.5, 4.5)`` rounded to 0.1 (GalSim builds
  its profile tables once per index), half-light radius ``U(0.25, 0.5)`` of the disk's, its
  ellipticity ``U(0, 0.5)`` of the disk's and its angle the disk's ``+ N(0, 15°)``.
* The disk is exponential: half-light radius ``disk_hlr`` log-normal around
  ``0.7" 10^(-0.1 (mag - 22))`` (0.12 dex), clipped to [0.25", 1.6"]; ellipticity
  ``e = |e1 + i e2|`` with ``e1, e2 ~ N(0, 0.25)``, below 0.7; a uniform angle.
* Star-forming knots (``galsim.RandomKnots``, sheared with the disk): a fraction
  ``0.45 (1 - exp(-2 z)) u'`` of the disk's flux, ``u' ~ U(0.5, 1)``, in ``Poisson(8 + 20 z)``
  (at least 3) knots spread like the disk, each a Gaussian of sigma 0.05": further galaxies are
  clumpier.
* PSF: Moffat, ``beta`` 3, FWHM ``U(psf_fwhm_range)`` per stamp.  Noise: white Gaussian,
  ``noise_sigma ~ U(noise_range)`` per pixel (sky-dominated; no source Poisson noise).

The conditions a generator is trained on (:data:`PROPERTIES`): ``mag``, ``hlr`` -- the half-light
radius *measured* on the intrinsic image (pre-PSF; ``galsim.Image.calculateHLR``), so it is the
size of the whole bulge + disk + knots galaxy -- ``z`` and ``ellipticity`` (the disk's ``e``).

Images (``size`` x ``size`` pixels of ``pixel_scale`` arcsec, centred on the stamp's central
pixel corner, as GalSim centres even-sized images):

* ``intrinsic``: the galaxy without PSF, integrated over each pixel (:func:`draw_intrinsic`);
* ``psf``: the PSF sampled at pixel centres (``method='no_pixel'``), centred on pixel
  ``(size // 2, size // 2)``, normalised to sum 1, so that ``stamp ≈ intrinsic ⊛ psf + noise``
  with the discrete convolution of :func:`convolve_same` (the pixel goes with the galaxy);
* ``stamp``: galaxy ⊗ PSF ⊗ pixel plus the noise.

Layout of the output directory: ``stamps/part-NNNNN.parquet`` (sharded; image columns are Arrow
``fixed_shape_tensor`` columns of float32, read by Ray Data as ``[rows, size, size]`` arrays and
by pyarrow as :class:`pyarrow.FixedShapeTensorArray`), and ``simulation.json`` (the config,
columns and units).  Rows with ``id % 10 == 9`` form the test split, ``id % 10 == 8`` the
validation split (:func:`split_of`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from galray.config import require, to_dict
from galray.datasets.progress import ProgressFactory, counting
from galray.datasets.psf import psf_image
from galray.errors import DataError
from galray.io import atomic_directory, parquet_files, read_parquet, write_json, write_parquet

ZEROPOINT = 30.0  # AB magnitude of a flux of 1
PROPERTIES = ("mag", "hlr", "z", "ellipticity")  # the conditions, in this order
SERSIC_PROPERTIES = ("mag", "flux", "sersic_n", "hlr", "g1", "g2")  # population == "sersic"
IMAGE_COLUMNS = ("stamp", "psf", "intrinsic")
SPLITS = ("train", "val", "test")
KNOT_SIGMA = 0.05  # arcsec: the Gaussian size of a star-forming knot
OVERSAMPLE = 4  # sub-pixels per pixel side when integrating the intrinsic image
STAMPS_DIR = "stamps"
MANIFEST = "simulation.json"
UNITS = {
    "mag": "AB mag (zeropoint 30)",
    "flux": "counts (zeropoint 30)",
    "hlr": "arcsec (intrinsic image)",
    "disk_hlr": "arcsec",
    "bulge_hlr": "arcsec",
    "psf_fwhm": "arcsec",
    "noise_sigma": "counts per pixel",
    "snr": "optimal (matched-filter) signal-to-noise",
    "disk_angle": "deg",
    "bulge_angle": "deg",
}


@dataclass
class StampSimConfig:
    """What ``galray simulate stamps`` draws (the population is in the module docstring).

    n: stamps.  size: pixels per side (even, >= 16).  pixel_scale: arcsec.  mag_range: AB
    magnitudes.  psf_fwhm_range: Moffat FWHM, arcsec.  psf_beta: the Moffat PSF's beta.
    noise_range: per-pixel sigma, counts.  intrinsic: also store the noiseless pre-PSF image.
    shard_rows: stamps per Parquet file.  seed: every random draw (each galaxy from its own
    stream, so the stamps do not depend on sharding).  population: ``rich`` (bulge + disk +
    knots, above) or ``sersic`` (one sheared Sersic profile, :mod:`galray.datasets.sersic`: the
    measurement yardstick's population; magnitudes uniform in ``mag_range``).  sersic_n_range,
    hlr_range (arcsec, log-uniform), shear_sigma: the ``sersic`` population's index, size and
    shear.
    """

    n: int = 2000
    size: int = 48
    pixel_scale: float = 0.15
    mag_range: tuple[float, float] = (20.0, 23.5)
    psf_fwhm_range: tuple[float, float] = (0.6, 1.0)
    psf_beta: float = 3.0
    noise_range: tuple[float, float] = (1.0, 3.0)
    intrinsic: bool = True
    shard_rows: int = 2000
    seed: int = 0
    population: str = "rich"
    sersic_n_range: tuple[float, float] = (0.5, 4.0)
    hlr_range: tuple[float, float] = (0.3, 1.0)
    shear_sigma: float = 0.2

    def __post_init__(self) -> None:
        require(self.n >= 1, "n", f"must be >= 1, got {self.n}")
        require(
            self.population in POPULATIONS,
            "population",
            f"must be one of {', '.join(POPULATIONS)}, got {self.population!r}",
        )
        require(
            self.size >= 16 and self.size % 2 == 0,
            "size",
            f"must be an even number of pixels >= 16, got {self.size}",
        )
        require(self.pixel_scale > 0, "pixel_scale", f"must be positive, got {self.pixel_scale}")
        for name in ("mag_range", "psf_fwhm_range", "noise_range", "sersic_n_range", "hlr_range"):
            lo, hi = (float(v) for v in getattr(self, name))
            require(0 < lo <= hi, name, f"must be two numbers 0 < low <= high, got ({lo}, {hi})")
            setattr(self, name, (lo, hi))
        require(self.psf_beta > 1.1, "psf_beta", f"must be > 1.1, got {self.psf_beta}")
        require(self.shard_rows >= 1, "shard_rows", f"must be >= 1, got {self.shard_rows}")
        lo, hi = self.sersic_n_range
        require(0.3 <= lo and hi <= 6.2, "sersic_n_range", "GalSim's Sersic takes 0.3 <= n <= 6.2")
        require(0 <= self.shear_sigma < 0.5, "shear_sigma", "must be in [0, 0.5)")


# what ``galray simulate stamps --population sersic`` changes from the defaults above: smaller
# stamps at a coarser scale (the yardstick's CNN trains on them on a CPU), and magnitudes that
# put the optimal S/N between ~5 and ~500
SERSIC_DEFAULTS = {"size": 32, "pixel_scale": 0.2, "mag_range": (20.5, 24.0), "intrinsic": False}
POPULATIONS = ("rich", "sersic")


def flux_of(mag) -> np.ndarray:
    """Counts of an AB magnitude (zeropoint 30)."""
    return 10.0 ** (0.4 * (ZEROPOINT - np.asarray(mag, dtype=np.float64)))


def split_of(ids) -> np.ndarray:
    """``"train"``, ``"val"`` (``id % 10 == 8``) or ``"test"`` (``id % 10 == 9``) per id."""
    rest = np.asarray(ids) % 10
    return np.where(rest == 9, "test", np.where(rest == 8, "val", "train"))


def _rng(seed: int, galaxy: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, 0x57A3, galaxy]))


def draw_population(ids: np.ndarray, cfg: StampSimConfig) -> dict[str, np.ndarray]:
    """The parameters of galaxies ``ids`` (each from its own stream: independent of sharding)."""
    keys = (
        "mag z bulge_fraction bulge_n bulge_hlr_ratio bulge_e_ratio bulge_dangle disk_hlr "
        "e1 e2 disk_angle knot_fraction n_knots psf_fwhm noise_sigma knot_seed noise_seed"
    ).split()
    out = {k: np.empty(len(ids)) for k in keys}
    a = 0.3 * math.log(10.0)
    lo, hi = cfg.mag_range
    for row, galaxy in enumerate(ids):
        r = _rng(cfg.seed, int(galaxy))
        u = r.random(16)
        mag = math.log(math.exp(a * lo) + u[0] * (math.exp(a * hi) - math.exp(a * lo))) / a
        z = float(np.clip(2.0 * r.beta(2.0, 4.0) * 10 ** (0.1 * (mag - 22.0)), 0.02, 2.0))
        e1, e2 = r.normal(0.0, 0.25, 2)
        while math.hypot(e1, e2) >= 0.7:
            e1, e2 = r.normal(0.0, 0.25, 2)
        values = {
            "mag": mag,
            "z": z,
            "bulge_fraction": min(0.75 * math.exp(-1.5 * z) * (0.6 + 0.6 * u[1]), 0.9),
            "bulge_n": round(2.5 + 2.0 * u[2], 1),
            "bulge_hlr_ratio": 0.25 + 0.25 * u[3],
            "bulge_e_ratio": 0.5 * u[4],
            "bulge_dangle": r.normal(0.0, 15.0),
            "disk_hlr": float(
                np.clip(0.7 * 10 ** (-0.1 * (mag - 22.0) + 0.12 * r.normal()), 0.25, 1.6)
            ),
            "e1": e1,
            "e2": e2,
            "disk_angle": 180.0 * u[5],
            "knot_fraction": 0.45 * (1.0 - math.exp(-2.0 * z)) * (0.5 + 0.5 * u[6]),
            "n_knots": max(3, int(r.poisson(8.0 + 20.0 * z))),
            "psf_fwhm": cfg.psf_fwhm_range[0] + u[7] * np.subtract(*cfg.psf_fwhm_range[::-1]),
            "noise_sigma": cfg.noise_range[0] + u[8] * np.subtract(*cfg.noise_range[::-1]),
            "knot_seed": int(r.integers(1, 2**31 - 1)),
            "noise_seed": int(r.integers(1, 2**31 - 1)),
        }
        for k, v in values.items():
            out[k][row] = v
    out["ellipticity"] = np.hypot(out["e1"], out["e2"])
    return out


def galaxy_profile(p: dict[str, float], flux: float):
    """The intrinsic GalSim profile of one galaxy's parameters ``p`` (see :func:`draw_population`)."""
    import galsim

    bt, fk = p["bulge_fraction"], p["knot_fraction"]
    e = math.hypot(p["e1"], p["e2"])
    disk_shear = galsim.Shear(e=e, beta=p["disk_angle"] * galsim.degrees)
    disk = galsim.Exponential(half_light_radius=p["disk_hlr"], flux=flux * (1 - bt) * (1 - fk))
    # RandomKnots places the knots; each is an HII region of ~100 pc, a small Gaussian rather
    # than a point, so the intrinsic image is smooth enough to sample and drawn in real space
    points = galsim.RandomKnots(
        int(p["n_knots"]),
        half_light_radius=p["disk_hlr"],
        flux=1.0,
        rng=galsim.BaseDeviate(int(p["knot_seed"])),
    ).points
    knot_flux = flux * (1 - bt) * fk / len(points)
    knots = galsim.Add(
        [galsim.Gaussian(sigma=KNOT_SIGMA, flux=knot_flux).shift(x, y) for x, y in points]
    )
    parts = [disk.shear(disk_shear), knots.shear(disk_shear)]
    if bt > 0:
        bulge = galsim.Sersic(
            float(p["bulge_n"]), half_light_radius=p["disk_hlr"] * p["bulge_hlr_ratio"]
        ).withFlux(flux * bt)
        shear = galsim.Shear(
            e=e * p["bulge_e_ratio"], beta=(p["disk_angle"] + p["bulge_dangle"]) * galsim.degrees
        )
        parts.append(bulge.shear(shear))
    return galsim.Add(parts)


def draw_intrinsic(profile, size: int, pixel_scale: float) -> np.ndarray:
    """``profile`` integrated over ``size x size`` pixels: evaluated in real space on a grid
    ``OVERSAMPLE`` times finer and summed in blocks (an FFT through the pixel response of a
    cuspy bulge would need grids of thousands of pixels)."""
    fine = profile.drawImage(
        nx=size * OVERSAMPLE,
        ny=size * OVERSAMPLE,
        scale=pixel_scale / OVERSAMPLE,
        method="no_pixel",
    ).array
    return fine.reshape(size, OVERSAMPLE, size, OVERSAMPLE).sum(axis=(1, 3)).astype(np.float32)


def convolve_same(image: np.ndarray, psf: np.ndarray) -> np.ndarray:
    """Linear (zero-padded) convolution of ``image [..., N, N]`` with a kernel ``psf [..., N,
    N]`` centred on pixel ``(N // 2, N // 2)``, cropped to ``N x N`` (numpy FFT; the torch
    version is :func:`galray.models.stamps.fft_convolve`)."""
    n = image.shape[-1]
    shape = (2 * n, 2 * n)
    out = np.fft.irfft2(np.fft.rfft2(image, shape) * np.fft.rfft2(psf, shape), shape)
    c = n // 2
    return out[..., c : c + n, c : c + n].astype(np.float32)


def render(ids: np.ndarray, cfg: StampSimConfig, step=None) -> dict[str, np.ndarray]:
    """Stamps, PSF images, intrinsic images and properties of galaxies ``ids``; ``step(1)``
    after each galaxy if given (progress)."""
    import galsim

    p = draw_population(ids, cfg)
    n, s, scale = len(ids), cfg.size, cfg.pixel_scale
    stamps = np.empty((n, s, s), np.float32)
    psfs = np.empty((n, s, s), np.float32)
    intrinsic = np.empty((n, s, s), np.float32)
    hlr = np.empty(n)
    flux = flux_of(p["mag"])
    for k in range(n):
        row = {key: float(v[k]) for key, v in p.items()}
        gal = galaxy_profile(row, float(flux[k]))
        psf = galsim.Moffat(beta=cfg.psf_beta, fwhm=row["psf_fwhm"])
        intrinsic[k] = draw_intrinsic(gal, s, scale)
        hlr[k] = galsim.Image(intrinsic[k], scale=scale).calculateHLR(flux=float(flux[k]))
        obs = galsim.Convolve(gal, psf).drawImage(nx=s, ny=s, scale=scale)
        noise = np.random.default_rng(int(row["noise_seed"])).normal(
            0.0, row["noise_sigma"], (s, s)
        )
        stamps[k] = obs.array + noise
        psfs[k] = psf_image(row["psf_fwhm"], s, scale, cfg.psf_beta)
        if step is not None:
            step(1)
    out = {"id": np.asarray(ids, np.int64), "stamp": stamps, "psf": psfs}
    if cfg.intrinsic:
        out["intrinsic"] = intrinsic
    out |= {"flux": flux, "hlr": hlr, "bulge_hlr": p["disk_hlr"] * p["bulge_hlr_ratio"]}
    drop = {"bulge_hlr_ratio", "knot_seed", "noise_seed"}
    out |= {k: v for k, v in p.items() if k not in drop}
    out["bulge_angle"] = (p["disk_angle"] + p["bulge_dangle"]) % 180.0
    out["n_knots"] = p["n_knots"].astype(np.int32)
    return out


def to_table(columns: dict[str, np.ndarray]) -> pa.Table:
    """Columns as an Arrow table: images as ``fixed_shape_tensor`` float32 columns."""
    fields = {}
    for name, values in columns.items():
        if np.ndim(values) == 3:
            fields[name] = pa.FixedShapeTensorArray.from_numpy_ndarray(
                np.ascontiguousarray(values, np.float32)
            )
        else:
            fields[name] = pa.array(values)
    return pa.table(fields)


def _write_shard(
    ids: np.ndarray, path: Path, cfg: StampSimConfig, step=None
) -> tuple[int, list[str]]:
    """Render and write one shard: its number of stamps and its columns."""
    if cfg.population == "sersic":
        from galray.datasets import sersic

        table = to_table(sersic.render(ids, cfg, step))
    else:
        table = to_table(render(ids, cfg, step))
    write_parquet(table, path)
    return len(ids), table.column_names


def simulate_stamps(
    out: str | Path,
    cfg: StampSimConfig,
    *,
    overwrite: bool = False,
    workers: int | None = None,
    log=print,
    progress: ProgressFactory | None = None,
) -> dict:
    """Render ``cfg.n`` stamps into ``out`` (see the module docstring); returns the manifest.
    ``workers``: processes rendering shards side by side (the output does not depend on it).
    ``progress``: counts the stamps rendered (:mod:`galray.datasets.progress`; one process: each
    stamp, several: each finished shard).  The directory appears only when complete; an
    existing non-empty one needs ``overwrite``."""
    shards = [np.arange(a, min(a + cfg.shard_rows, cfg.n)) for a in range(0, cfg.n, cfg.shard_rows)]
    workers = max(1, min(workers or 1, len(shards)))
    counter = counting(progress, cfg.n, "stamps", "stamp")
    with atomic_directory(out, overwrite=overwrite) as tmp, counter as step:
        (tmp / STAMPS_DIR).mkdir()
        paths = [tmp / STAMPS_DIR / f"part-{k:05d}.parquet" for k in range(len(shards))]
        if workers == 1:
            names = [_write_shard(ids, path, cfg, step)[1] for ids, path in zip(shards, paths)]
        else:
            from concurrent.futures import ProcessPoolExecutor

            names = []
            with ProcessPoolExecutor(workers) as pool:
                for n, columns in pool.map(_write_shard, shards, paths, [cfg] * len(shards)):
                    step(n)
                    names.append(columns)
        manifest = {
            "kind": "galray.stamps",
            "population": cfg.population,
            "config": to_dict(cfg),
            "properties": list(PROPERTIES if cfg.population == "rich" else SERSIC_PROPERTIES),
            "columns": names[0],
            "units": UNITS,
            "zeropoint": ZEROPOINT,
            "pixel_scale": cfg.pixel_scale,
            "size": cfg.size,
            "shards": len(shards),
        }
        write_json(manifest, tmp / MANIFEST)
    log(f"wrote {cfg.n} stamps of {cfg.size}x{cfg.size} px to {out}")
    return manifest


# ---------------------------------------------------------------------- reading


def read_manifest(path: str | Path) -> dict:
    """``simulation.json`` of a stamps directory; DataError naming the file if unusable."""
    import json

    path = Path(path)
    file = path / MANIFEST
    if not file.is_file():
        raise DataError(f"{path}: not a galray stamps directory (no {MANIFEST})")
    try:
        manifest = json.loads(file.read_text())
    except ValueError as exc:
        raise DataError(f"{file}: not valid JSON ({exc})") from exc
    if manifest.get("kind") != "galray.stamps":
        raise DataError(f"{file}: kind {manifest.get('kind')!r}, expected 'galray.stamps'")
    return manifest


def stamp_files(path: str | Path) -> list[Path]:
    """The Parquet shards of a stamps directory."""
    read_manifest(path)
    return parquet_files(Path(path) / STAMPS_DIR)


def read_stamps(
    path: str | Path, split: str | None = None, columns: list[str] | None = None
) -> dict[str, np.ndarray]:
    """A stamps directory (or one split of it) as numpy columns (images ``[rows, N, N]``)."""
    if split is not None and split not in SPLITS:
        raise DataError(f"split: {split!r} is not one of {', '.join(SPLITS)}")
    wanted = None if columns is None else sorted({"id", *columns})
    read_manifest(path)
    table = read_parquet(Path(path) / STAMPS_DIR, wanted)
    out = {}
    for name in table.column_names:
        col = table[name].combine_chunks()
        if isinstance(col, pa.FixedShapeTensorArray):
            out[name] = col.to_numpy_ndarray()
        else:
            out[name] = col.to_numpy(zero_copy_only=False)
    if split is not None:
        keep = split_of(out["id"]) == split
        out = {k: v[keep] for k, v in out.items()}
    return out
