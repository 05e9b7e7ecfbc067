"""The default rank budget of a run: one rule, applied to one count of training rows.

Every place that needs a run's (init_r, target_r) asks this module, so the budget a sweep records for
a trial is the budget the trainer trains with::

    train split rows --min(., max_train_samples)--> train_rows --default_rank_budget--> (init_r, target_r)
                                                                    (tiers in config.py)

Callers: the trainer (`lingo_core.train.trainer.resolve_adapter`), the sweep's cells and validation
(`orchestrator.search.budget_for`; a job's explicit `budgets` block is a job-spec concept and stays
there), and build_model's fallback for settings that reach it unresolved (`methods.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lingo_core.data.loading import load_split
from lingo_core.method_names import RANK_METHODS
from lingo_core.tuners.config import AdapterSettings, default_rank_budget, resolve_ranks

if TYPE_CHECKING:
    from lingo_core.data.task import TaskSpec

__all__ = ["rank_budget", "resolve_adapter", "train_rows"]


def train_rows(task: TaskSpec, max_train_samples: int | None, split_rows: int | None = None) -> int:
    """Rows a run of `task` trains on: the train split's size, capped by max_train_samples.

    After the cap, because the rule is about how much data the adapter is fitted to, and the trainer's
    stratified subset keeps exactly min(max_train_samples, rows). From the split itself, before
    tokenization (which keeps one example per row), because the sweep must know the budget before any
    trial loads data (cells, --dry-run, validation). The split size is `split_rows` when the caller has
    the split loaded, else tasks.json's (load_split refuses a split whose row count differs from it),
    else the split is read once (scanned folders, FASTA).
    """
    rows = split_rows if split_rows is not None else (task.sizes or {}).get("train")
    if rows is None:
        rows = load_split(task, "train").num_rows
    return min(rows, max_train_samples) if max_train_samples is not None else rows


def rank_budget(task: TaskSpec, max_train_samples: int | None, split_rows: int | None = None) -> tuple[int, int]:
    """The default (init_r, target_r) of a run of `task` (see `train_rows` for the rows counted)."""
    init_r, target_r = default_rank_budget(train_rows(task, max_train_samples, split_rows))
    return int(init_r), int(target_r)


def resolve_adapter(settings: AdapterSettings, task: TaskSpec, max_train_samples: int | None,
                    split_rows: int | None = None) -> AdapterSettings:
    """`settings` with ranks left None filled from the default budget (ars/adalora; others unchanged)."""
    if settings.method not in RANK_METHODS:
        return settings
    return resolve_ranks(settings, train_rows(task, max_train_samples, split_rows))
