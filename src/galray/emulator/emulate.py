"""Survey emulation at scale: a trained emulator run over a deep catalog placed across the footprint.

The work is cut into *shards* fixed by the inputs alone: realization ``k`` x deep-catalog chunk
``j`` (``chunk_rows`` deep galaxies), or x chunk of the given positions.  Each shard draws its
positions and the emulator's noise from ``SeedSequence([seed, k, j])`` and is written to its own
Parquet file, ``part-r{k:04d}-c{j:05d}.parquet``, under a temporary name renamed when complete.
So the output is identical whatever the number of workers or the order shards run in, a rerun
with ``resume`` does exactly the missing shards, and a killed run never leaves a half file.

The pipeline is Ray Data: a dataset of pending shard specs -> ``map_batches`` on an actor pool
(GPU actors when GPUs exist, else CPU actors) whose actors load the model once and hold
the deep catalog and the condition map (shared through the object store) -> one summary row per
shard, streamed back to the driver for the progress bar.

With GPUs the pool holds one actor per CPU but one (which the driver keeps), all sharing the GPUs
fractionally: the model is a small fraction of a shard's time on a GPU, so the CPU side --
positions, lookups, decoding, Parquet encoding -- sets the pace and is spread over every core.
Without GPUs, one actor per CPU.

Positions: uniform on the sphere inside the footprint -- a footprint pixel drawn uniformly
(HEALPix pixels have equal area), then a uniformly drawn NESTED sub-pixel ``2^10`` times finer,
whose centre is the position (granularity ~0.003 arcsec x (4096 / nside)).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import healpy as hp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from galray.config import require
from galray.datasets.conditions import ConditionMap, read_condition_map
from galray.datasets.survey import SurveySpec
from galray.errors import DataError, OutputExistsError
from galray.io import atomic_path, parquet_files, read_parquet, read_parquet_schema

MANIFEST = "_emulation.json"  # leading "_": pyarrow and Ray Data skip it when reading the dir
SAMPLE_BLOCK = 65_536  # rows per model call inside a shard: fixed, so outputs never depend on it
SUBPIXEL_ORDER = 10
# Dictionary encoding is the default and costs ~3x the write time on high-cardinality floats
# (positions, fluxes) for no size gain; zstd alone compresses as well.
PARQUET_WRITE = {"compression": "zstd", "use_dictionary": False}


@dataclass
class EmulateConfig:
    """One ``galray emulate`` run.

    model: emulator URI (``models:/NAME@ALIAS``, ``runs:/...`` or a bundle directory).
    deep: deep-field catalog (Parquet file or directory: ``id`` and the model's truth columns,
    e.g. ``true_mag_b`` and ``true_size``).
    maps: condition-map table (or a directory holding ``conditions.parquet``).
    out: output directory of Parquet shards.  realizations: K placements of the deep catalog.
    positions: optional Parquet with ``ra``, ``dec`` (deg) [and ``deep_id``] to use instead of
    random positions.  chunk_rows: deep rows (or positions) per shard.  workers: actors (default:
    one per GPU, else one per CPU).
    """

    model: str
    deep: str
    maps: str
    out: str
    realizations: int = 1
    seed: int = 0
    positions: str | None = None
    chunk_rows: int = 500_000
    workers: int | None = None
    overwrite: bool = False
    resume: bool = False

    def __post_init__(self) -> None:
        require(self.realizations >= 1, "realizations", f"must be >= 1, got {self.realizations}")
        require(self.chunk_rows >= 1, "chunk_rows", f"must be >= 1, got {self.chunk_rows}")
        require(self.workers is None or self.workers >= 1, "workers", "must be >= 1")
        require(
            not (self.overwrite and self.resume), "resume", "give --resume or --overwrite, not both"
        )


@dataclass(frozen=True)
class Shard:
    realization: int
    chunk: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"part-r{self.realization:04d}-c{self.chunk:05d}.parquet"


# --------------------------------------------------------------------------- inputs


def load_deep(path: str | Path, spec: SurveySpec) -> dict[str, np.ndarray]:
    """The deep catalog's ``id`` and the truth columns the emulator needs (and the spec's
    redshift column when every shard has it, carried into the output); DataError naming the
    file and column."""
    columns = ["id", *spec.truth_columns]
    redshift = spec.deep.redshift
    for f in parquet_files(path):
        names = read_parquet_schema(f).names
        missing = [c for c in columns if c not in names]
        if missing:
            raise DataError(f"{f}: deep catalog lacks column(s) {missing} needed by the model")
        redshift = redshift if redshift in names else None
    columns += [redshift] if redshift else []
    table = read_parquet(path, columns)
    if table.num_rows == 0:
        raise DataError(f"{path}: deep catalog is empty")
    out = {c: table[c].to_numpy(zero_copy_only=False) for c in columns}
    for c in columns[1:]:
        if not np.isfinite(out[c]).all():
            raise DataError(f"{path}: column {c} has non-finite values")
    return out


def load_positions(path: str | Path, cmap: ConditionMap, n_deep: int) -> dict[str, np.ndarray]:
    """Given positions: ra/dec (deg), their pixel and deep galaxy; off-footprint rows dropped."""
    table = read_parquet(path)
    for c in ("ra", "dec"):
        if c not in table.column_names:
            raise DataError(f"{path}: positions lack column {c!r}")
    ra, dec = table["ra"].to_numpy(), table["dec"].to_numpy()
    if "deep_id" in table.column_names:
        deep_idx = table["deep_id"].to_numpy().astype(np.int64)
        if deep_idx.min() < 0 or deep_idx.max() >= n_deep:
            raise DataError(f"{path}: deep_id outside the deep catalog's {n_deep} rows")
    else:
        deep_idx = np.arange(ra.size, dtype=np.int64) % n_deep
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


# --------------------------------------------------------------------------- one shard


def random_positions(
    cmap: ConditionMap, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``n`` positions uniform in the footprint: (ra, dec, pixel, map_row)."""
    rows = rng.integers(0, cmap.n_pixels, n)
    pixel = cmap.pixels[rows]
    nest = pixel if cmap.ordering == "NESTED" else hp.ring2nest(cmap.nside, pixel)
    order = min(SUBPIXEL_ORDER, 29 - int(np.log2(cmap.nside)))
    sub = (nest << (2 * order)) + rng.integers(0, 4**order, n)
    ra, dec = hp.pix2ang(cmap.nside << order, sub, nest=True, lonlat=True)
    return ra, dec, pixel.astype(np.int64), rows


def emulate_shard(
    shard: Shard,
    emulator,
    deep: dict[str, np.ndarray],
    cmap: ConditionMap,
    seed: int,
    positions: dict[str, np.ndarray] | None = None,
) -> pa.Table:
    """Emulate one shard (deterministic in ``seed`` and the shard's indices)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, shard.realization, shard.chunk]))
    n = shard.stop - shard.start
    if positions is None:
        deep_index = np.arange(shard.start, shard.stop)
        ra, dec, pixel, map_row = random_positions(cmap, n, rng)
    else:
        sl = slice(shard.start, shard.stop)
        deep_index = positions["deep_index"][sl]
        ra, dec, pixel, map_row = (positions[k][sl] for k in ("ra", "dec", "pixel", "map_row"))
    cols: dict[str, np.ndarray] = {
        "id": np.arange(shard.start, shard.stop, dtype=np.int64),
        "realization": np.full(n, shard.realization, dtype=np.int32),
        "deep_id": deep["id"][deep_index].astype(np.int64),
        "ra": ra,
        "dec": dec,
        "pixel": pixel,
    }
    for name in deep:
        if name != "id":
            cols[name] = deep[name][deep_index].astype(np.float32)
    values = cmap.values[map_row]
    for j, name in enumerate(cmap.columns):
        if name in emulator.spec.condition_columns:
            cols[name] = values[:, j]
    noise_seeds = rng.integers(0, 2**62, -(-n // SAMPLE_BLOCK))
    parts = []
    for b, start in enumerate(range(0, n, SAMPLE_BLOCK)):
        block = {k: v[start : start + SAMPLE_BLOCK] for k, v in cols.items()}
        parts.append(emulator.sample(block, seed=int(noise_seeds[b])))
    for name in (*emulator.spec.output_columns, "selected"):
        cols[name] = np.concatenate([p[name] for p in parts])
    return pa.table(cols)


class ShardWriter:
    """Ray Data actor: loads the emulator once, emulates and writes whole shards."""

    def __init__(self, model_path: str, deep_ref, cmap_ref, positions_ref, seed: int, out: str):
        import ray
        import torch

        from galray.emulator.bundle import Emulator

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.emulator = Emulator.load(model_path, device=device)
        self.deep, self.cmap = ray.get(deep_ref), ray.get(cmap_ref)
        self.positions = ray.get(positions_ref) if positions_ref is not None else None
        self.seed, self.out = seed, Path(out)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import resource

        summary: dict[str, list] = {
            "name": [],
            "rows": [],
            "detected": [],
            "seconds": [],
            "rss_mb": [],
        }
        for k, c, a, z in zip(batch["realization"], batch["chunk"], batch["start"], batch["stop"]):
            shard = Shard(int(k), int(c), int(a), int(z))
            t0 = time.perf_counter()
            table = emulate_shard(
                shard, self.emulator, self.deep, self.cmap, self.seed, self.positions
            )
            summary["rows"].append(table.num_rows)
            summary["detected"].append(int(np.asarray(table["detected"]).sum()))
            with atomic_path(self.out / shard.name) as tmp:
                pq.write_table(table, tmp, **PARQUET_WRITE)
            del table
            pa.default_memory_pool().release_unused()  # keep the actor's footprint flat over shards
            summary["name"].append(shard.name)
            summary["seconds"].append(time.perf_counter() - t0)
            summary["rss_mb"].append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return {k: np.asarray(v) for k, v in summary.items()}


# --------------------------------------------------------------------------- the run


def plan_shards(n_rows: int, realizations: int, chunk_rows: int) -> list[Shard]:
    return [
        Shard(k, j, start, min(start + chunk_rows, n_rows))
        for k in range(realizations)
        for j, start in enumerate(range(0, n_rows, chunk_rows))
    ]


def _resolve_model(uri: str) -> Path:
    """A local bundle directory as is (no MLflow needed); anything else through MLflow."""
    path = Path(uri)
    if (path / "emulator.json").is_file():
        return path.resolve()
    from galray.emulator.registry import resolve_emulator_uri

    return resolve_emulator_uri(uri)


def _identity(cfg: EmulateConfig, model_path: Path, n_rows: int) -> dict:
    """What a run's output depends on; a resumed run must match it exactly."""
    return {
        "model": str(model_path),
        "deep": str(Path(cfg.deep).resolve()),
        "maps": str(Path(cfg.maps).resolve()),
        "positions": str(Path(cfg.positions).resolve()) if cfg.positions else None,
        "realizations": cfg.realizations,
        "seed": cfg.seed,
        "chunk_rows": cfg.chunk_rows,
        "rows_per_realization": n_rows,
    }


def _prepare_output(cfg: EmulateConfig, identity: dict) -> None:
    """Refuse to mix runs: an output holding another run's shards needs --resume or --overwrite."""
    out = Path(cfg.out)
    manifest = out / MANIFEST
    existing = sorted(p.name for p in out.glob("part-*.parquet")) if out.is_dir() else []
    if cfg.overwrite and out.is_dir():
        for name in [*existing, MANIFEST]:
            (out / name).unlink(missing_ok=True)
    elif existing or manifest.exists():
        if not cfg.resume:
            raise OutputExistsError(
                f"{out}: holds {len(existing)} shard(s) of an emulation run; pass --resume to "
                "finish it or --overwrite to replace it"
            )
        if not manifest.exists():
            raise OutputExistsError(
                f"{out}: shards without {MANIFEST}: not a galray emulation output"
            )
        previous = json.loads(manifest.read_text())["identity"]
        for key, value in identity.items():
            if previous.get(key) != value:
                raise OutputExistsError(
                    f"{out}: cannot resume: {key} was {previous.get(key)!r}, now {value!r}"
                )
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(manifest) as tmp:
        tmp.write_text(json.dumps({"identity": identity, "complete": False}, indent=2))


def emulate(cfg: EmulateConfig, *, log=print, progress: bool = True) -> dict:
    """Run (or resume) an emulation; returns the summary also written to ``_emulation.json``."""
    import ray
    import ray.data
    from tqdm import tqdm

    from galray.emulator.bundle import Emulator
    from galray.training.ray_env import init_ray

    t0 = time.perf_counter()
    model_path = _resolve_model(cfg.model)  # ModelNotFoundError before anything is written
    emulator = Emulator.load(model_path)
    cmap = read_condition_map(cfg.maps, columns=emulator.spec.condition_columns)
    check_model_against_maps(emulator, cmap, cfg.maps)
    deep = load_deep(cfg.deep, emulator.spec)
    positions = load_positions(cfg.positions, cmap, len(deep["id"])) if cfg.positions else None
    n_rows = len(positions["ra"]) if positions is not None else len(deep["id"])
    identity = _identity(cfg, model_path, n_rows)
    _prepare_output(cfg, identity)

    shards = plan_shards(n_rows, cfg.realizations, cfg.chunk_rows)
    done = {p.name for p in Path(cfg.out).glob("part-*.parquet")}
    pending = [s for s in shards if s.name not in done]
    log(
        f"emulating {n_rows * cfg.realizations:,} rows in {len(shards)} shard(s); {len(shards) - len(pending)} already done"
    )
    if positions is not None and positions["n_outside"]:
        log(f"{cfg.positions}: dropped {int(positions['n_outside']):,} positions off the footprint")

    peak_rss = 0.0  # the largest worker's peak resident memory, MB
    if pending:
        init_ray()
        ray.data.DataContext.get_current().enable_progress_bars = False
        gpus = int(ray.cluster_resources().get("GPU", 0))
        cpus = int(ray.cluster_resources().get("CPU", 1))
        workers = cfg.workers or max(1, cpus - 1 if gpus else cpus)
        specs = ray.data.from_items([asdict(s) for s in pending], override_num_blocks=len(pending))
        results = specs.map_batches(
            ShardWriter,
            fn_constructor_kwargs={
                "model_path": str(model_path),
                "deep_ref": ray.put(deep),
                "cmap_ref": ray.put(cmap),
                "positions_ref": ray.put(positions) if positions is not None else None,
                "seed": cfg.seed,
                "out": str(Path(cfg.out).resolve()),
            },
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers),
            num_gpus=gpus / workers if gpus else 0,
            num_cpus=1,
        )
        bar = tqdm(
            total=len(shards),
            initial=len(shards) - len(pending),
            unit="shard",
            disable=not progress,
        )
        for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
            bar.update(len(batch["name"]))
            peak_rss = max(peak_rss, float(batch["rss_mb"].max()))
        bar.close()
    return _finish(cfg, identity, shards, time.perf_counter() - t0, peak_rss, log)


def _finish(
    cfg: EmulateConfig, identity: dict, shards: list[Shard], seconds: float, peak_rss: float, log
) -> dict:
    out = Path(cfg.out)
    rows = detected = 0
    for shard in shards:
        meta = pq.read_metadata(out / shard.name)
        rows += meta.num_rows
        detected += int(
            pq.read_table(out / shard.name, columns=["detected"])["detected"].to_numpy().sum()
        )
    summary = {
        "identity": identity,
        "complete": True,
        "rows": rows,
        "detected": detected,
        "detection_fraction": detected / max(rows, 1),
        "shards": len(shards),
        "seconds": round(seconds, 2),
        "rows_per_second": rows / max(seconds, 1e-9),
        "peak_worker_rss_mb": round(peak_rss, 1),
    }
    with atomic_path(out / MANIFEST) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    log(
        f"wrote {rows:,} rows ({detected / max(rows, 1):.1%} detected) in {len(shards)} shard(s) "
        f"to {out} in {seconds:.1f} s ({summary['rows_per_second']:,.0f} rows/s)"
    )
    return summary
