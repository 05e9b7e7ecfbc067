"""The one selection rule: which dev metric, in which direction, picks everything that gets picked.

    trainer   best step of a trial (the dev-selected checkpoint that is exported and tested) --+
    Tune      scheduler metric/mode (ASHA's rungs, the best trial)                             |
    summary   the dev-best trial per (task, method, seed)                                      +-- SELECTION
    registry  the task's best trial (a new version), whether `champion` moves to it -----------+

Every consumer imports ``SELECTION``; a job spec's ``scheduler.metric``/``scheduler.mode`` must name
this same rule (the orchestrator's job-spec validation refuses anything else), so no part of the system
can rank trials one way while another ranks checkpoints the other way. A leaf module without imports:
the trainer, the job-spec validation and the registry all load it cheaply.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["SELECTION", "SelectionRule"]

T = TypeVar("T")


@dataclass(frozen=True)
class SelectionRule:
    metric: str
    """Name in the trainer's dev metrics (``classification_metrics``), e.g. "mcc"."""
    mode: str
    """"max": higher is better; "min": lower is better."""
    chance: float
    """The score of a model no better than chance (for MCC, 0: constant or random predictions)."""

    def __post_init__(self) -> None:
        if self.mode not in ("max", "min"):
            raise ValueError(f"SelectionRule.mode={self.mode!r}: expected 'max' or 'min'")

    @property
    def dev_key(self) -> str:
        """The dev value under this name: Tune's metric, a trial's result key, a registry version's tag."""
        return f"dev_{self.metric}"

    @property
    def best_key(self) -> str:
        """MLflow metric of a finished trial: the dev value of its dev-selected weights."""
        return f"best_dev_{self.metric}"

    @property
    def worst(self) -> float:
        """Start value that any finite score improves on."""
        return -math.inf if self.mode == "max" else math.inf

    def better(self, new: float, old: float) -> bool:
        """Strictly better: on a tie the incumbent (the earlier step, the current champion) stays."""
        return new > old if self.mode == "max" else new < old

    def beats_chance(self, value: float) -> bool:
        """Strictly better than chance: a model that predicts one class scores exactly ``chance``."""
        return self.better(value, self.chance)

    def best(self, items: Iterable[T], score: Callable[[T], float]) -> T:
        """The best item by ``score``; the first seen wins ties. ValueError when ``items`` is empty."""
        chosen, chosen_score, seen = None, self.worst, False
        for item in items:
            value = score(item)
            if not seen or self.better(value, chosen_score):
                chosen, chosen_score, seen = item, value, True
        if not seen:
            raise ValueError("best() of no items")
        return chosen  # type: ignore[return-value]


SELECTION = SelectionRule(metric="mcc", mode="max", chance=0.0)  # MCC: GUE's primary metric, robust to imbalance
