"""Job spec: one YAML file (plus ``key=value`` overrides) describing a whole tuning sweep.

Every problem is reported before any trial starts, as ``JobSpecError("<file>[:line]: <key.path>: <problem>")``:
a file that is not UTF-8 or YAML or repeats a key, unknown keys (with close matches), wrong types, unknown
tasks or methods, impossible rank budgets and ARS schedules that cannot fit into the computable number of
training steps. This module parses (structure, types, key paths); ``orchestrator.validate.load_job`` reads,
overrides, parses and then checks the spec against lingo_core, the one entry point for callers.

Layout (see ``jobs/default.yaml``): top-level identity (name, tasks, methods, seeds, model, data), ``train``
(``TrainConfig`` defaults of every trial), ``search`` (per method: hyperparameter -> value or distribution),
``budgets`` (per task rank budgets), and the execution blocks scheduler / resources / deepspeed / mlflow / ray.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lingo_core.selection import SELECTION
from lingo_core.typed import FieldError, build, coerce, load_yaml, parse_value, suggest

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


def at_least(spec: Any, low: int, *names: str, optional: bool = False) -> None:
    """FieldError for the first of `spec`'s fields `names` below `low`; optional: None ("not set") passes."""
    for name in names:
        value = getattr(spec, name)
        if not (optional and value is None) and value < low:
            raise FieldError(name, f"must be >= {low}, got {value}")


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
class SchedulerSpec:
    type: str = "asha"
    """"asha" stops weak trials early on the dev metric; "fifo" runs every trial to the end."""
    metric: str = SELECTION.dev_key  # fixed: the trainer's best step, the summary and the champion use it too
    mode: str = SELECTION.mode  # fixed like metric: another value is refused rather than half-applied
    grace_period: int = 1  # evaluations a trial always gets; 1 keeps short CPU sweeps meaningful
    reduction_factor: int = 2  # halve the field per rung: gentle for few trials per cell
    max_t: int = 100  # ASHA's top rung, in evaluations (Ray's own default); trials end earlier anyway

    def __post_init__(self) -> None:
        if self.type not in ("asha", "fifo"):
            raise FieldError("type", f"expected 'asha' or 'fifo', got {self.type!r}")
        # Tune alone could follow another metric; the checkpoint, summary and registry could not
        for name, rule in (("metric", SELECTION.dev_key), ("mode", SELECTION.mode)):
            if getattr(self, name) != rule:
                raise FieldError(name, f"expected {rule!r}, got {getattr(self, name)!r}: trials, checkpoints "
                                 f"and champions are all selected by {SELECTION.dev_key} ({SELECTION.mode})")
        at_least(self, 1, "grace_period", "max_t")
        at_least(self, 2, "reduction_factor")
        if self.grace_period > self.max_t:
            raise FieldError("grace_period", f"{self.grace_period} exceeds max_t={self.max_t}")


@dataclass
class ResourcesSpec:
    workers_per_trial: int = 1  # data-parallel Ray Train workers; 1 = no gradient all-reduce
    cpus_per_worker: float = 1.0  # one core per worker: the tokenizer and loop are single-threaded
    gpus_per_worker: float = 0.0  # CPU by default; fractions (0.5) pack two small-model trials per GPU

    def __post_init__(self) -> None:
        at_least(self, 1, "workers_per_trial")
        if self.cpus_per_worker <= 0:
            raise FieldError("cpus_per_worker", f"must be > 0, got {self.cpus_per_worker}")
        at_least(self, 0, "gpus_per_worker")
        if self.gpus_per_worker > 1 and self.gpus_per_worker != int(self.gpus_per_worker):
            # Ray only packs fractions below one GPU; 1.5 GPUs cannot be placed
            raise FieldError("gpus_per_worker", f"above 1 must be a whole number, got {self.gpus_per_worker}")
        if self.workers_per_trial > 1 and 0 < self.gpus_per_worker < 1:
            # Ray may pack two fractional workers of one trial onto one GPU, and NCCL refuses two ranks
            # on the same device: the trial would fail at its first all-reduce, after the sweep started
            raise FieldError("gpus_per_worker", f"{self.gpus_per_worker} with workers_per_trial="
                             f"{self.workers_per_trial}: multi-worker trials need whole GPUs per worker "
                             "(1 or more), or set workers_per_trial: 1 to pack trials by fractions")


@dataclass
class DeepSpeedSpec:
    """The job's `deepspeed` block: the one declaration of these fields (worker.DeepSpeedSettings extends
    it with the trial's batch size, accumulation and clip)."""

    enabled: bool = True  # false: each trial trains in one plain PyTorch process (workers_per_trial 1 only);
    # with one worker ZeRO shards nothing, and the plain step skips DeepSpeed's per-parameter hooks
    zero_stage: int = 2  # shards optimizer state + grads; stage 3 (params too) only pays off for large LMs
    bf16: bool | str = "auto"  # "auto": on iff the worker has a GPU with bf16 (CPU bf16 matmuls are slow here)
    offload_optimizer: bool = False  # CPU offload trades speed for memory; adapters' states are tiny
    offload_param: bool = False  # stage-3 only; off because the frozen LM fits on one GPU
    config: dict = field(default_factory=dict)  # raw DeepSpeed entries merged last: an escape hatch

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise FieldError("zero_stage", f"expected 0, 1, 2 or 3, got {self.zero_stage}")
        if isinstance(self.bf16, str) and self.bf16 != "auto":
            raise FieldError("bf16", f"expected true, false or 'auto', got {self.bf16!r}")
        if self.offload_param and self.zero_stage != 3:
            raise FieldError("offload_param", f"needs zero_stage 3, got {self.zero_stage}")


@dataclass
class MlflowSpec:
    tracking_uri: str | None = None  # None -> sqlite:///<output_dir>/mlflow.db: no server needed
    experiment: str | None = None  # None -> the job name, so sweeps of one job share an experiment
    register: bool = True  # register each task's best adapter as lingo-<task> (+ champion alias)
    allow_chance_champion: bool = False
    """A version whose dev MCC is <= 0 (no better than chance: e.g. it predicts one class) is registered
    but never made `champion`; true lets it take the alias (still only if it beats the incumbent)."""

    def __post_init__(self) -> None:
        # A secret in the URI would be logged as the parent run's `mlflow.tracking_uri` param, written into
        # job.json and shown by --dry-run; MLflow reads credentials from the environment instead.
        if self.tracking_uri and urlsplit(self.tracking_uri).username is not None:  # user:secret@ or token@
            raise FieldError("tracking_uri", "contains credentials (user:secret@ or token@ before the host); "
                             "expected a URI without credentials: set MLFLOW_TRACKING_TOKEN (or "
                             "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD) in the environment, never "
                             "in the job spec")


@dataclass
class RaySpec:
    address: str | None = None  # None -> start a local Ray; "auto" or ray://host:10001 joins a cluster
    num_cpus: int | None = None  # None -> all cores of the local machine (ignored on a cluster)
    num_gpus: int | None = None  # None -> all GPUs Ray detects (ignored on a cluster)
    storage_path: str | None = None  # None -> <output_dir>/ray; a shared FS / s3:// URI on a cluster

    def __post_init__(self) -> None:
        at_least(self, 0, "num_cpus", "num_gpus", optional=True)


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
        return f"sqlite:///{Path(self.output_dir).resolve() / 'mlflow.db'}"

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
        try:
            value = parse_value(text)  # as strict as the file itself; `lingo train` types its values the same way
        except FieldError as e:
            where = f"{key.strip()}.{e.path}" if e.path else key.strip()
            raise JobSpecError(f"override {item!r}", where, e.problem) from None
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


