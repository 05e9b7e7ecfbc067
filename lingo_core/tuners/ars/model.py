"""RankController: drives the rank budget of an ars / adalora model through training.

Trainer contract (docs/DESIGN.md): bind once after the backend has placed the model
(`bind(backend.shard_access(controller.params))`); at every optimizer step call `capture_grads()`
after the last backward and before the optimizer step, then `allocate(step)` after it. Add
`regularization()` to each micro-batch's loss. Phases and formulas: `ars/schedule.py`.

State is flat and lives on the training device: the importance EMAs (importance.py), the kept set,
the exploration decisions in force, the gate, and Λ itself (one pooled parameter, layer.py): before
every forward pass one multiply gives Λ ⊙ g, split into the (r, 1) slices the layers read. An allocation is one
scatter-add, one sort and a few element-wise kernels, with no read-back to the host; once the final
pattern is chosen the controller does nothing at all.

    active = (kept \\ dropped) ∪ reintroduced      kept = top-b(t) by importance, every deltaT steps
                                                   dropped, reintroduced: drawn every resample period
"""

from __future__ import annotations

import torch
from torch import nn

from lingo_core.tuners.ars.importance import FactorSlot, TripletImportance
from lingo_core.tuners.ars.layer import (
    GatedSVDLinear,
    OrthogonalityPenalty,
    pool_singular_values,
    tie_singular_values,
)
from lingo_core.tuners.ars.sampler import TripletSampler, select_top
from lingo_core.tuners.ars.schedule import RankSchedule
from lingo_core.tuners.ars.shards import ShardAccess, WholeParams

_COUNTS = ("active_ranks", "regrown", "dropped")


class RankController:
    """Rank allocation for the gated SVD layers of one adapter."""

    def __init__(
        self,
        model: nn.Module,
        layers: list[tuple[str, GatedSVDLinear]],
        schedule: RankSchedule,
        *,
        seed: int,
        beta1: float,
        beta2: float,
        orth_reg_weight: float,
        hold_dropped_importance: bool = False,
        adapter_name: str = "default",
    ) -> None:
        self.schedule = schedule
        self.hold_dropped_importance = hold_dropped_importance
        self.adapter_name = adapter_name
        self.beta1, self.beta2, self.orth_reg_weight = beta1, beta2, orth_reg_weight
        self.method = "ars" if schedule.exploration > 0 else "adalora"
        self.layers = [layer for _, layer in layers]
        self.names = [f"{path}.lora_E" for path, _ in layers]
        """rank_pattern keys, as adapter_config.json stores them (module path + '.lora_E')."""
        self.ranks_init = [layer.lora_E[adapter_name].shape[0] for layer in self.layers]
        self.offsets = [sum(self.ranks_init[:i]) for i in range(len(self.layers))]
        self.n = sum(self.ranks_init)
        if self.n != schedule.init_budget:
            raise ValueError(f"RankSchedule.init_budget {schedule.init_budget} != {self.n} triplets in the model")
        self.singular_values = pool_singular_values(model, layers, adapter_name)
        """Λ of every triplet, (n, 1), module order: the one trainable copy (each lora_E views its slice)."""
        self.params: list[nn.Parameter] = []
        self.slots: list[FactorSlot] = []
        for layer, offset in zip(self.layers, self.offsets, strict=True):
            for kind, attr in (("A", "lora_A"), ("B", "lora_B")):
                p = getattr(layer, attr)[adapter_name]
                self.params.append(p)
                self.slots.append(FactorSlot(kind, offset, tuple(p.shape)))
        self.params.append(self.singular_values)
        self.slots.append(FactorSlot("E", 0, tuple(self.singular_values.shape)))
        model.register_forward_pre_hook(self._scale_singular_values)
        model.register_forward_hook(self._release_singular_values)
        self.sampler = TripletSampler(schedule.exploration, schedule.sampling, seed)
        self.step = 0
        self.final = False
        self._bound = False

    # -- binding ---------------------------------------------------------------------------------------
    def bind(self, access: ShardAccess | None = None) -> None:
        """Build the flat state on the device the model now lives on; `access` reads values and gradients
        (default: whole parameters and their .grad, a single process)."""
        e = self.singular_values
        device, dtype = e.device, e.dtype
        tie_singular_values(e, self.layers, self.adapter_name)  # the model has moved since construction
        self.access = access if access is not None else WholeParams(self.params)
        self.importance = TripletImportance(self.slots, self.access, self.n, self.beta1, self.beta2, device)
        self.scale = torch.tensor([layer.rank_scale for layer in self.layers], dtype=torch.float32).repeat_interleave(
            torch.tensor(self.ranks_init)).to(device)
        self.kept = torch.ones(self.n, dtype=torch.bool, device=device)
        self.reintroduced = torch.zeros(self.n, dtype=torch.bool, device=device)
        self.dropped = torch.zeros(self.n, dtype=torch.bool, device=device)
        self.gate = torch.empty(self.n, dtype=dtype, device=device)
        self.active_f = torch.ones(self.n, device=device)  # 1.0 / 0.0 per triplet, for the regulariser
        self.penalty = OrthogonalityPenalty(
            [(slot.kind, p, slot.offset) for slot, p in zip(self.slots, self.params, strict=True) if slot.kind != "E"])
        for layer, offset, r in zip(self.layers, self.offsets, self.ranks_init, strict=True):
            layer.rank_gate = self.gate[offset : offset + r].view(r, 1)
        self.counts = torch.zeros((self.schedule.total_steps + 1, len(_COUNTS)), dtype=torch.int32, device=device)
        self._bound = True
        self._apply()

    def _ensure_bound(self) -> None:
        if not self._bound:
            self.bind()

    def _scale_singular_values(self, module: nn.Module, args: tuple) -> None:
        """Pre-forward hook: Λ ⊙ g for every layer in one multiply; each layer reads its (r, 1) slice."""
        self._ensure_bound()
        scaled = self.singular_values * self.gate.view(-1, 1)
        for layer, part in zip(self.layers, scaled.split(self.ranks_init), strict=True):
            layer.rank_lambda = part

    def _release_singular_values(self, module: nn.Module, args: tuple, output: object) -> None:
        """Forward hook: drop the slices (the graph keeps what backward needs; modules hold no graph tensors,
        so the model still deep-copies and pickles)."""
        for layer in self.layers:
            layer.rank_lambda = None

    # -- the step --------------------------------------------------------------------------------------
    def capture_grads(self) -> None:
        """Keep this step's gradients for the importance EMAs (only while they are still used)."""
        self._ensure_bound()
        if not self.final and self.schedule.observes(self.step + 1):
            self.importance.capture()

    def allocate(self, step: int) -> None:
        """Apply optimizer step `step` (1-based): update importance, then the budget of this step."""
        self._ensure_bound()
        self.step = step
        if self.final:
            self.counts[step] = self.counts[step - 1]  # one tiny copy: the frozen pattern stays
            return
        s = self.schedule
        # the step just taken ran with the exploration in force: a dropped triplet's zero gradients
        self.importance.update(self.dropped if self.hold_dropped_importance else None)
        if step >= s.final_step:  # deterministic top-target; exploration ends, the pattern freezes
            self.kept = select_top(self.importance.scores(), s.target_budget)
            self.reintroduced.zero_()
            self.dropped.zero_()
            self.final = True
        elif s.selects(step):
            scores = self.importance.scores()
            budget = s.budget(step)
            self.kept = select_top(scores, budget)
            if s.resamples(step):
                self.reintroduced, self.dropped = self.sampler.draw(scores, self.kept, budget)
            elif s.settles(step):  # the last period before the final selection: the kept set alone
                self.reintroduced.zero_()
                self.dropped.zero_()
        else:  # warm-up, or between deltaT selections: the pattern in force stays
            self.counts[step] = self.counts[step - 1]
            return
        self._apply()

    def _apply(self) -> None:
        active = (self.kept & ~self.dropped) | self.reintroduced
        torch.mul(active, self.scale, out=self.gate)  # cast to the gate's dtype (bf16 under DeepSpeed bf16)
        self.active_f.copy_(active)
        self.counts[self.step] = torch.stack([active.sum(), (self.reintroduced & ~self.kept).sum(),
                                              (self.dropped & self.kept).sum()]).to(torch.int32)

    def regularization(self) -> torch.Tensor | float:
        """orth_reg_weight x AdaLoRA's orthogonality penalty (0.0 when the weight is 0: nothing computed)."""
        if self.orth_reg_weight == 0:
            return 0.0
        self._ensure_bound()
        return self.orth_reg_weight * self.penalty(self.active_f)

    # -- reading (host) ----------------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """Budget and counts in force after the last allocation (reads device values: call when logging)."""
        row = self.counts[self.step].tolist() if self._bound else [self.n, 0, 0]
        return {"budget": self.schedule.budget(self.step), **dict(zip(_COUNTS, row, strict=True))}

    def history(self) -> list[dict[str, int]]:
        """One record per optimizer step so far: step, budget, active_ranks, regrown, dropped."""
        if not self._bound or self.step == 0:
            return []
        rows = self.counts[1 : self.step + 1].tolist()
        return [{"step": t, "budget": self.schedule.budget(t), **dict(zip(_COUNTS, row, strict=True))}
                for t, row in enumerate(rows, start=1)]

    def active(self) -> torch.Tensor:
        """Boolean mask of the active triplets (flat, module order)."""
        if not self._bound:
            return torch.ones(self.n, dtype=torch.bool)
        return (self.kept & ~self.dropped) | self.reintroduced

    def rank_pattern(self) -> dict[str, list[bool]]:
        """Active triplets per adapted matrix, keyed as adapter_config.json stores them."""
        bits = self.active().cpu().tolist()
        return {name: bits[o : o + r] for name, o, r in zip(self.names, self.offsets, self.ranks_init, strict=True)}

    def ranks(self) -> dict[str, int]:
        """Active rank per adapted module (module path -> rank), e.g. for the rank heat-map."""
        return {n.rsplit(".lora_E", 1)[0]: sum(bits) for n, bits in self.rank_pattern().items()}

    @property
    def init_budget(self) -> int:
        return self.schedule.init_budget

    @property
    def target_budget(self) -> int:
        return self.schedule.target_budget

    # -- resume ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor | int]:
        """Everything later allocations depend on: step, EMAs (this rank's elements), kept set, exploration
        decisions in force, counts and the generator."""
        self._ensure_bound()
        return {"step": self.step, "final": int(self.final), "generator_state": self.sampler.generator.get_state(),
                "kept": self.kept, "reintroduced": self.reintroduced, "dropped": self.dropped,
                "counts": self.counts, **self.importance.state()}

    def load_state_dict(self, state: dict[str, torch.Tensor | int]) -> None:
        """Restore a `state_dict()` (model weights are restored separately, by the checkpoint)."""
        self._ensure_bound()
        self.step = int(state["step"])
        self.final = bool(state["final"])
        self.sampler.generator.set_state(state["generator_state"])
        for name in ("kept", "reintroduced", "dropped", "counts"):
            saved = state[name]
            if saved.shape != getattr(self, name).shape:
                raise ValueError(f"rank controller checkpoint: {name} has shape {tuple(saved.shape)}, "
                                 f"expected {tuple(getattr(self, name).shape)} (another model or schedule?)")
            getattr(self, name).copy_(saved)
        self.importance.load_state(state)
        torch.mul(self.active(), self.scale, out=self.gate)
        self.active_f.copy_(self.active())
