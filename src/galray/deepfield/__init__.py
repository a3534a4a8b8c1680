"""The deep-field generator: a Spatial GAN that generates seamless multi-band deep fields of any
size.

bundle (the saved model; loads without Ray or the trainers), registry (MLflow), generate (tiled
generation streamed to FITS), noise and scaling (the noise array and intensity scaling), config,
step (the plain-torch training step), loop (the Ray Train loop), spec (the job skeleton's
product declaration).
"""

SUMMARY = "the deep-field generator (Spatial GAN) on a multi-band FITS image"
ABOUT = (
    "Trained on random crops of a deep field; logged to MLflow, registered, and scored by "
    "source extraction on a generated field the size of the image."
)
