"""Typed mappings -> dataclasses, with every error naming its key path.

The job spec is YAML, so values arrive as plain dicts/lists/scalars. ``build`` turns such a mapping
into a (nested) dataclass using its type hints, rejecting unknown keys (with close matches) and wrong
types; callers prefix ``FieldError.path`` with the file name to give one clear message.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from typing import Any, Union

__all__ = ["FieldError", "build", "coerce", "describe", "suggest"]

class FieldError(ValueError):
    """Raised while building: ``path`` is relative to the object being built; callers prefix it."""

    def __init__(self, path: str, problem: str):
        self.path, self.problem = path, problem
        super().__init__(f"{path}: {problem}" if path else problem)


def suggest(key: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(choices), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in args if a is not type(None)) + (
            " or null" if type(None) in args else "")
    if origin is list:
        return f"a list of {describe(args[0])}s" if args else "a list"
    return {int: "an integer", float: "a float", bool: "a boolean", str: "a string", dict: "a mapping"}.get(
        hint, getattr(hint, "__name__", str(hint)))


_FLOAT_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def coerce(value: Any, hint: Any, path: str) -> Any:
    """``value`` as type ``hint`` or FieldError(path). YAML 1.1 reads ``1e-4`` as a string, so
    float-looking strings count as floats; bools are never numbers (``True`` is no batch size)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, path)
            except FieldError:
                continue
        raise FieldError(path, f"expected {describe(hint)}, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise FieldError(path, f"expected {describe(hint)}, got {value!r}")
        return [coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise FieldError(path, f"expected a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif isinstance(hint, type) and isinstance(value, hint):
        return value
    raise FieldError(path, f"expected {describe(hint)}, got {value!r}")


def build(cls: type, raw: Any, path: str = "") -> Any:
    """Dataclass ``cls`` from a mapping, nested dataclasses included; errors carry the key path."""
    def sub(name: str) -> str:
        return f"{path}.{name}" if path else name

    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, dict):
        raise FieldError(path, f"expected a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in raw:
        if key not in fields:
            raise FieldError(sub(str(key)), f"unknown key{suggest(str(key), fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise FieldError(sub(name), "required key is missing")
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build(hint, raw[name] if raw[name] is not None else {}, sub(name))
        else:
            kwargs[name] = coerce(raw[name], hint, sub(name))
    try:
        return cls(**kwargs)
    except FieldError as e:
        raise FieldError(sub(e.path), e.problem) from None
