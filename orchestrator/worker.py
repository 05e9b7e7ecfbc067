"""Ray Train worker: a DeepSpeed ZeRO implementation of `lingo_core.train.TrainBackend`, plus the
per-worker function that runs `lingo_core.train.train` inside a Ray Train worker group.

The backend keeps the lingo_core loop unchanged: the trainer calls backward/is_boundary/step per
micro-batch and the rank controller reads full gradients and writes parameters through it. DeepSpeed
owns the optimizer, the LR schedule, gradient accumulation and clipping.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

# bf16 is only turned on where the hardware runs it natively; CPU kernels are fp32 here.
_BF16_ON_GPU = True


def _warmup_linear_decay(warmup_steps: int, total_steps: int):
    """LR multiplier: linear warm-up to 1, then linear decay to 0 at total_steps (same shape as TorchBackend)."""

    def fn(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        remaining = max(total_steps - step, 0)
        return remaining / max(total_steps - warmup_steps, 1)

    return fn


@dataclass
class DeepSpeedSettings:
    zero_stage: int = 2  # ZeRO-2 shards optimizer state + grads; adapters are small, stage 3 rarely pays off
    micro_batch_size: int = 8  # per worker; the trainer's batch size
    grad_accum: int = 1  # trainer's accumulation; DeepSpeed must agree with the trainer loop
    grad_clip: float = 1.0  # same clipping as TorchBackend so results compare across backends

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0..3, got {self.zero_stage}")


class DeepSpeedBackend:
    """TrainBackend over a DeepSpeed engine. Must be created inside an initialised process group
    (Ray Train's TorchTrainer sets one up; DeepSpeed reuses it)."""

    def __init__(self, settings: DeepSpeedSettings | None = None) -> None:
        import deepspeed
        import torch.distributed as dist

        self.settings = settings or DeepSpeedSettings()
        if not dist.is_initialized():
            # Single-process use (tests, `lingo train --backend deepspeed`): a 1-rank gloo group.
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
            os.environ.setdefault("RANK", "0")
            os.environ.setdefault("WORLD_SIZE", "1")
            os.environ.setdefault("LOCAL_RANK", "0")
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            self.device = torch.device("cuda", local)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        self.engine: Any = None
        self._params: list[nn.Parameter] = []
        self._names: dict[int, str] = {}

    # -- set-up -------------------------------------------------------------------------------
    def ds_config(self) -> dict:
        s = self.settings
        cfg: dict[str, Any] = {
            "train_micro_batch_size_per_gpu": s.micro_batch_size,
            "gradient_accumulation_steps": s.grad_accum,
            "gradient_clipping": s.grad_clip,
            "zero_optimization": {"stage": s.zero_stage},
            # We hand DeepSpeed a plain torch AdamW (no fused CPU/GPU Adam op to compile or match).
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,  # the trainer logs; DeepSpeed's own step prints are noise
            "wall_clock_breakdown": False,
        }
        if _BF16_ON_GPU and self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            cfg["bf16"] = {"enabled": True}
        return cfg

    def prepare(
        self,
        model: nn.Module,
        params: list[nn.Parameter] | None = None,
        *,
        lr: float = 1e-3,  # only used when called outside the trainer (tests)
        weight_decay: float = 0.0,  # adapters: decay is off by default in TorchBackend too
        warmup_steps: int = 0,
        total_steps: int = 1,
    ) -> nn.Module:
        import deepspeed

        model.to(self.device)
        self._params = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
        ids = {id(p) for p in self._params}
        self._names = {id(p): n for n, p in model.named_parameters() if id(p) in ids}
        optimizer = torch.optim.AdamW(self._params, lr=lr, weight_decay=weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_linear_decay(warmup_steps, total_steps))
        self.engine, _, _, _ = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            model_parameters=self._params,
            config=self.ds_config(),
            dist_init_required=False,
        )
        return self.engine

    # -- loop ---------------------------------------------------------------------------------
    def backward(self, loss: torch.Tensor) -> None:
        # DeepSpeed scales by 1/grad_accum itself, so the loss goes in un-scaled.
        self.engine.backward(loss)

    def is_boundary(self) -> bool:
        return bool(self.engine.is_gradient_accumulation_boundary())

    def step(self) -> None:
        self.engine.step()

    def full_grad(self, p: nn.Parameter) -> torch.Tensor | None:
        # Collective under ZeRO (all ranks must ask for the same parameters in the same order);
        # the RankController does, because its decisions are identical on every rank.
        from deepspeed.utils import safe_get_full_grad

        g = safe_get_full_grad(p)
        return None if g is None else g.detach()

    def write_param_(self, p: nn.Parameter, value: torch.Tensor) -> None:
        """Write both copies: the module parameter (used by the next forward) and the fp32 master
        partition (copied back into the module after the next optimizer step)."""
        import deepspeed
        from deepspeed.utils import safe_set_full_fp32_param

        value = value.detach()
        if hasattr(p, "ds_id"):  # ZeRO-3: the module param is a shard; gather, write, re-partition
            with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                if self.rank == 0:
                    p.data.copy_(value.to(p.device, p.dtype))
        else:
            with torch.no_grad():
                p.data.copy_(value.to(p.device, p.dtype))
        safe_set_full_fp32_param(p, value.to(p.device, torch.float32))

    def current_lr(self) -> float:
        return float(self.engine.get_lr()[0])

    # -- state --------------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        import deepspeed

        out: dict[str, torch.Tensor] = {}
        for p in self._params:
            name = self._names[id(p)]
            if hasattr(p, "ds_id"):
                with deepspeed.zero.GatheredParameters([p]):
                    out[name] = p.data.detach().float().cpu().clone()
            else:
                out[name] = p.data.detach().float().cpu().clone()
        return out

    def load_trainable_state(self, sd: dict[str, torch.Tensor]) -> None:
        by_name = {self._names[id(p)]: p for p in self._params}
        missing = [k for k in by_name if k not in sd]
        if missing:
            raise KeyError(f"trainable state lacks {len(missing)} parameters, e.g. {missing[:3]}")
        for name, p in by_name.items():
            self.write_param_(p, sd[name])

    def save_checkpoint(self, path: str | Path) -> None:
        # Every rank calls this: each writes its own optimizer/master-weight shards. The tag must not
        # be "latest", which is the name of DeepSpeed's pointer file in the same folder.
        step = int(self.engine.global_steps)
        self.engine.save_checkpoint(str(path), tag=f"step{step}", exclude_frozen_parameters=True)

    def load_checkpoint(self, path: str | Path) -> None:
        # Frozen base weights are not in the checkpoint (they come from the base model), hence non-strict.
        load_path, _ = self.engine.load_checkpoint(str(path), load_module_strict=False)
        if load_path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {path}")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _nan_to_none(x: float) -> float | None:
    return None if isinstance(x, float) and math.isnan(x) else x
