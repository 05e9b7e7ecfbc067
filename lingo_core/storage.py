"""Folders that are either whole or absent, and checksum manifests that tell a whole one from a damaged one.

Two promises (docs/reliability.md, "Storage"):

* A folder (`atomic_dir`) or a file (`atomic_file`) is assembled under a hidden temporary name beside its
  final name and renamed into place, so a crash, a full disk or a file-size limit never leaves a half-written folder under
  the final name. A failed write is one `StorageError` naming what could not be written and why.
* `write_manifest` records the sha256 and size of every file, and is written last; `verify_manifest`
  recomputes them, so a truncated, changed or missing file is found before anything is loaded from it.

Renames are atomic against process crashes. Files are not fsync'ed (checkpoints are written at every
evaluation), so after a power loss a folder may hold short files; the manifest check catches that too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

MANIFEST = "MANIFEST.sha256.json"
"""Per-file sha256 and size of a folder; written last, so its absence means the folder is incomplete."""

_CHUNK = 1 << 20


class StorageError(OSError):
    """A write failed (full disk, quota, file-size limit, read-only folder); nothing was left half-written
    under the final name. The message names the folder and the operating system's reason."""


class IntegrityError(ValueError):
    """A folder's files do not match its manifest (truncated, changed, missing) or it has no manifest."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path) -> Path:
    """Hash every file under `folder` (recursively) into `folder/MANIFEST`; call after the last write."""
    folder = Path(folder)
    entries = {p.relative_to(folder).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
               for p in _files(folder)}
    out = folder / MANIFEST
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"files": entries}, indent=1))
    tmp.replace(out)  # a torn manifest would make an intact folder look damaged
    return out


def verify_manifest(folder: Path) -> None:
    """IntegrityError naming the first file that is missing, short, or differs from the manifest.
    Files the manifest does not list are ignored (a copier such as Ray may add its own)."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    try:
        entries = json.loads(manifest.read_text())["files"]
    except FileNotFoundError:
        raise IntegrityError(f"{manifest}: missing; it is written last, so {folder} is incomplete "
                             "(the write was interrupted)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise IntegrityError(f"{manifest}: unreadable ({e}); expected JSON with a 'files' mapping") from None
    for rel, want in sorted(entries.items()):
        path = folder / rel
        if not path.is_file():
            raise IntegrityError(f"{path}: listed in {MANIFEST} but missing; expected {want['size']} bytes")
        size = path.stat().st_size
        if size != want["size"]:
            raise IntegrityError(f"{path}: {size} bytes, expected {want['size']} as recorded in {MANIFEST} "
                                 "(truncated or overwritten)")
        got = sha256_file(path)
        if got != want["sha256"]:
            raise IntegrityError(f"{path}: sha256 {got[:16]}..., expected {want['sha256'][:16]}... as recorded "
                                 f"in {MANIFEST} (the file changed after it was written)")


_IO_MARKERS = ("I/O error", "file write failed", "failed writing file")
"""How writers that do not raise OSError report a failed write: safetensors' Rust writer (SafetensorError
"...I/O error: File too large (os error 27)") and torch.save's zip writer (RuntimeError, DeepSpeed shards)."""


def is_write_failure(exc: BaseException) -> bool:
    """An OSError, or another library's error that wraps one (see _IO_MARKERS)."""
    return isinstance(exc, OSError) or any(m in str(exc) for m in _IO_MARKERS)


def storage_error(what: str, target: Path, exc: BaseException) -> StorageError:
    if isinstance(exc, OSError):
        reason, filename = exc.strerror or str(exc), exc.filename
    else:  # "Error while serializing: I/O error: File too large (os error 27)" -> "File too large (os error 27)"
        reason, filename = str(exc).rsplit("I/O error:", 1)[-1].strip(), None
    where = f" ({filename})" if filename else ""
    err = StorageError(f"cannot write {what} {target}: {reason}{where}; nothing was left under that name: "
                       "free space (or raise the quota / file-size limit) and run again")
    err.errno = getattr(exc, "errno", None)  # one-argument OSError: str() stays the message alone, without "[Errno N]"
    return err


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the complete folder `tmp` to `final`, replacing an existing one. The old folder is moved aside
    first, so at every instant `final` is either the old or the new whole folder (or, for the moment
    between the two renames, absent)."""
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_file(path: str | Path, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` to a temporary file beside `path`, then rename it to `path`: readers see the old file
    or the new one, never half of one; on any error the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)  # atomic on one filesystem
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def atomic_dir(final: str | Path, what: str) -> Iterator[Path]:
    """Yield an empty temporary folder beside `final`; on success it replaces `final`, on any error it is
    removed. A failed write (is_write_failure) becomes a StorageError naming `what` and `final`."""
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    except OSError as e:
        raise storage_error(what, final, e) from e
    try:
        yield tmp
        replace_dir(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, StorageError) or not is_write_failure(e):
            raise
        raise storage_error(what, final, e) from e
