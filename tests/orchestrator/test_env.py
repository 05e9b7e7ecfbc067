"""The Ray workers' environment has one owner, orchestrator/env.py (issue 11: one owner per fact).

`lingo submit` (the Ray Job's runtime env) and `lingo tune` (ray.init's runtime env) used to build it
in two functions that had to be kept in step by hand; both now start from `env.ray_env`.
"""

from __future__ import annotations

import json

import pytest

from orchestrator import env, submit, sweep
from orchestrator.execution_spec import ResourcesSpec
from orchestrator.jobspec import JobSpec

ALL_FORWARDED = (*env.FORWARD_ENV, *env.SUBMIT_FORWARD_ENV, "RAY_JOB_CONFIG_JSON_ENV_VAR")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No forwarded variable set but the data root: the defaults are what is compared."""
    for key in ALL_FORWARDED:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("LINGO_DATA_ROOT", "/data/gue")
    return monkeypatch


def _job(gpus: float) -> JobSpec:
    return JobSpec("env", ["tf/0"], ["lora"], resources=ResourcesSpec(gpus_per_worker=gpus))


def _both(gpus: float) -> tuple[dict[str, str], dict[str, str]]:
    """(what `lingo submit` gives the Ray Job, what `lingo tune` gives ray.init) for one job."""
    submitted = submit.runtime_env(uses_gpu=gpus > 0)["env_vars"]
    tuned = sweep.driver_runtime_env(_job(gpus))["env_vars"]
    return submitted, tuned


@pytest.mark.parametrize("gpus", [0.0, 0.5, 1.0])
def test_submit_and_tune_agree_on_every_key_submit_sets(clean_env: pytest.MonkeyPatch, gpus: float) -> None:
    submitted, tuned = _both(gpus)
    assert submitted == {k: tuned[k] for k in submitted}  # submit's env is a sub-dict of the workers' env
    assert submitted["LINGO_DATA_ROOT"] == "/data/gue"
    assert ("DS_ACCELERATOR" in submitted) == (gpus == 0) == ("DS_ACCELERATOR" in tuned)
    # What only `lingo tune` adds: the DeepSpeed op cache and Train's start-up timeout.
    assert set(tuned) - set(submitted) == {"TORCH_EXTENSIONS_DIR", "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"}


@pytest.mark.parametrize("gpus", [0.0, 1.0])
def test_both_are_built_from_ray_env(clean_env: pytest.MonkeyPatch, gpus: float) -> None:
    """A variable added to `ray_env` reaches both paths; a second hand-written copy would miss it."""
    base = env.ray_env(gpus > 0)
    clean_env.setattr(env, "ray_env", lambda uses_gpu: {**base, "LINGO_PROBE": f"gpu={uses_gpu}"})
    submitted, tuned = _both(gpus)
    assert submitted["LINGO_PROBE"] == tuned["LINGO_PROBE"] == f"gpu={gpus > 0}"


def test_the_enclosing_jobs_keys_stay_the_jobs(clean_env: pytest.MonkeyPatch) -> None:
    """Inside a submitted job, ray.init must not set again what the job's runtime env set (Ray refuses)."""
    submitted = submit.runtime_env(uses_gpu=False)
    clean_env.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": submitted}))
    tuned = sweep.driver_runtime_env(_job(0.0))["env_vars"]
    assert set(tuned) == {"TORCH_EXTENSIONS_DIR", "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"}


def test_extra_env_and_forwarded_values_win(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("HF_HUB_OFFLINE", "0")
    assert env.worker_env(False)["HF_HUB_OFFLINE"] == "0"  # the driver's setting is forwarded
    assert env.job_env(False)["HF_HUB_OFFLINE"] == "1"  # submit forwards the data root only
    assert env.job_env(False, {"HF_HUB_OFFLINE": "0"})["HF_HUB_OFFLINE"] == "0"  # --env wins
