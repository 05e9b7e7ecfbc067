"""The routed layer of `lingo_core.multitask.MultiTaskLoRA` and what routes it: `TaskAdapter` (one task's
slot: classes, rank, alpha), `Routing` (which task each row belongs to), `RoutedLoRALinear` (a frozen
linear plus K tasks' stacked LoRA factors, each row updated by its own task's), `RouteSlot` (the routing
of the forward in progress, shared by a model's routed layers) and `last_token_index` (the row's pooled
position). The picture of the forward is in `lingo_core.multitask`'s module doc.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lingo_core.tuners.config import AdapterSettings


@dataclass(frozen=True)
class TaskAdapter:
    """One task's slot in a `MultiTaskLoRA`: its classes and its LoRA rank budget."""

    name: str
    """Task name, for messages and logs (e.g. "EMP/H3")."""
    num_labels: int
    """Classes of the task's head (the stacked head has the largest count; the extra rows are masked)."""
    r: int = AdapterSettings.lora_r  # the single-task LoRA default: a packed task trains as it would alone
    """LoRA rank of this task."""
    alpha: float = AdapterSettings.lora_alpha  # the single-task default, for the same reason
    """LoRA scaling numerator: the update is scaled by alpha / r."""

    def __post_init__(self) -> None:
        if self.num_labels < 2:
            raise ValueError(f"TaskAdapter({self.name!r}).num_labels={self.num_labels}: expected >= 2")
        if self.r < 1:
            raise ValueError(f"TaskAdapter({self.name!r}).r={self.r}: expected a rank >= 1")
        if self.alpha <= 0:
            raise ValueError(f"TaskAdapter({self.name!r}).alpha={self.alpha}: expected > 0")


@dataclass(frozen=True)
class Routing:
    """Which task each row of a batch belongs to; build with `blocks` or `per_row`."""

    rows_per_task: int | None = None
    """Blocks layout: rows [k*B, (k+1)*B) belong to task k, for every task of the model."""
    task_ids: torch.Tensor | None = None
    """Per-row layout: the task of each row (LongTensor [N]), in any order."""

    def __post_init__(self) -> None:
        if (self.rows_per_task is None) == (self.task_ids is None):
            raise ValueError("Routing needs exactly one of rows_per_task and task_ids; use blocks() or per_row()")
        if self.rows_per_task is not None and self.rows_per_task < 1:
            raise ValueError(f"Routing.rows_per_task={self.rows_per_task}: expected >= 1")

    @classmethod
    def blocks(cls, rows_per_task: int) -> Routing:
        """Rows laid out as one contiguous block of `rows_per_task` per task, in task order (training)."""
        return cls(rows_per_task=rows_per_task)

    @classmethod
    def per_row(cls, task_ids: torch.Tensor | Sequence[int]) -> Routing:
        """Any layout: `task_ids[i]` is the task of row i (prediction over mixed requests)."""
        return cls(task_ids=torch.as_tensor(task_ids, dtype=torch.long))


class RouteSlot:
    """The routing of the forward in progress, shared by every routed layer of one model: set once per
    forward instead of once per layer."""

    def __init__(self) -> None:
        self.routing: Routing | None = None
        self.ids: torch.Tensor | None = None  # per-row layout: task ids already on the device


class RoutedLoRALinear(nn.Module):
    """A frozen `nn.Linear` plus K tasks' LoRA factors, applied per row by the current routing."""

    def __init__(self, base: nn.Linear, tasks: Sequence[TaskAdapter], dropout: float, slot: RouteSlot) -> None:
        super().__init__()
        self.base = base
        self.slot = slot
        r_max = max(t.r for t in tasks)
        self.lora_A = nn.Parameter(torch.zeros(len(tasks), r_max, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(len(tasks), base.out_features, r_max))  # zero: starts as the base
        for k, task in enumerate(tasks):
            # As nn.Linear and PEFT's LoRA A: kaiming-uniform with a = sqrt(5), i.e. U(+-1/sqrt(in)).
            nn.init.kaiming_uniform_(self.lora_A.data[k, : task.r], a=math.sqrt(5))
        self.register_buffer("scaling", torch.tensor([t.alpha / t.r for t in tasks], dtype=torch.float32))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        route = self.slot.routing
        if route is None:
            raise RuntimeError("RoutedLoRALinear called outside MultiTaskLoRA.forward: no routing is set")
        x = self.dropout(x)
        # The scale folded into B: a [K, out, r] product, cheaper than scaling [N, T, out] activations.
        b = self.lora_B * self.scaling.view(-1, 1, 1)
        a, b = self.lora_A.to(x.dtype), b.to(x.dtype)  # bf16 base on CUDA: match its activations
        if route.rows_per_task is not None:
            rows = x.reshape(a.shape[0], -1, x.shape[-1])  # [K, B*T, in]: one matmul for all tasks
            delta = torch.bmm(torch.bmm(rows, a.transpose(1, 2)), b.transpose(1, 2))
        else:
            rows = x.reshape(x.shape[0], -1, x.shape[-1])  # [N, T, in]
            ids = self.slot.ids
            delta = torch.bmm(torch.bmm(rows, a[ids].transpose(1, 2)), b[ids].transpose(1, 2))
        return out + delta.view_as(out)


def last_token_index(input_ids: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """Position of the last non-pad token of each row, as transformers' sequence classifiers pool."""
    non_pad = (input_ids != pad_token_id).to(torch.int32)
    positions = torch.arange(input_ids.shape[-1], device=input_ids.device, dtype=torch.int32)
    return (positions * non_pad).argmax(-1)
