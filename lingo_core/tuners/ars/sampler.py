"""Budget selection and ARS's stochastic exploration, on flat per-triplet tensors.

Selection is exact: the `budget` highest scores, ties to the earlier triplet (a stable sort), computed
on the scores' device. Exploration draws come from a private, seeded CPU `torch.Generator`: every
data-parallel rank seeded alike draws the same numbers, and the global RNG (dropout, data order) is
never touched. Draws happen only at resample steps, a handful per run, so the host-to-device copy of
the uniforms costs nothing measurable.
"""

from __future__ import annotations

import torch

from lingo_core.tuners.ars.schedule import exploration_probabilities
from lingo_core.tuners.config import check_sampling

_INV_FLOOR = 1e-12  # relative floor on scores before 1/score: zero-importance kept triplets get the largest drop weight


def select_top(scores: torch.Tensor, budget: int) -> torch.Tensor:
    """Boolean mask of the `budget` highest scores (stable: ties go to the earlier triplet)."""
    budget = max(0, min(int(budget), scores.numel()))
    order = torch.argsort(scores, descending=True, stable=True)
    keep = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    keep[order[:budget]] = True
    return keep


def _scaled(weights: torch.Tensor, members: torch.Tensor, mean_p: float) -> torch.Tensor:
    """Probabilities proportional to `weights` over `members` with mean `mean_p`, clipped to [0, 1];
    0 outside `members`. Without information (all weights 0 or not finite) every member gets mean_p."""
    w = torch.where(members, weights, torch.zeros_like(weights))
    count = members.sum().clamp_min(1)
    mean = w.sum() / count
    informative = torch.isfinite(mean) & (mean > 0)
    scaled = (mean_p * w / torch.where(informative, mean, torch.ones_like(mean))).clamp(0.0, 1.0)
    uniform = torch.full_like(w, mean_p)
    return torch.where(members, torch.where(informative, scaled, uniform), torch.zeros_like(w))


class TripletSampler:
    """Draws which pruned triplets ARS reintroduces and which kept ones it drops, for one period."""

    def __init__(self, exploration: float, sampling: str, seed: int) -> None:
        check_sampling("TripletSampler", exploration, sampling)
        self.exploration = float(exploration)
        self.sampling = sampling
        # CPU generator: an identical stream on every rank and device type, no global RNG touched.
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(int(seed))

    def probabilities(
        self, scores: torch.Tensor, keep: torch.Tensor, budget: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-triplet (regrow, drop) probabilities: regrow is 0 for kept triplets, drop 0 for pruned ones.

        Uniform: p_regrow and p_drop of `exploration_probabilities`. Importance: the same means, regrow
        proportional to importance among pruned triplets and drop to 1 / importance among kept ones
        (clipping at 1 can lower a mean)."""
        s = scores.double()  # `budget` == keep.sum(), passed in so that no device value is read back
        p_regrow, p_drop = exploration_probabilities(keep.numel(), budget, self.exploration)
        if self.sampling == "uniform":
            zero = torch.zeros_like(s)
            return torch.where(~keep, p_regrow, zero), torch.where(keep, p_drop, zero)
        top = s.max() if s.numel() else torch.zeros((), dtype=s.dtype, device=s.device)
        floor = torch.where(top > 0, top * _INV_FLOOR, torch.ones_like(top))
        return _scaled(s, ~keep, p_regrow), _scaled(1.0 / s.clamp_min(floor), keep, p_drop)

    def draw(self, scores: torch.Tensor, keep: torch.Tensor, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(reintroduced, dropped) boolean masks; one uniform draw per triplet from the private generator."""
        uniforms = torch.rand(keep.numel(), generator=self.generator, dtype=torch.float64).to(keep.device)
        p_regrow, p_drop = self.probabilities(scores, keep, budget)
        return ~keep & (uniforms < p_regrow), keep & (uniforms < p_drop)
