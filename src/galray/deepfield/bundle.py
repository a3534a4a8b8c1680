"""A trained deep-field generator as one object: generate images in physical units, save, load.

A saved generator is a directory (a "bundle")::

    sgan.json       format version, network config, intensity scaling, bands, AB zeropoints,
                    pixel scale (arcsec), pixel unit, sky centre, training provenance
    generator.pt    state dict of the generator (the EMA weights when training kept them)

MLflow stores the same directory as the ``bundle`` artifact of a logged pyfunc model
(:mod:`galray.deepfield.registry`), so ``models:/NAME@ALIAS`` resolves to it.  Loading a bundle
imports no trainer.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from galray.deepfield.noise import Tile, noise_window, plan_tiles
from galray.deepfield.scaling import IntensityScaling
from galray.io import load_weights_bundle, save_weights_bundle
from galray.models.sgan import Generator, SGANNetConfig, noise_halo

BUNDLE_FORMAT = "galray.sgan"
BUNDLE_VERSION = 1
BUNDLE_META = "sgan.json"
BUNDLE_WEIGHTS = "generator.pt"


class DeepFieldModel:
    """Generates multi-band deep fields of any size in the training image's units.

    bands / zeropoints (AB) / pixel_scale (arcsec) / bunit / center (ra, dec in deg): what the
    training image said, written into every generated file.
    """

    def __init__(
        self,
        generator: Generator,
        scaling: IntensityScaling,
        bands: list[str],
        zeropoints: list[float | None],
        pixel_scale: float | None,
        bunit: str | None = None,
        center: tuple[float, float] | None = None,
        info: dict | None = None,
    ):
        # channels_last: 2-5x faster transposed convolutions on CPU (oneDNN) and GPU alike
        self.generator = generator.eval().requires_grad_(False)
        self.generator.to(memory_format=torch.channels_last)
        self.scaling = scaling
        self.bands = list(bands)
        self.zeropoints = list(zeropoints)
        self.pixel_scale = pixel_scale
        self.bunit = bunit
        self.center = tuple(center) if center is not None else None
        self.info = dict(info or {})

    @property
    def net(self) -> SGANNetConfig:
        return self.generator.cfg

    @property
    def upsampling(self) -> int:
        return self.generator.upsampling

    @property
    def halo(self) -> tuple[int, int]:
        """Noise cells ``(before, after)`` a tile needs around its own (see ``noise_halo``)."""
        return noise_halo(self.generator.geometry, self.upsampling)

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def to(self, device: str | torch.device) -> DeepFieldModel:
        self.generator.to(device)
        return self

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def _scaled_tile(self, tile: Tile, seed: int) -> torch.Tensor:
        """The kept pixels of ``tile``, scaled, on the model's device: ``[C, h, w]``."""
        z = noise_window(seed, self.net.noise_channels, tile.r0, tile.r1, tile.c0, tile.c1)
        z = torch.from_numpy(z)[None].to(self.device).contiguous(memory_format=torch.channels_last)
        out = self.generator(z)[0]
        s = self.upsampling
        y0, x0 = tile.y0 - tile.r0 * s, tile.x0 - tile.c0 * s
        return out[:, y0 : y0 + tile.y1 - tile.y0, x0 : x0 + tile.x1 - tile.x0]

    def scaled_tile(self, tile: Tile, seed: int) -> np.ndarray:
        """The kept pixels of ``tile`` in the generator's (0, 1) units: float32 ``[C, h, w]``."""
        return self._scaled_tile(tile, seed).float().cpu().numpy()

    def tile(self, tile: Tile, seed: int) -> np.ndarray:
        """The kept pixels of ``tile`` in physical units: float32 ``[C, h, w]`` (unscaled on the
        model's device, so only the result crosses to the host)."""
        return self.scaling.inverse_torch(self._scaled_tile(tile, seed)).cpu().numpy()

    def plan(self, height: int, width: int, tile: int | None = None) -> list[Tile]:
        """Tiles of ``tile`` pixels (None: one tile, i.e. one pass) covering the field."""
        side = tile or -(-max(height, width) // self.upsampling) * self.upsampling
        return plan_tiles(height, width, side, self.upsampling, self.halo)

    def generate(
        self, height: int, width: int, seed: int = 0, *, tile: int | None = None, scaled=False
    ) -> np.ndarray:
        """A ``[C, height, width]`` float32 field in memory (physical units unless ``scaled``).

        ``tile`` None generates in one pass; otherwise tile by tile (the same image).  For fields
        larger than memory use :func:`galray.deepfield.generate.generate_fits`.
        """
        out = np.empty((len(self.bands), height, width), dtype=np.float32)
        for t in self.plan(height, width, tile):
            out[:, t.y0 : t.y1, t.x0 : t.x1] = (
                self.scaled_tile(t, seed) if scaled else self.tile(t, seed)
            )
        return out

    # ------------------------------------------------------------------ persistence
    def meta(self) -> dict:
        return {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "net": asdict(self.net),
            "scaling": self.scaling.to_dict(),
            "bands": self.bands,
            "zeropoints": self.zeropoints,
            "pixel_scale": self.pixel_scale,
            "bunit": self.bunit,
            "center": list(self.center) if self.center is not None else None,
            "info": self.info,
        }

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        return save_weights_bundle(
            path, BUNDLE_META, self.meta(), BUNDLE_WEIGHTS, self.generator, overwrite=overwrite
        )

    @classmethod
    def from_meta(cls, meta: dict, state: dict[str, torch.Tensor]) -> DeepFieldModel:
        net = SGANNetConfig(**meta["net"])
        generator = Generator(net)
        generator.load_state_dict(state)
        return cls(
            generator,
            IntensityScaling.from_dict(meta["scaling"]),
            meta["bands"],
            meta["zeropoints"],
            meta.get("pixel_scale"),
            meta.get("bunit"),
            meta.get("center"),
            meta.get("info"),
        )

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> DeepFieldModel:
        meta, weights = BUNDLE_META, BUNDLE_WEIGHTS
        label = "deep-field generator"
        model = load_weights_bundle(
            path, meta, weights, BUNDLE_FORMAT, BUNDLE_VERSION, label, cls.from_meta
        )
        return model.to(device)
