"""A GalSim config plug-in: generated galaxies in GalSim YAML files, drawn by the ``galsim``
executable.

Loaded by GalSim's own module mechanism (``modules: [galray.stamps.galsim_config]``), it
registers, through ``galsim.config``'s plug-in API,

* an input type ``galray_stamps`` -- ``model``: a model URI (``models:/galray-stamps@champion``,
  ``runs:/...``) or a bundle directory; ``device`` (default ``cpu``) -- loaded once per process;
* an object type ``GalrayStamp`` whose parameters are the model's properties (``mag``, ``hlr``,
  ``z``, ``ellipticity``; any GalSim value type, e.g. ``{type: Random, min: 20, max: 23}``) and
  an optional integer ``seed``.  Without a seed each object draws one from the object's own
  GalSim random number generator, so a file is reproducible from ``image.random_seed``.

The object is the model's intrinsic profile (an ``InterpolatedImage``, flux from ``mag``);
GalSim's usual fields apply on top (``rotate``, ``shear``, ``shift``, ...) and the PSF is
convolved as for any galaxy.  The profile includes the model's pixel response: draw with
``image.draw_method: no_pixel`` at the model's pixel scale.  See ``examples/stamps.yaml``::

    galsim examples/stamps.yaml input.galray_stamps.model=path/to/bundle
"""

from __future__ import annotations

import galsim
import galsim.config

INPUT_TYPE = "galray_stamps"
OBJECT_TYPE = "GalrayStamp"


class GalrayStampsInput:
    """The input object GalSim builds from ``input.galray_stamps``: a loaded stamp model."""

    _req_params = {"model": str}  # noqa: RUF012 (GalSim reads these class attributes)
    _opt_params = {"device": str}  # noqa: RUF012
    _single_params = []  # noqa: RUF012
    _takes_rng = False

    def __init__(self, model: str, device: str = "cpu"):
        from galray.stamps import load

        self.uri = model
        self.model = load(model, device=device)

    def sample(self, properties: dict[str, float], seed: int):
        return self.model.sample({k: [v] for k, v in properties.items()}, seed=seed)[0]


def build_galray_stamp(config, base, ignore, gsparams, logger):
    """GalSim's object builder of ``type: GalrayStamp``: ``(profile, safe)``."""
    stamps = galsim.config.GetInputObj(INPUT_TYPE, config, base, OBJECT_TYPE)
    req = dict.fromkeys(stamps.model.conditions.names, float)
    params, _ = galsim.config.GetAllParams(config, base, req=req, opt={"seed": int}, ignore=ignore)
    seed = params.pop("seed", None)
    if seed is None:
        seed = galsim.config.GetRNG(config, base, logger, OBJECT_TYPE).raw()
    profile = stamps.sample(params, int(seed))
    if gsparams:
        profile = profile.withGSParams(**gsparams)
    return profile, False  # every object is a new draw: never reuse it


galsim.config.RegisterInputType(INPUT_TYPE, galsim.config.InputLoader(GalrayStampsInput))
galsim.config.RegisterObjectType(OBJECT_TYPE, build_galray_stamp, input_type=INPUT_TYPE)
