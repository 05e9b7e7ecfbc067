"""The SVD adapter layer of ars and adalora: PEFT's SVDLinear with a rank gate in the forward pass.

      x ──► base W (frozen) ─────────────────────────────────────────► + ──► y
      │                                                                 ▲
      └──► dropout ──► Q (r x d_in) ──► ⊙ Λ ⊙ g ──► P (d_out x r) ──────┘

      Q = lora_A, Λ = lora_E (r x 1), P = lora_B: PEFT's parameters, names and shapes, unchanged.
      g = gate (r x 1): scale (= alpha / init_r, PEFT's scaling / ranknum) for an active triplet, 0 for
          an inactive one. The gate lives outside the parameters: masking a triplet never changes its
          stored (P, Λ, Q), so a triplet that comes back resumes from the values it had, and a masked
          triplet's parameters get exactly zero task gradient.

One trainable Λ for the whole model (`pool_singular_values`): the n = sum of ranks singular values live
in a single (n, 1) parameter; every layer's lora_E stays, frozen, as a view of its slice (so PEFT's save,
merge and plain forward read the trained values without a copy). Why: DeepSpeed ZeRO-2 pays a fixed
host cost per trainable tensor (a gradient hook and bookkeeping). In step_time_gpu.json at 573ab11 it
added 139 ms to lora's step (421 tensors) and 191 ms to ars's (631: P, Λ, Q per module), about 0.3 ms a
tensor, which put ars at 1.25x lora under ZeRO-2. Pooled, ars trains as many tensors as lora (+1). The
controller multiplies Λ by the gate once per forward pass and hands each layer its (r, 1) slice
(`rank_lambda`): one kernel where each layer had one.

Why a subclass of PEFT's layer: the saved adapter must stay a plain AdaLoRA adapter (`save_pretrained`
writes it, `PeftModel.from_pretrained` loads it and, with the final rank pattern, computes exactly
y = W x + P diag(Λ) Q x * scale over the kept triplets). PEFT's AdaLoRA offers no hook for a custom
layer, so `gate_svd_layers` re-classes the SVDLinear modules PEFT built; their parameters stay as they are.

Initialisation ("lora", the default): Q kaiming-uniform like LoRA's A, P = 0, Λ = 1. Then P·diag(Λ)·Q is
exactly LoRA's B·A at the start and P gets LoRA's gradient from the first step. PEFT's AdaLoRA init
(Λ = 0) gives P and Q no task gradient until Λ has grown, which made the SVD adapters learn several
times slower than LoRA at the same learning rate.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.adalora.layer import SVDLinear
from torch import nn


class GatedSVDLinear(SVDLinear):
    """SVDLinear whose triplets are switched by `rank_gate` (set by the RankController)."""

    rank_lambda: torch.Tensor | None = None
    """(r, 1) slice of Λ ⊙ g for the model forward pass in progress, set and cleared by the RankController's
    hooks. None (the layer called on its own): the same values from lora_E and the gate, without Λ's
    gradient (Λ trains through the pooled parameter only)."""
    rank_gate: torch.Tensor | None = None
    """(r, 1) view into the controller's flat gate; None: every triplet active at `rank_scale`."""
    rank_scale: float = 1.0
    """PEFT's scaling / ranknum for this layer (alpha / init_r), as a Python float."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        name = self.active_adapters[0] if len(self.active_adapters) == 1 else None
        if self.disable_adapters or self.merged or name not in self.lora_A:
            return super().forward(x, *args, **kwargs)  # PEFT's own paths (merged, disabled, several adapters)
        result = self.base_layer(x, *args, **kwargs)
        lora_a, lora_b = self.lora_A[name], self.lora_B[name]
        lam = self.rank_lambda
        if lam is None:
            lam = self.lora_E[name] * (self.rank_gate if self.rank_gate is not None else self.rank_scale)
        hidden = F.linear(self.lora_dropout[name](self._cast_input_dtype(x, lora_a.dtype)), lora_a * lam)
        return result + F.linear(hidden, lora_b).to(result.dtype)


SINGULAR_VALUES = "ars_singular_values"
"""Name of the pooled Λ parameter on the wrapped transformers model (no "lora_" in it: PEFT's adapter
file keeps only lora_* tensors, and lora_E carries the same values)."""


def pool_singular_values(model: nn.Module, layers: list[tuple[str, GatedSVDLinear]],
                         adapter_name: str = "default") -> nn.Parameter:
    """Move the layers' Λ into one trainable (n, 1) parameter registered on `model`; every lora_E becomes a
    frozen view of its slice (`tie_singular_values`). Returns the parameter."""
    inner = model.base_model.model if hasattr(model, "base_model") else model
    lambdas = [layer.lora_E[adapter_name] for _, layer in layers]
    pooled = nn.Parameter(torch.cat([e.detach() for e in lambdas]).clone())
    inner.register_parameter(SINGULAR_VALUES, pooled)
    for e in lambdas:
        e.requires_grad_(False)
    tie_singular_values(pooled, [layer for _, layer in layers], adapter_name)
    return pooled


def tie_singular_values(pooled: torch.Tensor, layers: list[GatedSVDLinear], adapter_name: str = "default") -> None:
    """Point each layer's lora_E at its slice of `pooled`. Call again after the model moves: `.to()` copies
    tensors one by one, which leaves two copies."""
    offset = 0
    for layer in layers:
        e = layer.lora_E[adapter_name]
        r = e.shape[0]
        e.data = pooled.data[offset : offset + r]
        offset += r


def gate_svd_layers(model: nn.Module, adapter_name: str = "default", init: str = "lora") -> list[tuple[str, GatedSVDLinear]]:
    """Turn every SVDLinear of `model` into a GatedSVDLinear and initialise its factors; returns
    (module path relative to the wrapped transformers model, layer), sorted by path."""
    inner = model.base_model.model if hasattr(model, "base_model") else model
    layers = []
    for path, module in inner.named_modules():
        if isinstance(module, SVDLinear) and adapter_name in module.lora_A:
            module.__class__ = GatedSVDLinear  # same attributes and parameters; only forward differs
            ranknum = float(module.ranknum[adapter_name])
            module.rank_scale = float(module.scaling[adapter_name]) / (ranknum + 1e-5)  # PEFT's formula
            if init == "lora":
                with torch.no_grad():
                    nn.init.kaiming_uniform_(module.lora_A[adapter_name], a=math.sqrt(5))  # LoRA's A init
                    nn.init.zeros_(module.lora_B[adapter_name])
                    nn.init.ones_(module.lora_E[adapter_name])
            layers.append((path, module))
    if not layers:
        raise ValueError(f"no AdaLoRA SVD layers with adapter {adapter_name!r} in {type(inner).__name__}")
    return sorted(layers, key=lambda item: item[0])


class OrthogonalityPenalty:
    """AdaLoRA's regulariser, PEFT's value: the mean over all P and Q of ||Q Q^T - I||_F and ||P^T P - I||_F,
    over the active triplets only (an inactive triplet's rows / columns are left exactly as they are).

    Matrices of one kind and shape are stacked and handled by one batched product: a handful of kernels
    per forward pass instead of a few per adapted matrix (PEFT loops over every matrix)."""

    def __init__(self, factors: list[tuple[str, torch.Tensor, int]]) -> None:
        """`factors`: ("A", Q, first triplet index) / ("B", P, first triplet index) for every matrix."""
        groups: dict[tuple[str, torch.Size], list[tuple[torch.Tensor, int]]] = defaultdict(list)
        for kind, p, offset in factors:
            if p.numel():
                groups[(kind, p.shape)].append((p, offset))
        self.count = sum(len(members) for members in groups.values())
        self.groups = []
        for (kind, shape), members in groups.items():
            r = shape[0] if kind == "A" else shape[1]
            index = torch.stack([torch.arange(offset, offset + r) for _, offset in members])  # (m, r)
            self.groups.append((kind, [p for p, _ in members], index.to(members[0][0].device)))

    def __call__(self, active: torch.Tensor) -> torch.Tensor:
        """`active`: float (n_triplets,), 1 for an active triplet and 0 for an inactive one."""
        total = torch.zeros((), device=active.device)
        for kind, params, index in self.groups:
            mask = active[index]  # (m, r)
            stacked = torch.stack(params)  # (m, r, d) for Q, (m, d, r) for P
            if kind == "A":
                stacked = stacked * mask.unsqueeze(-1).to(stacked.dtype)
                cov = stacked @ stacked.transpose(1, 2)
            else:
                stacked = stacked * mask.unsqueeze(1).to(stacked.dtype)
                cov = stacked.transpose(1, 2) @ stacked
            eye = torch.diag_embed(mask.to(cov.dtype))  # identity on the active triplets only
            total = total + torch.linalg.matrix_norm(cov - eye).sum()
        return total / max(1, self.count)
