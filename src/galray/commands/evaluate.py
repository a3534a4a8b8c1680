"""``galray evaluate emulator|deepfield|stamps|estimator``: score a model against known truth."""

from __future__ import annotations

import argparse
import json
import sys

from galray.commands.common import add_model, add_output, command, group


def register(sub, groups) -> None:
    ev = group(sub, groups, "evaluate", help="score a model against known truth")
    p = command(ev, "emulator", _emulator)
    add_model(p, "emulator")
    p.add_argument(
        "--data", required=True, help="survey directory (injections/ + maps/) or injection catalog"
    )
    p.add_argument(
        "--maps", default=None, help="condition-map table (default DATA/maps/conditions.parquet)"
    )
    add_output(p, "report directory")
    p.add_argument(
        "--split", default="test", choices=["train", "val", "test", "all"], help="rows to score"
    )
    p.add_argument("--rows", type=int, default=50_000, help="at most this many rows")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the emulated draw and the classifier"
    )
    add_no_mlflow(p)
    _register_deepfield(ev)
    _register_stamps(ev)
    _register_estimator(ev)


def _emulator(args: argparse.Namespace) -> int:
    r"""Fidelity of an emulator on held-out injections.

    Emulate held-out injections (truth and conditions known) and compare them with the measured
    ones: KS statistics, (obs - true) in bins, detection fraction, and a classifier two-sample
    test.  Writes report.json, CSV tables and PNG plots to --out and logs them to MLflow.
    The first --rows rows of the split are read here with pyarrow: Ray is not started.
    Example:
        galray evaluate emulator --model models:/galray-emulator-smoke@champion \
            --data data/smoke-survey --out report/
    """
    from pathlib import Path

    from galray.datasets.reader import TrainingCatalog
    from galray.emulator.registry import load_emulator
    from galray.emulator.spec import evaluate_on_split
    from galray.registry import model_provenance

    emulator = load_emulator(args.model)
    data = Path(args.data)
    catalog_path = data / "injections" if (data / "injections").is_dir() else data
    maps = args.maps or data / "maps" / "conditions.parquet"
    # the split the model was trained with, so its test rows are the ones it never saw
    trained = emulator.info.get("config", {}).get("data", {})
    split = {k: trained[k] for k in ("fractions", "salt") if trained.get(k) is not None}
    catalog = TrainingCatalog(
        catalog_path, maps, spec=emulator.spec, max_outside_fraction=1.0, **split
    )
    # No Ray: the (at most --rows) rows scored end up in this process anyway, and the catalog
    # is a path it reads (TrainingCatalog checked every shard here); TrainingCatalog.table reads
    # them with pyarrow, stopping once it has enough, so Ray would add only its start-up.
    rows = None if args.split == "all" else args.split
    model = model_provenance(args.model)
    model["run_id"] = model["run_id"] or emulator.info.get("run_id")
    label = model["uri"]
    if model["registered_name"]:
        label = f"{model['registered_name']} v{model['version']}"
    report = evaluate_on_split(
        emulator, catalog, args.out, args.rows, split=rows, seed=args.seed, model=label
    )
    _record_provenance(args.out, report, {"model": model, "seed": args.seed})
    params = {"model": args.model, "data": str(data), "split": args.split, "rows": args.rows}
    params |= {f"model_{k}": model[k] for k in ("registered_name", "version", "run_id") if model[k]}
    keys = ("n_rows", "c2st_auc", "ks_max", "detection_max_abs_diff")
    return _finish(args, "evaluate-emulator", params, report, keys)


def _register_deepfield(ev) -> None:
    p = command(ev, "deepfield", _deepfield)
    p.add_argument("--real", required=True, help="the real (training) field, FITS")
    p.add_argument(
        "--generated", required=True, nargs="+", help="generated field(s), FITS (pooled)"
    )
    add_output(p, "report directory")
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
    add_no_mlflow(p)


def _deepfield(args: argparse.Namespace) -> int:
    r"""Compare sources detected in real and generated deep fields.

    Detect sources with sep using identical settings on the real and the generated field(s)
    (detection image: mean of the bands; >= --min-area connected pixels above --threshold
    sigma), measure per-band Kron magnitudes with each file's MAGZERO, and compare magnitude and
    colour distributions (KS p-values below the magnitude limit, median differences) and counts
    per arcmin².  Writes report.json, both source catalogs and PNG plots to --out; logs them to
    MLflow.  Example:
        galray evaluate deepfield --real data/deepfield-1024.fits --generated field.fits \
            --out report-df/
    """

    from galray.datasets.fitsfield import read_field
    from galray.evaluation.deepfield import DetectionSettings, deepfield_report

    settings = DetectionSettings(threshold=args.threshold, min_area=args.min_area, edge=args.edge)
    real = read_field(args.real)
    generated = [read_field(path) for path in args.generated]
    generated_by = [_fits_provenance(path) for path in args.generated]
    report = deepfield_report(
        real,
        generated,
        args.out,
        settings=settings,
        mag_limit=args.mag_limit,
        zeropoint=args.zeropoint,
        pixel_scale=args.pixel_scale,
        title=_fits_title(generated_by),
    )
    _record_provenance(args.out, report, {"generated": generated_by})
    params = {"real": args.real, "generated": ",".join(args.generated)[:6000]}
    params |= {f"detection.{k}": v for k, v in vars(settings).items()}
    keys = (
        "n_real",
        "n_generated",
        "ks_p_min",
        "median_dmag_max",
        "median_dmag_max_sigma",  # in units of the sampling error: the real field's own noise
        "count_ratio",
        "meets_targets",
    )
    return _finish(args, "evaluate-deepfield", params, report, keys)


def _register_stamps(ev) -> None:
    p = command(ev, "stamps", _stamps)
    add_model(p, "stamps")
    p.add_argument("--data", required=True, help="stamps directory (galray simulate stamps)")
    add_output(p, "report directory")
    p.add_argument("--rows", type=int, default=1000, help="at most this many test stamps")
    p.add_argument(
        "--morphology-rows",
        type=int,
        default=1000,
        help="stamps per kind measured by statmorph (~0.15 s each)",
    )
    p.add_argument("--sweep-points", type=int, default=8, help="grid points per condition")
    p.add_argument("--sweep-draws", type=int, default=12, help="galaxies per grid point")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated draws")
    p.add_argument(
        "--estimator",
        help="also measure real and generated stamps with this estimator (models:/NAME@ALIAS, "
        "runs:/ID/estimator or a bundle directory; one trained on the rich population)",
    )
    add_no_mlflow(p)


def _stamps(args: argparse.Namespace) -> int:
    r"""Generated vs simulated galaxy stamps on held-out properties, and monotonicity.

    For each test stamp, a generated galaxy with its properties and a single-Sersic baseline
    are observed through the stamp's PSF and noise; flux, HSM size and ellipticity and
    statmorph's Gini, M20, concentration and asymmetry are compared (KS per statistic; a
    cross-fitted classifier AUC on the statistics, and on the statistics given the properties,
    for the generator and for the baseline, with the paired difference and its error), and each
    condition is swept on a grid with the others fixed (Spearman rho of the statistic it
    controls).
    Writes report.json, CSVs and PNGs to --out; logs them to MLflow.  Example:
        galray evaluate stamps --model models:/galray-stamps@champion --data data/stamps-12k \
            --out report-stamps/
    """
    from galray.stamps import load
    from galray.stamps.config import StampEvalConfig
    from galray.stamps.evaluate import evaluate_model

    cfg = StampEvalConfig(
        rows=args.rows,
        sweep_points=args.sweep_points,
        sweep_draws=args.sweep_draws,
        morphology_rows=args.morphology_rows,
    )
    model = load(args.model)
    estimator = None
    if args.estimator:
        import galray.estimator

        estimator = galray.estimator.load(args.estimator)
    report = evaluate_model(model, args.data, args.out, cfg, seed=args.seed, estimator=estimator)
    params = {"model": args.model, "data": args.data, "rows": args.rows}
    if args.estimator:
        params["estimator"] = args.estimator
    keys = (
        "n_rows",
        "mag_bias_median",
        "hsm_size_ratio_median",
        "ks_max",
        "c2st_auc",
        "baseline_c2st_auc",
        "c2st_auc_minus_baseline",
        "beats_baseline",
        "monotonic_rho_min",
        *(["judge_within"] if args.estimator else []),
    )
    return _finish(args, "evaluate-stamps", params, report, keys)


def _register_estimator(ev) -> None:
    p = command(ev, "estimator", _estimator)
    add_model(p, "estimator")
    p.add_argument("--data", required=True, help="stamps directory (galray simulate stamps)")
    add_output(p, "report directory")
    p.add_argument("--rows", type=int, default=5000, help="at most this many test stamps")
    p.add_argument(
        "--bound-rows", type=int, default=1000, help="of those, how many get the Cramér-Rao bound"
    )
    p.add_argument(
        "--fit-rows", type=int, default=400, help="of those, how many get the likelihood fit"
    )
    p.add_argument("--workers", type=int, default=2, help="processes for the bound and the fit")
    add_no_mlflow(p)


def _estimator(args: argparse.Namespace) -> int:
    r"""The measurement yardstick against the Cramér-Rao bound and a likelihood fit.

    On the test split of a stamps directory: the CNN's bias, RMSE and coverage of its predicted
    uncertainties per parameter and optimal-S/N bin; on the single-Sersic population also each
    galaxy's Cramér-Rao bound (Fisher matrix of the pixel likelihood, GalSim model images) and a
    maximum-likelihood fit of the same GalSim model (scipy), with RMSE and bias over the bound
    for both, and seconds per galaxy of each.  Writes report.json, estimator_bins.csv and plots
    to --out; logs them to MLflow.  Example:
        galray evaluate estimator --model models:/galray-estimator@champion \
            --data data/sersic --out report-estimator/
    """
    import galray.estimator
    from galray.estimator.config import EstimatorEvalConfig
    from galray.estimator.evaluate import evaluate_estimator

    cfg = EstimatorEvalConfig(
        rows=args.rows, bound_rows=args.bound_rows, fit_rows=args.fit_rows, workers=args.workers
    )
    model = galray.estimator.load(args.model)
    report = evaluate_estimator(model, args.data, args.out, cfg)
    params = {"model": args.model, "data": args.data, "rows": args.rows}
    keys = [k for k in report if k.startswith(("rmse", "bias", "fit_rmse", "cov"))]
    keys = [k for k in keys if not k.endswith("_se")]
    keys += ["n_rows", "seconds_per_galaxy_cnn", "seconds_per_galaxy_fit"]
    keys += ["seconds_per_galaxy_bound", "meets_targets"]
    keys = [k for k in keys if k in report]  # the rich population has no bound, no fit
    return _finish(args, "evaluate-estimator", params, report, keys)


def _record_provenance(out, report: dict, provenance: dict) -> None:
    """Add ``provenance`` and galray's version to ``report`` and rewrite ``out/report.json``."""
    from pathlib import Path

    from galray._version import __version__
    from galray.io import write_json

    report["provenance"] = {**provenance, "galray_version": __version__}
    write_json(report, Path(out) / "report.json")


# what a generated FITS field's primary header records of its model (galray.deepfield.generate)
FITS_PROVENANCE = {
    "GRMODEL": "model",  # the registered name, else the URI
    "GRMVER": "version",
    "GRMALIAS": "alias",
    "GRRUNID": "run_id",
    "GRMURI": "uri",
    "GRVERS": "galray_version",
    "GRSEED": "seed",
}


def _fits_provenance(path: str) -> dict:
    """What the generated field ``path`` records of the model, version and seed that made it
    (None for each keyword it lacks, e.g. a field not generated by galray)."""
    from astropy.io import fits

    header = fits.getheader(path, 0)
    return {"path": path, **{name: header.get(key) for key, name in FITS_PROVENANCE.items()}}


def _fits_title(generated_by: list[dict]) -> str:
    """The figures' title: the generator (name vVERSION) and seed of each generated field."""
    parts = []
    for record in generated_by:
        model = record["model"] or "unknown generator"
        version = f" v{record['version']}" if record["version"] is not None else ""
        seed = f" seed {record['seed']}" if record["seed"] is not None else ""
        parts.append(f"{model}{version}{seed}")
    return "generated: " + "; ".join(dict.fromkeys(parts))


def add_no_mlflow(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-mlflow", action="store_true", help="do not log the report to MLflow")


def _finish(args: argparse.Namespace, run_name: str, params: dict, report: dict, keys) -> int:
    """Log the report to MLflow (experiment ``galray-evaluation``) unless ``--no-mlflow``, and
    print its headline numbers."""
    from pathlib import Path

    from galray.tracking import headline

    if not args.no_mlflow:
        import mlflow

        from galray.tracking import configure_tracking, get_or_create_experiment, log_report

        configure_tracking()
        experiment_id = get_or_create_experiment("galray-evaluation")
        params, tags, model_id = _model_version(params)
        tags["mlflow.note.content"] = _note(run_name, params, tags)
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
            mlflow.log_params(params)
            if model_id:  # the run page links to the model it scored
                from mlflow.entities import LoggedModelInput

                client = mlflow.MlflowClient()
                client.log_inputs(run.info.run_id, models=[LoggedModelInput(model_id)])
            log_report(report, args.out)
    values, warnings = headline(report, keys)  # a NaN is null, with a warning saying why
    print(json.dumps(values, indent=2))
    for line in warnings:
        print(line, file=sys.stderr)
    print(f"report: {Path(args.out) / 'report.json'}")
    return 0


def _note(run_name: str, params: dict, tags: dict) -> str:
    """The evaluation run's description: what was scored, against what."""
    what = tags.get("galray.model_version") or params.get("model") or params.get("generated")
    lines = [f"galray {run_name.replace('-', ' ')} of `{what}`."]
    if params.get("model_alias"):
        lines.append(f"It was `@{params['model_alias']}` when scored.")
    if tags.get("galray.training_run_id"):
        lines.append(f"Trained by run {tags['galray.training_run_id']}.")
    data = params.get("data") or params.get("real")
    if data:
        lines.append(
            f"Data: `{data}`" + (f", {params['split']} split." if "split" in params else ".")
        )
    return "\n\n".join(lines)


def _model_version(params: dict) -> tuple[dict, dict, str | None]:
    """The evaluation run's params and tags with the model as the version an alias resolved to
    (``models:/NAME/3``, not ``models:/NAME@champion``, which moves) and the run that trained it;
    and the logged model's id."""
    from galray.registry import is_remote, model_provenance

    uri = params.get("model")
    if not uri or not is_remote(uri):
        return params, {}, None
    model = model_provenance(uri)
    params = dict(params)
    tags = {}
    if model["registered_name"] and model["version"] is not None:
        params["model"] = tags["galray.model_version"] = (
            f"models:/{model['registered_name']}/{model['version']}"
        )
        if model["alias"]:
            params["model_alias"] = model["alias"]
    if model["run_id"]:
        tags["galray.training_run_id"] = model["run_id"]
    model_id = model["model_id"]
    if model_id is None and model["version"] is not None:  # the version's source names it
        import re

        from mlflow.tracking import MlflowClient

        version = MlflowClient().get_model_version(model["registered_name"], model["version"])
        match = re.fullmatch(r"models:/(m-[0-9a-f]+)/?", version.source or "")
        model_id = match and match[1]
    return params, tags, model_id
