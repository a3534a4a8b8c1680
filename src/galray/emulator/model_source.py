"""The emulator an emulation runs: where it comes from, what it is, how workers get it.

A model's *identity* is the SHA-256 of its bundle's files (names and bytes), so a resumed run
matches the same model whether it is named by a local path, ``models:/NAME@ALIAS`` or
``models:/NAME/VERSION``, and never by where a download happened to land.

A model from a tracking server is downloaded once into the model cache
(:mod:`galray.model_cache`: keyed by what it is in the registry, under ``$GALRAY_CACHE/models``);
later runs use the cached copy (checked against its recorded hash), so nothing is left behind
per call.  Workers never see a driver-local path: the driver puts the bundle's bytes in
Ray's object store (:func:`bundle_files`) and each actor loads from its own temporary copy.

What an output records of its model (:attr:`ModelSource.provenance`): the URI as given, the
registered name, the version (an alias resolved to its version), the training run's id and
MLflow's logged-model id (:func:`galray.registry.model_provenance`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from galray import model_cache
from galray.emulator.bundle import BUNDLE_META
from galray.model_cache import bundle_digest, bundle_files, files_digest

__all__ = ["ModelSource", "bundle_digest", "bundle_files", "files_digest", "resolve_model"]


@dataclass(frozen=True)
class ModelSource:
    """path: the bundle directory on the driver.  identity: ``sha256:<hex>`` of its files.
    source: what it was resolved from, canonical (``models:/NAME/VERSION`` for an alias).
    provenance: the registry entry it came from (:func:`galray.registry.model_provenance`)."""

    path: Path
    identity: str
    source: str
    provenance: dict = field(default_factory=dict, compare=False)


def write_bundle(files: dict[str, bytes], path: Path) -> Path:
    """Recreate a bundle from :func:`bundle_files` under ``path`` (an actor's temp dir)."""
    for name, data in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return path


def resolve_model(uri: str, log=print) -> ModelSource:
    """The emulator bundle ``uri`` names, on the driver; ModelNotFoundError naming ``uri``."""
    path = Path(uri).expanduser()
    if (path / BUNDLE_META).is_file():  # a bundle directory: no MLflow needed
        path = path.resolve()
        return ModelSource(path, bundle_digest(path), str(path), local_provenance(path))
    from galray.registry import is_remote, model_provenance

    if not is_remote(uri):
        from galray.emulator.registry import resolve_emulator_uri

        path = resolve_emulator_uri(uri).resolve()  # a downloaded MLflow model directory
        return ModelSource(path, bundle_digest(path), str(path), model_provenance(uri))
    source = _from_tracking(uri, log)
    return ModelSource(source.path, source.identity, source.source, model_provenance(uri))


def local_provenance(path: str | os.PathLike) -> dict:
    """The provenance of a model named by a local path (no registry entry): its absolute path,
    and the training run's id if its bundle recorded one (``info.run_id``)."""
    path = Path(path).resolve()
    try:
        run_id = json.loads((path / BUNDLE_META).read_text()).get("info", {}).get("run_id")
    except (OSError, ValueError, AttributeError):
        run_id = None
    keys = ("registered_name", "version", "alias", "model_id")
    return {"uri": str(path), **dict.fromkeys(keys), "run_id": run_id}


# --------------------------------------------------------------------------- tracking server
def _from_tracking(uri: str, log) -> ModelSource:
    from mlflow.exceptions import MlflowException

    from galray.emulator.registry import resolve_emulator_uri
    from galray.tracking import ensure_tracking

    store = ensure_tracking()
    try:
        path, identity, source = model_cache.fetch(
            uri, resolve_emulator_uri, BUNDLE_META, store, log=log
        )
    except MlflowException:
        resolve_emulator_uri(uri)  # raises ModelNotFoundError naming what is missing
        raise
    return ModelSource(path, identity, source)
