"""RankController: drives the rank budget of an AdaLoRA-family PEFT model through training.

Trainer contract (docs/DESIGN.md): after backward at an optimizer boundary call `observe(grad_of)`;
after `optimizer.step()` call `allocate(global_step, write_)`. Phases, with T = total steps:

    step <= tinit            warm-up: full rank, importance EMAs accumulate
    tinit < step < T-tfinal  cubic budget decay; every deltaT steps: top-budget + regrow/drop sampling
    step == T-tfinal         final allocation: deterministic top-target (budget == target exactly)
    step >  T-tfinal         frozen: the final pattern is re-applied after every optimizer step

"ars" uses the configured p_regrow / p_drop; "adalora" is the same controller with both at 0, which is
AdaLoRA's own allocation.
"""

from __future__ import annotations

import torch
from peft import PeftModel

from lingo_core.tuners.ars.config import ARSConfig
from lingo_core.tuners.ars.sampler import GradOf, RankSampler, WriteFn


class RankController:
    """Rank allocation for an AdaLoRA / ARS `PeftModel` (one trainable adapter)."""

    def __init__(self, model: PeftModel, adapter_name: str = "default") -> None:
        self.model = model
        self.adapter_name = adapter_name
        self.config = model.peft_config[adapter_name]
        # Parameter names (and rank_pattern keys) are relative to the wrapped transformers model, as in PEFT.
        self.inner = model.base_model.model
        self.sampler = RankSampler(self.inner, self.config, adapter_name)
        self.method = "ars" if isinstance(self.config, ARSConfig) else "adalora"
        self.total_steps: int = self.config.total_step
        self.final_step: int = self.config.total_step - self.config.tfinal
        self.step = 0
        self._pattern: dict[str, list[bool]] | None = None  # active pattern after the last allocation
        self._final: dict[str, list[bool]] | None = None  # frozen once step reaches final_step
        self.budget_history: list[tuple[int, int, int]] = []
        """(step, budget in force, active ranks) for every allocate() call."""
        self.allocations: list[dict[str, int]] = []
        """Full record of every allocate() call: step, budget, active_ranks, regrown, dropped."""

    @property
    def init_budget(self) -> int:
        return self.sampler.init_bgt

    @property
    def target_budget(self) -> int:
        return self.sampler.target_bgt

    def observe(self, grad_of: GradOf | None = None) -> None:
        """Fold this step's gradients into the importance EMAs (no-op once the final pattern is due)."""
        # As PEFT: the step that makes the final allocation (and all after it) adds no importance.
        if self._final is not None or self.step + 1 >= self.final_step:
            return
        self.sampler.update_ipt(self.inner, grad_of)

    def allocate(self, step: int, write_: WriteFn | None = None) -> dict[str, int]:
        """Apply the rank budget for optimizer step `step` (1-based); returns budget and counts."""
        if step < self.final_step:
            budget, mask_now = self.sampler.budget_schedule(step)
            if mask_now:
                self._pattern = self.sampler.mask_to_budget(self.inner, budget, write_, stochastic=True)
                self.config.rank_pattern = dict(self._pattern)  # a mid-run save_pretrained resizes to it
                stats = dict(self.sampler.last_allocation)
            else:  # warm-up, or between deltaT allocations: nothing masked now
                active = self._count(self._pattern) if self._pattern is not None else self.init_budget
                stats = {"budget": budget, "active_ranks": active, "regrown": 0, "dropped": 0}
        elif self._final is None:
            self._final = self.sampler.mask_to_budget(self.inner, self.target_budget, write_, stochastic=False)
            self._pattern = self._final
            self.config.rank_pattern = dict(self._final)  # save_pretrained writes it and resizes the weights
            self.sampler.reset_ipt()  # EMAs are never used again; free them
            stats = dict(self.sampler.last_allocation)
        else:
            # The optimizer moved masked singular values off zero; put the frozen pattern back.
            self.sampler.apply_pattern(self.inner, self._final, write_)
            stats = {"budget": self.target_budget, "active_ranks": self._count(self._final), "regrown": 0,
                     "dropped": 0}
        self.step = step
        self.budget_history.append((step, stats["budget"], stats["active_ranks"]))
        self.allocations.append({"step": step, **stats})
        return stats

    @staticmethod
    def _count(pattern: dict[str, list[bool]]) -> int:
        return sum(sum(bits) for bits in pattern.values())

    def rank_pattern(self) -> dict[str, list[bool]]:
        """Current (final, once frozen) pattern, keyed as adapter_config.json stores it (no adapter name)."""
        pattern = self._final or self._pattern
        if pattern is None:  # before the first allocation every triplet is active
            pattern = {n: [True] * p.shape[0] for n, p in self.inner.named_parameters() if self._is_e(n)}
        suffix = f".{self.adapter_name}"
        return {n.replace(suffix, ""): list(bits) for n, bits in pattern.items()}

    def ranks(self) -> dict[str, int]:
        """Active rank per adapted module (module path -> rank), e.g. for the rank heat-map."""
        return {n.rsplit(".lora_E", 1)[0]: sum(bits) for n, bits in self.rank_pattern().items()}

    def _is_e(self, name: str) -> bool:
        return f"lora_E.{self.adapter_name}" in name

    # -- resume ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor | int | float]:
        """EMAs, generator state, patterns and history: everything `allocate` depends on."""
        sd: dict[str, torch.Tensor | int | float] = {
            "step": self.step,
            "generator_state": self.sampler.generator.get_state(),
            "budget_history": torch.tensor(self.budget_history, dtype=torch.long).view(-1, 3),
        }
        for n, t in self.sampler.exp_avg_ipt.items():
            sd[f"exp_avg_ipt/{n}"] = t.detach().cpu().clone()
            sd[f"exp_avg_unc/{n}"] = self.sampler.exp_avg_unc[n].detach().cpu().clone()
        for prefix, pattern in (("pattern", self._pattern), ("final_pattern", self._final)):
            for n, bits in (pattern or {}).items():
                sd[f"{prefix}/{n}"] = torch.tensor(bits, dtype=torch.bool)
        return sd

    def load_state_dict(self, sd: dict[str, torch.Tensor | int | float]) -> None:
        """Restore a `state_dict()`; model weights are restored separately (by the checkpoint)."""
        devices = {n: p.device for n, p in self.inner.named_parameters()}
        self.step = int(sd["step"])
        self.sampler.generator.set_state(sd["generator_state"])
        history = sd["budget_history"]
        self.budget_history = [tuple(int(v) for v in row) for row in history.tolist()]
        self.sampler.reset_ipt()
        patterns: dict[str, dict[str, list[bool]]] = {"pattern": {}, "final_pattern": {}}
        for key, value in sd.items():
            kind, _, name = key.partition("/")
            if kind == "exp_avg_ipt":
                self.sampler.exp_avg_ipt[name] = value.to(devices.get(name, "cpu"))
            elif kind == "exp_avg_unc":
                self.sampler.exp_avg_unc[name] = value.to(devices.get(name, "cpu"))
            elif kind in patterns:
                patterns[kind][name] = value.tolist()
        self._pattern = patterns["pattern"] or None
        self._final = patterns["final_pattern"] or None
        if self._pattern is not None:
            self.config.rank_pattern = dict(self._final or self._pattern)
