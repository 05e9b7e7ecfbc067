"""The method names have one owner, `lingo_core.method_names` (issue 11: one owner per fact).

A second copy of a tuple such as RANK_METHODS drifts silently: add a method to one and the other still
answers for the old set. The scan below reads every project module (as tests/test_import_graph.py does)
and refuses any other definition of the names, or a literal that spells one of the tuples out.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from lingo_core import method_names

REPO_ROOT = Path(__file__).resolve().parents[2]
OWNER = REPO_ROOT / "lingo_core" / "method_names.py"
NAMES = ("METHODS", "RANK_METHODS", "PEFT_METHODS")
SCANNED = ("lingo_core", "orchestrator", "benchmarks")


def _string_literal(node: ast.AST) -> frozenset[str] | None:
    """The strings of a tuple/list/set literal made of string constants only (else None)."""
    if not isinstance(node, (ast.Tuple, ast.List, ast.Set)) or len(node.elts) < 2:
        return None
    if not all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
        return None
    return frozenset(e.value for e in node.elts)


def second_owners(path: Path) -> list[str]:
    """Where a module defines one of NAMES, or spells out one of their tuples as a literal."""
    owned = {frozenset(getattr(method_names, n)): n for n in NAMES}
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, ast.AnnAssign) else [])
        found += [f"line {node.lineno}: assigns {t.id}" for t in targets
                  if isinstance(t, ast.Name) and t.id in NAMES]
        spelled = _string_literal(node)
        if spelled in owned:
            found.append(f"line {node.lineno}: spells out {owned[spelled]} as a literal")
    return found


def test_no_module_but_the_owner_defines_method_names() -> None:
    files = [p for package in SCANNED for p in sorted((REPO_ROOT / package).rglob("*.py")) if p != OWNER]
    leaks = [f"{p.relative_to(REPO_ROOT)} {where}" for p in files for where in second_owners(p)]
    assert not leaks, "method names are owned by lingo_core/method_names.py; import them:\n" + "\n".join(leaks)


def test_the_scan_finds_a_copy(tmp_path: Path) -> None:
    """A copy of the old kind (artifacts.py had its own RANK_METHODS) and an inline spelling are found."""
    copy = tmp_path / "copy.py"
    copy.write_text('RANK_METHODS = ("ars", "adalora")\n'
                    'def f(m):\n    return m in ["lora", "prefix", "adalora", "ars"]\n', encoding="utf-8")
    assert second_owners(copy) == ["line 1: assigns RANK_METHODS",
                                   "line 1: spells out RANK_METHODS as a literal",
                                   "line 3: spells out PEFT_METHODS as a literal"]


@pytest.mark.parametrize("module", ["lingo_core.tuners", "lingo_core.tuners.config", "lingo_core.artifacts",
                                    "lingo_core.adapter_checks", "orchestrator.validate"])
def test_every_reader_holds_the_owners_tuples(module: str) -> None:
    imported = __import__(module, fromlist=["_"])
    for name in NAMES:
        if hasattr(imported, name):
            assert getattr(imported, name) is getattr(method_names, name), f"{module}.{name} is a copy"


def test_the_owner_imports_nothing_heavy() -> None:
    """The reason the copies existed: light modules could not import the names without torch."""
    code = ("import sys, lingo_core.method_names; "
            "heavy = [m for m in ('torch', 'peft', 'transformers', 'lingo_core.tuners') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def test_the_trait_groups_are_methods() -> None:
    assert set(method_names.RANK_METHODS) <= set(method_names.PEFT_METHODS) <= set(method_names.METHODS)
