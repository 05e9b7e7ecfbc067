"""AdaLoRA's triplet importance, kept flat: one pair of EMAs over every adapter element a rank owns.

Per element (PEFT's RankAllocator): sensitivity I = |w * g|, EMA_I <- b1 EMA_I + (1 - b1) I,
uncertainty EMA_U <- b2 EMA_U + (1 - b2) |I - EMA_I|, element score = EMA_I * EMA_U. Per triplet i
of a matrix: score_i = s(Λ_i) + mean_j s(Q_ij) + mean_j s(P_ji) (PEFT's `_combine_ipt`). Here that is
one weighted scatter-add over the flat element vector:

    element of Q = lora_A (r x d_in)   -> triplet  row,    weight 1 / d_in
    element of P = lora_B (d_out x r)  -> triplet  column, weight 1 / d_out
    element of Λ = lora_E (r x 1)      -> triplet  row,    weight 1

A few kernels per step instead of a Python loop over every adapted module; no host synchronisation.
Under a sharding optimizer each rank scores the elements it owns and the partial scores are summed
over ranks (`ShardAccess.all_reduce_`), so every rank ends up with the same scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lingo_core.tuners.ars.shards import ShardAccess


@dataclass(frozen=True)
class FactorSlot:
    """Where one adapter parameter sits in the flat triplet vector."""

    kind: str  # "A" (Q, r x d_in), "B" (P, d_out x r) or "E" (Λ, r x 1)
    offset: int  # index of the matrix's first triplet in the flat triplet vector
    shape: tuple[int, int]


def _triplets_and_weights(slot: FactorSlot, start: int, numel: int) -> tuple[torch.Tensor, torch.Tensor]:
    pos = torch.arange(start, start + numel, dtype=torch.int64)
    rows, cols = slot.shape
    if slot.kind == "A":
        return slot.offset + pos // cols, torch.full((numel,), 1.0 / cols)
    if slot.kind == "B":
        return slot.offset + pos % cols, torch.full((numel,), 1.0 / rows)
    return slot.offset + pos, torch.ones(numel)


class TripletImportance:
    """Importance EMAs of the elements this rank owns, and their per-triplet scores."""

    def __init__(
        self, slots: Sequence[FactorSlot], access: ShardAccess, n_triplets: int, beta1: float, beta2: float,
        device: torch.device,
    ) -> None:
        self.access, self.n_triplets, self.beta1, self.beta2, self.device = access, n_triplets, beta1, beta2, device
        index, weight = [], []
        for shard in access.shards:
            i, w = _triplets_and_weights(slots[shard.param], shard.start, shard.numel)
            index.append(i)
            weight.append(w)
        size = sum(s.numel for s in access.shards)
        self.index = (torch.cat(index) if index else torch.zeros(0, dtype=torch.int64)).to(device)
        self.weight = (torch.cat(weight) if weight else torch.zeros(0)).to(device)
        self.ema_ipt = torch.zeros(size, device=device)
        self.ema_unc = torch.zeros(size, device=device)
        self._grad = torch.zeros(size, device=device)
        self._captured = False

    def capture(self) -> None:
        """Copy this step's gradients (the optimizer may free or clip them before `update`)."""
        parts = [torch.zeros(s.numel, device=self.device) if g is None else g.to(self.device, torch.float32)
                 for s, g in zip(self.access.shards, self.access.grads(), strict=True)]
        if parts:
            torch.cat(parts, out=self._grad)
        self._captured = True

    def update(self, hold: torch.Tensor | None = None) -> None:
        """Fold the captured gradients, times the current (post-step) values, into the EMAs (PEFT's order:
        the importance of step t uses the weights after step t's update). No-op without a capture.

        `hold` (per triplet, bool): triplets whose EMAs keep their values this step, e.g. kept triplets that
        exploration switched off: their zero gradients say nothing about how much they matter."""
        if not self._captured:
            return
        values = [v.to(self.device, torch.float32) for v in self.access.values()]
        if values:
            sensitivity = (torch.cat(values) * self._grad).abs_()
            w1, w2 = 1 - self.beta1, 1 - self.beta2
            if hold is not None:  # a held element's EMA weight is 0: lerp leaves it exactly as it was
                live = (~hold[self.index]).float()
                w1, w2 = live * w1, live * w2
            self.ema_ipt.lerp_(sensitivity, w1)
            self.ema_unc.lerp_((sensitivity - self.ema_ipt).abs_(), w2)
        self._captured = False

    def scores(self) -> torch.Tensor:
        """Per-triplet importance (n_triplets,), identical on every rank."""
        scores = torch.zeros(self.n_triplets, device=self.device)
        scores.index_add_(0, self.index, self.ema_ipt * self.ema_unc * self.weight)
        self.access.all_reduce_(scores)
        return scores

    def state(self) -> dict[str, torch.Tensor]:
        return {"ema_ipt": self.ema_ipt, "ema_unc": self.ema_unc}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        for name in ("ema_ipt", "ema_unc"):
            saved = state[name]
            if saved.shape != getattr(self, name).shape:
                raise ValueError(
                    f"rank controller checkpoint: {name} has {saved.numel()} elements but this rank owns "
                    f"{getattr(self, name).numel()}; resume with the same world size and ZeRO stage"
                )
            getattr(self, name).copy_(saved)
