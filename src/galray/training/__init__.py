"""What every galray product's training shares, and the job skeleton that runs it.

* :mod:`~galray.training.config`: the config sections every training job has -- worker scaling
  (:class:`WorkerScaling`), MLflow tracking (:class:`TrackingConfig`), the adversarial optimiser's
  common fields (:class:`AdversarialOptim`) and the job fields (:class:`TrainJobConfig`).
* :mod:`~galray.training.modules`: the parts of a training state -- EMA of a generator, learning
  rate schedule, metric sums read once per epoch, gradient averaging across ranks.
* :mod:`~galray.training.worker`: inside a Ray Train worker -- rank and device, per-epoch seeds,
  the time budget, checkpoints, per-epoch MLflow metrics, progress lines, fault injection.
* :mod:`~galray.training.trainer`: the ``TorchTrainer`` of a job (scaling, failures, checkpoints).
* :mod:`~galray.training.ray_env`: connect to Ray or start a local instance.
* :mod:`~galray.training.job`: :class:`ProductSpec` (what a product declares) and
  :func:`run_training` / :func:`publish` (what ``galray train``, ``galray tune`` and ``jobs/`` run).

Nothing here knows a product: products (:mod:`galray.emulator`, :mod:`galray.deepfield`) import
these parts, never the other way round.
"""
