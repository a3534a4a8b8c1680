"""One hyperparameter sweep as one Ray Tune experiment: trials, ASHA, MLflow runs, resume.

Each trial is a small function trainable (a fraction of a CPU) that runs the trainer's own Ray
Train job -- the same ``TorchTrainer`` as ``galray train`` -- with ``TuneReportCallback``
forwarding every epoch's report (metrics and checkpoint path) to Tune.  Ray Train V2 does not run
inside ``Tuner(trainer)``; this is its supported Train-in-Tune form.

Layout of a sweep directory ``<tune.storage_path>/<tune.name>``::

    galray-sweep.json    what ``--resume`` needs: product, validated config, MLflow parent run
    asha-rungs.state     ASHA's rungs as JSON (Tune does not save its scheduler's state)
    trials/<trial_id>/   each trial's Ray Train run: checkpoints, resumed from on restart
    <trial_id>/          Tune's trial directory (result.json, progress.csv)
    best/                the best trial's exported model (and its fidelity report)

Resume.  After the driver dies, ``Tuner.restore`` reloads the experiment: finished trials stay
finished; unfinished ones restart, and because their Ray Train run has the same name and storage,
Train resumes it from its latest checkpoint instead of epoch 1.

MLflow.  One parent run per sweep (base config, search space, best trial and model), one child run
per trial (tag ``mlflow.parentRunId``) holding as params what the search space sampled for the
trial and the model it trains (:func:`trial_params`: the columns MLflow's compare view sets side
by side; the parent holds the rest as ``base.*``) and its per-epoch metrics, logged by the
trainer's rank 0.  The best trial's model is exported from its
best checkpoint, logged to the parent run and registered under ``tracking.registered_name`` with
``tracking.alias``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

from galray.config import to_dict
from galray.errors import ConfigError, OutputExistsError
from galray.products import get_product
from galray.training.job import publish
from galray.tune.results import SweepResult, pick_best, trial_rows
from galray.tune.search_space import Sweep, TuneSettings, build_sweep, trial_config

STATE_FILE = "galray-sweep.json"
# Not "*.json": on restore Tune copies every .json/.pkl of the experiment directory into its
# driver staging directory and uploads that copy back at each sync, which would overwrite the
# rungs the resumed scheduler writes with those of the interrupted run.
ASHA_STATE_FILE = "asha-rungs.state"
TRIALS_DIR = "trials"
BEST_DIR = "best"
TAG_TRIAL = "galray.trial_id"
TAG_SWEEP = "galray.sweep"
TAG_STATUS = "galray.tune_status"


# ----------------------------------------------------------------------------- the trial


def _run_trial(
    params: dict,
    *,
    product: str,
    base_dict: dict,
    sweep_dir: str,
    metric: str,
    mode: str,
    mlflow: dict,
) -> None:
    """The Tune function trainable: one trial = one Ray Train run of the trainer."""
    import ray.data
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    spec = get_product(product)
    cfg = trial_config(spec.config_cls, base_dict, params)
    trial_id = ray.tune.get_context().get_trial_id()
    ray.data.DataContext.get_current().enable_progress_bars = False
    mlflow_info, client = {}, None
    if mlflow:
        client, run_id = _child_run(mlflow, trial_id, trial_params(spec, cfg, params))
        mlflow_info = {"tracking_uri": mlflow["tracking_uri"], "run_id": run_id}
    torch_trainer = spec.build_trainer(
        cfg,
        spec.load_data(cfg),
        storage=str(Path(sweep_dir) / TRIALS_DIR),
        name=trial_id,
        mlflow_info=mlflow_info,
        callbacks=[TuneReportCallback()],
        keep_best=(metric, mode),
    )
    result = torch_trainer.fit()
    if result.error is not None:
        raise result.error
    if client is not None:
        client.set_terminated(mlflow_info["run_id"], "FINISHED")


def trial_params(spec, cfg, params: dict) -> dict[str, str]:
    """A trial's MLflow params: the fields the search space varies (dotted, as the parent's
    ``search.*`` names them), with the values ``cfg`` resolved them to, and ``model``, the model
    kind the trial trains (``spec.model_of``)."""
    from galray.tracking import flatten_params

    flat = flatten_params(to_dict(cfg))
    sampled = {
        key: value
        for key, value in flat.items()
        if any(key == path or key.startswith(path + ".") for path in params)
    }
    return {"model": spec.model_of(cfg), **sampled}


def _child_run(mlflow: dict, trial_id: str, params: dict[str, str]) -> tuple[Any, str]:
    """The trial's MLflow run under the sweep's parent run, created once with ``params``
    (:func:`trial_params`); a resumed trial finds and reopens its run."""
    from mlflow.tracking import MlflowClient

    from galray.tracking import configure_tracking, log_params_flat

    configure_tracking(mlflow["tracking_uri"])
    client = MlflowClient(mlflow["tracking_uri"])
    existing = _find_child(client, mlflow, trial_id)
    if existing is not None:
        client.update_run(existing, status="RUNNING")
        return client, existing
    run = client.create_run(
        mlflow["experiment_id"],
        run_name=trial_id,
        tags={
            "mlflow.parentRunId": mlflow["parent_run_id"],
            TAG_TRIAL: trial_id,
            TAG_SWEEP: mlflow["sweep"],
        },
    )
    log_params_flat(params, run_id=run.info.run_id)
    return client, run.info.run_id


def _find_child(client, mlflow: dict, trial_id: str) -> str | None:
    runs = client.search_runs(
        [mlflow["experiment_id"]],
        filter_string=(
            f"tags.`mlflow.parentRunId` = '{mlflow['parent_run_id']}' "
            f"and tags.`{TAG_TRIAL}` = '{trial_id}'"
        ),
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


# ----------------------------------------------------------------------------- ASHA


def _scheduler(settings: TuneSettings, epochs: int, sweep_dir: Path):
    from ray.tune.schedulers import FIFOScheduler

    if settings.scheduler == "fifo":
        return FIFOScheduler()
    return _resumable_asha_class()(
        state_file=str(sweep_dir / ASHA_STATE_FILE),
        time_attr="epoch",
        max_t=epochs,
        grace_period=settings.grace_period,
        reduction_factor=settings.reduction_factor,
    )


def _resumable_asha_class():
    """ASHA that keeps its rungs (trial -> metric at each milestone) in a JSON file, so a resumed
    sweep judges new trials against those that ran before the interruption."""
    from ray.tune.schedulers import ASHAScheduler

    class ResumableASHA(ASHAScheduler):
        def __init__(self, state_file: str, **kwargs):
            super().__init__(**kwargs)
            self.state_file = state_file
            self._loaded = False

        def _rungs(self):
            return [rung for bracket in self._brackets for rung in bracket._rungs]

        def _load(self) -> None:
            self._loaded = True
            path = Path(self.state_file)
            if not path.exists():
                return
            saved = {float(k): v for k, v in json.loads(path.read_text()).items()}
            for milestone, recorded in self._rungs():
                recorded.update(saved.get(float(milestone), {}))

        def on_trial_result(self, tune_controller, trial, result):
            if not self._loaded:
                self._load()
            action = super().on_trial_result(tune_controller, trial, result)
            state = {str(m): r for m, r in self._rungs()}
            tmp = Path(self.state_file + ".tmp")
            tmp.write_text(json.dumps(state))
            tmp.replace(self.state_file)
            return action

    return ResumableASHA


# ----------------------------------------------------------------------------- the driver


def _trial_name(trial) -> str:
    return trial.trial_id


def _tuner_parts(spec, sweep: Sweep, sweep_dir: Path, mlflow: dict):
    from ray import tune

    settings = sweep.settings
    metric = settings.metric or spec.metric
    trainable = tune.with_resources(
        tune.with_parameters(
            _run_trial,
            product=spec.name,
            base_dict=sweep.base_dict,
            sweep_dir=str(sweep_dir),
            metric=metric,
            mode=settings.mode,
            mlflow=mlflow,
        ),
        {"CPU": settings.trial_cpus},
    )
    return trainable, metric


def start_sweep(spec, sweep: Sweep, *, log=print, verbose: int = 1) -> SweepResult:
    """Run a new sweep; its directory must not exist yet."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from galray import console
    from galray.training.ray_env import init_ray

    t0 = time.perf_counter()
    settings = sweep.settings
    name = settings.name or f"tune-{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage = Path(settings.storage_path).resolve()
    sweep_dir = storage / name
    if sweep_dir.exists():
        raise OutputExistsError(
            f"tune.name: {sweep_dir} exists; resume it with --resume {sweep_dir}, "
            "or choose another tune.name"
        )
    epochs = sweep.base.epochs
    if settings.scheduler == "asha" and settings.grace_period > epochs:
        raise ConfigError(
            f"tune.grace_period: must be <= train.epochs ({epochs}), got {settings.grace_period}"
        )
    base = spec.absolute_paths(spec.prepare(sweep.base, log))
    spec.load_data(base)  # check the data once, here, rather than in every trial
    raw = dict(sweep.raw, train=to_dict(base), tune=to_dict(settings) | {"name": name})
    sweep = build_sweep(spec.name, spec.config_cls, raw, fixed=spec.fixed)
    init_ray()
    mlflow = _open_parent(sweep, name, log)
    sweep_dir.mkdir(parents=True)
    state = {"trainer": spec.name, "raw": raw, "mlflow": mlflow}  # key kept for old sweeps
    (sweep_dir / STATE_FILE).write_text(json.dumps(state, indent=2))

    trainable, metric = _tuner_parts(spec, sweep, sweep_dir, mlflow)
    tuner = tune.Tuner(
        trainable,
        param_space=sweep.param_space(),
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=settings.mode,
            scheduler=_scheduler(settings, epochs, sweep_dir),
            # the generator itself limits concurrency: Tune ignores max_concurrent_trials
            # when given a search generator
            search_alg=BasicVariantGenerator(
                max_concurrent=settings.max_concurrent_trials, random_state=settings.seed
            ),
            num_samples=settings.num_samples,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(storage),
            verbose=verbose if console.is_verbose() else 0,  # quiet: galray's trial progress
            callbacks=[_trial_progress(_n_trials(sweep), metric)],
        ),
    )
    log(f"sweep {name}: {sweep_dir}  (resume with: galray tune {spec.name} --resume {sweep_dir})")
    grid = tuner.fit()
    return _finish(spec, sweep, sweep_dir, grid, mlflow, t0, log)


def resume_sweep(
    path: str | Path, *, product: str | None = None, log=print, verbose: int = 1
) -> SweepResult:
    """Continue the interrupted sweep in directory ``path``: finished trials are kept, unfinished
    (and errored) ones resume from their latest checkpoint, the rest start.  product: if given,
    the sweep must be one of this product (or its alias)."""
    from ray import tune

    from galray.training.ray_env import init_ray

    t0 = time.perf_counter()
    sweep_dir = Path(path).resolve()
    state_path = sweep_dir / STATE_FILE
    if not state_path.is_file():
        raise ConfigError(f"--resume: {sweep_dir} is not a galray sweep (no {STATE_FILE})")
    state = json.loads(state_path.read_text())
    if product is not None and get_product(state["trainer"]).name != get_product(product).name:
        raise ConfigError(f"--resume: {sweep_dir} is a sweep of {state['trainer']}, not {product}")
    spec = get_product(state["trainer"])
    sweep = build_sweep(spec.name, spec.config_cls, state["raw"], fixed=spec.fixed)
    init_ray()
    mlflow = state["mlflow"]
    if mlflow:
        import mlflow as mlflow_module

        from galray.tracking import configure_tracking

        configure_tracking(mlflow["tracking_uri"])
        mlflow_module.MlflowClient().update_run(mlflow["parent_run_id"], status="RUNNING")
    if not tune.Tuner.can_restore(str(sweep_dir)):
        raise ConfigError(f"--resume: {sweep_dir} holds no Tune experiment state yet")
    trainable, _ = _tuner_parts(spec, sweep, sweep_dir, mlflow)
    log(f"resuming sweep {sweep_dir.name} from {sweep_dir}")
    tuner = tune.Tuner.restore(
        str(sweep_dir), trainable=trainable, resume_unfinished=True, resume_errored=True
    )
    grid = tuner.fit()
    return _finish(spec, sweep, sweep_dir, grid, mlflow, t0, log)


def _n_trials(sweep: Sweep) -> int:
    """The sweep's trials: ``num_samples`` times every ``grid`` combination."""
    n = sweep.settings.num_samples
    for d in sweep.space:
        if d.kind == "grid":
            n *= len(d.args)
    return n


def _trial_progress(total: int, metric: str):
    """A Tune callback counting finished trials on the console (:func:`galray.console.progress`:
    a bar on a terminal, a plain line every 10% or 30 s when piped)."""
    from ray import tune

    from galray import console

    class TrialProgress(tune.Callback):
        def __init__(self):
            self.bar = None

        def setup(self, total_num_samples=None, **info):  # Tune's count: grids expanded
            self.bar = console.progress(total_num_samples or total, "trials", unit="trial")

        def _done(self, trial, state: str) -> None:
            value = (trial.last_result or {}).get(metric)
            shown = f"{value:.4g}" if isinstance(value, int | float) else "-"
            self.bar.set_postfix_str(f"last: {trial.trial_id} {state} {metric}={shown}")
            self.bar.update(1)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._done(trial, "done")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._done(trial, "error")

        def on_experiment_end(self, trials, **info):
            self.bar.close()

    return TrialProgress()


def _open_parent(sweep: Sweep, name: str, log) -> dict:
    """Create the sweep's parent MLflow run; ``{}`` when tracking is off."""
    tracking_cfg = sweep.base.tracking
    if not tracking_cfg.enabled:
        return {}
    from mlflow.tracking import MlflowClient

    from galray import tracking

    uri = tracking.configure_tracking()
    experiment_id = tracking.get_or_create_experiment(tracking_cfg.experiment)
    client = MlflowClient(uri)
    run = client.create_run(
        experiment_id, run_name=tracking_cfg.run_name or name, tags={TAG_SWEEP: name}
    )
    run_id = run.info.run_id
    tracking.log_params_flat(sweep.base_dict, prefix="base.", run_id=run_id)
    tracking.log_params_flat(to_dict(sweep.settings), prefix="tune.", run_id=run_id)
    tracking.log_params_flat({f"search.{d.path}": d.describe() for d in sweep.space}, run_id=run_id)
    log(f"MLflow parent run {run_id} ({uri})")
    return {
        "tracking_uri": uri,
        "experiment_id": experiment_id,
        "parent_run_id": run_id,
        "sweep": name,
    }


# ----------------------------------------------------------------------------- the end


def _finish(spec, sweep, sweep_dir: Path, grid, mlflow: dict, t0: float, log) -> SweepResult:
    settings = sweep.settings
    metric = settings.metric or spec.metric
    rows = trial_rows(grid, metric, settings.mode, sweep.base.epochs)

    def outcome(**kwargs) -> SweepResult:
        return SweepResult(
            product=spec.name,
            name=sweep_dir.name,
            path=str(sweep_dir),
            metric=metric,
            mode=settings.mode,
            parent_run_id=mlflow.get("parent_run_id"),
            trials=rows,
            **kwargs,
        )

    expected = sweep.settings.num_samples * math.prod(
        len(d.args) for d in sweep.space if d.kind == "grid"
    )
    if len(grid) < expected or grid.num_terminated + grid.num_errors < len(grid):
        # Tune returns normally after Ctrl-C: publish nothing, leave the parent run RUNNING
        log(f"sweep interrupted; continue it with: galray tune {spec.name} --resume {sweep_dir}")
        return outcome(best=None, seconds=time.perf_counter() - t0, interrupted=True)
    best = pick_best(rows)
    client = None
    if mlflow:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(mlflow["tracking_uri"])
        for row in rows:
            row.run_id = _find_child(client, mlflow, row.trial_id)
            if row.run_id is None:
                continue
            client.set_tag(row.run_id, TAG_STATUS, row.status)
            client.log_metric(row.run_id, "epochs_run", row.epochs)
            if not math.isnan(row.best):
                client.log_metric(row.run_id, f"best_{metric}", row.best)
            client.set_terminated(row.run_id, "FAILED" if row.status == "error" else "FINISHED")
    model: dict = {}
    if best is not None:
        cfg = sweep.trial_config(best.params)
        info = {"sweep": sweep_dir.name, "trial_id": best.trial_id, "trial_run_id": best.run_id}
        published = publish(
            spec,
            cfg,
            best.checkpoint,
            sweep_dir / BEST_DIR,
            run_id=mlflow.get("parent_run_id"),
            info=info,
            log=log,
        )
        model = dataclasses.asdict(published)
    seconds = time.perf_counter() - t0
    if client is not None:
        parent = mlflow["parent_run_id"]
        if best is not None:
            client.set_tag(parent, "galray.best_trial_id", best.trial_id)
            if best.run_id:
                client.set_tag(parent, "galray.best_run_id", best.run_id)
            client.log_metric(parent, f"best_{metric}", best.best)
            for key, value in best.params.items():
                client.set_tag(parent, f"galray.best.{key}", str(value))
        client.log_metric(parent, "trial_epochs", sum(r.epochs for r in rows))
        client.log_metric(parent, "trials", len(rows))
        client.set_terminated(parent, "FINISHED" if best is not None else "FAILED")
    return outcome(best=best, model=model, seconds=seconds)
