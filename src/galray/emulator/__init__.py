"""The transfer-function emulator: true galaxy properties + observing conditions -> what the
survey measures and whether it detects the galaxy.

bundle (the saved model; loads without Ray or the trainers), features (column order,
standardisation, whitening), registry (MLflow), emulate (survey-scale batch emulation), config,
step (the plain-torch training step), loop (the Ray Train loop), spec (the job skeleton's
product declaration), quickstart.
"""

SUMMARY = "the transfer-function emulator (cWGAN-GP or conditional flow, + detection model)"
ABOUT = (
    "Trained on an injection catalog and its condition maps; logged to MLflow, registered, and "
    "scored on the held-out test split."
)
