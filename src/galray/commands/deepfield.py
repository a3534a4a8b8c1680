"""The deep-field generator's commands::

galray simulate deepfield --out FILE.fits [--size N] [--seed S]
galray train sgan --config FILE [--set key=value ...]
galray generate deepfield --model URI --size NxM --out FILE.fits [--tile T] [--seed S]
galray evaluate deepfield --real FILE --generated FILE [FILE ...] --out DIR
"""

from __future__ import annotations

import argparse
import json
import re

from galray.cli import group
from galray.errors import ConfigError


def register(sub, groups) -> None:
    _register_simulate(group(sub, groups, "simulate", help="write synthetic data with known truth"))
    _register_train(group(sub, groups, "train", help="train a model with Ray Train"))
    _register_generate(group(sub, groups, "generate", help="generate data with a trained model"))
    _register_evaluate(group(sub, groups, "evaluate", help="score a model against known truth"))


# --------------------------------------------------------------------------- simulate


def _register_simulate(sim) -> None:
    p = sim.add_parser(
        "deepfield",
        help="a 3-band GalSim deep field (FITS, one HDU per band, WCS) and its true catalog",
        description="Render Sersic galaxies with deep number counts, sizes, ellipticities and "
        'colours, convolved with a Moffat PSF per band, on a 0.06" grid with sky noise; pixel '
        "values in nJy (MAGZERO 31.4).  The catalog goes to FILE.catalog.parquet.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output FITS file")
    p.add_argument("--size", default="2048", help="pixels per side, N or HxW")
    p.add_argument("--seed", type=int, default=0, help="random seed (output is deterministic)")
    p.add_argument(
        "--density", type=float, default=None, help="galaxies per arcmin² (default: 350)"
    )
    p.set_defaults(handler=_simulate)


def parse_size(text: str, option: str = "--size") -> tuple[int, int]:
    """``N`` or ``HxW`` (also ``H,W``) -> (height, width)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[x,X*]\s*(\d+))?\s*", str(text))
    if not m:
        raise ConfigError(f"{option}: expected N or HxW pixels, got {text!r}")
    h = int(m[1])
    w = int(m[2]) if m[2] else h
    if h < 1 or w < 1:
        raise ConfigError(f"{option}: sizes must be positive, got {text!r}")
    return h, w


def _simulate(args: argparse.Namespace) -> int:
    from galray.datasets.deepfield import DeepFieldConfig, simulate_deepfield

    h, w = parse_size(args.size)
    extra = {} if args.density is None else {"density": args.density}
    cfg = DeepFieldConfig(height=h, width=w, seed=args.seed, **extra)
    simulate_deepfield(args.out, cfg)
    return 0


# --------------------------------------------------------------------------- train


def _register_train(train) -> None:
    p = train.add_parser(
        "sgan",
        help="train the deep-field generator (Spatial GAN) on a multi-band FITS image",
        description="Train the SGAN on random crops of a deep field; logs to MLflow and "
        "registers the generator.  Example: galray train sgan --config configs/sgan-smoke.yaml "
        "--set epochs=5",
    )
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set optim.batch_size=64 (repeatable)",
    )
    p.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from galray.config import load_config
    from galray.trainers.sgan import SGANTrainConfig
    from galray.trainers.sgan_job import train_sgan

    cfg = load_config(SGANTrainConfig, args.config, args.overrides)
    result = train_sgan(cfg)
    print()
    print(f"training finished in {result.seconds:.0f} s (epoch {result.metrics.get('epoch')})")
    print(f"  MLflow run:     {result.run_id}")
    print(f"  model:          {result.model_uri}")
    print(f"  bundle:         {result.bundle_path}")
    if result.registered_uri:
        print(f"  registered as:  {result.registered_uri}")
    print(f"  checkpoint:     {result.checkpoint_path}")
    if cfg.tracking.enabled:
        from galray.tracking import tracking_uri

        print(f"  browse runs:    mlflow ui --backend-store-uri {tracking_uri()}")
    return 0


# --------------------------------------------------------------------------- generate


def _register_generate(gen) -> None:
    p = gen.add_parser(
        "deepfield",
        help="generate a deep field of any size, tile by tile on Ray, into a FITS file",
        description="Split the noise array into overlapping tiles that Ray tasks generate "
        "independently; the halo of each tile is cropped, so the stitched field equals a "
        "one-pass generation.  Tiles stream into the FITS file: memory is bounded by the tile "
        "size.  The same seed gives the same field for any --tile.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--model", required=True, help="models:/NAME@ALIAS, runs:/ID/sgan or a bundle directory"
    )
    p.add_argument("--size", required=True, help="HxW (or N) pixels")
    p.add_argument("--out", required=True, help="output FITS file")
    p.add_argument("--tile", type=int, default=1024, help="tile side in pixels (multiple of 16)")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--gpus-per-task", type=float, default=0.0, help="GPUs per tile task")
    p.add_argument("--cpus-per-task", type=float, default=1.0, help="CPUs per tile task")
    p.set_defaults(handler=_generate)


def _generate(args: argparse.Namespace) -> int:
    from galray.deepfield.generate import generate_fits
    from galray.deepfield.model import load_deepfield_model
    from galray.trainers.emulator_job import init_ray

    h, w = parse_size(args.size)
    model = load_deepfield_model(args.model)
    model.info["model_uri"] = args.model
    init_ray()
    result = generate_fits(
        model,
        args.out,
        h,
        w,
        seed=args.seed,
        tile=args.tile,
        cpus_per_task=args.cpus_per_task,
        gpus_per_task=args.gpus_per_task,
    )
    print(
        f"wrote {result.path}: {h}x{w} px x {len(model.bands)} bands in {result.tiles} tiles "
        f"(halo {result.halo[0]}+{result.halo[1]} noise cells), {result.seconds:.1f} s, "
        f"{result.pixels_per_second / 1e6:.2f} Mpix/s"
    )
    return 0


# --------------------------------------------------------------------------- evaluate


def _register_evaluate(ev) -> None:
    p = ev.add_parser(
        "deepfield",
        help="compare sources detected in real and generated deep fields",
        description="Detect sources with sep using identical settings on the real and the "
        "generated field(s) (detection image: mean of the bands; >= --min-area connected pixels "
        "above --threshold sigma), measure per-band Kron magnitudes with each file's MAGZERO, "
        "and compare magnitude and colour distributions (KS p-values below the magnitude "
        "limit, median differences) and counts per arcmin².  Writes report.json, both source "
        "catalogs and PNG plots to --out; logs them to MLflow.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--real", required=True, help="the real (training) field, FITS")
    p.add_argument(
        "--generated", required=True, nargs="+", help="generated field(s), FITS (pooled)"
    )
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument(
        "--mag-limit",
        type=float,
        default=None,
        help="AB limit of the KS tests (default: the real catalog's turnover, per band)",
    )
    p.add_argument(
        "--zeropoint",
        type=float,
        default=None,
        help="AB zeropoint of every band (default: MAGZERO)",
    )
    p.add_argument(
        "--pixel-scale", type=float, default=None, help="arcsec per pixel (default: the WCS's)"
    )
    p.add_argument("--threshold", type=float, default=3.0, help="detection threshold, sigma")
    p.add_argument("--min-area", type=int, default=5, help="minimum connected pixels")
    p.add_argument("--edge", type=int, default=16, help="border pixels left out")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the report to MLflow")
    p.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from galray.datasets.fitsfield import read_field
    from galray.evaluation.deepfield import DetectionSettings, deepfield_report

    settings = DetectionSettings(threshold=args.threshold, min_area=args.min_area, edge=args.edge)
    real = read_field(args.real)
    generated = [read_field(path) for path in args.generated]
    report = deepfield_report(
        real,
        generated,
        args.out,
        settings=settings,
        mag_limit=args.mag_limit,
        zeropoint=args.zeropoint,
        pixel_scale=args.pixel_scale,
    )
    if not args.no_mlflow:
        import mlflow

        from galray.evaluation.emulator import log_report_to_mlflow
        from galray.tracking import configure_tracking, get_or_create_experiment

        configure_tracking()
        with mlflow.start_run(
            experiment_id=get_or_create_experiment("galray-evaluation"),
            run_name="evaluate-deepfield",
        ):
            mlflow.log_params(
                {"real": args.real, "generated": ",".join(args.generated)[:6000]}
                | {f"detection.{k}": v for k, v in vars(settings).items()}
            )
            log_report_to_mlflow(report, args.out)
    keys = (
        "n_real",
        "n_generated",
        "ks_p_min",
        "median_dmag_max",
        "median_dmag_max_sigma",  # in units of the sampling error: the real field's own noise
        "count_ratio",
        "meets_targets",
    )
    print(json.dumps({k: report[k] for k in keys}, indent=2))
    print(f"report: {Path(args.out) / 'report.json'}")
    return 0
