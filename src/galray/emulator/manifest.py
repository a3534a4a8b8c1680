"""Where ``galray emulate`` may write, and which of its shards it trusts on resume.

**Ownership.**  Emulation writes only into a directory it owns -- one holding its manifest,
``_emulation.json`` -- or into a new or empty one; anything else is refused, ``--overwrite``
included.  ``--overwrite`` never deletes up front: the new run is built in a hidden sibling
directory (``.NAME.tmp-XXXXXXXX``) and swapped in only once complete, so a run killed on the way
leaves the old output as it was.  A directory is replaced only if it holds nothing but emulation
files (shards, manifest, emulation temporaries).  A run holds an advisory lock (``flock``) on its
output directory (and on its staging directory) while it lives: a second emulate of the same
output -- fresh, ``--resume`` or ``--overwrite`` -- is refused in one line while the first runs,
and an ``--overwrite`` or ``--resume`` removes only the staging directories of runs that are
dead.

**Content-verified resume.**  The manifest records, per finished shard, its rows, bytes, detected
count and the SHA-256 of its bytes.  On ``--resume`` each shard on disk is checked against its
record (size, checksum, Parquet footer, row count); a shard written but not yet recorded (the run
died between the two) is read in full with Parquet page checksums verified.  A shard failing any
check is deleted and redone, with one line saying why.  Temporaries of killed writers
(``.part-…parquet.tmp-XXXXXXXX``) are removed; nothing else is touched.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from galray.errors import OutputExistsError
from galray.io import write_json

MANIFEST = "_emulation.json"  # leading "_": pyarrow and Ray Data skip it when reading the dir
FORMAT = "galray.emulation"
VERSION = 2
SHARD_NAME = re.compile(r"part-r\d{4}-c\d{5}\.parquet")
# what io.atomic_path names the temporaries of a shard or of the manifest
TEMP_NAME = re.compile(r"\.(part-r\d{4}-c\d{5}\.parquet|_emulation\.json)\.tmp-[0-9a-f]{8}")


# identity fields added later, as runs from before they existed had them
LEGACY_IDENTITY = {"precision": "fp32"}


def _staging_name(out: Path) -> re.Pattern:
    return re.compile(rf"\.{re.escape(out.name)}\.tmp-[0-9a-f]{{8}}")


@dataclass
class Output:
    """An emulation's output: ``out`` (where it ends up), ``work`` (where shards are written:
    ``out`` itself, or a hidden sibling swapped in at the end when ``staged``), the manifest's
    identity and its records of finished shards (name -> rows, bytes, detected, sha256)."""

    out: Path
    work: Path
    staged: bool
    identity: dict
    source: str | None = None
    records: dict[str, dict] = field(default_factory=dict)
    provenance: dict | None = None
    locks: list[int] = field(default_factory=list, repr=False)  # held directory descriptors

    def release(self) -> None:
        """Drop the run's directory locks (the run is over, however it ended)."""
        while self.locks:
            os.close(self.locks.pop())

    def save(self, **summary) -> None:
        """Write the manifest (atomically) into the work directory."""
        manifest = {"format": FORMAT, "version": VERSION, "identity": self.identity}
        manifest |= {"model_source": self.source, "provenance": self.provenance}
        manifest |= {"complete": False, **summary}
        manifest["shard_records"] = dict(sorted(self.records.items()))
        write_json(manifest, self.work / MANIFEST)

    def commit(self) -> None:
        """Swap a staged run in for the old output (which must still hold only emulation
        files); no-op when the run was written in place."""
        if not self.staged:
            return
        _refuse_foreign(self.out)
        old = self.out.with_name(f".{self.out.name}.tmp-{os.urandom(4).hex()}")
        os.replace(self.out, old)
        os.replace(self.work, self.out)
        self.work = self.out
        self.release()
        shutil.rmtree(old)

    def discard(self) -> None:
        """Remove a staged run's directory (after a failure; the old output stays)."""
        self.release()
        if self.staged and self.work.exists():
            _remove_settled(self.work)


def read_manifest(out: Path) -> dict | None:
    """``out``'s manifest if ``out`` is an emulation output (a readable manifest with an
    identity), else None."""
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and "identity" in manifest else None


def prepare_output(
    out: str | os.PathLike,
    identity: dict,
    *,
    overwrite: bool,
    resume: bool,
    source: str | None = None,
    provenance: dict | None = None,
    log=print,
) -> Output:
    """Check that emulation may write to ``out`` and set up where it writes (see the module
    docstring); OutputExistsError naming ``out`` otherwise.  Nothing is deleted but stale
    temporaries of emulation itself.  ``provenance`` (the model's registry entry, galray's
    version, the seed) is recorded in the manifest as it is now, also on a resume."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a directory; --out must be a directory")
    entries = list(out.iterdir()) if out.is_dir() else []
    if not entries:
        out.mkdir(parents=True, exist_ok=True)
        output = Output(out, out, False, identity, source, provenance=provenance)
        output.locks.append(_lock_or_refuse(out, log))
        output.save()
        return output
    manifest = read_manifest(out)
    if manifest is None:
        raise OutputExistsError(
            f"{out}: not empty and not a galray emulation output (no readable {MANIFEST}); "
            "emulate writes only to a new or empty directory or to its own output"
        )
    held = _lock_or_refuse(out, log)  # for the whole run: no second emulate writes here meanwhile
    try:
        return _claim(out, entries, manifest, held, identity, overwrite, resume, source,
                      provenance, log)  # fmt: skip
    except BaseException:
        os.close(held)
        raise


def _claim(out, entries, manifest, held, identity, overwrite, resume, source, provenance, log):
    """:func:`prepare_output` for an existing emulation output whose lock is ``held``."""
    shards = [p for p in entries if SHARD_NAME.fullmatch(p.name)]
    if overwrite:
        _refuse_foreign(out)
        _remove_stale_staging(out, log)
        work = out.with_name(f".{out.name}.tmp-{os.urandom(4).hex()}")
        work.mkdir()
        output = Output(out, work, True, identity, source, provenance=provenance)
        output.locks += [_lock_or_refuse(work, log), held]
        output.save()
        return output
    if not resume:
        raise OutputExistsError(
            f"{out}: holds {len(shards)} shard(s) of an emulation run; pass --resume to finish "
            "it or --overwrite to replace it"
        )
    previous = {**LEGACY_IDENTITY, **manifest["identity"]}
    for key, value in identity.items():
        if previous.get(key) != value:
            hint = f"; pass --{key} {previous[key]} to finish it" if key == "precision" else ""
            raise OutputExistsError(
                f"{out}: cannot resume: {key} was {previous.get(key)!r}, now {value!r}{hint}"
            )
    stale = [p for p in entries if TEMP_NAME.fullmatch(p.name) and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        log(f"{out}: removed {len(stale)} temporary file(s) left by a killed run")
    _remove_stale_staging(out, log)  # a killed --overwrite's: its run is dead, we hold out
    records = manifest.get("shard_records")
    records = records if isinstance(records, dict) else {}
    output = Output(out, out, False, identity, source, dict(records), provenance)
    output.locks.append(held)
    return output


def _is_ours(name: str) -> bool:
    return name == MANIFEST or bool(SHARD_NAME.fullmatch(name) or TEMP_NAME.fullmatch(name))


def _refuse_foreign(out: Path) -> None:
    foreign = sorted(p.name for p in out.iterdir() if not _is_ours(p.name))
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise OutputExistsError(
            f"{out}: holds {foreign[0]!r}{more}, which emulate did not write; --overwrite "
            "replaces the whole directory: move them or choose another --out"
        )


class _NoLocks(Exception):
    """The filesystem cannot lock this directory (e.g. NFS, where Linux emulates flock with a
    byte-range lock that needs a descriptor open for writing, which a directory cannot have)."""

    def __init__(self, path: Path, error: OSError):
        super().__init__(f"{path}: {error.strerror or error}")
        self.path, self.error = path, error


def _try_lock(path: Path) -> int | None:
    """An exclusive advisory lock on directory ``path`` (its open descriptor), or None if
    another live process holds it; :class:`_NoLocks` if the filesystem cannot lock it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # EWOULDBLOCK: a live process holds it
        os.close(fd)
        return None
    except OSError as exc:
        os.close(fd)
        raise _NoLocks(path, exc) from exc
    return fd


def _lock_or_refuse(path: Path, log) -> int:
    """:func:`_try_lock` of ``path``, or OutputExistsError if another run holds it.  Where the
    filesystem cannot lock, an unlocked descriptor, and the user is told what that means."""
    try:
        fd = _try_lock(path)
    except _NoLocks as exc:
        log(
            f"{path}: this filesystem cannot lock the directory ({exc.error.strerror or exc.error});"
            " a second galray emulate of this output at the same time would not be noticed"
        )
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    if fd is None:
        raise OutputExistsError(
            f"{path}: another galray emulate is writing here now (it holds the directory's "
            "lock); wait for it to end or stop it"
        )
    return fd


def _remove_settled(path: Path, attempts: int = 20) -> bool:
    """Remove directory ``path``; a writer of the killed run that has not died yet may still
    add a file while it is removed (rmtree then fails on the non-empty directory), so retry
    until it is gone.  True once it is."""
    for _ in range(attempts):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return True
        time.sleep(0.25)
    return False


def _remove_stale_staging(out: Path, log) -> None:
    """Staging directories of overwrites that were killed (holding only emulation files and
    locked by no live run)."""
    pattern = _staging_name(out)
    for p in out.parent.iterdir() if out.parent.is_dir() else []:
        if not (pattern.fullmatch(p.name) and p.is_dir() and (p / MANIFEST).is_file()):
            continue
        if not all(_is_ours(q.name) for q in p.iterdir()):
            continue
        try:
            lock = _try_lock(p)
        except _NoLocks:
            log(
                f"{p}: left alone: this filesystem cannot lock directories, so whether an "
                "--overwrite run still writes there is unknown; remove it once none does"
            )
            continue
        if lock is None:
            log(f"{p}: left alone, an --overwrite run still writing there holds its lock")
            continue
        os.close(lock)
        if _remove_settled(p):
            log(f"{p}: removed the unfinished output of a killed --overwrite run")
        else:
            log(f"{p}: could not remove the unfinished output of a killed --overwrite run")


# --------------------------------------------------------------------------- shards


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def check_shard(path: Path, rows: int, record: dict | None) -> tuple[dict | None, str | None]:
    """(record, None) for a complete, intact shard of ``rows`` rows; (None, what is wrong)
    otherwise.  ``record``: the manifest's record of the shard, or None if it has none (then
    every data page is read and its checksum verified)."""
    size = path.stat().st_size
    if size == 0:
        return None, "empty file"
    if record is not None:
        if size != record.get("bytes"):
            return None, f"{size} bytes, the manifest recorded {record.get('bytes')} (truncated)"
        if file_sha256(path) != record.get("sha256"):
            return None, "content differs from the manifest's checksum (corrupt)"
    try:
        meta = pq.read_metadata(path)
    except (pa.ArrowException, OSError) as exc:
        return None, f"unreadable Parquet footer ({_first_line(exc)})"
    if meta.num_rows != rows:
        return None, f"{meta.num_rows} rows, expected {rows}"
    if record is not None:
        return record, None
    try:
        table = pq.read_table(path, page_checksum_verification=True)
        detected = int(table["detected"].to_numpy(zero_copy_only=False).sum())
    except (pa.ArrowException, OSError, KeyError) as exc:
        return None, f"unreadable data ({_first_line(exc)})"
    return {"rows": rows, "bytes": size, "detected": detected, "sha256": file_sha256(path)}, None


def verify_shards(output: Output, shards, log=print) -> None:
    """Keep in ``output.records`` only the shards on disk that pass :func:`check_shard`;
    delete the others (they are redone) with one line each."""
    verified = {}
    for shard in shards:
        path = output.work / shard.name
        if not path.exists():
            continue
        record, problem = check_shard(
            path, shard.stop - shard.start, output.records.get(shard.name)
        )
        if problem:
            log(f"{path}: {problem}; redoing it")
            path.unlink()
        else:
            verified[shard.name] = record
    output.records = verified


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
