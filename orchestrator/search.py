"""Job spec -> what Ray Tune runs, and a resolved Tune config -> the TrainConfig of one trial.

Param space shape (one Tune trial = one ``{"cell": ..., "params": ...}``)::

    {"cell":   tune.grid_search([{task, method, seed, budget, grid}, ...]),
     "params": tune.sample_from(MethodSampler(...))}

Why this shape: Tune takes the cross product of every ``grid_search`` in a space, so a per-method grid
written as a top-level axis (``adapter.exploration: grid_search([...])``) would also multiply the LoRA
trials, which ignore exploration. Instead, each method's grid axes are expanded *inside* its own cells:
a cell is one (task, method, seed, grid point), and the grid point is stored in the cell. The
remaining random hyperparameters are drawn by one ``sample_from`` that reads ``cell.method`` and
samples only that method's space, so an ARS trial never carries (or logs) LoRA keys and vice versa.
Tune repeats the whole grid ``num_samples`` times, which is exactly "num_samples draws per cell".

``sample_from`` only works with Tune's default BasicVariantGenerator (model-based searchers such as
Optuna cannot see inside it); ASHA still prunes across the trials of every cell.
"""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.jobspec import (
    BUDGET_DEFAULT,
    DIST_KINDS,
    SEARCH_ALL,
    BudgetSpec,
    Dist,
    JobSpec,
    resolve_tasks,
    task_registry,
)
from orchestrator.specfields import FieldError, coerce, describe, suggest

# Set by the job's top level or by the cell, never by `train` / `search` (one source of truth each).
JOB_OWNED = {"task": "tasks", "seed": "seeds", "model": "model", "data_root": "data_root",
             "tokenization": "tokenization", "adapter.method": "methods", "output_dir": "output_dir"}
BUDGET_KEYS = ("adapter.init_r", "adapter.target_r")


# --------------------------------------------------------------------------------------- TrainConfig paths


def train_field_types() -> dict[str, Any]:
    """Dotted TrainConfig path -> type hint, nested dataclasses flattened ("adapter.exploration": float)."""
    import dataclasses
    import typing

    from lingo_core.train.config import TrainConfig

    def walk(cls: type, prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                out.update(walk(hints[f.name], f"{prefix}{f.name}."))
            else:
                out[f"{prefix}{f.name}"] = hints[f.name]
        return out

    return walk(TrainConfig, "")


def _set_path(d: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    d[leaf] = value


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and f"{prefix}{k}" == "adapter":  # the one nested dataclass of TrainConfig
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_key(key: str, where: str, types: dict[str, Any]) -> Any:
    if key in JOB_OWNED:
        raise FieldError(where, f"set by the job's top-level `{JOB_OWNED[key]}`, not here")
    if key not in types:
        # late: lingo_core.tuners pulls in torch + PEFT
        from lingo_core.tuners.config import RENAMED_KEYS

        old = key.removeprefix("adapter.")
        if key.startswith("adapter.") and old in RENAMED_KEYS:
            raise FieldError(where, RENAMED_KEYS[old])
        raise FieldError(where, f"unknown TrainConfig key{suggest(key, types)}")
    return types[key]


def _python(value: Any) -> Any:
    """numpy scalars -> Python (TrainConfig rejects np.int64 as a step count)."""
    return value.item() if isinstance(value, np.generic) else value


def _train_config(d: dict, where: str):
    from lingo_core.train.config import TrainConfig

    try:
        return TrainConfig.from_dict(d)
    except (ValueError, TypeError) as e:
        raise FieldError(where, str(e)) from None


# --------------------------------------------------------------------------------------- materialize


def base_train_dict(job: JobSpec) -> dict:
    """Job train defaults plus the top-level fields TrainConfig also has."""
    d = copy.deepcopy(job.train)
    d.update(model=job.model, data_root=job.data_root, tokenization=job.tokenization)
    return d


def trial_output_dir(job: JobSpec, cell: dict) -> str:
    """Default trial folder; the Tune trial may replace it with its own working folder."""
    tag = "_".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in sorted(cell.get("grid", {}).items()))
    leaf = f"seed{cell['seed']}" + (f"_{tag}" if tag else "")
    return str(Path(job.output_dir) / "trials" / cell["task"].replace("/", "_") / cell["method"] / leaf)


def materialize_trial(job: JobSpec, trial_config: dict):
    """A resolved Tune config -> full TrainConfig. Precedence: job ``train`` < the method's search values
    (fixed, grid and sampled, all in ``params``) < the per-task rank budget carried by the cell."""
    cell, params = trial_config["cell"], trial_config.get("params") or {}
    d = base_train_dict(job)
    d.update(task=cell["task"], seed=int(cell["seed"]), output_dir=trial_output_dir(job, cell))
    d.setdefault("adapter", {})["method"] = cell["method"]
    for key, value in {**cell.get("grid", {}), **params}.items():
        _set_path(d, key, _python(value))
    if cell.get("budget"):
        d["adapter"]["init_r"] = int(cell["budget"]["init_r"])
        d["adapter"]["target_r"] = int(cell["budget"]["target_r"])
    return _train_config(d, f"trial {cell['task']}/{cell['method']}")


# --------------------------------------------------------------------------------------- budgets


def _matches(task: Any, pattern: str) -> bool:
    import fnmatch

    folder = "/".join(Path(task.path).parts[-2:])  # "prom/prom_core_tata": lets "prom/*" match
    return any(fnmatch.fnmatchcase(n, pattern) for n in (task.name, task.short_name, folder))


def budget_entry(job: JobSpec, task: Any) -> BudgetSpec | str:
    """Exact task name, else the first matching pattern in file order, else "default", else "derived"."""
    if task.name in job.budgets:
        return job.budgets[task.name]
    for pattern, spec in job.budgets.items():
        if pattern != BUDGET_DEFAULT and _matches(task, pattern):
            return spec
    return job.budgets.get(BUDGET_DEFAULT, "derived")


def n_train_of(job: JobSpec, task: Any) -> int:
    """Training rows a trial of this task sees: the split size, capped by train.max_train_samples."""
    rows = (task.sizes or {}).get("train")
    if rows is None:  # not in tasks.json: count once (scanned folders / FASTA)
        from lingo_core.data.loading import load_split

        rows = load_split(task, "train").num_rows
    cap = job.train.get("max_train_samples")
    return min(rows, cap) if cap else rows


def budget_for(job: JobSpec, task: Any) -> tuple[int, int]:
    """(init_r, target_r); "derived" asks lingo_core.tuners.config.default_rank_budget(task, n_train)."""
    spec = budget_entry(job, task)
    if isinstance(spec, BudgetSpec):
        return spec.init_r, spec.target_r
    from lingo_core.tuners.config import default_rank_budget

    init_r, target_r = default_rank_budget(task, n_train_of(job, task))
    return int(init_r), int(target_r)


# --------------------------------------------------------------------------------------- validation


def validate_job(job: JobSpec) -> None:
    """Everything that needs lingo_core, run by load_job before any trial: methods, tasks, budgets, the
    train block and every method's search space (each value a distribution can take), and the ARS/AdaLoRA
    schedule of every (task, method) where the step count is computable."""
    from lingo_core.tuners.config import METHODS, RANK_METHODS

    for i, method in enumerate(job.methods):
        if method not in METHODS:
            raise FieldError(f"methods[{i}]", f"unknown method {method!r}{suggest(method, METHODS)}; "
                             f"expected one of {', '.join(METHODS)}")
    for method in job.search:
        if method != SEARCH_ALL and method not in METHODS:
            raise FieldError(f"search.{method}",
                             f"unknown method{suggest(method, [*METHODS, SEARCH_ALL])}; expected one of "
                             f"{', '.join(METHODS)} or '{SEARCH_ALL}'")
    if not job.deepspeed.enabled and job.resources.workers_per_trial != 1:
        raise FieldError("deepspeed.enabled", f"false trains each trial in one process, but "
                         f"resources.workers_per_trial is {job.resources.workers_per_trial}; set it to 1 or "
                         "enable DeepSpeed for data-parallel trials")
    rank_methods = [m for m in job.methods if m in RANK_METHODS]
    if job.deepspeed.enabled and job.deepspeed.zero_stage == 3 and rank_methods:
        # The rank controller reads whole singular-value vectors and masks them in place; ZeRO-3 shards
        # every parameter, so the allocation would see empty partitions. Stage 2 keeps params whole.
        raise FieldError("deepspeed.zero_stage", f"stage 3 cannot run {', '.join(rank_methods)} (rank allocation "
                         "needs whole adapter parameters); use zero_stage 2 for those methods")
    tasks = resolve_tasks(job)
    every = list(task_registry(job))
    for pattern in job.budgets:
        if pattern != BUDGET_DEFAULT and not any(_matches(t, pattern) for t in every):
            raise FieldError(f"budgets.{pattern}", f"matches no task{suggest(pattern, [t.name for t in every])}")
    types = train_field_types()
    for key, value in _flatten(job.train).items():
        job_key = f"train.{key}"
        coerce(value, _check_key(key, job_key, types), job_key)
    _train_config(base_train_dict(job), "train")
    for i, seed in enumerate(job.seeds):  # the trainer owns what a seed may be; ask it, do not restate it
        _train_config({**base_train_dict(job), "seed": seed}, f"seeds[{i}]")
    for space_name, space in job.search.items():
        for key, value in space.items():
            where = f"search.{space_name}.{key}"
            hint = _check_key(key, where, types)
            if key in BUDGET_KEYS and space_name in (*RANK_METHODS, SEARCH_ALL):
                raise FieldError(where, "ars/adalora ranks come from `budgets` (per task); set them there")
            for v in value.candidates() if isinstance(value, Dist) else [value]:
                try:
                    coerce(v, hint, where)
                except FieldError:
                    raise FieldError(where, f"expected {describe(hint)} or a search distribution "
                                     f"({', '.join(DIST_KINDS)}), got {v!r}") from None
    for method in job.methods:
        space = job.method_space(method)
        for key, value in space.items():  # every corner of the space must build a TrainConfig
            for v in value.candidates() if isinstance(value, Dist) else [value]:
                d = base_train_dict(job)
                d.setdefault("adapter", {})["method"] = method
                for k, fixed in space.items():
                    if not isinstance(fixed, Dist):
                        _set_path(d, k, fixed)
                _set_path(d, key, coerce(v, types[key], key))
                _train_config(d, f"search.{SEARCH_ALL if key not in job.search.get(method, {}) else method}.{key}")
    for task in tasks:
        for method in (m for m in job.methods if m in RANK_METHODS):
            _check_schedule(job, task, method, types)


def _check_schedule(job: JobSpec, task: Any, method: str, types: dict[str, Any]) -> None:
    """Budget sane and tinit + tfinal < total steps, for the extreme values the space allows."""
    entry = budget_entry(job, task)
    where = f"budgets.{next((k for k, v in job.budgets.items() if v is entry), BUDGET_DEFAULT)}"
    try:
        init_r, target_r = budget_for(job, task)
    except ValueError as e:
        raise FieldError(where, f"task {task.name}: {e}") from None
    space = job.method_space(method)

    def worst(key: str, pick) -> Any:  # the value of `key` that makes the schedule tightest
        v = space.get(key)
        return pick(v.candidates()) if isinstance(v, Dist) else v

    cell = {"task": task.name, "method": method, "seed": job.seeds[0], "budget": None}
    params = {k: worst(k, max if k in ("adapter.tinit", "adapter.tfinal", "batch_size", "grad_accum") else min)
              for k in space}
    try:
        cfg = materialize_trial(job, {"cell": cell, "params": params})
        cfg.adapter.init_r, cfg.adapter.target_r = init_r, target_r
        from lingo_core.tuners.config import AdapterSettings

        AdapterSettings(**{f: getattr(cfg.adapter, f) for f in cfg.adapter.__dataclass_fields__})
    except FieldError as e:
        raise FieldError(where, f"task {task.name}, {method}: {e.problem}") from None
    except ValueError as e:
        raise FieldError(where, f"task {task.name}, {method}: {e}") from None
    n_train = n_train_of(job, task)
    try:
        total = cfg.total_steps(n_train, job.resources.workers_per_trial)
        cfg.adapter.validate_schedule(total)
    except ValueError as e:
        key = "adapter.tinit" if cfg.adapter.tinit is not None or cfg.adapter.tfinal is not None else "epochs"
        src = method if key in job.search.get(method, {}) else (SEARCH_ALL if key in space else None)
        path = f"search.{src}.{key}" if src else f"train.{key}"
        raise FieldError(path, f"task {task.name}, {method} ({n_train} train rows): {e}") from None


# --------------------------------------------------------------------------------------- Tune space


def cells(job: JobSpec, tasks: list) -> list[dict]:
    """Every (task, method, grid point, seed) cell, in that nesting order."""
    from lingo_core.tuners.config import RANK_METHODS

    out = []
    for task in tasks:
        budget = budget_for(job, task) if any(m in RANK_METHODS for m in job.methods) else None
        for method in job.methods:
            space = job.method_space(method)
            axes = [k for k, v in space.items() if isinstance(v, Dist) and v.kind == "grid"]
            for point in itertools.product(*(space[k].args for k in axes)):
                for seed in job.seeds:
                    out.append({
                        "task": task.name, "method": method, "seed": seed,
                        "budget": {"init_r": budget[0], "target_r": budget[1]} if method in RANK_METHODS else None,
                        "grid": dict(zip(axes, point, strict=True)),
                    })
    return out


class MethodSampler:
    """``tune.sample_from`` callable: the fixed and random values of the cell's method only."""

    def __init__(self, spaces: dict[str, dict[str, Any]], seed: int | None):
        self.spaces = {m: {k: v for k, v in s.items() if not (isinstance(v, Dist) and v.kind == "grid")}
                       for m, s in spaces.items()}
        self.rng = np.random.default_rng(seed)

    def __deepcopy__(self, memo: dict) -> MethodSampler:
        # Tune deep-copies the space before each of the num_samples passes; a copied generator would
        # replay the same draws, so every copy shares this one.
        return self

    def __call__(self, config: dict) -> dict[str, Any]:
        config = config["config"] if "cell" not in config and "config" in config else config
        return {k: self.draw(v) for k, v in self.spaces[config["cell"]["method"]].items()}

    def draw(self, value: Any) -> Any:
        if not isinstance(value, Dist):
            return copy.deepcopy(value)
        low, high = value.args[0], value.args[-1]
        if value.kind == "loguniform":
            return float(math.exp(self.rng.uniform(math.log(low), math.log(high))))
        if value.kind == "uniform":
            return float(self.rng.uniform(low, high))
        if value.kind == "randint":
            return int(self.rng.integers(low, high + 1))  # inclusive upper end, see Dist
        return _python(copy.deepcopy(value.args[int(self.rng.integers(len(value.args)))]))  # choice


def build_param_space(job: JobSpec, tasks: list) -> dict:
    """The ``param_space`` for ``tune.Tuner`` (see the module docstring for its shape)."""
    from ray import tune

    spaces = {m: job.method_space(m) for m in job.methods}
    return {"cell": tune.grid_search(cells(job, tasks)), "params": tune.sample_from(MethodSampler(spaces, job.search_seed))}


def _show(value: Any) -> str:
    if isinstance(value, Dist):
        return f"{value.kind}({', '.join(map(str, value.args))})"
    return str(value)


def describe_trials(job: JobSpec, tasks: list) -> list[dict]:
    """Dry-run listing, one row per trial Tune will start: task, method, seed, sample, budget, params
    (fixed and grid values as they are; random ones as their distribution)."""
    rows = []
    for sample in range(job.num_samples):
        for cell in cells(job, tasks):
            space = {k: v for k, v in job.method_space(cell["method"]).items() if k not in cell["grid"]}
            budget = cell["budget"]
            rows.append({
                "task": cell["task"], "method": cell["method"], "seed": cell["seed"], "sample": sample,
                "budget": f"{budget['init_r']}->{budget['target_r']}" if budget else "-",
                "params": {**{k: _show(v) for k, v in space.items()}, **{k: str(v) for k, v in cell["grid"].items()}},
            })
    return rows


def format_trials(rows: list[dict]) -> str:
    """A plain-text table of ``describe_trials`` rows."""
    lines = [f"{'#':>4}  {'task':<22} {'method':<8} {'seed':>4} {'s':>2}  {'budget':<7} params"]
    for i, r in enumerate(rows):
        params = " ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
        lines.append(f"{i:>4}  {r['task']:<22} {r['method']:<8} {r['seed']:>4} {r['sample']:>2}  {r['budget']:<7} {params}")
    return "\n".join(lines)
