"""The rank budget over training, when budgets are selected and when ARS draws its exploration.

With T total steps (1-based optimizer steps), n = init budget, t = target budget:

    step <= tinit               warm-up: every triplet active, importance EMAs accumulate
    tinit < step < T - tfinal   pruning: budget b(step) = t + (n - t) (1 - (step - tinit) / (T - tfinal - tinit))^3
                                (AdaLoRA's cubic schedule); the top-b triplets by importance are kept every
                                deltaT steps; ARS redraws its exploration every `resample_every` steps
                                until one period before T - tfinal, then the kept set trains alone
    step == T - tfinal          final selection: the top-t triplets, deterministically
    step >  T - tfinal          frozen: the final pattern trains alone

Exploration (ARS): at a resample with b of n triplets kept, each pruned triplet is reintroduced with
p_regrow = exploration and each kept one dropped with p_drop = exploration (n - b) / b, so that

    E[active] = b (1 - p_drop) + (n - b) p_regrow = b.

When that p_drop would exceed 1 (b < exploration (n - b)), p_drop = 1 and p_regrow = b / (n - b) instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from lingo_core.tuners.config import check_sampling


def exploration_probabilities(n: int, budget: int, exploration: float) -> tuple[float, float]:
    """(p_regrow, p_drop) for n triplets of which `budget` are kept: p_drop * b == p_regrow * (n - b)."""
    if not 0 <= budget <= n:
        raise ValueError(f"budget {budget} outside [0, {n}]")
    pruned = n - budget
    if budget == 0 or pruned == 0 or exploration == 0:  # nothing to swap with
        return 0.0, 0.0
    swaps = min(exploration * pruned, float(budget))  # expected reintroductions = expected drops
    return swaps / pruned, swaps / budget


@dataclass(frozen=True)
class RankSchedule:
    """Budgets and event steps of one run (see the module docstring)."""

    init_budget: int
    """Triplets at the start: init_r x adapted matrices."""
    target_budget: int
    """Triplets at the end: target_r x adapted matrices."""
    total_steps: int
    tinit: int
    tfinal: int
    deltaT: int = 1
    """Steps between two top-budget selections (PEFT's deltaT)."""
    resample_every: int = 1
    """Steps between two ARS exploration draws; a draw holds until the next one."""
    exploration: float = 0.0
    """Probability that a pruned triplet is reintroduced at a draw (0: AdaLoRA, no exploration)."""
    sampling: str = "uniform"
    """"uniform" or "importance" (probabilities scaled by importance, same means)."""

    def __post_init__(self) -> None:
        if not 0 <= self.target_budget <= self.init_budget:
            raise ValueError(f"RankSchedule: target budget {self.target_budget} outside [0, {self.init_budget}]")
        if self.tinit < 0 or self.tfinal < 0 or self.tinit + self.tfinal >= self.total_steps:
            raise ValueError(
                f"RankSchedule: tinit ({self.tinit}) + tfinal ({self.tfinal}) must be < total_steps "
                f"({self.total_steps}) and both >= 0"
            )
        if self.deltaT < 1 or self.resample_every < 1:
            raise ValueError(f"RankSchedule: deltaT ({self.deltaT}) and resample_every ({self.resample_every}) must be >= 1")
        check_sampling("RankSchedule", self.exploration, self.sampling)

    @property
    def final_step(self) -> int:
        """The step of the final, deterministic top-target selection."""
        return self.total_steps - self.tfinal

    def budget(self, step: int) -> int:
        """Triplets allowed at optimizer step `step` (PEFT's budget_schedule, integer-truncated)."""
        if step <= self.tinit:
            return self.init_budget
        if step >= self.final_step:
            return self.target_budget
        decay = 1 - (step - self.tinit) / (self.final_step - self.tinit)
        return int((self.init_budget - self.target_budget) * decay**3 + self.target_budget)

    def observes(self, step: int) -> bool:
        """Whether the gradients of `step` feed the importance EMAs (as PEFT: every step before the final one)."""
        return step < self.final_step

    @property
    def exploration_end(self) -> int:
        """The first step with no exploration in force: one resample period before the final selection.
        The kept set then trains alone for a period, so the final importance is measured on it and the
        final selection does not switch off reintroduced triplets the network has just come to use."""
        return max(self.tinit + 1, self.final_step - self.resample_every)

    def resamples(self, step: int) -> bool:
        """Whether ARS redraws its exploration at `step`: the first pruning step, then every resample_every,
        while the period still starts before exploration_end."""
        if self.exploration == 0 or not self.tinit < step < self.exploration_end:
            return False
        return (step - self.tinit - 1) % self.resample_every == 0

    def settles(self, step: int) -> bool:
        """Whether the exploration in force ends at `step` (exploration_end, before the final selection)."""
        return self.exploration > 0 and step == self.exploration_end < self.final_step

    def selects(self, step: int) -> bool:
        """Whether the top-budget set is recomputed at `step` (every deltaT pruning steps, at draws and
        when exploration settles)."""
        return self.tinit < step < self.final_step and (
            step % self.deltaT == 0 or self.resamples(step) or self.settles(step))
