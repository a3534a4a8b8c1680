"""The measurement yardstick: a CNN that measures galaxy stamps (each parameter with a calibrated
uncertainty), judged against the Cramér–Rao bound and a maximum-likelihood fit, then used to
judge generated stamps.

bundle (the saved model; loads without Ray or the trainers), registry (MLflow), config, step (the
plain-torch training step), loop (the Ray Train loop), spec (the job skeleton's product
declaration), bound (Fisher matrix and Cramér–Rao bound of the pixel likelihood), fit (the
maximum-likelihood fit), evaluate (bias, RMSE and coverage against the bound, per S/N bin),
judge (the estimator applied to generated stamps).

    import galray.estimator
    model = galray.estimator.load("models:/galray-estimator@champion")   # or a bundle directory
    table = model.measure(stamps, psf_images, noise_sigma)   # flux, sersic_n, hlr, g1, g2 (+ _err)
"""

from __future__ import annotations

SUMMARY = "the measurement yardstick (a CNN with uncertainties) on GalSim stamps"
ABOUT = (
    "Measures each stamp's parameters (single-Sersic: flux, index, half-light radius, g1, g2) "
    "with calibrated uncertainties; scored against the Cramér-Rao bound and a likelihood fit "
    "per S/N bin, and used to judge generated stamps (galray evaluate stamps --estimator)."
)


def load(uri, device: str = "cpu"):
    """The estimator ``uri`` names: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
    ``runs:/RUN_ID/estimator`` or a bundle directory (:class:`~galray.estimator.bundle.
    EstimatorModel`)."""
    from galray.estimator.registry import KIND

    return KIND.load_uri(uri, device=device)
