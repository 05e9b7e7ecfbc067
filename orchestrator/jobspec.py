"""Job spec: one YAML file (plus ``key=value`` overrides) describing a whole tuning sweep.

Every problem is reported before any trial starts, as ``JobSpecError("<file>[:line]: <key.path>: <problem>")``:
a file that is not UTF-8 or YAML or repeats a key, unknown keys (with close matches), wrong types, unknown
tasks or methods, impossible rank budgets and ARS schedules that cannot fit into the computable number of
training steps. This module parses (structure, types, key paths); ``orchestrator.validate.load_job`` reads,
overrides, parses and then checks the spec against lingo_core, the one entry point for callers.

Layout (see ``jobs/default.yaml``): top-level identity (name, tasks, methods, seeds, model, data), ``train``
(``TrainConfig`` defaults of every trial), ``search`` (per method: hyperparameter -> value or distribution),
``budgets`` (per task rank budgets), and the execution blocks scheduler / resources / deepspeed / mlflow / ray
(``orchestrator.execution_spec``).
"""

from __future__ import annotations

import copy
import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lingo_core.typed import FieldError, build, coerce, load_yaml, parse_value, suggest
from orchestrator.execution_spec import (
    DeepSpeedSpec,
    MlflowSpec,
    RaySpec,
    ResourcesSpec,
    SchedulerSpec,
    at_least,
    default_tracking_uri,
)

__all__ = [
    "JobSpec", "JobSpecError", "FieldError", "Dist", "BudgetSpec", "apply_override", "parse_job",
    "parse_overrides", "read_job_file", "resolve_tasks",
]

SEARCH_ALL = "all"  # search key whose space applies to every method (a method's own entry wins)
BUDGET_DEFAULT = "default"  # budgets key used for tasks no pattern matches


class JobSpecError(ValueError):
    """A job spec problem; the message names the file (or override) and the key path."""

    def __init__(self, source: str, path: str, message: str):
        self.source, self.path, self.problem = source, path, message
        where = f"{path}: " if path else ""
        super().__init__(f"{source}: {where}{message}")


DIST_KINDS = ("loguniform", "uniform", "randint", "choice", "grid")


@dataclass(frozen=True)
class Dist:
    """A search distribution, written in YAML as a one-key mapping: ``{loguniform: [1e-4, 1e-2]}``."""

    kind: str
    """loguniform / uniform: [low, high] floats; randint: [low, high] ints, BOTH ends inclusive
    (``{randint: [1, 3]}`` draws 1, 2 or 3; Ray's own randint excludes the upper end);
    choice: values drawn at random; grid: every value is run (a grid axis of this method only)."""
    args: tuple

    def __post_init__(self) -> None:
        if self.kind not in DIST_KINDS:
            raise FieldError("", f"unknown distribution {self.kind!r}{suggest(self.kind, DIST_KINDS)}")
        if self.kind in ("choice", "grid"):
            if not self.args:
                raise FieldError("", f"{self.kind} needs at least one value")
            return
        if len(self.args) != 2:
            raise FieldError("", f"{self.kind} needs [low, high], got {list(self.args)}")
        number = int if self.kind == "randint" else float
        low, high = (coerce(a, number, "") for a in self.args)
        object.__setattr__(self, "args", (low, high))
        if not low < high if number is float else not low <= high:
            raise FieldError("", f"{self.kind} needs low < high, got [{low}, {high}]")
        if self.kind == "loguniform" and low <= 0:
            raise FieldError("", f"loguniform needs low > 0, got {low}")

    def candidates(self) -> list:
        """Values that bound what the distribution can produce: validated before any trial runs."""
        return list(self.args)

    def to_yaml(self) -> dict:
        return {self.kind: list(self.args)}


def parse_search_value(value: Any, path: str) -> Any:
    """A one-key mapping named after a distribution -> Dist; anything else is a fixed value."""
    if isinstance(value, dict) and len(value) == 1:
        (kind, args), = value.items()
        if kind in DIST_KINDS or (isinstance(kind, str) and suggest(kind, DIST_KINDS)):
            if not isinstance(args, (list, tuple)):
                raise FieldError(path, f"{kind} expects a list, got {args!r}")
            try:
                return Dist(str(kind), tuple(args))
            except FieldError as e:
                raise FieldError(path, e.problem) from None
    return value


@dataclass
class BudgetSpec:
    """An explicit rank budget (ARS / AdaLoRA): start with init_r per module, prune to target_r average."""

    init_r: int
    """Initial rank of every adapted matrix."""
    target_r: int
    """Average rank kept after the pruning schedule."""

    def __post_init__(self) -> None:
        at_least(self, 1, "init_r", "target_r")
        if self.target_r > self.init_r:
            raise FieldError("target_r", f"target_r={self.target_r} exceeds init_r={self.init_r}; "
                             "pruning can only lower the rank")


@dataclass
class JobSpec:
    name: str
    """Sweep name: MLflow experiment, output folder and Ray experiment name."""
    tasks: list[str]
    """Task names, fnmatch globs ("EMP/*") or "all"; resolved through TaskRegistry.select."""
    methods: list[str]
    """Subset of lingo_core.method_names.METHODS run for every task."""
    seeds: list[int] = field(default_factory=lambda: [0])  # one seed: a smoke sweep; add seeds for ± std
    output_dir: str | None = None  # None -> runs/<name>, the README's results layout
    model: str = "smollm2"  # the bundled SmolLM2-135M alias: runs offline on CPU
    data_root: str | None = None  # None -> lingo_core's default_data_root() ($LINGO_DATA_ROOT, ../shared)
    tokenization: str = "bbpe"  # the LM's own byte-level BPE; "onehot" = one token per nucleotide
    num_samples: int = 1  # random draws per (task, method, seed[, grid point]) cell
    search_seed: int | None = 0  # fixed: the same job file draws the same hyperparameters; None = fresh
    max_concurrent_trials: int | None = None  # None -> as many as the resources allow
    max_failures: int = 2
    """Worker-group restarts per trial (a killed worker, a raised error), each from the trial's latest
    checkpoint; then the trial fails (FAILED in MLflow and the summary) and the sweep goes on. Two
    covers a transient fault without looping on a deterministic bug; -1 retries forever."""
    train: dict = field(default_factory=dict)  # TrainConfig defaults of every trial (nested like TrainConfig)
    """A typed overlay of TrainConfig: the keys the file sets, each value of its field's type once
    load_job has validated it (orchestrator.validate); search.materialize_trial lays it under a trial's."""
    search: dict = field(default_factory=dict)  # method | "all" -> {TrainConfig dotted path: value | Dist}
    budgets: dict = field(default_factory=dict)  # "default" | task name/glob -> BudgetSpec | "derived"
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)  # ASHA on dev MCC
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)  # 1 CPU worker per trial
    deepspeed: DeepSpeedSpec = field(default_factory=DeepSpeedSpec)  # ZeRO-2, bf16 on GPU
    mlflow: MlflowSpec = field(default_factory=MlflowSpec)  # sqlite store under output_dir
    ray: RaySpec = field(default_factory=RaySpec)  # local Ray

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise FieldError("name", f"use letters, digits, '_', '-', '.' (a folder name), got {self.name!r}")
        for name in ("tasks", "methods", "seeds"):
            if not getattr(self, name):
                raise FieldError(name, "must not be empty")
        if len(set(self.methods)) != len(self.methods):
            raise FieldError("methods", f"duplicates in {self.methods}")
        if len(set(self.seeds)) != len(self.seeds):
            raise FieldError("seeds", f"duplicates in {self.seeds}")
        if self.tokenization not in ("bbpe", "onehot"):
            raise FieldError("tokenization", f"expected 'bbpe' or 'onehot', got {self.tokenization!r}")
        at_least(self, 1, "num_samples")
        if self.max_failures < -1:
            raise FieldError("max_failures", f"must be >= -1 (-1: retry forever), got {self.max_failures}")
        at_least(self, 1, "max_concurrent_trials", optional=True)
        if self.output_dir is None:
            self.output_dir = f"runs/{self.name}"
        if self.mlflow.experiment is None:
            self.mlflow.experiment = self.name

    @property
    def tracking_uri(self) -> str:
        """MLflow store: the explicit URI, else a sqlite file in the output folder."""
        if self.mlflow.tracking_uri:
            return self.mlflow.tracking_uri
        return default_tracking_uri(self.output_dir)

    @property
    def storage_path(self) -> str:
        """Ray Tune storage (trial state + checkpoints, read by --resume)."""
        return self.ray.storage_path or str(Path(self.output_dir).resolve() / "ray")

    def method_space(self, method: str) -> dict[str, Any]:
        """The search space of one method: the shared "all" entries overlaid by the method's own."""
        return {**self.search.get(SEARCH_ALL, {}), **self.search.get(method, {})}

    def to_dict(self) -> dict:
        """Plain YAML-able dict; ``orchestrator.validate.load_job`` of its dump gives an equal JobSpec."""
        out = dataclasses.asdict(self)
        out["search"] = {m: {k: v.to_yaml() if isinstance(v, Dist) else copy.deepcopy(v) for k, v in space.items()}
                         for m, space in self.search.items()}
        out["budgets"] = {k: v if isinstance(v, str) else dataclasses.asdict(v) for k, v in self.budgets.items()}
        return out


# --------------------------------------------------------------------------------------- overrides


def parse_overrides(overrides: typing.Sequence[str]) -> list[tuple[str, Any]]:
    """``["train.epochs=2", "methods=[ars,lora]"]`` -> ``[("train.epochs", 2), ...]`` (YAML scalars)."""
    parsed = []
    for item in overrides:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise JobSpecError("override", item, "expected key=value (e.g. train.epochs=2)")
        try:  # as strict as the file itself; `lingo train` types its values the same way
            value = parse_value(text, key.strip())
        except FieldError as e:
            raise JobSpecError(f"override {item!r}", e.path, e.problem) from None
        parsed.append((key.strip(), value))
    return parsed


def _split_override_path(key: str) -> list[str]:
    """Dotted path -> raw-dict keys. Search spaces are keyed by dotted TrainConfig paths themselves
    (``search.ars.adapter.exploration``) and budgets by task names, so those keep their tail in one key."""
    parts = key.split(".")
    if parts[0] in ("search", "budgets") and len(parts) > 2:
        # task names contain no dots: "budgets.EMP/H3.init_r" -> ["budgets", "EMP/H3", "init_r"]
        return parts[:2] + [".".join(parts[2:])]
    return parts


def apply_override(raw: dict, key: str, value: Any) -> None:
    node = raw
    parts = _split_override_path(key)
    for depth, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise JobSpecError(f"override {key}", ".".join(parts[: depth + 1]), f"is {nxt!r}, not a mapping")
        node = nxt
    node[parts[-1]] = value


# --------------------------------------------------------------------------------------- loading


def parse_job(raw: Any) -> JobSpec:
    """Structure + types (FieldError with the key path); what needs lingo_core (tasks, TrainConfig, schedules)
    is checked next, by ``orchestrator.validate.validate_job``."""
    if not isinstance(raw, dict):
        raise FieldError("", f"expected a mapping at the top level, got {type(raw).__name__}")
    raw = dict(raw)
    search_raw = raw.pop("search", None) or {}
    budgets_raw = raw.pop("budgets", None) or {}
    job = build(JobSpec, raw)
    if not isinstance(search_raw, dict):
        raise FieldError("search", f"expected a mapping of method -> space, got {search_raw!r}")
    job.search = {}
    for method, space in search_raw.items():
        if space is None:
            space = {}
        if not isinstance(space, dict):
            raise FieldError(f"search.{method}", f"expected a mapping of hyperparameter -> value, got {space!r}")
        job.search[str(method)] = {
            str(k): parse_search_value(v, f"search.{method}.{k}") for k, v in space.items()}
    if not isinstance(budgets_raw, dict):
        raise FieldError("budgets", f"expected a mapping of task -> budget, got {budgets_raw!r}")
    job.budgets = {}
    for pattern, spec in budgets_raw.items():
        where = f"budgets.{pattern}"
        if isinstance(spec, str) and spec != "derived":
            raise FieldError(where, f"expected 'derived' or {{init_r: .., target_r: ..}}, got {spec!r}")
        job.budgets[str(pattern)] = spec if spec == "derived" else build(BudgetSpec, spec, where)
    return job


def read_job_file(path: str | Path) -> Any:
    """The file's YAML as plain data ({} when empty); JobSpecError("<file>[:line]: ...") when it cannot be
    read, is not UTF-8, not YAML, or repeats a key."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise JobSpecError(source, "", f"cannot read: {e.strerror}; expected a job spec YAML file") from None
    try:
        return load_yaml(data) or {}
    except FieldError as e:
        raise JobSpecError(f"{source}:{e.line}" if e.line else source, e.path, e.problem) from None


# --------------------------------------------------------------------------------------- tasks, budgets


def task_registry(job: JobSpec):
    # pyarrow (the registry reads task data) only here: parsing a spec (`lingo submit` first) needs none
    from lingo_core.data.task import TaskRegistry

    try:
        return TaskRegistry.from_root(job.data_root)
    except (OSError, ValueError) as e:
        raise FieldError("data_root", f"cannot open the task registry: {e}") from None


def resolve_tasks(job: JobSpec) -> list:
    """The TaskSpecs the job runs, in registry order, without duplicates."""
    registry = task_registry(job)
    for i, pattern in enumerate(job.tasks):  # one by one, so the error names the bad entry
        try:
            registry.select([pattern])
        except (KeyError, ValueError) as e:
            raise FieldError(f"tasks[{i}]", str(e)) from None
    return registry.select(job.tasks)


