"""Checks on an exported adapter folder before anything in it is loaded (docs/reliability.md, "Adapters").

Only JSON (lingo.json, adapter_config.json) and safetensors are ever read from an adapter; a folder that
holds a pickle-format file (.bin, .pt, .pkl, ...) is refused outright, without opening that file, so
neither PEFT's `.bin` fallback nor anything else can unpickle it. Every listed file must exist, match the
sha256 that lingo.json recorded when it was written, and (for .safetensors) parse as safetensors.

This module owns the folder format (FORMAT_VERSION, the files each method writes; the method names are
method_names.py's); artifacts.py writes and loads folders of that format, so it imports this module, never
the reverse.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from lingo_core.method_names import METHODS, PEFT_METHODS
from lingo_core.storage import sha256_file
from lingo_core.tokenization import MODES
from lingo_core.typed import is_int

FORMAT_VERSION = 1
"""lingo.json schema version; bump when the folder layout changes."""

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
"""File types that torch/joblib write with pickle; never loaded from an adapter folder."""

META = "lingo.json"


class AdapterError(ValueError):
    """An adapter folder that cannot be loaded; the message names the file (and key) and what was expected."""


def _method_files(method: str) -> tuple[str, ...]:
    if method in PEFT_METHODS:
        return ("adapter_config.json", "adapter_model.safetensors", "head.safetensors")
    if method == "full":
        return ("model.safetensors",)
    return ("head.safetensors",)


def _key_checks() -> dict[str, tuple[Any, str]]:
    return {
        "num_labels": (lambda v: is_int(v) and v >= 2, "an integer >= 2"),
        "label_names": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
        "tokenization": (lambda v: v in MODES, " or ".join(map(repr, MODES))),
        "max_length": (lambda v: v is None or (is_int(v) and v > 0), "a positive integer or null"),
        "method": (lambda v: v in METHODS, f"one of {list(METHODS)}"),
        "base_model": (lambda v: isinstance(v, dict) and isinstance(v.get("name"), str) and v["name"] != "",
                       "a mapping with a non-empty 'name'"),
        "files": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of file names"),
        "sha256": (lambda v: isinstance(v, dict), "a mapping of file name -> sha256"),
    }


def read_adapter_meta(path: Path) -> dict:
    """lingo.json of an adapter folder, after checking the folder; AdapterError on any problem."""
    path = Path(path)
    if not path.is_dir():
        raise AdapterError(f"{path}: not a folder; expected a Lingo adapter folder holding {META}")
    pickles = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise AdapterError(f"{pickles[0]}: pickle-format file in an adapter folder, refused unopened; expected "
                           "safetensors and JSON only (re-export the adapter with lingo train/tune)")
    meta_file = path / META
    try:
        meta = json.loads(meta_file.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise AdapterError(f"{meta_file}: missing; expected the folder written by lingo train / lingo tune "
                           f"({META} + safetensors)") from None
    except UnicodeDecodeError as e:
        raise AdapterError(f"{meta_file}: not UTF-8 text (byte {e.start}); expected JSON") from None
    except json.JSONDecodeError as e:
        raise AdapterError(f"{meta_file}:{e.lineno}: not valid JSON ({e.msg}); expected a JSON object") from None
    if not isinstance(meta, dict):
        raise AdapterError(f"{meta_file}: top level is {type(meta).__name__}; expected a JSON object")
    if meta.get("format_version") != FORMAT_VERSION:
        raise AdapterError(f"{meta_file}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
    for key, (ok, expected) in _key_checks().items():
        if key == "sha256" and key not in meta:
            continue  # exports written before checksums were recorded still load (files are parsed below)
        if key not in meta or not ok(meta[key]):
            got = json.dumps(meta[key]) if key in meta else "nothing (key missing)"
            raise AdapterError(f"{meta_file}: key {key!r}: expected {expected}, got {got}")
    if len(meta["label_names"]) != meta["num_labels"]:
        raise AdapterError(f"{meta_file}: key 'label_names': {len(meta['label_names'])} names for num_labels="
                           f"{meta['num_labels']}; expected one per label")
    missing_listed = [f for f in _method_files(meta["method"]) if f not in meta["files"]]
    if missing_listed:
        raise AdapterError(f"{meta_file}: key 'files' lacks {missing_listed}; expected every file of a "
                           f"{meta['method']!r} adapter")
    for name in meta["files"]:
        _check_file(path, name, meta.get("sha256", {}).get(name), meta_file)
    return meta


def _check_file(folder: Path, name: str, want: str | None, meta_file: Path) -> None:
    file = folder / name
    if Path(name).is_absolute() or ".." in Path(name).parts or not file.is_file():
        raise AdapterError(f"{file}: missing (listed in {meta_file.name} 'files'); expected the file written "
                           "with the adapter")
    if want is not None and sha256_file(file) != want:
        raise AdapterError(f"{file}: sha256 differs from {meta_file.name} 'sha256' ({want[:16]}...); expected "
                           "the file as exported (truncated, replaced or changed since)")
    if name.endswith(".safetensors"):
        try:
            with safe_open(str(file), "pt"):  # reads the JSON header only; safetensors never unpickles
                pass
        except (SafetensorError, OSError, ValueError) as e:
            raise AdapterError(f"{file}: not a safetensors file ({e}); expected safetensors weights") from None
