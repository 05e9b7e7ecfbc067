"""orchestrator/sweep.py without starting Ray: how many trials fit at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.sweep import trial_capacity
from orchestrator.validate import load_job

SMOKE = Path(__file__).resolve().parents[2] / "jobs" / "smoke.yaml"


def test_trial_capacity_counts_the_workers_tune_cannot_see() -> None:
    job = load_job(SMOKE, ["resources.workers_per_trial=2", "resources.cpus_per_worker=0.45",
                           "deepspeed.enabled=true"])
    assert trial_capacity(job, cpus=2, gpus=0) == 2
    assert trial_capacity(job, cpus=1, gpus=0) == 1
    job.resources.cpus_per_worker = 1.0
    assert trial_capacity(job, cpus=2, gpus=0) == 1  # 2 workers x 1 CPU: one trial on 2 CPUs
    job.resources.gpus_per_worker = 0.5
    assert trial_capacity(job, cpus=64, gpus=2) == 2


@pytest.mark.parametrize("share, expected", [(0.1, 10), (0.125, 8), (0.11, 9), (1 / 3, 3), (0.3, 3)])
def test_gpu_shares_count_as_ray_counts_them(share: float, expected: int) -> None:
    # In floats 1.0 // 0.1 == 9.0: the proof job asked for 10 trials per GPU and got 9 (a GPU run showed it).
    job = load_job(SMOKE, [f"resources.gpus_per_worker={share}", "resources.cpus_per_worker=1"])
    assert trial_capacity(job, cpus=64, gpus=1) == expected
