"""A trained transfer-function emulator as one object: load it, sample it.

A saved emulator is a directory (a "bundle")::

    emulator.json    format version, bands, model kind (``gan`` or ``flow``), network configs,
                     training provenance
    features.json    column order and standardisation (:class:`galray.emulator.features.EmulatorFeatures`)
    generator.pt     state dict of the conditional generator (the cWGAN-GP's generator or the
                     conditional flow: both map base noise and conditions to a measurement)
    detection.pt     state dict of the detection model

MLflow stores the same directory as the artifacts of a logged model, so a registry URI resolves
to it (:func:`galray.emulator.registry.load_emulator`).  Loading a bundle imports no trainer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from galray.datasets import selection
from galray.datasets.survey import SurveySpec
from galray.emulator.features import EmulatorFeatures
from galray.errors import DataError, GalrayError
from galray.io import atomic_directory, read_bundle_meta, reading_bundle
from galray.models import precision as precision_module
from galray.models.emulator import ConditionalGenerator, DetectionModel, NetConfig
from galray.models.flow import ConditionalFlow, FlowConfig

if TYPE_CHECKING:
    import pyarrow

BUNDLE_META = "emulator.json"
BUNDLE_VERSION = 1
# Rows per network call when sampling on a CPU: a block's activations must stay in cache
# (8192 rows sample ~1.9x faster than 65536 through an MLP 128x3 on one core).  Other devices
# take the whole batch.
NETWORK_BLOCK = {"cpu": 8_192}


def build_generator(
    features: EmulatorFeatures, net: NetConfig, flow: FlowConfig | None
) -> ConditionalGenerator | ConditionalFlow:
    """An untrained generator of the given shape: the conditional flow if ``flow`` is given,
    else the cWGAN-GP generator."""
    if flow is not None:
        return ConditionalFlow(features.n_cond, features.n_target, flow)
    return ConditionalGenerator(features.n_cond, features.n_target, net)


class Emulator:
    """Samples observed fluxes, magnitudes and detection given truth and observing conditions."""

    def __init__(
        self,
        generator: ConditionalGenerator | ConditionalFlow,
        detection: DetectionModel,
        features: EmulatorFeatures,
        net: NetConfig,
        info: dict | None = None,
        flow: FlowConfig | None = None,
        precision: str = "auto",
    ):
        precision_module.resolve(precision, torch.device("cpu"))  # a bad name raises here
        self.precision = precision
        self.generator = generator.eval()
        self.detection = detection.eval()
        self.features = features
        self.net = net
        self.flow = flow
        self.info = dict(info or {})

    @property
    def model(self) -> str:
        """``"flow"`` or ``"gan"``: which kind of generator samples the measurements."""
        return "flow" if self.flow is not None else "gan"

    @property
    def bands(self) -> list[str]:
        return list(self.features.bands)

    @property
    def input_columns(self) -> list[str]:
        """The columns :meth:`sample` needs: the survey spec's truth, then its conditions."""
        return self.features.spec.input_columns

    @property
    def spec(self) -> SurveySpec:
        """The survey spec the emulator was trained on (its inputs, outputs, selection)."""
        return self.features.spec

    @property
    def output_columns(self) -> list[str]:
        """What :meth:`sample` returns: ``detected``, ``p_detected``, the spec's measured
        columns and ``selected``."""
        fluxes = [f"obs_{q}_{b}" for b in self.bands for q in ("flux", "mag")]
        return ["detected", "p_detected", *fluxes, *self.spec.measured_columns, "selected"]

    def to(self, device: str | torch.device) -> Emulator:
        self.generator.to(device)
        self.detection.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """What :attr:`precision` (``auto``, ``fp32`` or ``bf16``) means on this device:
        the dtype of the networks' hidden-to-hidden products when sampling
        (:mod:`galray.models.precision`; the flow's splines are always float32)."""
        return precision_module.resolve(self.precision, self.device)

    @torch.inference_mode()
    def sample(
        self,
        rows: Mapping[str, np.ndarray] | pd.DataFrame,
        *,
        seed: int = 0,
        output: str | None = None,
    ) -> dict[str, np.ndarray] | pd.DataFrame | pyarrow.Table:
        """Emulate one measurement of each row.

        rows: the columns of :attr:`input_columns` (for the r,i,z survey: true magnitudes AB,
        ``true_size`` arcsec, ``psf_fwhm_b`` arcsec, ``depth_b`` AB), as a DataFrame or a
        mapping of arrays.  Returns the columns of :attr:`output_columns`: ``detected``
        (bool), ``p_detected``, ``obs_flux_b`` / ``obs_mag_b`` (NaN where not detected; mag NaN
        where flux <= 0), the spec's other measurements (NaN where not detected; flags 0) and
        ``selected``, the spec's selection evaluated on ``rows`` and the emulated columns (a
        selection naming a column neither holds raises DataError).  The same rows and seed
        give the same output.

        output: ``"frame"`` (a pandas DataFrame; with the index of ``rows`` when that is a
        DataFrame), ``"dict"`` (column name -> numpy array) or ``"arrow"`` (a pyarrow Table).
        Default: a DataFrame for a DataFrame, a dict for a mapping.

        Detection is drawn first and the generator runs on the detected rows only (a survey
        detects a fraction of its injections); every row still consumes its own noise, so a
        row's measurement does not depend on which other rows were detected.
        """
        columns = _as_columns(rows)
        cond_np = self.features.encode_cond(columns)
        n = cond_np.shape[0]
        device = self.device
        gen = torch.Generator(device=device).manual_seed(int(seed))
        cond = torch.from_numpy(cond_np).to(device)
        # all random numbers first, then the networks block by block: the output does not
        # depend on the block size
        z = torch.randn(n, self.generator.noise_dim, generator=gen, device=device)
        u = torch.rand(n, generator=gen, device=device)
        dtype = self.dtype
        p_det = self._blocks(lambda r: torch.sigmoid(self.detection(cond[r], dtype).float()), n)
        detected = (u < p_det).cpu().numpy()
        rows_det = torch.from_numpy(np.flatnonzero(detected)).to(device)
        y = self._blocks(
            lambda r: self.generator(z[rows_det[r]], cond[rows_det[r]], dtype).float(),
            len(rows_det),
        )
        truth = {c: np.asarray(columns[c])[detected] for c in self.features.truth_columns}
        decoded = self.features.decode_target(y.cpu().numpy(), truth)
        out = {"detected": detected, "p_detected": p_det.cpu().numpy()}
        for name, values in decoded.items():
            fill = 0 if np.issubdtype(values.dtype, np.integer) else np.nan
            out[name] = np.full(n, fill, dtype=values.dtype)
            out[name][detected] = values
        out["selected"] = selection.select(self.spec.selection, {**columns, **out})
        return _as_output(out, rows, output)

    def log_prob(
        self,
        rows: Mapping[str, np.ndarray] | pd.DataFrame,
        measured: Mapping[str, np.ndarray] | pd.DataFrame | None = None,
        *,
        detection: bool = False,
        flag_points: int = 8,
    ) -> np.ndarray:
        """The flow's exact log-likelihood of measured outputs given the inputs (float64 [N]).

        rows: the columns of :attr:`input_columns`.  measured: ``obs_flux_b`` of every band and
        the spec's other measured columns (:attr:`SurveySpec.measured_columns`; default: taken
        from ``rows``), plus optionally ``detected``.  Returns, per row, ``log p(measured |
        inputs, detected)``: a density per unit of each continuous output as measured (flux
        units for ``obs_flux_b``, the column's own units for the others) -- the flow's density
        of its standardised targets times the Jacobian of the feature transforms (asinh
        magnitude, whitening, standardisation, log or asinh of the other outputs); -inf where
        the model cannot produce the value (a ``log``-transformed output <= 0).  A flag column
        contributes a probability, not a density: the model's mass on the values that decode
        to it (its dequantisation interval, the end values' open-ended; integrated with
        ``flag_points`` Gauss-Legendre nodes per flag).  Rows whose ``detected`` is false get
        NaN.  detection: add the detection model's log-probability of ``detected`` (required
        then), so a non-detected row scores ``log(1 - p_detected)``.

        Only the flow has a likelihood: a GAN raises GalrayError.
        """
        if self.flow is None:
            raise GalrayError(
                "log_prob: this emulator is a GAN (model: gan), and a GAN has no likelihood; "
                "train a flow (model: flow) to score measurements"
            )
        from galray.emulator.likelihood import log_likelihood

        return log_likelihood(self, rows, measured, detection=detection, points=flag_points)

    def _blocks(self, fn, n: int) -> torch.Tensor:
        """``fn(rows)`` over ``n`` rows in slices of :data:`NETWORK_BLOCK` rows, concatenated."""
        step = NETWORK_BLOCK.get(self.device.type, n) or 1
        return torch.cat([fn(slice(a, a + step)) for a in range(0, max(n, 1), step)])

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        with atomic_directory(path, overwrite=overwrite) as tmp:
            meta = {
                "format": "galray.emulator",
                "version": BUNDLE_VERSION,
                "bands": self.bands,
                "model": self.model,
                "net": asdict(self.net),
                "flow": asdict(self.flow) if self.flow is not None else None,
                "info": self.info,
            }
            (tmp / BUNDLE_META).write_text(json.dumps(meta, indent=2))
            (tmp / "features.json").write_text(self.features.to_json())
            torch.save(_cpu_state(self.generator), tmp / "generator.pt")
            torch.save(_cpu_state(self.detection), tmp / "detection.pt")
        return Path(path)

    @classmethod
    def load(
        cls, path: str | Path, device: str | torch.device = "cpu", precision: str = "auto"
    ) -> Emulator:
        """The emulator saved in ``path``, on ``device``; ``precision``: see :attr:`dtype`."""
        path = Path(path)
        meta = read_bundle_meta(path, BUNDLE_META, "galray.emulator", BUNDLE_VERSION, "emulator")
        with reading_bundle(path, "emulator"):
            features = EmulatorFeatures.from_json((path / "features.json").read_text())
            net = NetConfig(**meta["net"])
            flow = FlowConfig(**meta["flow"]) if meta.get("model") == "flow" else None
            generator = build_generator(features, net, flow)
            detection = DetectionModel(features.n_cond, net)
            generator.load_state_dict(_load_state(path / "generator.pt"))
            detection.load_state_dict(_load_state(path / "detection.pt"))
        emulator = cls(generator, detection, features, net, meta.get("info"), flow, precision)
        return emulator.to(device)


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    inner = getattr(module, "module", module)  # unwrap DDP
    return {k: v.detach().cpu() for k, v in inner.state_dict().items()}


OUTPUTS = ("frame", "dict", "arrow")


def _as_output(out: dict[str, np.ndarray], rows, output: str | None):
    """``out`` as :meth:`Emulator.sample`'s ``output`` asks (see there)."""
    if output is None:
        output = "frame" if isinstance(rows, pd.DataFrame) else "dict"
    if output == "dict":
        return out
    if output == "frame":
        index = rows.index if isinstance(rows, pd.DataFrame) else None
        return pd.DataFrame(out, index=index)
    if output == "arrow":
        import pyarrow

        return pyarrow.table(out)
    raise ValueError(f"sample: output must be one of {', '.join(OUTPUTS)}, got {output!r}")


def _as_columns(rows: Mapping[str, np.ndarray] | pd.DataFrame) -> dict[str, np.ndarray]:
    if isinstance(rows, pd.DataFrame):
        return {c: rows[c].to_numpy() for c in rows.columns}
    if not isinstance(rows, Mapping):
        raise DataError(
            f"emulator input: expected a DataFrame or a mapping of columns, got {type(rows).__name__}"
        )
    return {k: np.asarray(v) for k, v in rows.items()}
