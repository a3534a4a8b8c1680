"""Galaxy stamps: a PSF-aware conditional generative model of galaxy light profiles (a VAE with a
conditional flow prior in its latent space), loaded by name and drawn from GalSim.

bundle (the saved model; loads without Ray or the trainers), registry (MLflow), config, step (the
plain-torch training step), loop (the Ray Train loop), spec (the job skeleton's product
declaration), evaluate (generated vs simulated stamps, monotonicity sweeps), galsim_config (a
GalSim config object type: ``modules: [galray.stamps.galsim_config]``).

    import galray.stamps
    model = galray.stamps.load("models:/galray-stamps@champion")    # or a bundle directory
    profiles = model.sample(table, seed=0)   # table columns: mag, hlr, z, ellipticity
    image = galsim.Convolve(profiles[0], psf).drawImage(scale=0.15, method="no_pixel")
"""

from __future__ import annotations

SUMMARY = "the galaxy-stamp generator (VAE + conditional flow, PSF-aware) on GalSim stamps"
ABOUT = (
    "Trained on noisy, PSF-convolved stamps through each stamp's own PSF and noise; logged to "
    "MLflow, registered, and scored against held-out stamps (flux, HSM moments, morphology, "
    "classifier AUC, monotonicity in each condition)."
)


def load(uri, device: str = "cpu"):
    """The stamp generator ``uri`` names: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
    ``runs:/RUN_ID/stamps`` or a bundle directory (:class:`~galray.stamps.bundle.StampModel`)."""
    from galray.stamps.registry import KIND

    return KIND.load_uri(uri, device=device)
