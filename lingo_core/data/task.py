"""Task specs and the task registry.

A data root is read in one of two ways:

* GUE layout: ``<root>/tasks.json`` lists every task (name, path, num_labels, seq_len_bp, sizes,
  metric); each task folder holds ``{train,dev,test}.csv[.gz]`` with the header ``sequence,label``.
* Any other folder: it is scanned for task folders. A folder with ``train.csv`` or ``train.csv.gz``
  is a CSV task; a folder matching one of the FASTA conventions of :mod:`lingo_core.data.fasta`
  is a FASTA task. The task name is the folder's path relative to the root; ``num_labels`` is
  inferred from the train labels (max + 1) and ``seq_len_bp`` is the median train length.

GUE files carry no label names, so :func:`default_label_names` supplies readable ones per task
group. The splice labels were checked on the data itself: class 0 has ``AG`` right before the
centre in 99.6 % of rows (intron end = acceptor), class 1 has ``GT`` right after it with the
``GTAAGT`` donor consensus, class 2 is the mixed remainder. Hence acceptor / donor / neither.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lingo_core.data.errors import DataError
from lingo_core.data.fasta import detect_layout
from lingo_core.data.loading import infer_task_stats
from lingo_core.typed import is_int

SOURCES = ("csv", "fasta")
SPLITS = ("train", "dev", "test")


class UnknownTaskError(KeyError, ValueError):
    """A task name or pattern matched nothing (a KeyError for lookups, a ValueError for CLIs)."""

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message and show it wrapped in quotes.
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class TaskSpec:
    """One labelled DNA classification task."""

    name: str
    """Registry key, e.g. "prom_core_tata", "EMP/H3", "tf/0"."""
    path: Path
    """Task folder holding the split files (CSV or FASTA)."""
    num_labels: int
    """Number of classes; labels are 0..num_labels-1."""
    label_names: tuple[str, ...]
    """Readable class names, one per label id."""
    seq_len_bp: int
    """Median sequence length in base pairs."""
    description: str
    """Natural-language phrase put into the prompt template."""
    metric: str = "mcc"
    """Primary metric; MCC because GUE reports it and it is robust to class imbalance."""
    sizes: dict[str, int] | None = field(default=None, hash=False)
    """Split -> row count when known (tasks.json); None when not listed. Excluded from the hash
    so specs stay usable as dict keys."""
    source: str = "csv"
    """File format of the splits: "csv" (the GUE format) or "fasta"."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("TaskSpec.name is empty; give the task a registry key such as 'EMP/H3'")
        object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(self, "label_names", tuple(self.label_names))
        if self.num_labels < 2:
            raise ValueError(
                f"task {self.name!r}: num_labels={self.num_labels}; a classification task needs at least 2"
            )
        if len(self.label_names) != self.num_labels:
            raise ValueError(
                f"task {self.name!r}: {len(self.label_names)} label_names {self.label_names} "
                f"for num_labels={self.num_labels}; give exactly one name per label"
            )
        if len(set(self.label_names)) != len(self.label_names):
            raise ValueError(f"task {self.name!r}: label_names {self.label_names} repeat a name")
        if self.seq_len_bp <= 0:
            raise ValueError(f"task {self.name!r}: seq_len_bp={self.seq_len_bp}; expected a positive length")
        if not self.description.strip():
            raise ValueError(f"task {self.name!r}: description is empty; the prompt needs a phrase")
        if self.source not in SOURCES:
            raise ValueError(f"task {self.name!r}: source={self.source!r}; expected one of {SOURCES}")
        if self.sizes is not None:
            bad = {k: v for k, v in self.sizes.items() if not isinstance(v, int) or v < 0}
            if bad:
                raise ValueError(f"task {self.name!r}: sizes {bad} are not non-negative row counts")

    @property
    def short_name(self) -> str:
        """Last path component ("H3K4me3" for "EMP/H3K4me3")."""
        return self.name.rsplit("/", 1)[-1]


def _group(name: str) -> str:
    """GUE task group from a name or relative path: EMP, prom, tf, splice or ''."""
    first = name.split("/", 1)[0]
    if first in ("EMP", "tf", "splice", "prom"):
        return first
    return "prom" if name.startswith("prom_") else ""


def default_label_names(name: str, num_labels: int) -> tuple[str, ...]:
    """Readable class names for GUE tasks; "label_<i>" otherwise."""
    group, short = _group(name), name.rsplit("/", 1)[-1]
    if num_labels == 2 and group == "prom":
        return ("non-promoter", "promoter")
    if num_labels == 2 and group == "tf":
        return ("no binding site", "binding site")
    if num_labels == 2 and group == "EMP":
        # H3/H4 are occupancy tracks, not modifications; "H3 modified" would mislead the model.
        if short in ("H3", "H4"):
            return ("not enriched", f"{short} enriched")
        return ("unmodified", f"{short} modified")
    if num_labels == 3 and group == "splice":
        return ("acceptor", "donor", "neither")  # verified on the data, see module docstring
    return tuple(f"label_{i}" for i in range(num_labels))


def default_description(name: str, seq_len_bp: int) -> str:
    """Short prompt phrase per task, e.g. "promoter detection (core, TATA box, 70 bp)"."""
    group, short = _group(name), name.rsplit("/", 1)[-1]
    if group == "EMP":
        what = f"histone {short} occupancy" if short in ("H3", "H4") else f"histone {short} mark"
        return f"{what} (yeast, {seq_len_bp} bp)"
    if group == "prom":
        m = re.fullmatch(r"prom_(core|300)_(all|tata|notata)", short)
        if m:
            region = "core" if m.group(1) == "core" else "full"
            kind = {"all": "all types", "tata": "TATA box", "notata": "no TATA box"}[m.group(2)]
            return f"promoter detection ({region}, {kind}, {seq_len_bp} bp)"
        return f"promoter detection ({seq_len_bp} bp)"
    if group == "tf":
        return f"transcription factor binding site (human, set {short})"
    if group == "splice":
        return "splice site type (acceptor, donor or neither)"
    return f"sequence class ({name}, {seq_len_bp} bp)"


def default_data_root() -> Path | None:
    """$LINGO_DATA_ROOT, else ../shared/data/gue beside the checkout, else beside the cwd."""
    env = os.environ.get("LINGO_DATA_ROOT")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]  # .../lingo_core/data/task.py -> repo root
    for cand in (repo.parent / "shared" / "data" / "gue", Path.cwd().parent / "shared" / "data" / "gue"):
        if cand.is_dir():
            return cand.resolve()
    return None


GLOB_CHARS = "*?["
"""A pattern with one of these is an fnmatch glob; without, it names one task (TaskRegistry.get)."""


def task_folder(task: TaskSpec) -> str:
    """The task's folder as "<group>/<folder>" ("prom/prom_core_tata"): the last two path components,
    so a pattern means the same whatever the data root is called or wherever it is mounted."""
    return "/".join(task.path.parts[-2:])


def task_matches(task: TaskSpec, pattern: str) -> bool:
    """The one rule for whether a task pattern names a task: an fnmatch (case-sensitive) of the pattern on
    its name, its short name or its folder, so "tf/*", "H3K*" and "prom/*" (the prom_* tasks live in
    prom/) all work. A job's `tasks` (through TaskRegistry.select) and its `budgets` keys both use it."""
    return any(fnmatch.fnmatchcase(n, pattern) for n in (task.name, task.short_name, task_folder(task)))


def _close(query: str, names: Sequence[str]) -> str:
    pool = list(names) + [n.rsplit("/", 1)[-1] for n in names]
    close = difflib.get_close_matches(query, pool, n=5, cutoff=0.5)
    close = [n for n in names if n in close or n.rsplit("/", 1)[-1] in close]
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return f"{hint}known tasks: {', '.join(names)}"


class TaskRegistry:
    """Name -> TaskSpec for one data root, in file order."""

    def __init__(self, tasks: Sequence[TaskSpec], root: Path | None = None) -> None:
        self.root = root
        self._tasks: dict[str, TaskSpec] = {}
        for t in tasks:
            if t.name in self._tasks:
                raise ValueError(f"task name {t.name!r} appears twice; task names must be unique")
            self._tasks[t.name] = t

    @classmethod
    def from_root(cls, root: str | Path | None = None) -> TaskRegistry:
        """Read ``root/tasks.json`` when present, otherwise scan ``root`` for task folders."""
        if root is None:
            root = default_data_root()
            if root is None:
                raise FileNotFoundError(
                    "no data root: set LINGO_DATA_ROOT or pass --root (expected ../shared/data/gue "
                    "beside the checkout)"
                )
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"data root {root} is not a folder; expected GUE tasks or task folders")
        manifest = root / "tasks.json"
        tasks = _from_manifest(root, manifest) if manifest.is_file() else _scan(root)
        if not tasks:
            raise FileNotFoundError(
                f"no tasks under {root}: expected tasks.json, or folders with train.csv[.gz] or FASTA files"
            )
        return cls(tasks, root)

    def names(self) -> list[str]:
        return list(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self):
        return iter(self._tasks.values())

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def get(self, name: str) -> TaskSpec:
        """Exact name, or a last path component that is unique ("H3K4me3" -> "EMP/H3K4me3")."""
        if name in self._tasks:
            return self._tasks[name]
        hits = [t for t in self._tasks.values() if t.short_name == name]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise UnknownTaskError(
                f"task {name!r} is ambiguous: {', '.join(t.name for t in hits)}; use the full name"
            )
        raise UnknownTaskError(f"unknown task {name!r}; {_close(name, self.names())}")

    def select(self, patterns: Sequence[str]) -> list[TaskSpec]:
        """Tasks matching any pattern (`task_matches`), or "all". Registry order, no duplicates.

        A glob may match many tasks but must match one; a pattern without glob characters must name
        exactly one task: where several match, `get` decides (the exact name wins over a short name,
        an ambiguous short name is an error)."""
        if isinstance(patterns, str):
            patterns = [patterns]  # a bare string would otherwise be matched letter by letter
        if not patterns:
            raise UnknownTaskError(
                f"no task patterns given; use 'all' or names from: {', '.join(self.names())}"
            )
        chosen: set[str] = set()
        for pat in patterns:
            if pat == "all":
                chosen.update(self._tasks)
                continue
            hits = [t.name for t in self._tasks.values() if task_matches(t, pat)]
            if not any(c in pat for c in GLOB_CHARS):
                # get() only ever finds a task task_matches names too (exact or short name), so one hit
                # is get()'s answer; for none or several its error / exact-name rule applies.
                chosen.add(hits[0] if len(hits) == 1 else self.get(pat).name)
                continue
            if not hits:
                raise UnknownTaskError(
                    f"pattern {pat!r} matches no task; known tasks: {', '.join(self.names())}"
                )
            chosen.update(hits)
        return [t for n, t in self._tasks.items() if n in chosen]


_REQUIRED_KEYS = ("name", "path", "num_labels", "seq_len_bp")


def _is_str_list(v: object) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _is_sizes(v: object) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and is_int(n) and n >= 0 for k, n in v.items())


# The JSON type of each key (value ranges stay with TaskSpec, which owns them): key -> (check, expected).
_KEY_TYPES = {
    "name": (lambda v: isinstance(v, str) and v != "", "a non-empty string such as 'EMP/H3'"),
    "path": (lambda v: isinstance(v, str) and v != "", "a folder path relative to the data root (a string)"),
    "num_labels": (lambda v: is_int(v) and v > 0, "a positive integer"),
    "seq_len_bp": (lambda v: is_int(v) and v > 0, "a positive integer"),
    "label_names": (lambda v: v is None or _is_str_list(v), "a list of strings, one per label"),
    "description": (lambda v: v is None or isinstance(v, str), "a string"),
    "metric": (lambda v: isinstance(v, str), "a string"),
    "sizes": (lambda v: v is None or _is_sizes(v), 'a mapping of split -> row count, e.g. {"train": 100}'),
    "source": (lambda v: isinstance(v, str), f"one of {SOURCES}"),
}


def _from_manifest(root: Path, manifest: Path) -> list[TaskSpec]:
    try:
        data = manifest.read_bytes()
        entries = json.loads(data.decode("utf-8"))
    except OSError as exc:
        raise DataError(f"{manifest}: cannot read the task list ({exc.strerror}); expected a JSON list") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{manifest}: not valid UTF-8 text (byte {exc.start}); expected a JSON list") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{manifest}:{exc.lineno}: not valid JSON ({exc.msg}); expected a JSON list") from exc
    if not isinstance(entries, list):
        raise DataError(f"{manifest}: top level is {type(entries).__name__}; expected a list of task objects")
    return [_manifest_entry(root, manifest, i, e) for i, e in enumerate(entries)]


def _manifest_entry(root: Path, manifest: Path, i: int, e: object) -> TaskSpec:
    """One tasks.json entry -> TaskSpec; every problem is a DataError naming the file, the task and the key."""
    if not isinstance(e, dict):
        raise DataError(f"{manifest}: entry {i}: expected a task object with keys {list(_REQUIRED_KEYS)}, got {e!r}")
    who = f"task {e['name']!r}" if isinstance(e.get("name"), str) and e["name"] else f"entry {i}"
    missing = [k for k in _REQUIRED_KEYS if k not in e]
    if missing:
        raise DataError(f"{manifest}: {who} lacks {missing}; every entry needs {list(_REQUIRED_KEYS)}")
    for key, (ok, expected) in _KEY_TYPES.items():
        if key in e and not ok(e[key]):
            # the value as JSON, the way it is written in the file (null, not None)
            raise DataError(f"{manifest}: {who}: key {key!r}: expected {expected}, got {json.dumps(e[key])}")
    name, n, bp = e["name"], e["num_labels"], e["seq_len_bp"]
    try:
        return TaskSpec(
            name=name,
            path=root / e["path"],
            num_labels=n,
            label_names=tuple(e.get("label_names") or default_label_names(name, n)),
            seq_len_bp=bp,
            description=e.get("description") or default_description(name, bp),
            metric=e.get("metric", "mcc"),
            sizes=dict(e["sizes"]) if e.get("sizes") else None,
            source=e.get("source", "csv"),
        )
    except ValueError as exc:  # TaskSpec's own message starts with "task '<name>'"
        raise DataError(f"{manifest}: {exc}") from exc


def _scan(root: Path) -> list[TaskSpec]:
    tasks = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        folder = Path(dirpath)
        if "train.csv" in filenames or "train.csv.gz" in filenames:
            source = "csv"
        elif detect_layout(folder) is not None:
            source = "fasta"
        else:
            continue
        dirnames.clear()  # a task folder's subfolders (per-class FASTA splits) are not tasks
        name = folder.relative_to(root).as_posix()
        if name == ".":
            name = folder.name
        num_labels, median_bp, n_train, classes = infer_task_stats(folder, source)
        tasks.append(
            TaskSpec(
                name=name,
                path=folder,
                num_labels=num_labels,
                label_names=classes or default_label_names(name, num_labels),
                seq_len_bp=median_bp,
                description=default_description(name, median_bp),
                sizes=None,  # only train is read while scanning; dev/test sizes stay unknown
                source=source,
            )
        )
    return tasks
