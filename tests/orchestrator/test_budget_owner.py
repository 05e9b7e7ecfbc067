"""One owner of the rank budget: the (init_r, target_r) the sweep records for a trial is the one the
trainer trains with, for every GUE task, with and without max_train_samples and a budgets block.

The trainer side goes through the trainer's own data path (`prepare_data`, no model, no training), so
a trainer that counted training rows differently from the sweep (before the cap, after tokenization,
...) fails here, and so does a sweep that counted them differently from lingo_core.
"""

from __future__ import annotations

import dataclasses
import functools
import json

import pytest
import yaml

from lingo_core.train import trainer
from lingo_core.train.config import TrainConfig
from lingo_core.tuners.budget import train_rows
from orchestrator.jobspec import resolve_tasks
from orchestrator.search import cells, materialize_trial
from orchestrator.validate import load_job

pytestmark = pytest.mark.filterwarnings("ignore:.*test sequences also occur in train")

EXPLICIT = {"prom_core_*": {"init_r": 6, "target_r": 3}, "EMP/H3": {"init_r": 4, "target_r": 1},
            "default": "derived"}


def _job(tmp_path, gue_root, cap: int | None, budgets: dict | None):
    train = {"epochs": 1, "batch_size": 8, **({"max_train_samples": cap} if cap else {})}
    tasks = [t["name"] for t in json.loads((gue_root / "tasks.json").read_text())]
    spec = {"name": "b", "tasks": tasks, "methods": ["ars", "adalora"], "seeds": [0], "train": train,
            **({"budgets": budgets} if budgets else {})}
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_job(path), len(tasks)


@functools.cache
def _prepared(data_root: str, task: str, cap: int | None):
    """The trainer's data path for one task (memoised: the six jobs share 22 x 3 loads)."""
    cfg = TrainConfig(task=task, data_root=data_root, max_train_samples=cap)
    spec, tables, split_rows = trainer.prepare_data(cfg)
    return spec, tables["train"].num_rows, split_rows


# 4_000 puts every task but the smallest in the < 5k tier, 20_000 moves the > 30k tasks down a tier:
# a side that ignored the cap, or applied it differently, gets another budget on some task.
@pytest.mark.parametrize("cap", [None, 4_000, 20_000])
@pytest.mark.parametrize("budgets", [None, EXPLICIT], ids=["derived", "budgets-block"])
def test_recorded_budget_is_the_trained_budget(tmp_path, gue_root, monkeypatch, cap, budgets):
    monkeypatch.setenv("LINGO_DATA_ROOT", str(gue_root))
    job, n_tasks = _job(tmp_path, gue_root, cap, budgets)
    trial_cells = cells(job, resolve_tasks(job))
    assert len({c["task"] for c in trial_cells}) == n_tasks == 22
    for cell in trial_cells:
        recorded = (cell["budget"]["init_r"], cell["budget"]["target_r"])
        cfg = materialize_trial(job, {"cell": cell, "params": {}})
        spec, trained_rows, split_rows = _prepared(cfg.data_root, cfg.task, cfg.max_train_samples)
        # the trial's config as the worker hands it to train()
        settings = trainer.resolve_adapter(cfg, spec, split_rows)
        assert (settings.init_r, settings.target_r) == recorded, cell
        if budgets is None or cell["task"] not in ("prom_core_all", "prom_core_notata", "prom_core_tata", "EMP/H3"):
            # a derived budget: the same trial run with its ranks left to the trainer (`lingo train`)
            unset = dataclasses.replace(cfg, adapter=dataclasses.replace(cfg.adapter, init_r=None, target_r=None))
            own = trainer.resolve_adapter(unset, spec, split_rows)
            assert (own.init_r, own.target_r) == recorded, (cell["task"], cap)
        else:
            assert recorded == ((4, 1) if cell["task"] == "EMP/H3" else (6, 3))
    # the rows the rule counted are the rows the trainer trains on
    for task in {c["task"] for c in trial_cells}:
        spec, trained_rows, _ = _prepared(job.data_root, task, cap)
        assert train_rows(spec, cap) == trained_rows
