"""orchestrator/sweep.py without starting Ray: how many trials fit at once, and a broken job spec stops
`lingo tune` before Ray starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.ray_utils import ray_daemon_pids
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


def test_bad_job_spec_fails_before_ray(tmp_path: Path) -> None:
    """`lingo tune` with a broken spec: exit 2, the key named on stderr, no Ray started, no output."""
    cases = {
        "train.epochz=2": "train.epochz",  # unknown key
        "train.batch_size=many": "batch_size",  # wrong type
        "tasks=[prom_core_tataa]": "tasks[0]",  # unknown task
        "methods=[ars,lorra]": "methods[1]",  # unknown method
        "budgets.default.target_r=9": "target_r",  # impossible budget: target above init
    }
    exe = Path(sys.executable).with_name("lingo")
    out = tmp_path / "bad"
    for override, key in cases.items():
        proc = subprocess.run([str(exe), "tune", str(SMOKE), f"output_dir={out}", override], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2, (override, proc.stderr)
        assert key in proc.stderr and "Traceback" not in proc.stderr, (override, proc.stderr)
    assert not out.exists()  # nothing written: no MLflow store, no Ray storage
    assert not ray_daemon_pids()
