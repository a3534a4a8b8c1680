"""PSF images of the stamp populations (:mod:`galray.datasets.stamps`,
:mod:`galray.datasets.sersic`)."""

from __future__ import annotations

import numpy as np


def psf_image(fwhm: float, size: int, pixel_scale: float, beta: float = 3.0) -> np.ndarray:
    """A Moffat PSF sampled at pixel centres (no pixel response), centred on pixel
    ``(size // 2, size // 2)``, summing to 1: float32 ``[size, size]``."""
    import galsim

    psf = galsim.Moffat(beta=beta, fwhm=fwhm)
    # an even-sized image is centred on a pixel corner; half a pixel puts the PSF on a centre
    img = psf.drawImage(nx=size, ny=size, scale=pixel_scale, method="no_pixel", offset=(0.5, 0.5))
    arr = img.array.astype(np.float64)
    return (arr / arr.sum()).astype(np.float32)
