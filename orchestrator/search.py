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

from lingo_core.data.task import task_matches
from lingo_core.method_names import PACKABLE_METHODS, RANK_METHODS
from lingo_core.train.config import TrainConfig
from lingo_core.tuners.budget import rank_budget
from lingo_core.typed import FieldError, set_path
from orchestrator.jobspec import BUDGET_DEFAULT, BudgetSpec, Dist, JobSpec

# --------------------------------------------------------------------------------------- TrainConfig paths


def _python(value: Any) -> Any:
    """numpy scalars -> Python (TrainConfig rejects np.int64 as a step count)."""
    return value.item() if isinstance(value, np.generic) else value


def train_config(d: dict, where: str) -> TrainConfig:
    """``TrainConfig.from_dict(d)``; its ValueError/TypeError becomes a FieldError at key path ``where``."""
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


def materialize_trial(job: JobSpec, trial_config: dict, where: str | None = None) -> TrainConfig:
    """A resolved Tune config -> full TrainConfig (validate_job builds its search corners the same way).
    Precedence: job ``train`` < the method's search values (fixed, grid and sampled, all in ``params``) <
    the per-task rank budget carried by the cell. A bad value is a FieldError at ``where``."""
    cell, params = trial_config["cell"], trial_config.get("params") or {}
    d = base_train_dict(job)
    d.update(task=cell["task"], seed=int(cell["seed"]), output_dir=trial_output_dir(job, cell))
    d.setdefault("adapter", {})["method"] = cell["method"]
    for key, value in {**cell.get("grid", {}), **params}.items():
        set_path(d, key, _python(value))
    if cell.get("budget"):
        d["adapter"]["init_r"] = int(cell["budget"]["init_r"])
        d["adapter"]["target_r"] = int(cell["budget"]["target_r"])
    return train_config(d, where or f"trial {cell['task']}/{cell['method']}")


# --------------------------------------------------------------------------------------- budgets


def budget_entry(job: JobSpec, task: Any) -> BudgetSpec | str:
    """Exact task name, else the first matching pattern in file order, else "default", else "derived"."""
    if task.name in job.budgets:
        return job.budgets[task.name]
    for pattern, spec in job.budgets.items():
        if pattern != BUDGET_DEFAULT and task_matches(task, pattern):
            return spec
    return job.budgets.get(BUDGET_DEFAULT, "derived")


def budget_for(job: JobSpec, task: Any) -> tuple[int, int]:
    """(init_r, target_r): the job's explicit budgets entry, else lingo_core's default for the rows a
    trial of this task trains on (lingo_core.tuners.budget, the rule the trainer applies too)."""
    spec = budget_entry(job, task)
    if isinstance(spec, BudgetSpec):
        return spec.init_r, spec.target_r
    return rank_budget(task, job.train.get("max_train_samples"))


# --------------------------------------------------------------------------------------- Tune space


def cells(job: JobSpec, tasks: list) -> list[dict]:
    """Every (task, method, grid point, seed) cell, in that nesting order."""
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
    return pack_cells(out, {t.name: t.seq_len_bp for t in tasks}, job.resources.tasks_per_trial)


def pack_cells(cells: list[dict], seq_len_bp: dict[str, int], tasks_per_trial: int) -> list[dict]:
    """resources.tasks_per_trial > 1: the cells of a packable method that differ only in task become group
    cells of up to that many tasks, neighbours in sequence length (a mixed batch pads to its longest row).
    A group cell keeps the shared method, seed and grid point, lists its tasks as ``members`` and shows
    them joined by "+" as its ``task``; a group of one stays a plain cell."""
    if tasks_per_trial == 1:
        return cells
    out, groups = [], {}
    for cell in cells:
        if cell["method"] not in PACKABLE_METHODS:
            out.append(cell)
        else:  # the grid point as a sorted tuple: equal points group whatever their key order
            groups.setdefault((cell["method"], cell["seed"], tuple(sorted(cell["grid"].items()))), []).append(cell)
    for same in groups.values():
        same.sort(key=lambda c: (seq_len_bp[c["task"]], c["task"]))
        for i in range(0, len(same), tasks_per_trial):
            chunk = same[i:i + tasks_per_trial]
            out.append(chunk[0] if len(chunk) == 1 else {
                **chunk[0], "task": "+".join(c["task"] for c in chunk), "members": [c["task"] for c in chunk]})
    return out


def member_cells(cell: dict) -> list[dict]:
    """The single-task cells a (group) cell trains: its members', else the cell itself."""
    if not cell.get("members"):
        return [cell]
    plain = {k: v for k, v in cell.items() if k != "members"}
    return [{**plain, "task": task} for task in cell["members"]]


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
    # Ray is heavy: only a real sweep builds a param space (not --dry-run, not validation)
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
