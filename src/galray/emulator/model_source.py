"""The emulator an emulation runs: where it comes from, what it is, how workers get it.

A model's *identity* is the SHA-256 of its bundle's files (names and bytes), so a resumed run
matches the same model whether it is named by a local path, ``models:/NAME@ALIAS`` or
``models:/NAME/VERSION``, and never by where a download happened to land.

A model from a tracking server is downloaded once into a cache keyed by what it is in the
registry -- ``models:/NAME@ALIAS`` resolved to its version, ``models:/m-<id>``, ``runs:/RUN/PATH``
-- under ``$GALRAY_CACHE/models`` (default ``~/.cache/galray/models``), one folder per tracking
store.  Later runs use the cached copy (checked against its recorded hash), so nothing is left
behind per call.  Workers never see a driver-local path: the driver puts the bundle's bytes in
Ray's object store (:func:`bundle_files`) and each actor loads from its own temporary copy.

What an output records of its model (:attr:`ModelSource.provenance`): the URI as given, the
registered name, the version (an alias resolved to its version), the training run's id and
MLflow's logged-model id (:func:`galray.registry.model_provenance`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from galray.emulator.bundle import BUNDLE_META
from galray.errors import ModelNotFoundError

CACHE_MARKER = ".galray-cache.json"


@dataclass(frozen=True)
class ModelSource:
    """path: the bundle directory on the driver.  identity: ``sha256:<hex>`` of its files.
    source: what it was resolved from, canonical (``models:/NAME/VERSION`` for an alias).
    provenance: the registry entry it came from (:func:`galray.registry.model_provenance`)."""

    path: Path
    identity: str
    source: str
    provenance: dict = field(default_factory=dict, compare=False)


def cache_root() -> Path:
    """``$GALRAY_CACHE`` or ``~/.cache/galray``."""
    return Path(os.environ.get("GALRAY_CACHE") or Path.home() / ".cache" / "galray").expanduser()


def bundle_files(path: str | os.PathLike) -> dict[str, bytes]:
    """Every file of a bundle directory: relative POSIX path -> bytes."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in files}


def files_digest(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        data = files[name]
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return f"sha256:{h.hexdigest()}"


def bundle_digest(path: str | os.PathLike) -> str:
    """The identity of a bundle directory: SHA-256 over its files' names and bytes."""
    return files_digest(bundle_files(path))


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
_ALIAS = re.compile(r"models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)/?")
_VERSION = re.compile(r"models:/(?P<name>[^/@]+)/(?P<version>\d+)/?")
_LOGGED = re.compile(r"models:/(?P<model_id>m-[0-9a-f]+)/?")
_RUN = re.compile(r"runs:/(?P<run_id>[^/]+)(?:/(?P<path>.*))?")


def _safe(text: str) -> str:
    return re.sub(r"[^\w.-]", "_", text)


def _canonical(uri: str, client) -> tuple[str, str | None]:
    """(the URI to download, its cache key) -- an alias resolved to its version; no key for a
    URI that may change what it names.  Raises MlflowException for what does not exist."""
    if m := _ALIAS.fullmatch(uri):
        version = client.get_model_version_by_alias(m["name"], m["alias"]).version
        return f"models:/{m['name']}/{version}", f"{_safe(m['name'])}/v{version}"
    if m := _VERSION.fullmatch(uri):
        client.get_model_version(m["name"], m["version"])
        return uri.rstrip("/"), f"{_safe(m['name'])}/v{int(m['version'])}"
    if m := _LOGGED.fullmatch(uri):
        client.get_logged_model(m["model_id"])
        return uri.rstrip("/"), f"logged/{m['model_id']}"
    if m := _RUN.fullmatch(uri):
        client.get_run(m["run_id"])
        path = hashlib.sha256((m["path"] or "").encode()).hexdigest()[:12]
        return uri, f"runs/{_safe(m['run_id'])}/{path}"
    return uri, None


def _from_tracking(uri: str, log) -> ModelSource:
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from galray.emulator.registry import resolve_emulator_uri
    from galray.tracking import ensure_tracking

    store = ensure_tracking()
    try:
        canonical, key = _canonical(uri, MlflowClient(store))
    except MlflowException:
        resolve_emulator_uri(uri)  # raises ModelNotFoundError naming what is missing
        raise
    root = cache_root() / "models" / hashlib.sha256(store.encode()).hexdigest()[:12]
    if key is not None:
        cached = _cached(root / key)
        if cached is not None:
            return ModelSource(*cached, canonical)
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".download.tmp-{os.urandom(4).hex()}"
    try:
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=canonical, dst_path=str(staging))
        except Exception as exc:  # any failure to fetch is "not found" for the caller
            message = getattr(exc, "message", None) or str(exc)
            raise ModelNotFoundError(f"{uri}: cannot download from {store}: {message}") from exc
        bundle = resolve_emulator_uri(staging)
        digest = bundle_digest(bundle)
        marker = {"uri": uri, "source": canonical, "bundle": str(bundle.relative_to(staging))}
        (staging / CACHE_MARKER).write_text(json.dumps(marker | {"identity": digest}))
        target = root / (key or f"content/{digest.split(':')[1][:32]}")
        target.parent.mkdir(parents=True, exist_ok=True)
        if _cached(target) is None:  # (a damaged entry in the way is removed)
            try:
                os.replace(staging, target)
            except OSError:  # another run cached it first
                if _cached(target) is None:
                    raise
            log(f"{uri}: downloaded to the model cache {target}")
        cached = _cached(target)
        if cached is None:
            raise ModelNotFoundError(f"{uri}: its cached copy {target} does not verify")
        return ModelSource(*cached, canonical)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _cached(target: Path) -> tuple[Path, str] | None:
    """(bundle path, identity) of a cache entry whose files still hash to what was recorded;
    a damaged entry is removed (the cache's own files) and None returned."""
    try:
        marker = json.loads((target / CACHE_MARKER).read_text())
        bundle = target / marker["bundle"]
        if bundle_digest(bundle) == marker["identity"] and (bundle / BUNDLE_META).is_file():
            return bundle.resolve(), marker["identity"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if target.exists():
        shutil.rmtree(target, ignore_errors=True)
    return None
