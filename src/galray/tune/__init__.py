"""Hyperparameter sweeps with Ray Tune (``galray tune PRODUCT``).

Every product of :mod:`galray.products` is tunable: a trial runs the product's own Ray Train
job (:meth:`~galray.training.job.ProductSpec.build_trainer`), and the best checkpoint becomes the
product's model through :func:`~galray.training.job.publish`.  The sweep itself -- search space,
ASHA, MLflow parent/child runs, resume -- is the same for every product
(:mod:`galray.tune.sweep`).
"""
