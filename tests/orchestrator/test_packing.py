"""resources.tasks_per_trial: which cells a group trial trains, and the job checks that guard it.

Real GUE registry in ../shared; no Ray, no training (the sweep of a group: tests/integration/test_sweep.py
test_packed_sweep; the group trainer itself: tests/lingo_core/train/test_group.py)."""

from __future__ import annotations

import pytest
import yaml

from orchestrator.jobspec import JobSpecError, resolve_tasks
from orchestrator.search import cells, describe_trials, materialize_trial, member_cells, pack_cells
from orchestrator.validate import load_job

LENGTHS = {"long": 500, "short_b": 70, "short_a": 70, "mid": 300}


def _cells(tasks: list[str], methods: tuple[str, ...] = ("lora", "ars"), seeds: tuple[int, ...] = (0, 1),
           grid: dict | None = None) -> list[dict]:
    return [{"task": t, "method": m, "seed": s, "budget": None, "grid": dict(grid or {})}
            for t in tasks for m in methods for s in seeds]


def test_lora_cells_that_differ_only_in_task_are_grouped_by_length() -> None:
    plain = _cells(list(LENGTHS))
    packed = pack_cells(plain, LENGTHS, 2)
    assert [c for c in packed if c["method"] == "ars"] == [c for c in plain if c["method"] == "ars"]
    groups = [c for c in packed if c["method"] == "lora"]
    # per seed: the two 70 bp tasks together (ties by name), then the 300 and 500 bp ones
    assert [(c["seed"], c["members"]) for c in groups] == [
        (0, ["short_a", "short_b"]), (0, ["mid", "long"]), (1, ["short_a", "short_b"]), (1, ["mid", "long"])]
    assert groups[0]["task"] == "short_a+short_b"
    unpacked = [m for c in packed for m in member_cells(c)]  # every original cell trains exactly once
    key = lambda c: (c["task"], c["method"], c["seed"])  # noqa: E731
    assert sorted(map(key, unpacked)) == sorted(map(key, plain))
    assert all("members" not in m for m in unpacked)


def test_other_grid_points_are_other_groups_and_a_group_of_one_stays_plain() -> None:
    plain = (_cells(["short_a", "short_b", "mid"], ("lora",), (0,), {"lr": 1e-3})
             + _cells(["short_a"], ("lora",), (0,), {"lr": 3e-3}))
    packed = pack_cells(plain, LENGTHS, 2)
    assert [(c["grid"]["lr"], c.get("members")) for c in packed] == [
        (1e-3, ["short_a", "short_b"]), (1e-3, None), (3e-3, None)]
    assert pack_cells(plain, LENGTHS, 1) is plain  # the default path is untouched


SPEC = {
    "name": "p", "tasks": ["prom_core_tata", "tf/0", "prom_300_tata"], "methods": ["lora", "ars"],
    "seeds": [0], "train": {"epochs": 1, "batch_size": 8, "max_train_samples": 64},
    "budgets": {"default": {"init_r": 4, "target_r": 2}},
    "scheduler": {"type": "fifo"}, "deepspeed": {"enabled": False},
    "resources": {"tasks_per_trial": 2},
}


def _load(tmp_path, gue_root, monkeypatch, **changes):
    monkeypatch.setenv("LINGO_DATA_ROOT", str(gue_root))
    spec = {**SPEC, **changes}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_job(path)


def test_a_valid_packed_job_lists_its_group_trials(tmp_path, gue_root, monkeypatch) -> None:
    job = _load(tmp_path, gue_root, monkeypatch)
    rows = describe_trials(job, resolve_tasks(job))
    assert [(r["task"], r["method"]) for r in rows] == [
        ("prom_300_tata", "ars"), ("prom_core_tata", "ars"), ("tf/0", "ars"),  # resolve_tasks's order
        ("prom_core_tata+tf/0", "lora"), ("prom_300_tata", "lora")]  # 70 bp + 101 bp, then the 300 bp task
    group = next(c for c in cells(job, resolve_tasks(job)) if c.get("members"))
    configs = [materialize_trial(job, {"cell": m, "params": {}}) for m in member_cells(group)]
    assert [c.task for c in configs] == ["prom_core_tata", "tf/0"]
    assert len({c.output_dir for c in configs}) == 2  # each task its own run folder


@pytest.mark.parametrize(("changes", "fragments"), [
    ({"deepspeed": {"enabled": True}}, ["resources.tasks_per_trial", "deepspeed.enabled: false"]),
    ({"scheduler": {"type": "asha"}}, ["resources.tasks_per_trial", "scheduler.type: fifo", "'asha'"]),
    ({"methods": ["ars"]}, ["resources.tasks_per_trial", "packs lora trials", "['ars']"]),
    ({"resources": {"tasks_per_trial": 0}}, ["resources.tasks_per_trial", ">= 1", "0"]),
    ({"train": {**SPEC["train"], "save_checkpoints": True}}, ["train.save_checkpoints", "no checkpoints"]),
])
def test_a_job_a_group_cannot_run_is_refused(tmp_path, gue_root, monkeypatch, changes, fragments) -> None:
    with pytest.raises(JobSpecError) as err:
        _load(tmp_path, gue_root, monkeypatch, **changes)
    for fragment in fragments:
        assert fragment in str(err.value)
