"""Training: config, backends, metrics and the loop (no ray/mlflow/deepspeed imports here)."""

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
]
