"""A survey, declared once: what the emulator takes in, what it emits, and what a cosmology
analysis cuts on.

A :class:`SurveySpec` names

* ``bands``: the wide survey's bands (what it measures);
* ``deep``: the deep-field truth the emulator is conditioned on -- true AB magnitudes in any
  bands (``true_mag_<b>``, including bands the wide survey does not observe), optional
  morphology columns with the transform the networks see them through, and an optional
  redshift column (never an input: the n(z) of the selection is scored with it);
* ``conditions``: the observing conditions read from HEALPix maps -- quantities per wide band
  (``<q>_<b>``) and band-independent ones (``<q>``); ``depth`` names the per-band 10-sigma
  limiting magnitude the flux targets are whitened by;
* ``outputs``: what the survey measures of a detected galaxy -- the flux in every band
  (``obs_flux_<b>``, and ``obs_mag_<b>`` derived from it) always, optionally its error
  (``obs_flux_err_<b>``), other continuous columns (``obs_<name>``) with a transform, and
  integer flag columns (``obs_<name>``);
* ``selection``: a boolean expression over the catalog (pandas ``eval`` syntax, where ``&`` and
  ``|`` bind looser than comparisons) that the analysis applies, e.g. the DES weak-lensing cuts
  ``detected & flags == 0 & snr > 10 & snr < 1000 & size_ratio > 0.5 & T < 10``.  Outputs are
  named there without their ``obs_`` prefix (``snr``, ``flux_i``, ``mag_i``); truth and
  conditions by their column names;
* ``tomography``: the observed quantity (an expression, e.g. ``mag_i`` or ``mag_r - mag_i``)
  whose quantiles split the selected galaxies into tomographic bins for the n(z) comparison.

Specs are YAML files (presets ``riz``, ``des-y6`` and ``lsst`` live in
``src/galray/datasets/surveys/``), recorded in every simulated or ingested survey
(``survey.json``) and every emulator bundle.  Every error names the spec field.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from galray.config import check_choices, from_dict, load_yaml, require, to_dict
from galray.errors import ConfigError

Transform = Literal["identity", "log", "asinh"]
PRESETS_DIR = Path(__file__).resolve().parent / "surveys"
SPEC_FILE = "survey.json"


@dataclass
class DeepInputs:
    """bands: true magnitudes ``true_mag_<b>`` the emulator is conditioned on.  morphology:
    column -> transform (``log`` for positive sizes such as ``true_size`` or ``true_T``,
    ``identity`` for ellipticities, ``asinh`` for signed heavy-tailed ones).  redshift: the
    deep catalog's redshift column (optional; used only to score n(z))."""

    bands: list[str] = field(default_factory=list)
    morphology: dict[str, Transform] = field(default_factory=dict)
    redshift: str | None = None

    def __post_init__(self) -> None:
        require(len(self.bands) > 0, "deep.bands", "must name at least one band")
        require(len(set(self.bands)) == len(self.bands), "deep.bands", "must not repeat a band")
        for name, transform in self.morphology.items():
            require(
                transform in ("identity", "log", "asinh"),
                f"deep.morphology.{name}",
                f"must be identity, log or asinh, got {transform!r}",
            )


@dataclass
class Conditions:
    """per_band: quantities read from a HEALPix map per wide band (columns ``<q>_<b>``).
    band_independent: quantities with one map (columns ``<q>``, e.g. ``ebv``).  depth: the
    per-band quantity that is the 10-sigma limiting AB magnitude."""

    per_band: list[str] = field(default_factory=lambda: ["psf_fwhm", "depth"])
    band_independent: list[str] = field(default_factory=list)
    depth: str = "depth"

    def __post_init__(self) -> None:
        require(
            self.depth in self.per_band,
            "conditions.depth",
            f"{self.depth!r} must be one of conditions.per_band {self.per_band}",
        )
        both = set(self.per_band) & set(self.band_independent)
        require(not both, "conditions", f"{sorted(both)} both per band and band-independent")


@dataclass
class Outputs:
    """flux_err: emulate each band's flux error ``obs_flux_err_<b>``.  continuous: other
    measured columns ``obs_<name>`` -> transform.  flags: integer columns ``obs_<name>``
    (non-negative, below 65536)."""

    flux_err: bool = False
    continuous: dict[str, Transform] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name, transform in self.continuous.items():
            require(
                transform in ("identity", "log", "asinh"),
                f"outputs.continuous.{name}",
                f"must be identity, log or asinh, got {transform!r}",
            )
        clash = set(self.continuous) & set(self.flags)
        require(not clash, "outputs", f"{sorted(clash)} both continuous and flags")


@dataclass
class Tomography:
    """quantity: an observed expression (``mag_i``, ``mag_r - mag_i``) whose quantiles over the
    selected reference galaxies bound the tomographic bins.  bins: how many."""

    quantity: str = "mag_i"
    bins: int = 4

    def __post_init__(self) -> None:
        require(self.bins >= 1, "tomography.bins", f"must be >= 1, got {self.bins}")


@dataclass
class SurveySpec:
    """A survey's data contract (see the module docstring).  ``name`` labels it in reports."""

    name: str = "riz"
    bands: list[str] = field(default_factory=lambda: ["r", "i", "z"])
    deep: DeepInputs = field(
        default_factory=lambda: DeepInputs(["r", "i", "z"], {"true_size": "log"})
    )
    conditions: Conditions = field(default_factory=Conditions)
    outputs: Outputs = field(default_factory=Outputs)
    selection: str = "detected"
    tomography: Tomography = field(default_factory=Tomography)

    def __post_init__(self) -> None:
        check_choices(self)
        require(len(self.bands) > 0, "bands", "must name at least one band")
        require(len(set(self.bands)) == len(self.bands), "bands", "must not repeat a band")
        missing = [b for b in self.bands if b not in self.deep.bands]
        require(
            not missing,
            "deep.bands",
            f"must include every wide band (the flux targets are measured minus true "
            f"magnitude): {missing} missing",
        )
        from galray.datasets import selection

        selection.check(self.selection, self.catalog_names(), "selection")
        selection.check(self.tomography.quantity, self.catalog_names(), "tomography.quantity")

    # ------------------------------------------------------------------ columns
    @property
    def depth_columns(self) -> list[str]:
        return [f"{self.conditions.depth}_{b}" for b in self.bands]

    @property
    def truth_columns(self) -> list[str]:
        """The deep inputs the emulator is conditioned on: magnitudes, then morphology."""
        return [f"true_mag_{b}" for b in self.deep.bands] + list(self.deep.morphology)

    @property
    def condition_columns(self) -> list[str]:
        """Condition-map columns, band-major (``psf_fwhm_r, depth_r, psf_fwhm_i, ...``), then the
        band-independent ones."""
        per_band = [f"{q}_{b}" for b in self.bands for q in self.conditions.per_band]
        return per_band + list(self.conditions.band_independent)

    @property
    def input_columns(self) -> list[str]:
        """What the emulator needs per row: truth, then conditions."""
        return self.truth_columns + self.condition_columns

    @property
    def flux_columns(self) -> list[str]:
        return [f"obs_flux_{b}" for b in self.bands]

    @property
    def measured_columns(self) -> list[str]:
        """The emulator's continuous targets besides the fluxes, then the flags."""
        cols = [f"obs_flux_err_{b}" for b in self.bands] if self.outputs.flux_err else []
        cols += [f"obs_{name}" for name in self.outputs.continuous]
        return cols + [f"obs_{name}" for name in self.outputs.flags]

    @property
    def output_columns(self) -> list[str]:
        """Every emulated column: detection, fluxes, magnitudes, the other measurements."""
        mags = [f"obs_mag_{b}" for b in self.bands]
        return ["detected", *self.flux_columns, *mags, *self.measured_columns]

    @property
    def training_columns(self) -> list[str]:
        """What a training row holds: inputs, fluxes and other measurements, detection."""
        return self.truth_columns + self.flux_columns + self.measured_columns + ["detected"]

    def catalog_names(self) -> list[str]:
        """The names an expression (selection, tomography) may use: every column, and every
        output without its ``obs_`` prefix."""
        outputs = self.output_columns
        short = [c.removeprefix("obs_") for c in outputs if c.startswith("obs_")]
        extra = [self.deep.redshift] if self.deep.redshift else []
        return [*self.input_columns, *outputs, *short, *extra]

    @property
    def uses_size(self) -> bool:
        return "true_size" in self.deep.morphology

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "survey spec") -> SurveySpec:
        try:
            return from_dict(cls, dict(data))
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the spec as ``survey.json`` in ``directory``."""
        path = Path(directory) / SPEC_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def legacy_spec(bands: list[str], use_size: bool) -> SurveySpec:
    """The spec of data and bundles from before survey specs: true magnitudes in ``bands``
    (and ``true_size``), PSF FWHM and depth per band, fluxes only."""
    morphology = {"true_size": "log"} if use_size else {}
    return SurveySpec(
        name="riz" if list(bands) == ["r", "i", "z"] else "legacy",
        bands=list(bands),
        deep=DeepInputs(list(bands), morphology),
    )


def load_spec(source: str | os.PathLike | None) -> SurveySpec:
    """A spec by preset name (``riz``, ``des-y6``, ``lsst``), YAML file, or a directory holding
    ``survey.json`` (a simulated or ingested survey); None: the ``riz`` preset."""
    if source is None:
        return SurveySpec()
    text = os.fspath(source)
    preset = PRESETS_DIR / f"{text}.yaml"
    path = Path(text)
    if path.is_dir():
        path = path / SPEC_FILE
        if not path.is_file():
            raise ConfigError(f"{source}: no {SPEC_FILE} (not a survey directory)")
        return SurveySpec.from_dict(json.loads(path.read_text()), str(path))
    if path.is_file():
        return SurveySpec.from_dict(load_yaml(path), str(path))
    if preset.is_file():
        return SurveySpec.from_dict(load_yaml(preset), f"preset {text}")
    known = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
    raise ConfigError(f"survey: {text!r} is neither a spec file nor a preset ({known})")


def spec_for_catalog(
    source: str | os.PathLike | None,
    catalog: str | os.PathLike,
    *,
    use_size: bool | None = None,
) -> SurveySpec:
    """The spec of an injection catalog: ``source`` (preset or YAML) if given, else the
    ``survey.json`` beside the catalog (in its directory or the survey directory above it),
    else the ``riz`` preset.  ``use_size``: False drops ``true_size`` from the inputs; None
    drops it when the catalog has no such column (a size-less catalog needs no option)."""
    if source is not None:
        spec = load_spec(source)
    else:
        catalog = Path(catalog)
        found = [d for d in (catalog, catalog.parent) if (d / SPEC_FILE).is_file()]
        spec = load_spec(found[0]) if found else SurveySpec()
    if "true_size" not in spec.deep.morphology or use_size is True:
        return spec
    if use_size is None:
        from galray.io import parquet_files, read_parquet_schema

        if "true_size" in read_parquet_schema(parquet_files(catalog)[0]).names:
            return spec
    morphology = {k: v for k, v in spec.deep.morphology.items() if k != "true_size"}
    return replace(spec, deep=replace(spec.deep, morphology=morphology))
