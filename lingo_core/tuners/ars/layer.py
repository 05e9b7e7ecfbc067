"""The SVD adapter layer of ars and adalora: PEFT's SVDLinear with a rank gate in the forward pass.

      x ──► base W (frozen) ─────────────────────────────────────────► + ──► y
      │                                                                 ▲
      └──► dropout ──► Q (r x d_in) ──► ⊙ Λ ⊙ g ──► P (d_out x r) ──────┘

      Q = lora_A, Λ = lora_E (r x 1), P = lora_B: PEFT's parameters, names and shapes, unchanged.
      g = gate (r x 1): scale (= alpha / init_r, PEFT's scaling / ranknum) for an active triplet, 0 for
          an inactive one. The gate lives outside the parameters: masking a triplet never changes its
          stored (P, Λ, Q), so a triplet that comes back resumes from the values it had, and a masked
          triplet's parameters get exactly zero task gradient.

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

    rank_gate: torch.Tensor | None = None
    """(r, 1) view into the controller's flat gate; None: every triplet active at `rank_scale`."""
    rank_scale: float = 1.0
    """PEFT's scaling / ranknum for this layer (alpha / init_r), as a Python float."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        name = self.active_adapters[0] if len(self.active_adapters) == 1 else None
        if self.disable_adapters or self.merged or name not in self.lora_A:
            return super().forward(x, *args, **kwargs)  # PEFT's own paths (merged, disabled, several adapters)
        result = self.base_layer(x, *args, **kwargs)
        lora_a, lora_b, lora_e = self.lora_A[name], self.lora_B[name], self.lora_E[name]
        gate = self.rank_gate if self.rank_gate is not None else self.rank_scale
        hidden = F.linear(self.lora_dropout[name](self._cast_input_dtype(x, lora_a.dtype)), lora_a * (lora_e * gate))
        return result + F.linear(hidden, lora_b).to(result.dtype)


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
