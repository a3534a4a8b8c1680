"""Models from a tracking server, downloaded once: the local cache every product's loader uses.

A model's *identity* is the SHA-256 of its bundle's files (names and bytes), so whether it is
named by a local path, ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` it is the same model,
never where a download happened to land.

A model from a tracking server is downloaded once into a cache keyed by what it is in the
registry -- ``models:/NAME@ALIAS`` resolved to its version, ``models:/NAME/VERSION``,
``models:/m-<id>``, ``runs:/RUN/PATH`` -- under ``$GALRAY_CACHE/models`` (default
``~/.cache/galray/models``), one folder per tracking store.  Later calls use the cached copy,
checked against the hash recorded when it was downloaded (a damaged copy is removed and fetched
again), so nothing is left behind per call.  Another URI (an artifact URI that may change what it
names) is downloaded each time into a content-addressed entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from galray.errors import ModelNotFoundError

CACHE_MARKER = ".galray-cache.json"
# the registry URI forms (galray.registry resolves and describes them too)
MODEL_ALIAS = re.compile(r"models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)/?")
MODEL_VERSION = re.compile(r"models:/(?P<name>[^/@]+)/(?P<version>\d+)/?")
LOGGED_MODEL = re.compile(r"models:/(?P<model_id>m-[0-9a-f]+)/?")
RUN = re.compile(r"runs:/(?P<run_id>[^/]+)(?:/(?P<path>.*))?")


def cache_root() -> Path:
    """``$GALRAY_CACHE`` or ``~/.cache/galray``."""
    return Path(os.environ.get("GALRAY_CACHE") or Path.home() / ".cache" / "galray").expanduser()


def bundle_files(path: str | os.PathLike) -> dict[str, bytes]:
    """Every file of a bundle directory: relative POSIX path -> bytes."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name != CACHE_MARKER)
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in files}


def files_digest(files: dict[str, bytes]) -> str:
    """``sha256:<hex>`` over the files' names, sizes and bytes (sorted by name)."""
    h = hashlib.sha256()
    for name in sorted(files):
        data = files[name]
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return f"sha256:{h.hexdigest()}"


def bundle_digest(path: str | os.PathLike) -> str:
    """The identity of a bundle directory: SHA-256 over its files' names and bytes."""
    return files_digest(bundle_files(path))


def _safe(text: str) -> str:
    return re.sub(r"[^\w.-]", "_", text)


def canonical(uri: str, client) -> tuple[str, str | None]:
    """(the URI to download, its cache key) -- an alias resolved to its version; no key for a
    URI that may change what it names.  Raises MlflowException for what does not exist."""
    if m := MODEL_ALIAS.fullmatch(uri):
        version = client.get_model_version_by_alias(m["name"], m["alias"]).version
        return f"models:/{m['name']}/{version}", f"{_safe(m['name'])}/v{version}"
    if m := MODEL_VERSION.fullmatch(uri):
        client.get_model_version(m["name"], m["version"])
        return uri.rstrip("/"), f"{_safe(m['name'])}/v{int(m['version'])}"
    if m := LOGGED_MODEL.fullmatch(uri):
        client.get_logged_model(m["model_id"])
        return uri.rstrip("/"), f"logged/{m['model_id']}"
    if m := RUN.fullmatch(uri):
        client.get_run(m["run_id"])
        path = hashlib.sha256((m["path"] or "").encode()).hexdigest()[:12]
        return uri, f"runs/{_safe(m['run_id'])}/{path}"
    return uri, None


def fetch(
    uri: str, locate: Callable[[Path], Path], meta_file: str, store: str, log=print
) -> tuple[Path, str, str]:
    """``(bundle directory, identity, canonical URI)`` of the model ``uri`` names on tracking
    ``store``, from the cache or downloaded into it.  ``locate(dir)``: the bundle directory
    inside a downloaded MLflow model (ModelNotFoundError if it holds none); ``meta_file``: the
    file that marks a bundle.  The caller has checked that ``uri`` exists."""
    import mlflow
    from mlflow.tracking import MlflowClient

    canonical_uri, key = canonical(uri, MlflowClient(store))
    root = cache_root() / "models" / hashlib.sha256(store.encode()).hexdigest()[:12]
    if key is not None:
        cached = _cached(root / key, meta_file)
        if cached is not None:
            return (*cached, canonical_uri)
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".download.tmp-{os.urandom(4).hex()}"
    try:
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=canonical_uri, dst_path=str(staging)
            )
        except Exception as exc:  # any failure to fetch is "not found" for the caller
            message = getattr(exc, "message", None) or str(exc)
            raise ModelNotFoundError(f"{uri}: cannot download from {store}: {message}") from exc
        # where it landed: the staging directory itself, or (runs:/RUN/PATH) PATH's last part
        # inside it
        bundle = locate(Path(local))
        digest = bundle_digest(bundle)
        marker = {"uri": uri, "source": canonical_uri, "bundle": str(bundle.relative_to(staging))}
        (staging / CACHE_MARKER).write_text(json.dumps(marker | {"identity": digest}))
        target = root / (key or f"content/{digest.split(':')[1][:32]}")
        target.parent.mkdir(parents=True, exist_ok=True)
        if _cached(target, meta_file) is None:  # (a damaged entry in the way is removed)
            try:
                os.replace(staging, target)
            except OSError:  # another process cached it first
                if _cached(target, meta_file) is None:
                    raise
            log(f"{uri}: downloaded to the model cache {target}")
        cached = _cached(target, meta_file)
        if cached is None:
            raise ModelNotFoundError(f"{uri}: its cached copy {target} does not verify")
        return (*cached, canonical_uri)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _cached(target: Path, meta_file: str) -> tuple[Path, str] | None:
    """(bundle path, identity) of a cache entry whose files still hash to what was recorded;
    a damaged entry is removed (the cache's own files) and None returned."""
    try:
        marker = json.loads((target / CACHE_MARKER).read_text())
        bundle = target / marker["bundle"]
        if bundle_digest(bundle) == marker["identity"] and (bundle / meta_file).is_file():
            return bundle.resolve(), marker["identity"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if target.exists():
        shutil.rmtree(target, ignore_errors=True)
    return None
