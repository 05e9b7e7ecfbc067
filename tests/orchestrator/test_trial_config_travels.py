"""A trial's TrainConfig is resolved once, by the trial driver, and travels to the workers as that object.

The driver (orchestrator/trial.py) resolves the config (job `train` < search values < the cell's budget,
output folder + trial id) and the DeepSpeed settings; Ray pickles the worker config with cloudpickle,
as done here; the worker trains with what arrives. A driver that sent a dict again, a worker that
rebuilt the config from the cell, or settings built from other values than the config fail here.
"""

from __future__ import annotations

import pytest
import yaml
from ray import cloudpickle

from lingo_core.train import TorchBackend, TrainConfig
from lingo_core.train.backend import check_backend
from orchestrator.deepspeed_backend import DeepSpeedSettings, build_backend
from orchestrator.jobspec import resolve_tasks
from orchestrator.search import MethodSampler, cells
from orchestrator.trial import trial_config, worker_config
from orchestrator.validate import load_job

SPEC = {
    "name": "travel", "tasks": ["tf/0"], "methods": ["ars"], "seeds": [3],
    # values off their defaults, `lr` as YAML 1.1 reads `1e-4` (a string): the overlay types it once
    "train": {"epochs": 1, "batch_size": 4, "grad_accum": 2, "max_grad_norm": 0.5, "max_train_samples": 64,
              "lr": "1e-4", "adapter": {"exploration": 0.3}},
    "search": {"ars": {"weight_decay": {"uniform": [0.0, 0.1]}, "adapter.sampling": {"choice": ["importance"]}}},
    "budgets": {"default": {"init_r": 6, "target_r": 3}},
    "deepspeed": {"enabled": False, "zero_stage": 1, "config": {"wall_clock_breakdown": True}},
}


@pytest.fixture()
def job(gue_root, monkeypatch, tmp_path):
    monkeypatch.setenv("LINGO_DATA_ROOT", str(gue_root))
    path = tmp_path / "travel.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "output_dir": str(tmp_path / "out")}))
    return load_job(path)


def test_the_job_train_block_is_typed_at_load(job):
    assert job.train["lr"] == 1e-4 and isinstance(job.train["lr"], float)
    assert job.train["adapter"] == {"exploration": 0.3}  # an overlay: only what the file sets


def test_the_worker_trains_the_config_the_driver_resolved(job):
    cell = cells(job, resolve_tasks(job))[0]
    config = {"cell": cell, "params": MethodSampler({"ars": job.method_space("ars")}, 0)({"cell": cell})}
    cfg = trial_config(job, config, "trial_00007")
    arrived = cloudpickle.loads(cloudpickle.dumps(worker_config(job, config, cfg, "trial_00007", "sqlite://", "r")))

    got = arrived["train"]
    assert type(got) is TrainConfig and got == cfg  # the object itself, not a dict to rebuild
    assert got.output_dir.endswith("trial_00007")  # the driver's resolution (trial id), not the cell's default
    assert (got.lr, got.seed, got.adapter.exploration, got.adapter.sampling) == (1e-4, 3, 0.3, "importance")
    assert (got.adapter.init_r, got.adapter.target_r) == (6, 3)  # the cell's budget
    assert got.weight_decay == config["params"]["weight_decay"]

    settings = arrived["deepspeed"]
    assert type(settings) is DeepSpeedSettings
    assert (settings.micro_batch_size, settings.grad_accum, settings.max_grad_norm) == (4, 2, 0.5)
    assert (settings.enabled, settings.zero_stage, settings.config) == (False, 1, {"wall_clock_breakdown": True})
    backend = build_backend(got, settings)  # enabled: false -> the plain backend, from the same config
    assert isinstance(backend, TorchBackend)
    check_backend(backend, got)  # what train() checks first
