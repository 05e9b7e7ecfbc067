"""Job spec -> Tune param space: sampled with Tune's own variant generator (no cluster), and
materialize_trial precedence. Uses the real GUE registry in ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.tune.search.variant_generator import generate_variants

from orchestrator.jobspec import resolve_tasks
from orchestrator.search import build_param_space, cells, describe_trials, materialize_trial
from orchestrator.validate import load_job

SPEC = {
    "name": "s",
    "tasks": ["prom_core_tata", "tf/0"],
    "methods": ["ars", "lora"],
    "seeds": [0, 1],
    "num_samples": 3,
    "train": {"epochs": 1, "batch_size": 8, "max_train_samples": 512, "lr": 5e-4, "adapter": {"lora_r": 2}},
    "search": {
        "all": {"weight_decay": {"uniform": [0.0, 0.1]}},
        "ars": {
            "lr": {"loguniform": [1e-4, 1e-2]},
            "adapter.exploration": {"grid": [0.0, 0.2]},
            "adapter.sampling": {"choice": ["uniform", "importance"]},
            "adapter.deltaT": {"randint": [1, 3]},
        },
        "lora": {"adapter.lora_r": {"choice": [4, 16]}},
    },
    "budgets": {"tf/0": {"init_r": 6, "target_r": 3}, "default": "derived"},
}


@pytest.fixture()
def job(gue_root, monkeypatch, tmp_path):
    monkeypatch.setenv("LINGO_DATA_ROOT", str(gue_root))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    return load_job(path)


def sample(job, num_samples: int) -> list[dict]:
    """Resolve the param space exactly as Tune's BasicVariantGenerator does, num_samples passes."""
    space = build_param_space(job, resolve_tasks(job))
    out = []
    for _ in range(num_samples):
        out += [spec["config"] for _, spec in generate_variants({"config": space})]
    return out


def test_cells_expand_grid_only_for_its_method(job):
    got = cells(job, resolve_tasks(job))
    ars = [c for c in got if c["method"] == "ars"]
    lora = [c for c in got if c["method"] == "lora"]
    assert len(ars) == 2 * 2 * 2  # tasks x exploration grid x seeds
    assert len(lora) == 2 * 2  # tasks x seeds: not multiplied by the ARS grid
    assert all(c["grid"] == {} for c in lora)
    assert {c["grid"]["adapter.exploration"] for c in ars} == {0.0, 0.2}
    assert all(c["budget"] is None for c in lora)
    assert {c["task"]: (c["budget"]["init_r"], c["budget"]["target_r"]) for c in ars} == {
        "tf/0": (6, 3), "prom_core_tata": (8, 2)}  # explicit; derived from 512 rows (< 5k -> 8 -> 2)


def test_each_method_samples_only_its_own_space(job):
    configs = sample(job, job.num_samples)
    assert len(configs) == 12 * 3 == len(describe_trials(job, resolve_tasks(job)))
    for config in configs:
        params = config["params"]
        if config["cell"]["method"] == "ars":
            assert set(params) == {"weight_decay", "lr", "adapter.sampling", "adapter.deltaT"}
            assert 1e-4 <= params["lr"] <= 1e-2
            assert params["adapter.sampling"] in ("uniform", "importance")
            assert params["adapter.deltaT"] in (1, 2, 3)
        else:
            assert set(params) == {"weight_decay", "adapter.lora_r"}
            assert params["adapter.lora_r"] in (4, 16)
        assert 0.0 <= params["weight_decay"] <= 0.1
    lrs = [c["params"]["lr"] for c in configs if c["cell"]["method"] == "ars"]
    assert len(set(lrs)) == len(lrs)  # every pass draws afresh (the sampler is shared, not copied)
    assert {c["params"]["adapter.deltaT"] for c in configs if "adapter.deltaT" in c["params"]} == {1, 2, 3}


def test_sampling_is_reproducible(job):
    first = [c["params"] for c in sample(job, 2)]
    second = [c["params"] for c in sample(job, 2)]
    assert first == second  # search_seed fixes the draws of a fresh param space


def test_materialize_precedence(job):
    cell = {"task": "tf/0", "method": "ars", "seed": 1, "budget": {"init_r": 6, "target_r": 3},
            "grid": {"adapter.exploration": 0.2}}
    cfg = materialize_trial(job, {"cell": cell, "params": {"lr": 2e-3, "adapter.sampling": "importance"}})
    assert cfg.task == "tf/0" and cfg.seed == 1 and cfg.adapter.method == "ars"
    assert cfg.lr == 2e-3  # search beats train (5e-4)
    assert cfg.epochs == 1 and cfg.max_train_samples == 512  # train defaults kept
    assert cfg.adapter.exploration == 0.2 and cfg.adapter.sampling == "importance"
    assert (cfg.adapter.init_r, cfg.adapter.target_r) == (6, 3)  # budget last
    assert cfg.adapter.lora_r == 2  # nested train default survives the merge
    assert cfg.model == "smollm2" and cfg.tokenization == "bbpe"
    assert Path(cfg.output_dir).parts[-3:] == ("tf_0", "ars", "seed1_exploration=0.2")

    cfg = materialize_trial(job, {"cell": {**cell, "budget": {"init_r": 4, "target_r": 4}},
                                  "params": {"adapter.init_r": 12}})
    assert cfg.adapter.init_r == 4  # the per-task budget wins over a search value


def test_materialize_every_sampled_config(job):
    for config in sample(job, 1):
        cfg = materialize_trial(job, config)
        assert cfg.adapter.method == config["cell"]["method"]
        assert isinstance(cfg.adapter.deltaT, int)  # numpy ints converted: TrainConfig accepts them
