"""The project's import graph: no cycles, and `lingo_core` stays free of Ray, MLflow and the orchestrator.

A function-local import hides a cycle from Python (the module is complete by the time the function
runs) but not from a reader, so every import counts here: module level, inside functions and methods,
under `try`/`if`. Only `if TYPE_CHECKING:` blocks are left out of the cycle check, because they never
execute; the boundary check reads them too (a type-only import of `orchestrator` is still a leak).

    source files --ast--> (module, imported module) edges --> strongly connected components
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lingo_core", "orchestrator")
FORBIDDEN_IN_CORE = ("ray", "mlflow", "orchestrator")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module, fully qualified (a project submodule where one is named)
    line: int
    type_only: bool  # inside `if TYPE_CHECKING:`


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _project_files() -> dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            files[_module_name(path)] = path
    return files


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _base_of(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a `from ... import` reads from (relative levels resolved)."""
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    anchor = package[: len(package) - (node.level - 1)]
    return ".".join(anchor + ([node.module] if node.module else []))


def _imports_of(module: str, path: Path, known: set[str]) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, type_only: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, type_only)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(module, alias.name, node.lineno, type_only))
        elif isinstance(node, ast.ImportFrom):
            base = _base_of(node, module, is_package)
            for alias in node.names:
                # `from pkg import sub` imports the submodule; `from mod import name` the module itself.
                sub = f"{base}.{alias.name}"
                found.append(Import(module, sub if sub in known else base, node.lineno, type_only))
        elif isinstance(node, ast.Call) and _dynamic_target(node):
            found.append(Import(module, _dynamic_target(node), node.lineno, type_only))
        for child in ast.iter_child_nodes(node):
            visit(child, type_only)

    visit(tree, False)
    return found


def _dynamic_target(node: ast.Call) -> str:
    """`importlib.import_module("x")` / `__import__("x")` with a literal name: an import all the same."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if name not in ("import_module", "__import__") or not node.args:
        return ""
    arg = node.args[0]
    return arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else ""


def _all_imports() -> list[Import]:
    files = _project_files()
    known = set(files)
    return [imp for module, path in files.items() for imp in _imports_of(module, path, known)]


def _graph(imports: list[Import]) -> dict[str, dict[str, int]]:
    """module -> {imported project module: first line}, runtime imports only."""
    known = set(_project_files())
    graph: dict[str, dict[str, int]] = {module: {} for module in known}
    for imp in imports:
        if imp.type_only or imp.target not in known or imp.target == imp.module:
            continue
        graph[imp.module].setdefault(imp.target, imp.line)
    return graph


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def _path_in(graph: dict[str, dict[str, int]], component: list[str]) -> str:
    """One concrete cycle through the component's first module, with the line of each import."""
    members, start = set(component), component[0]
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:  # breadth first inside the component: the shortest way back to `start`
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(graph[node]):
                if nxt == start:
                    hops = [node]
                    while hops[-1] != start:
                        hops.append(parents[hops[-1]])
                    hops.reverse()
                    hops.append(start)
                    return " -> ".join(
                        f"{a} (line {graph[a][b]})" for a, b in zip(hops, hops[1:], strict=False)
                    ) + f" -> {start}"
                if nxt in members and nxt not in parents and nxt != start:
                    parents[nxt] = node
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    raise AssertionError(f"no cycle through {start}")  # unreachable for a real component


def test_the_scanner_sees_function_local_and_relative_imports(tmp_path: Path) -> None:
    """The checks below are only as good as the scanner: a hidden import must be found."""
    source = (
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from lingo_core import tokenization\n"
        "def f():\n"
        "    import ray\n"
        "    from . import loading\n"
        "    from .task import TaskSpec\n"
        "class C:\n"
        "    def m(self):\n"
        "        from ...orchestrator.jobspec import JobSpec\n"
    )
    path = tmp_path / "x.py"
    path.write_text(source, encoding="utf-8")
    known = {"lingo_core.tokenization", "lingo_core.data.loading", "lingo_core.data.task"}
    found = {(i.target, i.type_only) for i in _imports_of("lingo_core.data.x", path, known)}
    assert found >= {
        ("lingo_core.tokenization", True),
        ("ray", False),
        ("lingo_core.data.loading", False),
        ("lingo_core.data.task", False),
        ("orchestrator.jobspec", False),
    }


def test_the_cycle_finder_names_a_cycle() -> None:
    graph = {"a": {"b": 3}, "b": {"c": 5}, "c": {"a": 7}, "d": {"a": 1}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _path_in(graph, ["a", "b", "c"]) == "a (line 3) -> b (line 5) -> c (line 7) -> a"


def test_no_import_cycle_among_project_modules() -> None:
    graph = _graph(_all_imports())
    cycles = [f"{', '.join(c)}: {_path_in(graph, c)}" for c in _cycles(graph)]
    assert not cycles, "import cycles (function-local imports included):\n" + "\n".join(cycles)


@pytest.mark.parametrize("forbidden", FORBIDDEN_IN_CORE)
def test_lingo_core_never_imports(forbidden: str) -> None:
    leaks = [
        f"{imp.module} line {imp.line}: {imp.target}"
        for imp in _all_imports()
        if imp.module.split(".")[0] == "lingo_core" and imp.target.split(".")[0] == forbidden
    ]
    assert not leaks, f"lingo_core must not import {forbidden} (see docs/DESIGN.md):\n" + "\n".join(leaks)
