"""The one typed config path: YAML text -> typed dataclasses, every error naming its key path (and line).

    bytes --load_yaml--> dicts/lists/scalars --build--> (nested) dataclass
    "k=v" --parse_value(v,k)^   (`lingo train` and `lingo tune` overrides: one rule, YAML)

``load_yaml`` is strict where PyYAML is lenient: the text must be UTF-8, a key may not repeat in a
mapping (PyYAML keeps the last silently, so a second ``train:`` block would discard the first), and
tags stay the safe ones (``!!python/...`` is refused, never run). ``build`` uses a dataclass's type hints,
rejecting unknown keys (with close matches) and wrong types. Callers prefix ``FieldError.path`` (and
``line``) with the file name to give one clear message.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from typing import Any, Union

import yaml

__all__ = ["FieldError", "build", "coerce", "describe", "dotted", "field_types", "is_finite_number", "is_int",
           "load_yaml", "nest", "parse_value", "set_path", "suggest"]


class FieldError(ValueError):
    """Raised while reading or building: ``path`` is relative to the object being built and ``line`` (1-based,
    None when unknown) is where in the file the problem sits; callers prefix both with the file name."""

    def __init__(self, path: str, problem: str, line: int | None = None):
        self.path, self.problem, self.line = path, problem, line
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
        return f"a list of {describe(args[0]).split(' ', 1)[-1]}s" if args else "a list"  # "a list of floats"
    return {int: "an integer", float: "a float", bool: "a boolean", str: "a string", dict: "a mapping"}.get(
        hint, getattr(hint, "__name__", str(hint)))


def is_int(value: Any) -> bool:
    """An int that is no bool: JSON's and YAML's `true` is no count (Python counts it as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """A real, finite number that is no bool (an MLflow metric may be missing, NaN or inf)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_FLOAT_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def coerce(value: Any, hint: Any, path: str) -> Any:
    """``value`` as type ``hint`` or FieldError(path). YAML 1.1 reads ``1e-4`` as a string, so
    float-looking strings count as floats; bools are never numbers (``True`` is no batch size)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if isinstance(value, str) and "," in value and _wants_list(hint):
        # The old `lingo train` split "q_proj,v_proj" on commas. Not any more: torchtune (OmegaConf dotlists)
        # and Hydra read overrides as YAML, so `[q_proj,v_proj]` is what their users type, and splitting would
        # make one text mean a string in one field and a list in the next. One retry beats a silent guess.
        raise FieldError(path, f"expected {describe(hint)}, got {value!r}; write a YAML list: [{value}]")
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
        if is_int(value):
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


def field_types(cls: type, prefix: str = "") -> dict[str, Any]:
    """Dotted field path -> type hint, nested dataclasses flattened ({"adapter.exploration": float, ...}):
    the keys a ``key=value`` override may name, for `lingo train`'s flags and a job's ``train:`` block."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(field_types(hints[f.name], f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = hints[f.name]
    return out


def dotted(raw: dict, cls: type, prefix: str = "") -> dict[str, Any]:
    """A nested mapping for dataclass ``cls`` -> {dotted path: value} ({"adapter": {"lora_r": 8}} ->
    {"adapter.lora_r": 8}), the paths of ``field_types``. Only fields that are nested dataclasses are
    descended into; any other key, known or not, stays whole for the caller to check."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        hint = hints[key] if key in names else None
        if isinstance(value, dict) and dataclasses.is_dataclass(hint):
            out.update(dotted(value, hint, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def set_path(d: dict, path: str, value: Any) -> None:
    """``d["adapter"]["exploration"] = value`` for ``"adapter.exploration"`` (missing parents created)."""
    *parents, leaf = path.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    d[leaf] = value


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{dotted path: value} -> the nested mapping ``build`` takes: the inverse of ``dotted``."""
    out: dict[str, Any] = {}
    for path, value in flat.items():
        set_path(out, path, value)
    return out


def _wants_list(hint: Any) -> bool:
    """A list field that takes no plain string (``list[str] | None``, not ``list[str] | str``)."""
    arms = typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else (hint,)
    return any(typing.get_origin(a) is list for a in arms) and str not in arms


def build(cls: type, raw: Any, path: str = "") -> Any:
    """Dataclass ``cls`` from a mapping, nested dataclasses included; errors carry the key path."""
    def sub(name: str) -> str:
        return f"{path}.{name}" if path else name

    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, dict):
        raise FieldError(path, f"expected a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    renamed = getattr(cls, "RENAMED_KEYS", {})  # old name -> how to say it now (AdapterSettings has some)
    for key in raw:
        if key in renamed:
            raise FieldError(sub(str(key)), renamed[key])
        if key not in fields:
            raise FieldError(sub(str(key)), f"unknown key {sub(str(key))!r}{suggest(str(key), fields)}")
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


# --------------------------------------------------------------------------------------- YAML text


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated within one mapping, at any depth."""

    def construct_document(self, node: yaml.Node) -> Any:
        self._check_unique(node, "", set())
        return super().construct_document(node)

    def _check_unique(self, node: yaml.Node, path: str, seen: set[int]) -> None:
        if id(node) in seen:  # an alias points back at a node already walked (recursive anchors too)
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._check_unique(item, f"{path}[{i}]", seen)
        if not isinstance(node, yaml.MappingNode):
            return
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: overriding merged keys is the point
                self._check_unique(value_node, path, seen)
                continue
            # constructed, not raw text: `1` and `1.0` (or `yes` and `true`) are one key to the dict
            key = self.construct_object(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            sub = f"{path}.{key}" if path else str(key)
            line = key_node.start_mark.line + 1
            if key is not None and key in first_line:
                raise FieldError(sub, f"duplicate key (first at line {first_line[key]}); YAML would keep only "
                                 "this one and silently drop the first: merge the two", line)
            if key is not None:
                first_line[key] = line
            self._check_unique(value_node, sub, seen)


def _yaml_problem(e: yaml.YAMLError) -> tuple[str, int | None]:
    """One line out of PyYAML's multi-line report: (problem, 1-based line or None)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context, context_mark = getattr(e, "context", None), getattr(e, "context_mark", None)
    if context and context_mark is not None and (mark is None or context_mark.line != mark.line):
        problem += f" ({context} at line {context_mark.line + 1})"
    elif context:
        problem += f" ({context})"
    if "python/" in problem:
        problem += "; spec files are plain YAML, python tags are refused"
    return problem, (mark.line + 1 if mark is not None else None)


def load_yaml(data: bytes) -> Any:
    """UTF-8 YAML bytes -> plain data through ``StrictLoader``; every problem is one FieldError with its line."""
    try:
        text = data.decode("utf-8")  # explicit: the locale's encoding would differ from host to host
    except UnicodeDecodeError as e:
        raise FieldError("", f"not valid UTF-8 text (byte {e.start}: 0x{data[e.start]:02x}); save the file "
                         "as UTF-8", data.count(b"\n", 0, e.start) + 1) from None
    try:
        return yaml.load(text, Loader=StrictLoader)  # StrictLoader is a SafeLoader: no python tags
    except yaml.YAMLError as e:
        problem, line = _yaml_problem(e)
        raise FieldError("", f"not valid YAML: {problem}", line) from None


def parse_value(text: str, key: str) -> Any:
    """One ``key=value`` override's value, typed as YAML (``[a,b]``, ``1e-3``, ``null``; empty -> None), as
    strictly as a spec file; ``coerce`` then checks it against the field's type. A FieldError's path
    starts with ``key``."""
    try:
        return load_yaml(text.encode(errors="surrogateescape")) if text.strip() else None
    except FieldError as e:
        raise FieldError(f"{key}.{e.path}" if e.path else key, e.problem) from None
