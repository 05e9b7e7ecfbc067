"""What exactly a base model is: `model_identity` (name, path, GGUF file, sha256 of the weights), for run
metadata and reproducibility, and `weights_sha256`, the memoised file hash it and the dense GGUF cache
(`lingo_core.modeling.dense_ref`) key on.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from huggingface_hub import snapshot_download

from lingo_core.model_ref import BaseModelRef
from lingo_core.storage import sha256_file

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def weights_sha256(path: Path) -> str:
    """storage.sha256_file, memoised by (path, mtime, size): every load of a base hashes its weights."""
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _HASH_CACHE:
        _HASH_CACHE[key] = sha256_file(path)
    return _HASH_CACHE[key]


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    # from_pretrained prefers safetensors; hash what it actually loads.
    return safetensors or files


def _hash_files(files: list[Path]) -> str | None:
    if not files:
        return None
    if len(files) == 1:
        return weights_sha256(files[0])  # equals `sha256sum FILE`
    # Several shards: hash of their `sha256sum` lines in name order (= `sha256sum * | sha256sum`).
    lines = "".join(f"{weights_sha256(p)}  {p.name}\n" for p in sorted(files, key=lambda p: p.name))
    return hashlib.sha256(lines.encode()).hexdigest()


def _hub_snapshot(repo_id: str) -> Path | None:
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached (or not a valid id): identity stays without a hash
        return None


def model_identity(ref: BaseModelRef) -> dict:
    """{"name", "path", "gguf_file", "sha256"}: what was loaded, for run metadata and reproducibility.

    sha256 is the GGUF file's hash, or the hash of a folder's weight files; for hub ids the local cache
    is hashed when present, else sha256 is None. Hashes are cached per (path, mtime, size).
    """
    if ref.gguf_file:
        files = [Path(ref.path) / ref.gguf_file]
    elif ref.is_local:
        files = _weight_files(Path(ref.path))
    else:
        snapshot = _hub_snapshot(ref.path)
        files = _weight_files(snapshot) if snapshot is not None else []
    return {"name": ref.name, "path": ref.path, "gguf_file": ref.gguf_file, "sha256": _hash_files(files)}
