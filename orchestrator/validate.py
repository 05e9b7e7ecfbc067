"""A job spec checked against lingo_core before any trial starts, and ``load_job``, the way callers get one.

    load_job(path, overrides) = read_job_file -> apply overrides -> parse_job (jobspec.py: structure, types)
                                -> validate_job (here: methods, tasks, budgets, every TrainConfig a trial
                                   can get, the ARS/AdaLoRA schedules)

Validation builds trial configs the way a sweep does (search.py's materialize_trial), so it sits above both
jobspec.py and search.py: jobspec <- search <- validate, no way back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lingo_core.data.task import task_matches
from lingo_core.method_names import METHODS, PACKABLE_METHODS, RANK_METHODS
from lingo_core.train.config import TrainConfig
from lingo_core.tuners.budget import train_rows
from lingo_core.tuners.config import RENAMED_KEYS
from lingo_core.typed import coerce, describe, dotted, field_types, set_path, suggest
from orchestrator.jobspec import (
    BUDGET_DEFAULT,
    DIST_KINDS,
    SEARCH_ALL,
    Dist,
    FieldError,
    JobSpec,
    JobSpecError,
    apply_override,
    parse_job,
    parse_overrides,
    read_job_file,
    resolve_tasks,
    task_registry,
)
from orchestrator.search import (
    base_train_dict,
    budget_entry,
    budget_for,
    materialize_trial,
    train_config,
)

# Set by the job's top level or by the cell, never by `train` / `search` (one source of truth each).
JOB_OWNED = {"task": "tasks", "seed": "seeds", "model": "model", "data_root": "data_root",
             "tokenization": "tokenization", "adapter.method": "methods", "output_dir": "output_dir"}
BUDGET_KEYS = ("adapter.init_r", "adapter.target_r")


def load_job(path: str | Path, overrides: Sequence[str] = ()) -> JobSpec:
    """Read, override, validate. Raises JobSpecError naming the file (or the override) and key path."""
    source = str(path)
    raw = read_job_file(path)
    parsed = parse_overrides(overrides)
    if isinstance(raw, dict):
        for key, value in parsed:
            apply_override(raw, key, value)
    try:
        job = parse_job(raw)
        validate_job(job)
    except FieldError as e:
        raise JobSpecError(_source_of(e.path, source, parsed, overrides), e.path, e.problem) from None
    return job


def _source_of(path: str, source: str, parsed: list, overrides: Sequence[str]) -> str:
    """Blame the override that set ``path`` (or a parent / child of it), else the file."""
    for (key, _), text in zip(reversed(parsed), reversed(list(overrides)), strict=True):
        if path == key or path.startswith(key + ".") or key.startswith(path + ".") or (
                path.startswith(key + "[")):
            return f"{source} (override {text!r})"
    return source


def validate_job(job: JobSpec) -> None:
    """Everything that needs lingo_core, run by load_job before any trial: methods, tasks, budgets, the
    train block and every method's search space (each value a distribution can take), and the ARS/AdaLoRA
    schedule of every (task, method) where the step count is computable."""
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
    _check_packing(job)
    rank_methods = [m for m in job.methods if m in RANK_METHODS]
    if job.deepspeed.enabled and job.deepspeed.zero_stage == 3 and rank_methods:
        # The rank controller reads whole singular-value vectors and masks them in place; ZeRO-3 shards
        # every parameter, so the allocation would see empty partitions. Stage 2 keeps params whole.
        raise FieldError("deepspeed.zero_stage", f"stage 3 cannot run {', '.join(rank_methods)} (rank allocation "
                         "needs whole adapter parameters); use zero_stage 2 for those methods")
    tasks = resolve_tasks(job)
    every = list(task_registry(job))
    for pattern in job.budgets:
        if pattern != BUDGET_DEFAULT and not any(task_matches(t, pattern) for t in every):
            raise FieldError(f"budgets.{pattern}", f"matches no task{suggest(pattern, [t.name for t in every])}")
    types = field_types(TrainConfig)
    job.train = _typed_overlay(job.train, types)
    train_config(base_train_dict(job), "train")
    for i, seed in enumerate(job.seeds):  # the trainer owns what a seed may be; ask it, do not restate it
        train_config({**base_train_dict(job), "seed": seed}, f"seeds[{i}]")
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
        fixed = {k: v for k, v in space.items() if not isinstance(v, Dist)}
        for key, value in space.items():  # every corner of the space must build a TrainConfig, as a trial does
            where = f"search.{method if key in job.search.get(method, {}) else SEARCH_ALL}.{key}"
            for v in value.candidates() if isinstance(value, Dist) else [value]:
                cell = {"task": tasks[0].name, "method": method, "seed": job.seeds[0]}
                materialize_trial(job, {"cell": cell, "params": {**fixed, key: coerce(v, types[key], key)}}, where)
    for task in tasks:
        for method in (m for m in job.methods if m in RANK_METHODS):
            _check_schedule(job, task, method)


def _check_packing(job: JobSpec) -> None:
    """resources.tasks_per_trial > 1 needs what a group trial can do: one plain process, no early stopping
    (ASHA would compare a group's mean with single tasks), and a method it packs."""
    k = job.resources.tasks_per_trial
    if k == 1:
        return
    where = "resources.tasks_per_trial"
    if job.deepspeed.enabled:
        raise FieldError(where, f"{k} trains a group in one plain PyTorch process; set deepspeed.enabled: false")
    if job.scheduler.type != "fifo":
        raise FieldError(where, f"{k} needs scheduler.type: fifo (a group trial reports its tasks' mean, "
                         f"which ASHA must not rank against single-task trials), got {job.scheduler.type!r}")
    if job.train.get("save_checkpoints") is True:
        raise FieldError("train.save_checkpoints", f"true, but resources.tasks_per_trial {k} trains groups, "
                         "which write no checkpoints (a restarted group trains again); set it to false")
    if not any(m in PACKABLE_METHODS for m in job.methods):
        raise FieldError(where, f"{k} packs {', '.join(PACKABLE_METHODS)} trials, but methods is "
                         f"{job.methods}; add one or set tasks_per_trial: 1")


def _check_schedule(job: JobSpec, task: Any, method: str) -> None:
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
        dataclasses.replace(cfg.adapter)  # runs AdapterSettings.__post_init__ again, with the budget's ranks
    except FieldError as e:
        raise FieldError(where, f"task {task.name}, {method}: {e.problem}") from None
    except ValueError as e:
        raise FieldError(where, f"task {task.name}, {method}: {e}") from None
    n_train = train_rows(task, job.train.get("max_train_samples"))
    try:
        total = cfg.total_steps(n_train, job.resources.workers_per_trial)
        cfg.adapter.validate_schedule(total)
    except ValueError as e:
        key = "adapter.tinit" if cfg.adapter.tinit is not None or cfg.adapter.tfinal is not None else "epochs"
        src = method if key in job.search.get(method, {}) else (SEARCH_ALL if key in space else None)
        path = f"search.{src}.{key}" if src else f"train.{key}"
        raise FieldError(path, f"task {task.name}, {method} ({n_train} train rows): {e}") from None



# --------------------------------------------------------------------------------------- TrainConfig paths


def _typed_overlay(block: dict, types: dict[str, Any]) -> dict:
    """The ``train`` block as a typed overlay of TrainConfig: only the keys the file sets, nested as in the
    file, each value coerced to its field's type (``lr: 1e-4``, a string to YAML 1.1, becomes a float), so
    every trial config, the budgets and the parent run start from the same typed values."""
    overlay: dict = {}
    for key, value in dotted(block, TrainConfig).items():
        where = f"train.{key}"
        set_path(overlay, key, coerce(value, _check_key(key, where, types), where))
    return overlay


def _check_key(key: str, where: str, types: dict[str, Any]) -> Any:
    if key in JOB_OWNED:
        raise FieldError(where, f"set by the job's top-level `{JOB_OWNED[key]}`, not here")
    if key not in types:
        old = key.removeprefix("adapter.")
        if key.startswith("adapter.") and old in RENAMED_KEYS:
            raise FieldError(where, RENAMED_KEYS[old])
        raise FieldError(where, f"unknown TrainConfig key{suggest(key, types)}")
    return types[key]
