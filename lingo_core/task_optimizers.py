"""Per-task optimisation of a `lingo_core.multitask.MultiTaskLoRA`: `TaskOptimizers` gives each task its
own AdamW, linear warm-up/decay schedule and gradient clipping over views of its slices of the stacked
factors and heads (`MultiTaskLoRA.task_parameters`), so optimizer state and schedules stay per task
while the forward stays stacked.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lingo_core.multitask import MultiTaskLoRA
from lingo_core.train.backend import linear_warmup_decay
from lingo_core.train.config import TrainConfig


class TaskOptimizers:
    """Per task: AdamW over its own slices, linear warm-up/decay schedule, clipping by its own norm.

    The views of `task_parameters` get their gradients as slices of the stacked gradients, linked once
    and then zeroed in place after every step (so backward accumulates into the same tensors and no
    per-step relinking of hundreds of tensors is needed). Build after `MultiTaskLoRA.place`.
    """

    def __init__(
        self,
        model: MultiTaskLoRA,
        *,
        total_steps: int | Sequence[int],
        lr: float | Sequence[float] = TrainConfig.lr,  # the single-task default
        weight_decay: float = TrainConfig.weight_decay,  # the single-task default
        warmup_steps: int | Sequence[int] = 0,  # callers derive it from TrainConfig.warmup_ratio per task
        max_grad_norm: float | None = TrainConfig.max_grad_norm,  # per task, as each single-task run clips
    ) -> None:
        num_tasks = len(model.tasks)
        self.max_grad_norm = max_grad_norm or None
        self._stacked = model.stacked_parameters()
        self._linked: list[torch.Tensor | None] = [None] * len(self._stacked)
        self.views = [model.task_parameters(k) for k in range(num_tasks)]
        device = self._stacked[0].device
        # As TorchBackend: one fused kernel per task on GPU; foreach=False on CPU for identical numerics.
        fast = {"fused": True} if device.type == "cuda" else {"foreach": False}
        lrs, warm, total = (_per_task(v, num_tasks, n) for v, n in
                            ((lr, "lr"), (warmup_steps, "warmup_steps"), (total_steps, "total_steps")))
        self.optimizers = [torch.optim.AdamW(self.views[k], lr=lrs[k], weight_decay=weight_decay, **fast)
                           for k in range(num_tasks)]
        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, linear_warmup_decay(int(w), int(t)))
                           for opt, w, t in zip(self.optimizers, warm, total, strict=True)]

    def _link(self) -> None:
        for i, stacked in enumerate(self._stacked):
            grad = stacked.grad
            if grad is self._linked[i]:
                continue  # the usual case: backward accumulated into the linked tensor
            for k, views in enumerate(self.views):
                if grad is not None and views[i].data_ptr() != stacked.detach()[k].data_ptr():
                    raise RuntimeError("the model was moved after TaskOptimizers was built; build it after place()")
                views[i].grad = None if grad is None else grad[k]
            self._linked[i] = grad

    def step(self) -> None:
        """Clip, step and schedule every task on its own gradient, then zero the gradients in place."""
        self._link()
        for views, opt, sched in zip(self.views, self.optimizers, self.schedulers, strict=True):
            if self.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(views, self.max_grad_norm)
            opt.step()
            sched.step()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=False)  # in place: the stacked gradients stay linked to the views

    def current_lr(self, k: int) -> float:
        return float(self.schedulers[k].get_last_lr()[0])


def _per_task(value: float | Sequence[float], num_tasks: int, what: str) -> list[float]:
    values = [value] * num_tasks if isinstance(value, (int, float)) else list(value)
    if len(values) != num_tasks:
        raise ValueError(f"TaskOptimizers.{what}: {len(values)} values for {num_tasks} tasks")
    return values
