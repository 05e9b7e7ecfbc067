"""What the rank controller reads from the optimizer side: the adapter's values and gradients.

In one process every parameter is whole and its gradient sits in `.grad`. Under a sharding optimizer
(DeepSpeed ZeRO-1/2) each data-parallel rank owns a slice of the flattened parameters, with an fp32
master copy and a reduced gradient for that slice only. The controller works on whatever slices this
rank owns and sums its per-triplet scores over the ranks, so it never gathers a full parameter:

    parameter k (flattened)  [.......|=====slice owned here=====|......]
                                      start            start + numel
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn


@dataclass(frozen=True)
class Shard:
    """Elements [start, start + numel) of the flattened parameter number `param` (its list position)."""

    param: int
    start: int
    numel: int


@runtime_checkable
class ShardAccess(Protocol):
    """The controller's only view of training state (a backend builds it for the adapter parameters)."""

    shards: list[Shard]
    """The slices this rank owns, fixed for the whole run; values() and grads() follow this order."""

    def values(self) -> list[torch.Tensor]:
        """Current values of the shards, flat (the fp32 master copy where the optimizer keeps one)."""
        ...

    def grads(self) -> list[torch.Tensor | None]:
        """Gradients of the shards, flat: accumulated and reduced over ranks, read between the last
        backward of an optimizer step and the step itself. None: no gradient this step."""
        ...

    def all_reduce_(self, tensor: torch.Tensor) -> None:
        """Sum `tensor` in place over the data-parallel ranks (no-op when every rank holds everything)."""
        ...


class WholeParams:
    """ShardAccess of one process (or DDP, where every rank holds whole, already reduced gradients)."""

    def __init__(self, params: Sequence[nn.Parameter]) -> None:
        self.params = list(params)
        self.shards = [Shard(i, 0, p.numel()) for i, p in enumerate(self.params)]

    def values(self) -> list[torch.Tensor]:
        return [p.detach().reshape(-1) for p in self.params]

    def grads(self) -> list[torch.Tensor | None]:
        return [None if p.grad is None else p.grad.detach().reshape(-1) for p in self.params]

    def all_reduce_(self, tensor: torch.Tensor) -> None:
        return None
