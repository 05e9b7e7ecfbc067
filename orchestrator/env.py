"""The environment of a sweep's Ray processes: the one owner of what a trial worker finds in os.environ.

Two entry points hand it to Ray, and both build it here from `ray_env`::

    lingo submit --> job_env(uses_gpu, extra)   the Ray Job's runtime env: its driver and every worker
    lingo tune   --> worker_env(uses_gpu)       ray.init's runtime env: every worker (inside a Ray Job,
                                                minus the keys the job already set: sweep.py)

so a variable every worker needs is added once, in `ray_env`, and both paths get it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

FORWARD_ENV = ("LINGO_DATA_ROOT", "TORCH_EXTENSIONS_DIR", "DS_ACCELERATOR", "HF_HOME", "HF_HUB_OFFLINE",
               "TOKENIZERS_PARALLELISM", "MLFLOW_DISABLE_TELEMETRY", "RAY_TRAIN_V2_ENABLED",
               "LINGO_FAULT_KILL_AFTER_CHECKPOINT", "LINGO_FAULT_FAIL_TASK", "OMP_NUM_THREADS",
               "LINGO_TRACKING_WAIT_S", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT",
               "LINGO_CACHE_DIR", "XDG_CACHE_HOME")
"""Variables `lingo tune` forwards from its own environment to the workers when set (they win over the
defaults): the driver's machine is the one the user configured. LINGO_CACHE_DIR / XDG_CACHE_HOME: the
de-quantised base weights' cache (lingo_core.modeling.dense_ref), built once per machine and read by
every trial, so the workers must look where the driver does."""

SUBMIT_FORWARD_ENV = ("LINGO_DATA_ROOT",)
"""Variables `lingo submit` forwards from the submitting machine: only the data mount, whose path is the
same on the cluster; the rest of the submitter's environment describes a different machine."""


def ray_env(uses_gpu: bool) -> dict[str, str]:
    """What every Ray process of a sweep needs, however the sweep was started."""
    env = {
        "RAY_TRAIN_V2_ENABLED": "1",  # trial.py builds its TorchTrainer on the Train V2 API
        "TOKENIZERS_PARALLELISM": "false",  # HF tokenizers deadlock in forked Ray workers otherwise
        "MLFLOW_DISABLE_TELEMETRY": "true",  # clusters often have no egress; telemetry calls would only stall
        # Models are local (bundled SmolLM2 / folders, baked into the image): fail fast, never hang on the hub.
        "HF_HUB_OFFLINE": "1",
    }
    if not uses_gpu:
        env["DS_ACCELERATOR"] = "cpu"  # DeepSpeed would probe for CUDA and fail on CPU-only nodes
    return env


def worker_env(uses_gpu: bool) -> dict[str, str]:
    """The workers' environment for `lingo tune` (local Ray, or a cluster joined from the driver)."""
    env = ray_env(uses_gpu)
    # DeepSpeed compiles a small C++ op on first use (20-40 s); a shared cache makes that once.
    env["TORCH_EXTENSIONS_DIR"] = str(REPO_ROOT / ".cache" / "torch_extensions")
    # A worker group that waits for resources freed by another trial must not fail after Train's default
    # 60 s; capacity is checked up front (sweep.trial_capacity), this covers slow starts.
    env["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = "600"
    env.update(forwarded(FORWARD_ENV))
    return env


def job_env(uses_gpu: bool, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a submitted Ray Job's driver and, through Ray, of every trial worker."""
    env = ray_env(uses_gpu)
    env.update(forwarded(SUBMIT_FORWARD_ENV))
    env.update(extra or {})  # `lingo submit --env KEY=VALUE` wins over everything
    return env


def forwarded(keys: Iterable[str]) -> dict[str, str]:
    """The variables of `keys` that this process has set to a non-empty value."""
    return {k: os.environ[k] for k in keys if os.environ.get(k)}
