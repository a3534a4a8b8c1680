"""Survey emulation at scale: a trained emulator run over a deep catalog placed across the footprint.

The work is cut into *shards* fixed by the inputs alone: realization ``k`` x deep-catalog chunk
``j`` (``chunk_rows`` deep galaxies), or x chunk of the given positions.  Each shard draws its
positions and the emulator's noise from ``SeedSequence([seed, k, j])`` and is written to its own
Parquet file, ``part-r{k:04d}-c{j:05d}.parquet``, under a temporary name renamed when complete.
So the output is identical whatever the number of workers or the order shards run in, a rerun
with ``resume`` does exactly the missing or damaged shards, and a killed run never leaves a half
file.  Where emulation may write, what its manifest records and how a resume checks the shards on
disk: :mod:`galray.emulator.manifest`; the model's identity and how workers get it:
:mod:`galray.emulator.model_source`; input checks: :mod:`galray.emulator.inputs`.

The pipeline is Ray Data: a dataset of pending shard specs -> ``map_batches`` on an actor pool
(GPU actors when GPUs exist, else CPU actors) whose actors load the model once (its files come
through the object store) and hold
the deep catalog and the condition map (shared through the object store) -> one summary row per
shard, streamed back to the driver for the progress bar.

With GPUs the pool holds, on each node with GPUs, one actor per CPU but one (left to the driver
and Ray's own processes), all sharing that node's GPUs fractionally: the model is a small
fraction of a shard's time on a GPU, so the CPU side -- positions, lookups, decoding, Parquet
encoding -- sets the pace and is spread over every core (:func:`pool_shape`).  Without GPUs, one
actor per CPU.

Positions: uniform on the sphere inside the footprint -- a footprint pixel drawn uniformly
(HEALPix pixels have equal area), then a uniformly drawn NESTED sub-pixel ``2^10`` times finer,
whose centre is the position (granularity ~0.003 arcsec x (4096 / nside)).  The pixel
arithmetic is hpgeom's (LSST DESC's C HEALPix geometry, numpy its only dependency): healpy's
``import`` pulls in matplotlib and astropy, ~0.7 s of every worker's start; hpgeom's pixel
centres are healpy's to the last bit in ra and within ~2e-14 deg (a few ulp) in dec, so an
output is bit-identical for a seed within one galray version.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import hpgeom
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from galray.config import require
from galray.datasets.conditions import ConditionMap, read_condition_map
from galray.emulator.inputs import check_model_against_maps, load_deep, load_positions
from galray.emulator.manifest import MANIFEST, Output, prepare_output, verify_shards
from galray.emulator.model_source import bundle_files, resolve_model, write_bundle
from galray.errors import GalrayError, OutputError
from galray.io import atomic_path
from galray.models.precision import resolve_name

__all__ = ["MANIFEST", "PARQUET_WRITE", "EmulateConfig", "emulate", "plan_shards"]

SAMPLE_BLOCK = 65_536  # rows per model call inside a shard: fixed, so outputs never depend on it
SUBPIXEL_ORDER = 10
# Dictionary encoding is the default and costs ~3x the write time on high-cardinality floats
# (positions, fluxes) for no size gain; zstd alone compresses as well.
# Page checksums let a resume find a corrupt data page in a shard the manifest has no record of.
PARQUET_WRITE = {"compression": "zstd", "use_dictionary": False, "write_page_checksum": True}
FAULT_ENV = "GALRAY_EMULATE_FAULT"  # tests: "driver:N" (kill after N shards), "enospc" (disk full)
SAVE_EVERY_S = 2.0  # how often the manifest records finished shards during a run


@dataclass
class EmulateConfig:
    """One ``galray emulate`` run.

    model: emulator URI (``models:/NAME@ALIAS``, ``runs:/...`` or a bundle directory).
    deep: deep-field catalog (Parquet file or directory: ``id`` and the model's truth columns,
    e.g. ``true_mag_b`` and ``true_size``).
    maps: condition-map table (or a directory holding ``conditions.parquet``).
    out: output directory of Parquet shards.  realizations: K placements of the deep catalog.
    positions: optional Parquet with ``ra``, ``dec`` (deg) [and ``deep_id``] to use instead of
    random positions.  seed: every random draw (the output is deterministic for a seed).
    chunk_rows: deep rows (or positions) per shard.  workers: actors, all started at once
    (default: one per CPU, one fewer on each node with GPUs, whose actors share its GPUs; never
    more than the shards to do).
    precision: the networks' hidden-layer arithmetic (:mod:`galray.models.precision`):
    ``auto`` -- ``bf16`` if the driver's CPU multiplies bfloat16 natively, else ``fp32``,
    resolved once and recorded, so every worker uses the same and a resume must resolve to it
    too -- ``fp32`` or ``bf16``; ``fp32`` gives the same output on any hardware.  overwrite: replace the emulation in ``out`` once the new run
    completes.  resume: finish an interrupted run in ``out`` (its shards checked, damaged ones
    redone).
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
    precision: str = "auto"
    overwrite: bool = False
    resume: bool = False

    def __post_init__(self) -> None:
        require(self.realizations >= 1, "realizations", f"must be >= 1, got {self.realizations}")
        require(self.chunk_rows >= 1, "chunk_rows", f"must be >= 1, got {self.chunk_rows}")
        require(self.workers is None or self.workers >= 1, "workers", "must be >= 1")
        resolve_name(self.precision, torch.device("cpu"))  # a bad name: ConfigError naming it
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


# --------------------------------------------------------------------------- one shard


def random_positions(
    cmap: ConditionMap, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``n`` positions uniform in the footprint: (ra, dec, pixel, map_row)."""
    rows = rng.integers(0, cmap.n_pixels, n)
    pixel = cmap.pixels[rows]
    nest = pixel if cmap.ordering == "NESTED" else hpgeom.ring_to_nest(cmap.nside, pixel)
    order = min(SUBPIXEL_ORDER, 29 - int(np.log2(cmap.nside)))
    sub = (nest << (2 * order)) + rng.integers(0, 4**order, n)
    ra, dec = hpgeom.pixel_to_angle(cmap.nside << order, sub, nest=True, lonlat=True)
    return ra, dec, pixel.astype(np.int64), rows


def emulate_shard(
    shard: Shard,
    emulator,
    deep: dict[str, np.ndarray],
    cmap: ConditionMap,
    seed: int,
    positions: dict[str, np.ndarray] | None = None,
) -> pa.Table:
    """Emulate one shard (deterministic in ``seed`` and the shard's indices).  ``deep``'s
    arrays reach ``emulator.sample`` as views (a slice of the shard's rows, no copy), so neither
    may write to them: they are every shard's input, and read-only where Ray's object store
    holds them."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, shard.realization, shard.chunk]))
    n = shard.stop - shard.start
    if positions is None:  # the shard's own deep rows: a slice, no gather
        deep_index = slice(shard.start, shard.stop)
        ra, dec, pixel, map_row = random_positions(cmap, n, rng)
    else:
        sl = slice(shard.start, shard.stop)
        deep_index = positions["deep_index"][sl]
        ra, dec, pixel, map_row = (positions[k][sl] for k in ("ra", "dec", "pixel", "map_row"))
    cols: dict[str, np.ndarray] = {
        "id": np.arange(shard.start, shard.stop, dtype=np.int64),
        "realization": np.full(n, shard.realization, dtype=np.int32),
        "deep_id": deep["id"][deep_index].astype(np.int64, copy=False),
        "ra": ra,
        "dec": dec,
        "pixel": pixel,
    }
    for name in deep:
        if name != "id":
            cols[name] = deep[name][deep_index].astype(np.float32, copy=False)
    for j, name in enumerate(cmap.columns):  # column by column: each gather contiguous
        if name in emulator.spec.condition_columns:
            cols[name] = cmap.values[:, j][map_row]
    noise_seeds = rng.integers(0, 2**62, -(-n // SAMPLE_BLOCK))
    parts = []
    for b, start in enumerate(range(0, n, SAMPLE_BLOCK)):
        block = {k: v[start : start + SAMPLE_BLOCK] for k, v in cols.items()}
        parts.append(emulator.sample(block, seed=int(noise_seeds[b])))
    for name in (*emulator.spec.output_columns, "selected"):
        cols[name] = np.concatenate([p[name] for p in parts])
    return pa.table(cols)


def write_shard(table: pa.Table, path: Path, fault: str = "") -> tuple[int, str]:
    """Write a shard atomically (temporary name, rename): (bytes, SHA-256 of them).  An
    OSError (a full disk) leaves nothing behind and is re-raised naming ``path``.  ``fault``
    ``"enospc"``: the write fails half-way, as on a full disk (tests).

    No fsync: a killed process loses nothing the kernel holds, and a shard damaged by an OS
    crash fails its SHA-256 (or page checksums) on ``--resume`` and is redone.  Syncing every
    shard doubled the writer's CPU time (0.17 -> 0.35 s per 500k-row shard) and stalled it
    behind any other I/O on the disk."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **PARQUET_WRITE)
    data = memoryview(sink.getvalue())
    digest = hashlib.sha256(data).hexdigest()
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            if fault == "enospc":
                f.write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            f.write(data)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
    return len(data), digest


class ShardWriter:
    """Ray Data actor: loads the emulator once (from its files in the object store, so any
    node can run it), emulates and writes whole shards."""

    def __init__(
        self,
        bundle_ref,
        deep_ref,
        cmap_ref,
        positions_ref,
        seed: int,
        out: str,
        fault="",
        precision: str = "auto",
    ):
        import tempfile

        import ray
        import torch

        from galray.emulator.bundle import Emulator

        device = "cuda" if torch.cuda.is_available() else "cpu"
        with tempfile.TemporaryDirectory(prefix="galray-model-") as tmp:
            path = write_bundle(ray.get(bundle_ref), Path(tmp))
            self.emulator = Emulator.load(path, device=device, precision=precision)
        self.deep, self.cmap = ray.get(deep_ref), ray.get(cmap_ref)
        self.positions = ray.get(positions_ref) if positions_ref is not None else None
        self.seed, self.out, self.fault = seed, Path(out), fault

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One summary row per shard; a shard that cannot be written (a full disk) is reported
        in ``error`` (an exception would reach the driver without its OSError)."""
        import resource

        keys = ("name", "rows", "detected", "bytes", "sha256", "error", "seconds", "rss_mb")
        summary: dict[str, list] = {k: [] for k in keys}
        for k, c, a, z in zip(batch["realization"], batch["chunk"], batch["start"], batch["stop"]):
            shard = Shard(int(k), int(c), int(a), int(z))
            t0 = time.perf_counter()
            table = emulate_shard(
                shard, self.emulator, self.deep, self.cmap, self.seed, self.positions
            )
            rows, detected = table.num_rows, int(np.asarray(table["detected"]).sum())
            try:
                size, digest, error = *write_shard(table, self.out / shard.name, self.fault), ""
            except OSError as exc:
                size, digest, error = (
                    0,
                    "",
                    f"{exc.filename}: cannot write the shard: {exc.strerror}",
                )
            del table
            pa.default_memory_pool().release_unused()  # keep the actor's footprint flat over shards
            row = (shard.name, rows, detected, size, digest, error, time.perf_counter() - t0)
            for key, value in zip(keys, row):
                summary[key].append(value)
            summary["rss_mb"].append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return {k: np.asarray(v) for k, v in summary.items()}


# --------------------------------------------------------------------------- the run


class InjectedKill(BaseException):
    """Raised by the ``GALRAY_EMULATE_FAULT=driver:N`` fault hook after N shards: like a kill,
    it skips every clean-up (a BaseException, so ``except Exception`` does not catch it)."""


def pool_shape(nodes: list[dict], workers: int | None = None) -> tuple[int, float]:
    """(actors, GPUs of each) for a cluster of ``nodes`` (``ray.nodes()``: ``Alive``,
    ``Resources``).  Without GPUs: one actor per CPU.  With GPUs: on each node with GPUs and
    CPUs, one actor per CPU but one, each taking a share of the GPUs small enough that every
    node's actors fit on it (floored to Ray's 1e-4 resource unit, at most one GPU); ``workers``
    (``--workers``): that many actors, sharing all the GPUs evenly."""
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive", True)]
    cpus = sum(int(r.get("CPU", 0)) for r in alive)
    gpus = sum(r.get("GPU", 0) for r in alive)
    gpu_nodes = [r for r in alive if r.get("GPU", 0) > 0 and int(r.get("CPU", 0)) >= 1]
    if not gpus or not gpu_nodes:
        return (workers or max(1, cpus)), 0.0
    if workers:
        share = gpus / workers
    else:
        per_node = [(max(1, int(r["CPU"]) - 1), r["GPU"]) for r in gpu_nodes]
        workers = sum(k for k, _ in per_node)
        share = min(g / k for k, g in per_node)
    return workers, min(1.0, math.floor(share * 10_000) / 10_000)


def plan_shards(n_rows: int, realizations: int, chunk_rows: int) -> list[Shard]:
    return [
        Shard(k, j, start, min(start + chunk_rows, n_rows))
        for k in range(realizations)
        for j, start in enumerate(range(0, n_rows, chunk_rows))
    ]


def _identity(cfg: EmulateConfig, model: str, n_rows: int, precision: str) -> dict:
    """What a run's output depends on; a resumed run must match it exactly.  ``precision``:
    resolved (``fp32`` or ``bf16``); runs from before it was recorded were ``fp32``."""
    return {
        "model": model,
        "deep": str(Path(cfg.deep).resolve()),
        "maps": str(Path(cfg.maps).resolve()),
        "positions": str(Path(cfg.positions).resolve()) if cfg.positions else None,
        "realizations": cfg.realizations,
        "seed": cfg.seed,
        "chunk_rows": cfg.chunk_rows,
        "rows_per_realization": n_rows,
        "precision": precision,
    }


def provenance(model, emulator, seed: int) -> dict:
    """What ``_emulation.json`` records of where its rows came from: the model (registered name,
    version, alias, training run id, logged-model id, the URI as given, and the bundle's
    SHA-256), the galray version that emulated them and the seed."""
    from importlib.metadata import PackageNotFoundError, version

    record = {**model.provenance, "identity": model.identity}
    if record.get("run_id") is None:  # a local bundle: the run id it recorded when trained
        record["run_id"] = emulator.info.get("run_id")
    try:
        galray_version = version("galray")
    except PackageNotFoundError:  # running from a source tree that was never installed
        galray_version = None
    return {"model": record, "galray_version": galray_version, "seed": seed}


def emulate(cfg: EmulateConfig, *, log=print, progress: bool = True) -> dict:
    """Run (or resume) an emulation; returns the summary also written to ``_emulation.json``.

    Every input is checked and the output directory claimed (:mod:`galray.emulator.manifest`)
    before Ray starts.  A failure writing a shard (a full disk) raises OutputError naming it;
    nothing partial is left and ``resume`` finishes the run."""
    from galray.emulator.bundle import Emulator

    t0 = time.perf_counter()
    model = resolve_model(cfg.model, log=log)  # ModelNotFoundError before anything is written
    emulator = Emulator.load(model.path)
    cmap = read_condition_map(cfg.maps, columns=emulator.spec.condition_columns)
    check_model_against_maps(emulator, cmap, cfg.maps)
    deep = load_deep(cfg.deep, emulator.spec)
    positions = load_positions(cfg.positions, cmap, deep["id"]) if cfg.positions else None
    n_rows = len(positions["ra"]) if positions is not None else len(deep["id"])
    precision = resolve_name(cfg.precision, torch.device("cpu"))  # the workers use the same
    identity = _identity(cfg, model.identity, n_rows, precision)
    output = prepare_output(
        cfg.out,
        identity,
        overwrite=cfg.overwrite,
        resume=cfg.resume,
        source=model.source,
        provenance=provenance(model, emulator, cfg.seed),
        log=log,
    )
    shards = plan_shards(n_rows, cfg.realizations, cfg.chunk_rows)
    if cfg.resume:
        verify_shards(output, shards, log)
        output.save()
    pending = [s for s in shards if s.name not in output.records]
    log(
        f"emulating {n_rows * cfg.realizations:,} rows in {len(shards)} shard(s); "
        f"{len(shards) - len(pending)} already done"
    )
    if positions is not None and positions["n_outside"]:
        log(f"{cfg.positions}: dropped {int(positions['n_outside']):,} positions off the footprint")
    try:
        try:
            peak = _run(cfg, output, pending, len(shards), model, deep, cmap, positions, progress)
        except Exception:
            output.save()  # the shards finished so far stay usable by --resume
            output.discard()
            raise
        return _finish(output, shards, time.perf_counter() - t0, peak, log)
    finally:
        output.release()  # however the run ended, its staging directory is no longer in use


def _run(cfg, output, pending, n_shards, model, deep, cmap, positions, progress) -> float:
    """Emulate the ``pending`` shards on a Ray Data actor pool; the largest worker's peak
    resident memory, MB.  Records each finished shard in the manifest (saved every few s)."""
    if not pending:
        return 0.0
    import ray
    import ray.data

    from galray import console
    from galray.training.ray_env import init_ray

    fault = os.environ.get(FAULT_ENV, "")
    kill_after = int(fault.split(":")[1]) if fault.startswith("driver:") else None
    init_ray()
    ray.data.DataContext.get_current().enable_progress_bars = False
    workers, gpu_share = pool_shape(ray.nodes(), cfg.workers)
    specs = ray.data.from_items([asdict(s) for s in pending], override_num_blocks=len(pending))
    results = specs.map_batches(
        ShardWriter,
        fn_constructor_kwargs={
            "bundle_ref": ray.put(bundle_files(model.path)),
            "deep_ref": ray.put(deep),
            "cmap_ref": ray.put(cmap),
            "positions_ref": ray.put(positions) if positions is not None else None,
            "seed": cfg.seed,
            "out": str(output.work.resolve()),
            "fault": fault,
            "precision": output.identity["precision"],
        },
        batch_size=1,
        # every actor started at once (spread over the cluster's nodes), not grown from one as
        # the queue asks: an actor takes ~3 s to start (Ray's worker, ray.data, torch), and a
        # pool grown from one left a 2-CPU run's second core idle for its first ~4 s
        compute=ray.data.ActorPoolStrategy(size=min(workers, len(pending))),
        num_gpus=gpu_share,
        num_cpus=1,
    )
    # a tqdm bar on a terminal, a plain line every 10% or 30 s when piped
    bar = console.progress(
        n_shards, "emulate", unit="shard", initial=n_shards - len(pending), enabled=progress
    )
    batches = iter(results.iter_batches(batch_size=None, batch_format="numpy"))
    try:
        return _collect(batches, output, bar, kill_after, fault)
    finally:
        batches.close()  # shuts the pipeline down however the loop ends
        bar.close()


def _collect(batches, output: Output, bar, kill_after: int | None, fault: str) -> float:
    """Record the shard summaries as they come (the manifest saved every few seconds); the
    largest worker's peak resident memory, MB."""
    peak_rss, done, saved = 0.0, 0, time.monotonic()
    for batch in batches:
        for i, name in enumerate(batch["name"]):
            if batch["error"][i]:
                retry = "" if output.staged else " (--resume finishes the run)"
                raise OutputError(f"{batch['error'][i]}; no partial shard was left{retry}")
            output.records[str(name)] = {
                "rows": int(batch["rows"][i]),
                "bytes": int(batch["bytes"][i]),
                "detected": int(batch["detected"][i]),
                "sha256": str(batch["sha256"][i]),
            }
        bar.update(len(batch["name"]))
        peak_rss = max(peak_rss, float(batch["rss_mb"].max()))
        done += len(batch["name"])
        if kill_after is not None and done >= kill_after:
            raise InjectedKill(f"{FAULT_ENV}={fault}: driver killed after {done} shard(s)")
        if time.monotonic() - saved > SAVE_EVERY_S:
            output.save()
            saved = time.monotonic()
    return peak_rss


def _finish(output: Output, shards: list[Shard], seconds: float, peak_rss: float, log) -> dict:
    """Certify the run: every planned shard recorded (rows, bytes, checksum), then the
    manifest marked complete and a staged run swapped in."""
    missing = [s for s in shards if s.name not in output.records]
    if missing:  # written but not reported (cannot happen short of a bug): check them
        verify_shards(output, shards, log)
        missing = [s.name for s in shards if s.name not in output.records]
        if missing:
            raise GalrayError(
                f"{output.work}: shard(s) {missing[:3]} missing at the end of the run"
            )
    rows = sum(output.records[s.name]["rows"] for s in shards)
    detected = sum(output.records[s.name]["detected"] for s in shards)
    summary = {
        "identity": output.identity,
        "complete": True,
        "rows": rows,
        "detected": detected,
        "detection_fraction": detected / max(rows, 1),
        "shards": len(shards),
        "seconds": round(seconds, 2),
        "rows_per_second": rows / max(seconds, 1e-9),
        "peak_worker_rss_mb": round(peak_rss, 1),
    }
    output.save(**summary)
    output.commit()
    log(
        f"wrote {rows:,} rows ({detected / max(rows, 1):.1%} detected) in {len(shards)} shard(s) "
        f"to {output.out} in {seconds:.1f} s ({summary['rows_per_second']:,.0f} rows/s)"
    )
    return summary
