"""Fine-tuning methods: settings, the ARS / AdaLoRA rank controller, and build_model."""

from lingo_core.method_names import METHODS, RANK_METHODS
from lingo_core.tuners.ars import RankController, RankSchedule
from lingo_core.tuners.config import SAMPLING_MODES, AdapterSettings, default_rank_budget, resolve_ranks
from lingo_core.tuners.methods import (
    build_model,
    default_target_modules,
    linear_module_names,
    trainable_summary,
)

__all__ = [
    "METHODS",
    "RANK_METHODS",
    "SAMPLING_MODES",
    "AdapterSettings",
    "RankController",
    "RankSchedule",
    "build_model",
    "default_rank_budget",
    "default_target_modules",
    "linear_module_names",
    "resolve_ranks",
    "trainable_summary",
]
