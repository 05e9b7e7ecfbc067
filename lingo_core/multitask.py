"""Many tasks on one frozen base: K tasks' LoRA adapters and heads, one forward over a mixed batch.

A SmolLM2-135M LoRA step at batch 32 is bound by kernel launches, not arithmetic, so training small GUE
tasks one after another leaves the GPU mostly idle. Here the frozen base runs once over the rows of all
tasks; every target linear adds, per row, the LoRA update of that row's task, and each task's head reads
the last non-pad token (as the single-task classifier does). The forward's kernel count does not grow
with K: the tasks' factors are stacked and applied with one batched matmul (only the optimizer step,
one AdamW per task, is repeated per task).

    rows of a mixed batch          every target linear of the frozen base (bf16 on CUDA)
    +---------------+
    | task 0   (B)  |              y = x W^T  +  (x A[t]^T) (s[t] B[t])^T        t = the row's task
    | task 1   (B)  | --> layers -->              A: [K, r, in]  B: [K, out, r]  fp32, trainable
    |  ...          |              h = hidden state at the last non-pad token
    | task K-1 (B)  |              logits = h head[t]^T      head: [K, C, H]; classes >= C_t are -inf
    +---------------+
    Routing.blocks(B):     K equal contiguous blocks in task order -> x.view(K, B*T, in): one bmm
    Routing.per_row(ids):  any order (prediction)                   -> A[ids], B[ids] gathered per row

A task with a smaller rank than the largest uses the first r_t rows of A[t] (and columns of B[t]); the
rest are zero, get zero gradient and stay zero. Task j's loss reaches only A[j], B[j] and head[j], so
one backward of the summed per-task losses (`task_losses`) gives each task exactly its own gradient.
`lingo_core.task_optimizers.TaskOptimizers` gives each task its own AdamW, schedule and clipping over
views of its slices (`task_parameters`): optimizer state and schedules stay per task while the forward
stays stacked. The routed layer, the routing and a task's slot are `lingo_core.routed_lora`'s; this
module owns the model: wrapping a classifier, the forward and losses, and one task's weights in and out
(its own state, or a PEFT LoRA / AdaLoRA model's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedModel

from lingo_core.modeling import DEFAULT_TARGET_MODULES, HEAD_NAMES, family
from lingo_core.routed_lora import RoutedLoRALinear, RouteSlot, Routing, TaskAdapter, last_token_index
from lingo_core.train.backend import frozen_to_bf16
from lingo_core.tuners.config import AdapterSettings

__all__ = ["MultiTaskLoRA"]


class MultiTaskLoRA(nn.Module):
    """K tasks' LoRA adapters and classification heads over one frozen backbone (see the module doc).

    Takes over `classifier` (from `lingo_core.modeling.load_classifier`): its backbone's target linears
    are wrapped in place and its own head is not used. Factors and heads are initialised from torch's
    global RNG, so seed before building for reproducible runs.
    """

    def __init__(
        self,
        classifier: PreTrainedModel,
        tasks: Sequence[TaskAdapter],
        *,
        target_modules: Sequence[str] | None = None,  # None: the family's defaults, as single-task LoRA
        dropout: float = AdapterSettings.lora_dropout,  # the single-task LoRA default
    ) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("MultiTaskLoRA needs at least one TaskAdapter")
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"MultiTaskLoRA: task names repeat in {names}; give each task one slot")
        if classifier.config.pad_token_id is None:
            raise ValueError("classifier.config.pad_token_id is None; load it with lingo_core.modeling.load_classifier")
        self.tasks = tuple(tasks)
        self.pad_token_id = int(classifier.config.pad_token_id)
        targets = list(target_modules or DEFAULT_TARGET_MODULES.get(family(classifier), []))
        backbone = getattr(classifier, classifier.base_model_prefix)
        backbone.requires_grad_(False)
        self._slot = RouteSlot()
        self.layer_names: list[str] = []
        for name, module in list(backbone.named_modules()):
            parent_name, _, leaf = name.rpartition(".")
            if leaf in targets and isinstance(module, nn.Linear):
                parent = backbone.get_submodule(parent_name) if parent_name else backbone
                setattr(parent, leaf, RoutedLoRALinear(module, self.tasks, dropout, self._slot))
                self.layer_names.append(name)
        if not self.layer_names:
            raise ValueError(f"no nn.Linear named any of {targets} in {type(backbone).__name__}; pass target_modules")
        self.backbone = backbone
        hidden, classes = classifier.config.hidden_size, max(t.num_labels for t in tasks)
        std = getattr(classifier.config, "initializer_range", 0.02)  # as transformers initialises `score`
        self.head = nn.Parameter(torch.randn(len(tasks), classes, hidden) * std)
        mask = torch.zeros(len(tasks), classes, dtype=torch.bool)
        for k, task in enumerate(tasks):
            mask[k, : task.num_labels] = True
        self.head.data[~mask] = 0.0
        self.register_buffer("class_mask", mask, persistent=False)

    # ---- placement and parameters ------------------------------------------------------------------
    def place(self, device: torch.device | str) -> MultiTaskLoRA:
        """Move to `device`; on a bf16-capable GPU the frozen base is stored in bf16 (as the project's
        single-task step), factors and heads stay fp32. Build `TaskOptimizers` after this."""
        device = torch.device(device)
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            frozen_to_bf16(self, {id(p) for p in self.parameters() if p.requires_grad})
        return self.to(device)

    def routed_layers(self) -> list[tuple[str, RoutedLoRALinear]]:
        """(name inside the backbone, layer) for every adapted linear, in model order."""
        return [(name, self.backbone.get_submodule(name)) for name in self.layer_names]

    def stacked_parameters(self) -> list[nn.Parameter]:
        """Every trainable tensor, each stacked over tasks on dim 0: A and B of each layer, then the head."""
        out = [p for _, layer in self.routed_layers() for p in (layer.lora_A, layer.lora_B)]
        return [*out, self.head]

    def task_parameters(self, k: int) -> list[nn.Parameter]:
        """Task k's slices of `stacked_parameters`, as parameters that alias them (an optimizer over these
        updates the model in place). Their gradients are linked by `TaskOptimizers`. Call after `place`."""
        return [nn.Parameter(p.detach()[k]) for p in self.stacked_parameters()]

    def num_trainable(self, k: int) -> int:
        """Parameters task k really trains: its rank's rows and columns, and its head's classes."""
        r, hidden = self.tasks[k].r, self.head.shape[-1]
        lora = sum(r * (layer.base.in_features + layer.base.out_features) for _, layer in self.routed_layers())
        return lora + self.tasks[k].num_labels * hidden

    # ---- forward -------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, routing: Routing) -> torch.Tensor:
        """Logits [N, C] in fp32, C the largest class count; classes a row's task lacks are -inf."""
        n, num_tasks = input_ids.shape[0], len(self.tasks)
        ids = None
        if routing.rows_per_task is not None:
            if n != num_tasks * routing.rows_per_task:
                raise ValueError(f"Routing.blocks({routing.rows_per_task}) over {num_tasks} tasks expects "
                                 f"{num_tasks * routing.rows_per_task} rows, the batch has {n}")
        else:
            ids = routing.task_ids
            if ids.shape != (n,):
                raise ValueError(f"Routing.per_row: {tuple(ids.shape)} task ids for {n} rows")
            if ids.device.type == "cpu" and n and not (0 <= int(ids.min()) and int(ids.max()) < num_tasks):
                # only checked on the host: reading device ids back would stall every step
                raise ValueError(f"Routing.per_row: task ids {ids.tolist()} outside 0..{num_tasks - 1}")
            ids = ids.to(input_ids.device, non_blocking=True)
        self._slot.routing, self._slot.ids = routing, ids
        try:
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        finally:
            self._slot.routing, self._slot.ids = None, None
        last = last_token_index(input_ids, self.pad_token_id)
        pooled = hidden.last_hidden_state[torch.arange(n, device=input_ids.device), last].float()
        with torch.autocast(input_ids.device.type, enabled=False):  # heads in fp32: tiny, and logits feed the loss
            if ids is None:
                logits = torch.bmm(pooled.view(num_tasks, -1, pooled.shape[-1]), self.head.transpose(1, 2))
                logits = logits.masked_fill(~self.class_mask[:, None, :], -math.inf).reshape(n, -1)
            else:
                logits = torch.bmm(pooled[:, None, :], self.head[ids].transpose(1, 2)).squeeze(1)
                logits = logits.masked_fill(~self.class_mask[ids], -math.inf)
        return logits

    def task_losses(self, logits: torch.Tensor, labels: torch.Tensor, routing: Routing) -> torch.Tensor:
        """Mean cross-entropy of each task's rows, a [K] tensor (0 for a task without rows); backward of
        its sum gives every task the gradient of its own mean loss."""
        per_row = nn.functional.cross_entropy(logits, labels, reduction="none")
        num_tasks = len(self.tasks)
        if routing.rows_per_task is not None:
            return per_row.view(num_tasks, -1).mean(1)
        ids = routing.task_ids.to(per_row.device, non_blocking=True)
        sums = per_row.new_zeros(num_tasks).index_add(0, ids, per_row)
        return sums / torch.bincount(ids, minlength=num_tasks).clamp_min(1)

    # ---- one task's weights in and out ---------------------------------------------------------------
    def task_state(self, k: int) -> dict[str, torch.Tensor]:
        """Task k's trained weights at its own rank and class count (CPU copies), keyed
        "<layer>.lora_A" [r, in], "<layer>.lora_B" [out, r] (scale not folded in) and "head" [C, H]."""
        r, state = self.tasks[k].r, {}
        for name, layer in self.routed_layers():
            state[f"{name}.lora_A"] = layer.lora_A.detach()[k, :r].cpu().clone()
            state[f"{name}.lora_B"] = layer.lora_B.detach()[k, :, :r].cpu().clone()
        state["head"] = self.head.detach()[k, : self.tasks[k].num_labels].cpu().clone()
        return state

    @torch.no_grad()
    def load_task_state(self, k: int, state: dict[str, torch.Tensor], scaling: dict[str, float] | None = None) -> None:
        """Put `state` (as `task_state` returns, at any rank <= the slot's) into task k's slot; the unused
        rank rows are zeroed. `scaling`: per-layer scale overrides (default alpha / r of the slot)."""
        expected = {f"{n}.lora_{m}" for n in self.layer_names for m in "AB"} | {"head"}
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"task state for {self.tasks[k].name!r}: missing {missing[:3]}, unexpected {extra[:3]}")
        for name, layer in self.routed_layers():
            a, b = state[f"{name}.lora_A"], state[f"{name}.lora_B"]
            if a.shape[0] > layer.lora_A.shape[1] or b.shape != (layer.lora_B.shape[1], a.shape[0]):
                raise ValueError(f"{name}: factors {tuple(a.shape)}, {tuple(b.shape)} do not fit rank "
                                 f"{layer.lora_A.shape[1]} of {self.tasks[k].name!r}")
            layer.lora_A[k].zero_()
            layer.lora_B[k].zero_()
            layer.lora_A[k, : a.shape[0]] = a
            layer.lora_B[k, :, : a.shape[0]] = b
            if scaling is not None:
                layer.scaling[k] = scaling[name]
        head = state["head"]
        if head.shape != (self.tasks[k].num_labels, self.head.shape[-1]):
            raise ValueError(f"head {tuple(head.shape)} for {self.tasks[k].name!r}: expected "
                             f"{(self.tasks[k].num_labels, self.head.shape[-1])}")
        self.head[k].zero_()
        self.head[k, : head.shape[0]] = head

    def _peft_parts(self, peft_model: nn.Module, adapter: str) -> tuple[dict[str, nn.Module], nn.Linear]:
        """A PEFT LoRA sequence classifier's LoRA layer for each of our layers, and its trainable head."""
        lora = _peft_lora_layers(peft_model)
        layers = {}
        for name in self.layer_names:
            hits = [m for n, m in lora.items() if n.endswith("." + name)]
            if len(hits) != 1:
                raise ValueError(f"{len(hits)} PEFT LoRA layers end in {name!r}; expected one (same base and targets?)")
            layers[name] = hits[0]
        return layers, self._peft_head(peft_model, adapter)

    @classmethod
    def from_peft_models(cls, classifier: PreTrainedModel, peft_models: Sequence[nn.Module],
                         names: Sequence[str], adapter: str = "default") -> MultiTaskLoRA:
        """One slot per PEFT LoRA (or AdaLoRA: ars, adalora) sequence classifier of `classifier`'s base,
        all adapting the same layers: slot k computes what `peft_models[k]` does (its rank, the largest of
        its layers', its per-layer scaling and head; `load_peft_task`). The inverse of `export_peft_task`."""
        tasks, targets = [], set()
        for name, model in zip(names, peft_models, strict=True):
            lora = _peft_lora_layers(model)
            if not lora:
                raise ValueError(f"{name}: no PEFT LoRA layers in the model")
            targets |= {n.rpartition(".")[2] for n in lora}
            r = max(1, *(_peft_factors(m, adapter)[0].shape[0] for m in lora.values()))  # ars may prune a layer to 0
            tasks.append(TaskAdapter(name, num_labels=cls._peft_head(model, adapter).out_features, r=r))
        routed = cls(classifier, tasks, target_modules=sorted(targets), dropout=0.0)
        for k, model in enumerate(peft_models):
            routed.load_peft_task(k, model, adapter)
        return routed.eval()

    @staticmethod
    def _peft_head(peft_model: nn.Module, adapter: str) -> nn.Linear:
        heads = [m for n, m in peft_model.named_modules() if n.rpartition(".")[2] in HEAD_NAMES
                 and hasattr(m, "modules_to_save")]
        if len(heads) != 1:
            raise ValueError(f"found {len(heads)} trainable heads (score in modules_to_save) in the PEFT model")
        return heads[0].modules_to_save[adapter]

    def load_peft_task(self, k: int, peft_model: nn.Module, adapter: str = "default") -> None:
        """Copy a PEFT LoRA sequence classifier (same base, same targets) into task k's slot: its factors,
        its per-layer scaling and its head (`score` in modules_to_save); an AdaLoRA layer's SVD form
        B diag(E) A * scaling / ranknum as A' = diag(E) A and that scale (`_peft_factors`). Plain LoRA only:
        a variant (DoRA), a LoRA bias or a head bias, which the routed forward would drop, is a ValueError."""
        layers, head = self._peft_parts(peft_model, adapter)
        factors = {n: _peft_factors(layer, adapter) for n, layer in layers.items()}
        if head.bias is not None:
            raise ValueError(f"the head of task {self.tasks[k].name!r} has a bias; routed heads have none")
        state = {f"{n}.lora_{m}": f for n, (a, b, _) in factors.items() for m, f in (("A", a), ("B", b))}
        self.load_task_state(k, {**state, "head": head.weight.detach()}, {n: f[2] for n, f in factors.items()})

    @torch.no_grad()
    def export_peft_task(self, k: int, peft_model: nn.Module, adapter: str = "default") -> None:
        """Copy task k into a PEFT LoRA classifier built with its rank, alpha and class count (the inverse
        of `load_peft_task`): its `save_pretrained` then writes an adapter like any single-task run's."""
        layers, head = self._peft_parts(peft_model, adapter)
        state = self.task_state(k)
        for name, layer in layers.items():
            ours = float(self.backbone.get_submodule(name).scaling[k])
            if not math.isclose(float(layer.scaling[adapter]), ours, rel_tol=1e-6):
                raise ValueError(f"{name}: PEFT scaling {layer.scaling[adapter]} != task {self.tasks[k].name!r}'s {ours}; "
                                 "build the PEFT model with the task's r and alpha")
            layer.lora_A[adapter].weight.copy_(state[f"{name}.lora_A"])  # copy_ raises on a rank mismatch
            layer.lora_B[adapter].weight.copy_(state[f"{name}.lora_B"])
        head.weight.copy_(state["head"])


def _peft_lora_layers(peft_model: nn.Module) -> dict[str, nn.Module]:
    """PEFT's LoRA layers (lora_A a ModuleDict of Linears) and AdaLoRA's SVD layers (a ParameterDict)."""
    return {n: m for n, m in peft_model.named_modules()
            if isinstance(getattr(m, "lora_A", None), (nn.ModuleDict, nn.ParameterDict))}


def _peft_factors(layer: nn.Module, adapter: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(A [r, in], B [out, r], scale) with update (x A^T)(scale B)^T equal to the PEFT layer's own: for an
    AdaLoRA SVDLinear, whose update is x (A * E)^T B^T * scaling / (ranknum + 1e-5), A folds in E."""
    if isinstance(layer.lora_A, nn.ParameterDict):
        scale = float(layer.scaling[adapter]) / (float(layer.ranknum[adapter]) + 1e-5)  # as SVDLinear.forward
        return (layer.lora_A[adapter] * layer.lora_E[adapter]).detach(), layer.lora_B[adapter].detach(), scale
    if (adapter in getattr(layer, "lora_variant", {}) or getattr(layer, "lora_bias", {}).get(adapter)
            or layer.lora_B[adapter].bias is not None):
        raise ValueError("not plain LoRA (a variant such as DoRA, or a bias); route plain LoRA only")
    return layer.lora_A[adapter].weight.detach(), layer.lora_B[adapter].weight.detach(), float(layer.scaling[adapter])
