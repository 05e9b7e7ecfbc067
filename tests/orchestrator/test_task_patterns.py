"""Task patterns are matched by one rule, lingo_core.data.task.task_matches (issue 11: one owner per fact).

A job names tasks twice: in `tasks` (resolved by TaskRegistry.select) and as `budgets` keys (matched by
orchestrator.search). They used to be matched two ways, so "H3K*" was a valid budgets key but not a
valid task list; both now go through task_matches.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from lingo_core.data import TaskRegistry, TaskSpec, UnknownTaskError
from lingo_core.data import task as task_module
from orchestrator import search, validate

REPO_ROOT = Path(__file__).resolve().parents[2]
OWNER = REPO_ROOT / "lingo_core" / "data" / "task.py"

PATTERNS = [
    "EMP/H3",  # exact name
    "prom_core_tata",  # exact name of a task whose folder is prom/prom_core_tata
    "H3",  # unique short name
    "tf/*",  # glob on the name
    "prom_core_*",  # prefix glob
    "prom/*",  # glob on the folder only: the prom tasks are named prom_*
    "H3K*",  # glob on the short name only
    "prom/prom_core_tata",  # a folder, no glob
    "tf/[0-2]",
    "nope*",  # a glob matching nothing
    "nope",  # a name matching nothing
]


@pytest.fixture(scope="module")
def registry(gue_root: Path) -> TaskRegistry:
    return TaskRegistry.from_root(gue_root)


def _selected(registry: TaskRegistry, pattern: str) -> list[str]:
    try:
        return [t.name for t in registry.select([pattern])]
    except UnknownTaskError:  # select refuses a pattern that names nothing; the budgets path finds nothing
        return []


def _budget_matches(registry: TaskRegistry, pattern: str) -> list[str]:
    return [t.name for t in registry if search.task_matches(t, pattern)]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_tasks_and_budgets_read_a_pattern_alike(registry: TaskRegistry, pattern: str) -> None:
    assert _selected(registry, pattern) == _budget_matches(registry, pattern)


def test_the_patterns_mean_what_they_say(registry: TaskRegistry) -> None:
    """The comparison above is only worth something if the patterns hit what their comments claim."""
    assert _selected(registry, "prom/*") == [n for n in registry.names() if n.startswith("prom_")]
    assert _selected(registry, "H3K*") == [n for n in registry.names() if n.startswith("EMP/H3K")]
    assert _selected(registry, "prom/prom_core_tata") == ["prom_core_tata"]
    assert _selected(registry, "nope*") == _selected(registry, "nope") == []


def test_a_name_still_names_one_task(tmp_path: Path) -> None:
    """Without glob characters a pattern is one task: the exact name wins over another task's short name,
    and an ambiguous short name stays an error (budgets keys, which may match several, read it as both)."""

    def spec(name: str) -> TaskSpec:
        return TaskSpec(name=name, path=tmp_path / name, num_labels=2, label_names=("no", "yes"), seq_len_bp=10,
                        description="a test task")

    registry = TaskRegistry([spec("H3"), spec("EMP/H3"), spec("a/x"), spec("b/x")])
    assert [t.name for t in registry.select(["H3"])] == ["H3"]
    with pytest.raises(UnknownTaskError, match="ambiguous"):
        registry.select(["x"])
    assert [t.name for t in registry if task_module.task_matches(t, "x")] == ["a/x", "b/x"]


def test_the_orchestrator_calls_lingo_cores_rule() -> None:
    assert search.task_matches is task_module.task_matches
    assert validate.task_matches is task_module.task_matches


def test_no_other_module_matches_globs() -> None:
    """A second matcher would need fnmatch (or glob's translate): only the owner imports it."""
    users = []
    for package in ("lingo_core", "orchestrator"):
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                if path != OWNER and any(n.split(".")[0] == "fnmatch" for n in names):
                    users.append(f"{path.relative_to(REPO_ROOT)} line {node.lineno}")
    assert not users, "task patterns are matched by lingo_core.data.task.task_matches:\n" + "\n".join(users)
