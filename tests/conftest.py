"""Shared fixtures. Real parts only: the GUE data in ../shared, the real SmolLM2 tokenizer/model,
and a tiny random LLaMA saved to disk (loaded through the same from_pretrained path users take)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Set before any test imports transformers / ray / deepspeed / mlflow.
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub access here; fail fast instead of retrying
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizers forks warn and deadlock under Ray
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO_ROOT / ".cache" / "torch_extensions"))  # compile DS ops once
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


@pytest.fixture(scope="session")
def gue_root() -> Path:
    """The real GUE tasks, read in place (never copied into the repo)."""
    root = Path(os.environ.get("LINGO_DATA_ROOT", REPO_ROOT.parent / "shared" / "data" / "gue"))
    if not (root / "tasks.json").is_file():
        pytest.fail(f"GUE data not found at {root}; set LINGO_DATA_ROOT to a folder with tasks.json")
    return root


@pytest.fixture(scope="session")
def smollm2_ref():
    from lingo_core.model_ref import resolve_model

    return resolve_model("smollm2")


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_ref):
    from lingo_core.modeling import load_tokenizer

    return load_tokenizer(smollm2_ref)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random LLaMA with the real SmolLM2 tokenizer, saved as a normal HF folder."""
    from lingo_core.modeling import save_tiny_random_model

    return save_tiny_random_model(tmp_path_factory.mktemp("tiny-llama"))


# ---- session guard: no Ray daemon started by a test outlives the suite ---------------------------------
# Leftovers are killed by pid (never `ray stop`, which would also end other clusters on this host) and
# fail the session.
RAY_LEAKS: list[int] = []


@pytest.fixture(scope="session", autouse=True)
def no_ray_left_behind():
    yield
    if "ray" not in sys.modules:  # nothing started one
        return
    import ray

    from orchestrator.ray_utils import kill_pids, ray_daemon_pids, wait_gone

    ours = ray_daemon_pids()  # children of this pytest process, collected before the shutdown
    ray.shutdown()
    leaked = wait_gone(ours)
    if leaked:
        RAY_LEAKS.extend(sorted(leaked))
        kill_pids(leaked)


def pytest_sessionfinish(session, exitstatus):
    if RAY_LEAKS:
        print(f"\nRay daemons left running by tests (now killed): pids {RAY_LEAKS}")
        session.exitstatus = 1
