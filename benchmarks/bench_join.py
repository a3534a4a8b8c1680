"""Throughput of the Ray Data condition join against a single-process pyarrow + numpy baseline.

Both sides do the same work on the same files: read every injection shard, look each galaxy's
pixel up in the condition map (searchsorted), drop off-footprint rows, keep the train split
(id hash) and end with one numpy array per column in the driver process.  The Ray side is the
library path (``TrainingCatalog`` -> ``dataset("train")`` -> blocks gathered into numpy), incl. its
validation pre-pass; the baseline is the shortest honest pyarrow/numpy program.

Usage::

    python benchmarks/bench_join.py                      # 1.7M rows, nside 512, in a temp dir
    python benchmarks/bench_join.py --catalog DIR --maps FILE
    python benchmarks/bench_join.py --rows 200000 --repeats 2   # quick look

Prints rows/s for both and the ratio Ray / baseline (higher is better).

Results (2026-11-23, 2-vCPU AMD EPYC VM shared with other jobs, 24 GiB, Ray 2.60.0, pyarrow 25.0.1;
1.7M rows in 4 shards of ~24 MB, nside 512, 519k footprint pixels, best of 5, interleaved)::

    baseline (pyarrow+numpy, 1 process)   0.24-0.28 s   6.2-7.2M rows/s
    ray data pipeline (end to end)        0.54-0.70 s   2.4-3.1M rows/s
    ratio                                 0.38-0.48   (2 shards: 0.50; 16 shards of 6 MB: 0.37)

Where the Ray time goes: ~0.08 s validation + exact footprint count (driver, pyarrow), ~0.13 s
fixed Ray Data start-up per execution (measured on an empty pipeline), ~0.35 CPU-s of read+join
in 2-3 tasks on the same 2 cores as the driver's scheduler, ~0.05 s to gather blocks into numpy.
Steps that got here, from a first cut at 0.23 (0.51M rows/s, against a searchsorted baseline):
``read_parquet`` (DataSource V2 put the 4 shards into one read task, after a separate listing
task) replaced by reading row-group pieces inside the join task (one hop, one task per CPU);
a dense full-sky pixel -> row index instead of binary search for nside <= 1024 (10x faster
lookups, used by both sides); pyarrow batches, whole pieces, zero-copy.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import healpy as hp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from galray.datasets import schema
from galray.datasets.conditions import read_condition_map
from galray.datasets.split import SplitSpec
from galray.io import parquet_files, write_parquet


def write_inputs(out: Path, rows: int, nside: int, shards: int, seed: int) -> tuple[Path, Path]:
    """A synthetic injection catalog (``shards`` files) and a condition table at ``nside``."""
    rng = np.random.default_rng(seed)
    # Footprint: a dec band of ~5000 deg^2, RING pixels, sorted as the contract asks.
    footprint = hp.query_strip(nside, np.radians(90 + 30), np.radians(90 + 60))
    footprint = np.sort(footprint[rng.random(footprint.size) < 0.9]).astype(np.int64)
    cond = {"pixel": footprint}
    for b in schema.BANDS:
        cond[schema.condition("psf_fwhm", b)] = rng.uniform(0.8, 1.4, footprint.size).astype(
            np.float32
        )
        cond[schema.condition("depth", b)] = rng.uniform(22.5, 24.5, footprint.size).astype(
            np.float32
        )
    maps = out / "maps" / "conditions.parquet"
    meta = schema.healpix_metadata(nside, "RING", kind="conditions")
    write_parquet(pa.table(cond).replace_schema_metadata(meta), maps)

    catalog = out / "injections"
    bounds = np.linspace(0, rows, shards + 1).astype(int)
    for k in range(shards):
        write_parquet(
            _shard(rng, bounds[k], bounds[k + 1], footprint, nside),
            catalog / f"part-{k:05d}.parquet",
        )
    return catalog, maps


def _shard(
    rng: np.random.Generator, start: int, stop: int, footprint: np.ndarray, nside: int
) -> pa.Table:
    n = stop - start
    pixel = footprint[rng.integers(0, footprint.size, n)]
    pixel[rng.random(n) < 0.002] += 1  # a few galaxies just off the footprint
    ra, dec = hp.pix2ang(nside, pixel, lonlat=True)
    cols: dict[str, np.ndarray] = {
        "id": np.arange(start, stop, dtype=np.int64),
        "deep_id": rng.integers(0, 100_000, n),
        "ra": ra,
        "dec": dec,
        "pixel": pixel,
    }
    for b in schema.BANDS:
        cols[schema.true_mag(b)] = rng.uniform(18, 26, n).astype(np.float32)
    cols["true_size"] = rng.lognormal(-1, 0.5, n).astype(np.float32)
    detected = rng.random(n) < 0.7
    for b in schema.BANDS:
        cols[schema.obs_flux(b)] = np.where(detected, rng.lognormal(5, 1, n), np.nan).astype(
            np.float32
        )
    for b in schema.BANDS:
        cols[schema.obs_mag(b)] = schema.flux_to_mag(cols[schema.obs_flux(b)]).astype(np.float32)
    cols["detected"] = detected
    arrays = [pa.array(cols[c], type=t) for c, t in schema.INJECTION_FIELDS.items()]
    meta = schema.healpix_metadata(nside, "RING", kind="injections")
    return pa.Table.from_arrays(
        arrays, schema=pa.schema(schema.INJECTION_FIELDS.items(), metadata=meta)
    )


def baseline(catalog: Path, maps: Path) -> dict[str, np.ndarray]:
    """Single process: pyarrow read, searchsorted join, train split, numpy columns."""
    conditions = read_condition_map(maps)
    spec = SplitSpec()
    table = pa.concat_tables(pq.read_table(f) for f in parquet_files(catalog))
    rows, keep = conditions.index(table.column("pixel").to_numpy())
    keep &= spec.codes(table.column("id").to_numpy()) == 0
    table = table.filter(keep)
    out = {c: table.column(c).to_numpy() for c in table.column_names}
    rows = rows[keep]
    for j, name in enumerate(conditions.columns):
        out[name] = conditions.values[:, j].take(rows)
    return out


def ray_pipeline(catalog: Path, maps: Path) -> dict[str, np.ndarray]:
    """The library path: validate + count, lazy read -> join -> split, materialise to numpy."""
    import ray

    from galray.datasets.reader import TrainingCatalog

    training = TrainingCatalog(catalog, maps)
    table = pa.concat_tables(ray.get(training.dataset("train").to_arrow_refs()))
    return {c: table.column(c).to_numpy() for c in training.columns + training.condition_columns}


def timed(fn, *args) -> tuple[float, dict[str, np.ndarray]]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def interleaved(repeats: int, catalog: Path, maps: Path):
    """Best-of-``repeats`` seconds of both sides, alternating them so load spikes hit both."""
    t_base, t_ray = [], []
    for _ in range(repeats):
        t, ref = timed(baseline, catalog, maps)
        t_base.append(t)
        t, got = timed(ray_pipeline, catalog, maps)
        t_ray.append(t)
    return min(t_base), min(t_ray), ref, got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=Path, help="injection catalog (dir of shards)")
    parser.add_argument("--maps", type=Path, help="condition-map Parquet table")
    parser.add_argument("--rows", type=int, default=1_700_000)
    parser.add_argument("--nside", type=int, default=512)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--num-cpus", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import ray
    import ray.data

    with tempfile.TemporaryDirectory(prefix="bench_join_") as tmp:
        catalog, maps = args.catalog, args.maps
        if catalog is None or maps is None:
            t0 = time.perf_counter()
            catalog, maps = write_inputs(Path(tmp), args.rows, args.nside, args.shards, args.seed)
            print(
                f"wrote {args.rows:,} injections + nside {args.nside} maps in {time.perf_counter() - t0:.1f} s"
            )
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        ray_pipeline(catalog, maps)  # warm-up: worker processes, imports
        t_base, t_ray, ref, got = interleaved(args.repeats, catalog, maps)
        _check_same(ref, got)
        n_in = sum(pq.read_metadata(f).num_rows for f in parquet_files(catalog))

    print(
        f"host: {platform.node()} {platform.processor() or platform.machine()}, "
        f"{ray.cluster_resources().get('CPU', 0):.0f} Ray CPUs; ray {ray.__version__}, pyarrow {pa.__version__}"
    )
    print(f"input rows: {n_in:,}; train rows out: {len(ref['id']):,}")
    print(f"baseline (pyarrow+numpy, 1 process): {t_base:.3f} s  {n_in / t_base:,.0f} rows/s")
    print(f"ray data pipeline (end to end):      {t_ray:.3f} s  {n_in / t_ray:,.0f} rows/s")
    print(f"ratio ray / baseline: {t_base / t_ray:.2f}")
    ray.shutdown()


def _check_same(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> None:
    """Same rows and values (Ray may return blocks in another order: compare sorted by id)."""
    assert set(ref) == set(got), (sorted(ref), sorted(got))
    a, b = np.argsort(ref["id"]), np.argsort(got["id"])
    for c in ref:
        np.testing.assert_array_equal(ref[c][a], got[c][b], err_msg=c)


if __name__ == "__main__":
    main()
