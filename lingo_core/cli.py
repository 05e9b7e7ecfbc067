"""`lingo train`: flags are generated from TrainConfig (and its nested AdapterSettings), so the dataclass
IS the CLI. Three layers, later wins: defaults < --config FILE (YAML/JSON) < --flags < key=value.

  lingo train --task prom_core_tata --method ars --epochs 1 --max-train-samples 512 --adapter.target_r 4
  lingo train task=tf/0 adapter.method=lora lr=3e-4
"""

from __future__ import annotations

import argparse
import ast
import functools
import inspect
import json
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any

from lingo_core.cliparse import ArgumentParser
from lingo_core.data.loading import DataError
from lingo_core.data.task import UnknownTaskError
from lingo_core.storage import StorageError
from lingo_core.train.config import TrainConfig
from lingo_core.tuners.config import AdapterSettings
from lingo_core.typed import FieldError, dotted, field_types, load_yaml, nest, parse_value

_SHORTCUTS = {"method": "adapter.method"}  # the one adapter knob everybody sets: allow plain --method


def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal under each field) as help texts."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _fields() -> dict[str, tuple[Any, Any, str]]:
    """Dotted key -> (type, default, help) for every TrainConfig / AdapterSettings field."""
    defaults = TrainConfig().to_dict()
    docs = {**_field_docs(TrainConfig), **{f"adapter.{k}": v for k, v in _field_docs(AdapterSettings).items()}}
    return {key: (hint, functools.reduce(dict.__getitem__, key.split("."), defaults), docs.get(key, ""))
            for key, hint in field_types(TrainConfig).items()}


def _type_name(tp: Any) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    base = args[0] if _is_optional(tp) and len(args) == 1 else tp
    name = "list" if typing.get_origin(base) is list else getattr(base, "__name__", str(base))
    return f"{name} or none" if _is_optional(tp) else name


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="lingo train",
        usage="%(prog)s [--config FILE] [--FIELD VALUE ...] [--adapter.FIELD VALUE ...] [key=value ...]",
        description="Fine-tune an LM on one GUE task with an adapter; writes the adapter folder, result.json, "
        "test_predictions.json and plots/ into --output-dir (layout: lingo_core/run_folder.py).",
        epilog="Any field may also be given as key=value (e.g. adapter.target_r=4). Values are YAML, as in "
        "`lingo tune`: null (or nothing) for None, lists as [q_proj,v_proj] (no longer q_proj,v_proj).",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", metavar="FILE", help="YAML or JSON file with TrainConfig fields (nested 'adapter:')")
    for key, (tp, default, doc) in _fields().items():
        flags = {f"--{key}", f"--{key.replace('_', '-')}"}
        flags |= {f"--{s}" for s, target in _SHORTCUTS.items() if target == key}
        p.add_argument(*sorted(flags), dest=key, metavar=_type_name(tp).upper().replace(" ", "_"),
                       help=f"{doc} (default: {default})".strip())
    p.add_argument("overrides", nargs="*", metavar="key=value", help="torchtune-style overrides, applied last")
    return p


def parse_train_args(argv: list[str] | None = None) -> TrainConfig:
    """argv -> validated TrainConfig; any bad key or value exits with one clear argparse error."""
    parser = build_parser()
    ns = vars(parser.parse_args(argv))
    flat: dict[str, Any] = {}
    try:
        if "config" in ns:
            path = Path(ns.pop("config"))
            loaded = json.loads(path.read_text()) if path.suffix == ".json" else _load_yaml(path)
            if not isinstance(loaded, dict):
                raise ValueError(f"{path}: expected a mapping of TrainConfig fields")
            flat.update(dotted(loaded, TrainConfig))
        overrides = ns.pop("overrides", [])
        # --FIELD VALUE and key=value are typed by the rule of `lingo tune`'s overrides (lingo_core.typed)
        flat.update({key: parse_value(value, key) for key, value in ns.items()})
        for item in overrides:
            key, eq, value = item.partition("=")
            key = _SHORTCUTS.get(key.strip(), key.strip()).replace("-", "_")
            if not eq or not key:
                raise ValueError(f"override {item!r}: expected key=value, e.g. adapter.target_r=4")
            flat[key] = parse_value(value, key)
        return TrainConfig.from_dict(nest(flat))
    except (ValueError, OSError) as e:
        parser.error(str(e))
        raise  # unreachable: parser.error exits


def _load_yaml(path: Path) -> Any:
    try:
        return load_yaml(path.read_bytes())  # the job spec's strict reader: no python tags, no repeated keys
    except FieldError as e:
        where = f"{path}:{e.line}" if e.line else str(path)
        raise ValueError(f"{where}: {f'{e.path}: ' if e.path else ''}{e.problem}") from None


# Raised by train() before it writes anything, for inputs the user named (task, data root, data files, model),
# and StorageError: a write that failed (full disk), which leaves nothing half-written.
USER_ERRORS = (UnknownTaskError, DataError, FileNotFoundError, NotADirectoryError, StorageError)


def summary_line(result) -> str:
    dev, test = result.dev_metrics, result.test_metrics
    return (
        f"{result.task} [{result.method}] dev_mcc={dev.get('mcc', float('nan')):.4f} "
        f"test_mcc={test['mcc']:.4f} test_acc={test['accuracy']:.4f} best_step={result.best_step}/"
        f"{result.total_steps} trainable={100 * result.trainable_fraction:.2f}% "
        f"time={result.wall_time_s:.0f}s -> {result.artifact_dir}"
    )


def train_main(argv: list[str] | None = None) -> int:
    """Entry point of `lingo train` / `python -m lingo_core train`."""
    from lingo_core.run_folder import write_result
    from lingo_core.train.trainer import train

    cfg = parse_train_args(argv)
    try:
        result = train(cfg)
    except USER_ERRORS as e:  # what the user named does not exist or does not parse: one line, exit 2
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        build_parser().error(message)
    write_result(result, cfg.output_dir)
    print(summary_line(result))
    return 0


if __name__ == "__main__":
    sys.exit(train_main())
