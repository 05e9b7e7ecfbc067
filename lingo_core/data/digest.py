"""A digest of a task's data: which exact files a model was trained and selected on."""

from __future__ import annotations

import hashlib
from pathlib import Path

from lingo_core.data.task import TaskSpec

_CHUNK = 8 * 1024 * 1024


def task_digest(task: TaskSpec) -> str:
    """sha256 over the task's files (every file under its folder, or the one FASTA source), as
    `sha256sum` lines of their paths relative to the task, in path order: equal digests, equal data."""
    root = Path(task.path)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    if not files:
        raise FileNotFoundError(f"{root}: task {task.name!r} has no data files to digest")
    lines = []
    for p in files:
        h = hashlib.sha256()
        with p.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
        rel = p.relative_to(root).as_posix() if root.is_dir() else p.name
        lines.append(f"{h.hexdigest()}  {rel}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()
