"""Training: config, backends, metrics and the loop (no ray/mlflow/deepspeed imports here).

The group trainer is imported from its module, `from lingo_core.train.group import train_group`: it
builds on lingo_core.multitask, which imports lingo_core.train.backend (and so this file); re-exporting
it here would make that an import cycle (tests/test_import_graph.py)."""

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

