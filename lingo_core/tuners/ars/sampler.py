"""RankSampler: PEFT's AdaLoRA RankAllocator with injectable I/O and stochastic rank sampling.

Scores are AdaLoRA's (sensitivity EMA x uncertainty EMA, per element, combined per triplet by the
allocator's own `_element_score` / `_combine_ipt`). What changes:

* gradients are read through `grad_of(p)` (DeepSpeed ZeRO keeps partitioned grads: the orchestrator
  passes `deepspeed.utils.safe_get_full_grad`);
* masks are written through `write_(p, value)` so sharded / master copies are updated as well;
* the top-`budget` selection is exact (ties broken by position), then each pruned triplet regrows with
  probability p_regrow and each kept triplet drops with probability p_drop, drawn from a private,
  seeded `torch.Generator` so every data-parallel rank takes the same decisions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from peft.tuners.adalora.layer import RankAllocator
from torch import nn

from lingo_core.tuners.config import check_sampling

GradOf = Callable[[nn.Parameter], "torch.Tensor | None"]
WriteFn = Callable[[nn.Parameter, torch.Tensor], None]

_INV_FLOOR = 1e-12  # relative floor on scores before 1/score: zero-importance triplets get a huge (clipped) drop weight


def param_grad(p: nn.Parameter) -> torch.Tensor | None:
    """Default `grad_of`: the local gradient (single process, DDP)."""
    return p.grad


def copy_into(p: nn.Parameter, value: torch.Tensor) -> None:
    """Default `write_`: in-place copy into the parameter (no master copy to keep in sync)."""
    with torch.no_grad():
        p.copy_(value)


def _scaled_probabilities(weights: torch.Tensor, mean_p: float) -> torch.Tensor:
    """Probabilities proportional to `weights` with mean `mean_p`, clipped to [0, 1]."""
    if weights.numel() == 0:
        return weights
    mean = weights.mean()
    if not torch.isfinite(mean) or mean <= 0:  # no information (all zero): fall back to uniform
        return torch.full_like(weights, mean_p)
    return (mean_p * weights / mean).clamp(0.0, 1.0)


class RankSampler(RankAllocator):
    """AdaLoRA's allocator plus stochastic regrow / drop of singular-value triplets.

    With p_regrow = p_drop = 0 (or `stochastic=False`) it masks exactly the triplets PEFT's
    `RankAllocator.mask_to_budget` masks, except that ties at the threshold keep exactly `budget`.
    """

    def __init__(
        self,
        model: nn.Module,
        peft_config,
        adapter_name: str = "default",
        *,
        p_regrow: float | None = None,
        p_drop: float | None = None,
        sampling: str | None = None,
        seed: int | None = None,
    ) -> None:
        # Unset knobs come from an ARSConfig; a plain AdaLoraConfig means no sampling (AdaLoRA).
        self.p_regrow = float(getattr(peft_config, "p_regrow", 0.0) if p_regrow is None else p_regrow)
        self.p_drop = float(getattr(peft_config, "p_drop", 0.0) if p_drop is None else p_drop)
        self.sampling = sampling if sampling is not None else getattr(peft_config, "sampling", "uniform")
        seed = int(getattr(peft_config, "sampling_seed", 0) if seed is None else seed)
        check_sampling("RankSampler", self.p_regrow, self.p_drop, self.sampling)
        super().__init__(model, peft_config, adapter_name)
        # CPU generator: identical stream on every rank and device type, and no global RNG touched.
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)
        self.last_allocation: dict[str, int] | None = None

    # -- importance ------------------------------------------------------------------------------------
    def _is_adapter_param(self, name: str) -> bool:
        return any(f"{kind}.{self.adapter_name}" in name for kind in ("lora_A", "lora_B", "lora_E"))

    def update_ipt(self, model: nn.Module, grad_of: GradOf | None = None) -> None:
        """Update sensitivity / uncertainty EMAs from |p * grad|, the gradient read via `grad_of`."""
        grad_of = grad_of or param_grad
        with torch.no_grad():
            for n, p in model.named_parameters():
                if not self._is_adapter_param(n):
                    continue
                grad = grad_of(p)
                if grad is None:  # no gradient this step (unused layer): keep the EMAs as they are
                    continue
                # fp32 EMAs: products of bf16 weights and grads underflow and would tie many scores at 0.
                ipt = (p.detach().float() * grad.detach().to(p.device).float()).abs()
                if n not in self.exp_avg_ipt:
                    self.exp_avg_ipt[n] = torch.zeros_like(ipt)
                    self.exp_avg_unc[n] = torch.zeros_like(ipt)
                self.ipt[n] = ipt
                self.exp_avg_ipt[n] = self.beta1 * self.exp_avg_ipt[n] + (1 - self.beta1) * ipt
                self.exp_avg_unc[n] = self.beta2 * self.exp_avg_unc[n] + (1 - self.beta2) * (
                    ipt - self.exp_avg_ipt[n]
                ).abs()

    def triplet_scores(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """lora_E parameter name -> importance of each of its triplets (shape [r]), in name order."""
        params = dict(model.named_parameters())
        scores: dict[str, torch.Tensor] = {}
        for key in self.name_set:  # sorted at construction: the same order on every rank
            name_a, name_b, name_e = key % "lora_A", key % "lora_B", key % "lora_E"
            rank = params[name_e].shape[0]
            if name_e not in self.exp_avg_ipt:  # not observed yet: no evidence for any triplet
                scores[name_e] = torch.zeros(rank)
                continue
            score_a = self._element_score(name_a).mean(dim=1)  # rows of Q (lora_A, r x d_in): one per triplet
            score_b = self._element_score(name_b).mean(dim=0)  # columns of P (lora_B, d_out x r): one per triplet
            score_e = self._element_score(name_e)  # the singular values themselves, [r, 1]
            scores[name_e] = self._combine_ipt(score_e, torch.stack([score_a, score_b], dim=1)).view(-1)
        return scores

    # -- selection and sampling --------------------------------------------------------------------------
    @staticmethod
    def select_top(scores: torch.Tensor, budget: int) -> torch.Tensor:
        """Boolean mask of the `budget` highest scores (stable: ties go to the earlier triplet)."""
        budget = max(0, min(int(budget), scores.numel()))
        order = torch.argsort(scores, descending=True, stable=True)
        keep = torch.zeros(scores.numel(), dtype=torch.bool)
        keep[order[:budget]] = True
        return keep

    def probabilities(self, scores: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-triplet (regrow, drop) probabilities; regrow is 0 for kept and drop 0 for pruned triplets."""
        s = scores.double()
        regrow = torch.zeros_like(s)
        drop = torch.zeros_like(s)
        if self.sampling == "uniform":
            regrow[~keep] = self.p_regrow
            drop[keep] = self.p_drop
            return regrow, drop
        regrow[~keep] = _scaled_probabilities(s[~keep], self.p_regrow)
        top = float(s.max()) if s.numel() else 0.0
        inverse = 1.0 / s.clamp_min(top * _INV_FLOOR if top > 0 else 1.0)
        drop[keep] = _scaled_probabilities(inverse[keep], self.p_drop)
        return regrow, drop

    def sample(self, scores: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(active, regrown, dropped) masks; one uniform draw per triplet from the private generator."""
        draws = torch.rand(scores.numel(), generator=self.generator, dtype=torch.float64)
        p_regrow, p_drop = self.probabilities(scores, keep)
        regrown = ~keep & (draws < p_regrow)
        dropped = keep & (draws < p_drop)
        return (keep & ~dropped) | regrown, regrown, dropped

    def mask_to_budget(
        self,
        model: nn.Module,
        budget: int,
        write_: WriteFn | None = None,
        stochastic: bool = True,
    ) -> dict[str, list[bool]]:
        """Keep the top-`budget` triplets, then (if `stochastic`) regrow / drop; mask the rest to 0.

        Returns the active pattern {lora_E name: [bool] * r}; `last_allocation` holds the counts.
        """
        scores = {n: s.detach().float().cpu() for n, s in self.triplet_scores(model).items()}
        names = list(scores)
        flat = torch.cat([scores[n] for n in names]) if names else torch.zeros(0)
        keep = self.select_top(flat, budget)
        no_sampling = not stochastic or (self.p_regrow == 0.0 and self.p_drop == 0.0)
        if no_sampling:  # no draw either: the generator stream only advances on sampled allocations
            active, regrown, dropped = keep, torch.zeros_like(keep), torch.zeros_like(keep)
        else:
            active, regrown, dropped = self.sample(flat, keep)
        pattern: dict[str, list[bool]] = {}
        offset = 0
        for n in names:
            rank = scores[n].numel()
            pattern[n] = active[offset : offset + rank].tolist()
            offset += rank
        self.apply_pattern(model, pattern, write_)
        self.last_allocation = {
            "budget": int(budget),
            "active_ranks": int(active.sum()),
            "regrown": int(regrown.sum()),
            "dropped": int(dropped.sum()),
        }
        return pattern

    def apply_pattern(
        self, model: nn.Module, pattern: dict[str, list[bool]], write_: WriteFn | None = None
    ) -> None:
        """Zero the singular values of inactive triplets (keys with or without the adapter name)."""
        write_ = write_ or copy_into
        suffix = f".{self.adapter_name}"
        for n, p in model.named_parameters():
            if f"lora_E{suffix}" not in n:
                continue
            bits = pattern.get(n, pattern.get(n.replace(suffix, "")))
            if bits is None or all(bits):  # nothing to mask: skip the (possibly sharded) write
                continue
            mask = torch.tensor(bits, dtype=torch.bool, device=p.device).view(-1, 1)
            write_(p, p.detach().masked_fill(~mask, 0.0))
