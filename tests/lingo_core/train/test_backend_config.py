"""Gradient accumulation and clipping have one owner, the TrainConfig: the backend is built from it, and
train() refuses a backend built with other values (it would step and clip otherwise than cfg says)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lingo_core.train import TorchBackend, TrainConfig, train
from lingo_core.train.backend import check_backend


@pytest.mark.parametrize("accum, clip", [(3, 0.5), (1, None), (2, 0.0)])
def test_for_config_takes_accumulation_and_clip_from_the_config(accum, clip):
    cfg = TrainConfig(task="prom_core_tata", grad_accum=accum, max_grad_norm=clip)
    backend = TorchBackend.for_config(cfg, "cpu")
    assert backend.grad_accum == accum
    assert backend.max_grad_norm == (clip or None)  # 0 and None both mean: no clipping
    check_backend(backend, cfg)


@pytest.mark.parametrize("kw, name", [({"grad_accum": 2}, "grad_accum"), ({"max_grad_norm": 5.0}, "max_grad_norm"),
                                      ({"max_grad_norm": None}, "max_grad_norm")])
def test_train_refuses_a_backend_that_disagrees_with_the_config(tmp_path, kw, name):
    # no such task: without the check train() would fail later, on the registry, with another error
    cfg = TrainConfig(task="no/such/task", data_root=str(tmp_path), output_dir=str(tmp_path / "out"))
    with pytest.raises(ValueError, match=rf"TorchBackend\.{name} is .* but TrainConfig\.{name} is"):
        train(cfg, backend=TorchBackend("cpu", **kw))
    assert not (tmp_path / "out").exists()  # refused before any work


def test_settings_object_backends_are_checked_too():
    """DeepSpeedBackend keeps its accumulation and clip on `.settings` (orchestrator/deepspeed_backend.py)."""
    cfg = TrainConfig(task="prom_core_tata", grad_accum=4, max_grad_norm=1.0)
    check_backend(SimpleNamespace(settings=SimpleNamespace(grad_accum=4, max_grad_norm=1.0)), cfg)
    with pytest.raises(ValueError, match="grad_accum is 1 but TrainConfig.grad_accum is 4"):
        check_backend(SimpleNamespace(settings=SimpleNamespace(grad_accum=1, max_grad_norm=1.0)), cfg)
