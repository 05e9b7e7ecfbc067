"""Training: config, backends, metrics and the loop (no ray/mlflow/deepspeed imports here)."""

from typing import Any

from lingo_core.train.backend import TorchBackend, TrainBackend
from lingo_core.train.config import TrainConfig
from lingo_core.train.trainer import EvalEvent, TrainHooks, TrainResult, evaluate, micro_step, train

__all__ = [
    "EvalEvent",
    "TorchBackend",
    "TrainBackend",
    "TrainConfig",
    "TrainHooks",
    "TrainResult",
    "evaluate",
    "micro_step",
    "train",
    "train_group",
]


def __getattr__(name: str) -> Any:
    # train_group is imported on first use, not here: lingo_core.train.group imports lingo_core.multitask,
    # which imports lingo_core.train.backend and so runs this file; an import here would find multitask
    # half-initialised whenever it is imported first (the fix, moving the shared helpers of backend.py to
    # a leaf module, is outside this package).
    if name == "train_group":
        from lingo_core.train.group import train_group

        return train_group
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
