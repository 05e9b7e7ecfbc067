"""DeepSpeed ZeRO as a `lingo_core.train.TrainBackend`: `DeepSpeedSettings` (one trial's deepspeed block
plus the TrainConfig's batch, accumulation and clip), `DeepSpeedBackend`, `ZeroShards` (what the rank
controller reads under ZeRO-1/2), and `build_backend`, the trial's choice between it and TorchBackend.

The backend keeps the lingo_core loop unchanged: the trainer calls backward/is_boundary/step per
micro-batch and the rank controller reads full gradients and writes parameters through it. DeepSpeed
owns the optimizer step, the LR schedule, gradient accumulation and clipping.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lingo_core.train.backend import TorchBackend, adamw_groups, check_state_names, linear_warmup_decay
from lingo_core.tuners.ars.shards import Shard, ShardAccess, WholeParams
from orchestrator.execution_spec import DeepSpeedSpec


@dataclass
class DeepSpeedSettings(DeepSpeedSpec):
    """One trial's DeepSpeed settings: the job's `deepspeed` block, whose fields, defaults and checks
    DeepSpeedSpec declares once, plus the three numbers the trial's TrainConfig decides.
    `DeepSpeedBackend.ds_config` turns them into DeepSpeed's config dict."""

    micro_batch_size: int = 8  # per worker; must equal TrainConfig.batch_size (the trainer's micro-batch)
    grad_accum: int = 1  # must equal TrainConfig.grad_accum: DeepSpeed decides the optimizer boundaries
    max_grad_norm: float | None = 1.0  # TrainConfig's clip, so results compare across backends

    @classmethod
    def for_train(cls, cfg: Any, job_deepspeed: DeepSpeedSpec | None = None) -> DeepSpeedSettings:
        """Settings of one trial: the job's `deepspeed` block + the TrainConfig's batch/accum/clip."""
        block = dataclasses.asdict(job_deepspeed) if job_deepspeed is not None else {}
        return cls(micro_batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                   max_grad_norm=cfg.max_grad_norm, **block)


class DeepSpeedBackend:
    """TrainBackend over a DeepSpeed engine. Inside Ray Train it reuses the worker group's process group;
    elsewhere it starts a 1-rank gloo group."""

    def __init__(self, settings: DeepSpeedSettings | None = None) -> None:
        import deepspeed
        import torch.distributed as dist

        self.settings = settings or DeepSpeedSettings()
        if not dist.is_initialized():
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
            os.environ.setdefault("RANK", "0")
            os.environ.setdefault("WORLD_SIZE", "1")
            os.environ.setdefault("LOCAL_RANK", "0")
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))  # set per worker by Ray Train
        self.device = _device()
        self.engine: Any = None
        self._params: list[nn.Parameter] = []
        self._names: dict[int, str] = {}

    # ---- set-up ------------------------------------------------------------------------------------------
    def ds_config(self) -> dict:
        s = self.settings
        zero: dict[str, Any] = {"stage": s.zero_stage}
        if s.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu"}
        if s.offload_param:
            zero["offload_param"] = {"device": "cpu"}
        cfg: dict[str, Any] = {
            "train_micro_batch_size_per_gpu": s.micro_batch_size,
            "gradient_accumulation_steps": s.grad_accum,
            "gradient_clipping": float(s.max_grad_norm or 0.0),  # 0 disables clipping in DeepSpeed
            "zero_optimization": zero,
            # A plain torch AdamW (the same optimizer as TorchBackend; no fused op to build or match).
            "zero_allow_untested_optimizer": True,
            # With offload_optimizer the torch AdamW steps the CPU copy; DeepSpeedCPUAdam would need a
            # compiled op, and DeepSpeed refuses a client optimizer under offload unless told otherwise.
            "zero_force_ds_cpu_optimizer": False,
            "steps_per_print": 10**9,  # the trainer logs; DeepSpeed's own step prints are noise
        }
        gpu_bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        if s.bf16 is True or (s.bf16 == "auto" and gpu_bf16):
            cfg["bf16"] = {"enabled": True}
        return _merge(cfg, s.config)

    def prepare(self, model: nn.Module, params: list[nn.Parameter] | None = None, *, lr: float,
                weight_decay: float, warmup_steps: int, total_steps: int) -> nn.Module:
        import deepspeed

        model.to(self.device)
        self._params = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
        if not self._params:
            raise ValueError("model has no trainable parameters; check the adapter method")
        ids = {id(p) for p in self._params}
        self._names = {id(p): n for n, p in model.named_parameters() if id(p) in ids}
        # As TorchBackend's groups; foreach=False for grouping-independent numerics.
        optimizer = torch.optim.AdamW(adamw_groups(self._params, weight_decay), lr=lr, foreach=False)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(warmup_steps, total_steps))
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                    config=self.ds_config(), dist_init_required=False)
        return self.engine

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # bf16 DeepSpeed casts the module itself; fp32 otherwise

    def gathered(self) -> contextlib.AbstractContextManager:
        """Whole parameters in the raw model (ZeRO-3); collective, so every rank enters it."""
        import deepspeed

        if self.settings.zero_stage == 3 and self.engine is not None:
            return deepspeed.zero.GatheredParameters(list(self.engine.module.parameters()))
        return contextlib.nullcontext()

    # ---- the step ----------------------------------------------------------------------------------------
    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)  # DeepSpeed divides by grad_accum itself: the loss goes in un-scaled

    def is_boundary(self) -> bool:
        return bool(self.engine.is_gradient_accumulation_boundary())

    def step(self) -> None:
        self.engine.step()

    def shard_access(self, params: list[nn.Parameter]) -> ShardAccess:
        """ZeRO-1/2: the slices of `params` this rank's optimizer partition owns (fp32 master values and
        reduced gradients, read in place: no collective); other setups: whole parameters."""
        if self.settings.zero_stage in (1, 2):
            return ZeroShards(params, self.engine.optimizer)
        if self.settings.zero_stage == 3:
            raise ValueError("ZeRO-3 shards adapter parameters per module; the rank controller needs ZeRO 0-2")
        return WholeParams(params)  # stage 0 without bf16: plain optimizer, .grad all-reduced by DeepSpeed

    def write_param_(self, p: nn.Parameter, value: torch.Tensor) -> None:
        """Write both copies: the module parameter (read by the next forward) and the fp32 master
        partition (copied back over the module parameter after every optimizer step)."""
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

    # ---- state ---------------------------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The fp32 master values (never the bf16 module copy: restoring those would round the master)."""
        from deepspeed.utils import safe_get_full_fp32_param

        out: dict[str, torch.Tensor] = {}
        for p in self._params:
            master = safe_get_full_fp32_param(p)  # collective: every rank walks the same list
            out[self._names[id(p)]] = (p.data if master is None else master).detach().float().cpu().clone()
        return out

    def load_trainable_state(self, sd: dict[str, torch.Tensor]) -> None:
        by_name = {self._names[id(p)]: p for p in self._params}
        check_state_names(by_name, sd)
        for name, p in by_name.items():
            self.write_param_(p, sd[name])

    def save_checkpoint(self, path: str | Path) -> None:
        """Every rank calls this and writes its own optimizer / master-weight shards. The tag must not be
        "latest", the name of DeepSpeed's pointer file in the same folder. Frozen base weights are not
        saved: they come from the base model."""
        step = int(self.engine.global_steps)
        self.engine.save_checkpoint(str(path), tag=f"step{step}", exclude_frozen_parameters=True)

    def load_checkpoint(self, path: str | Path) -> None:
        # Non-strict: the checkpoint holds only the trainable parameters (see save_checkpoint).
        load_path, _ = self.engine.load_checkpoint(str(path), load_module_strict=False)
        if load_path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {path}")


class ZeroShards:
    """ShardAccess under DeepSpeed ZeRO-1/2: the parameter slices in this rank's optimizer partition,
    through DeepSpeed's own low-precision -> fp32 fragment mapping (`param._hp_mapping`)."""

    def __init__(self, params: list[nn.Parameter], optimizer: Any) -> None:
        import torch.distributed as dist

        self._owned = [(i, p) for i, p in enumerate(params) if getattr(p, "_hp_mapping", None) is not None]
        self.shards = [Shard(i, p._hp_mapping.lp_fragment_address.start, p._hp_mapping.lp_fragment_address.numel)
                       for i, p in self._owned]
        self._group = getattr(optimizer, "dp_process_group", None)
        self._reduce = dist.is_initialized() and dist.get_world_size(self._group) > 1

    def values(self) -> list[torch.Tensor]:
        return [p._hp_mapping.get_hp_fragment() for _, p in self._owned]

    def grads(self) -> list[torch.Tensor | None]:
        out: list[torch.Tensor | None] = []
        for shard, (_, p) in zip(self.shards, self._owned, strict=True):
            grad = p._hp_mapping.get_lp_grad_fragment(p._index_in_param_group).reshape(-1)
            if grad.numel() != shard.numel:  # a rank keeping a whole-parameter buffer: take its slice
                grad = grad.narrow(0, shard.start, shard.numel)
            out.append(grad)
        return out

    def all_reduce_(self, tensor: torch.Tensor) -> None:
        if self._reduce:
            import torch.distributed as dist

            dist.all_reduce(tensor, group=self._group)


def _device() -> torch.device:
    if not torch.cuda.is_available():
        return torch.device("cpu")
    try:
        import ray.train.torch

        return ray.train.torch.get_device()  # Ray sets CUDA_VISIBLE_DEVICES per worker
    except Exception:  # outside a Ray Train worker
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_backend(cfg: Any, settings: DeepSpeedSettings) -> DeepSpeedBackend | TorchBackend:
    """The trial's backend: DeepSpeed with the trial's settings, or with `enabled: false` the plain
    single-process TorchBackend on this worker's device (job validation allows that with one worker only)."""
    if not settings.enabled:
        return TorchBackend.for_config(cfg, _device())
    return DeepSpeedBackend(settings)
