"""Training backends. The trainer talks only to the `TrainBackend` protocol, so the orchestrator's
DeepSpeedBackend (ZeRO, multi-GPU) and the single-process `TorchBackend` here are interchangeable.

Gradient accumulation and clipping are facts of the run's TrainConfig; a backend applies them (it
decides the optimizer boundaries), so it is built from the config (`TorchBackend.for_config`, the
worker's `build_backend`) and train() refuses one that was built with other values (`check_backend`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from lingo_core.tuners.ars.shards import ShardAccess, WholeParams

if TYPE_CHECKING:
    from lingo_core.train.config import TrainConfig


@runtime_checkable
class TrainBackend(Protocol):
    """What the training loop needs from a distributed/precision backend.

    Call order per micro-batch (see DESIGN.md): backward(loss); b = is_boundary();
    [controller.capture_grads() if b]; step(); [controller.allocate(step) if b].
    """

    rank: int
    world_size: int
    local_rank: int  # rank within this node: node-local files (checkpoint folders) are made by local rank 0
    device: torch.device

    def prepare(self, model: nn.Module, params: list[nn.Parameter] | None = None, *, lr: float,
                weight_decay: float, warmup_steps: int, total_steps: int) -> nn.Module:
        """Move/wrap the model, build AdamW over `params` (None: all trainable) with linear warm-up then
        linear decay to 0 at total_steps. Gradient accumulation and clipping are construction settings of
        the backend, taken from the run's TrainConfig (see the module docstring). Returns the module to
        call for forward passes (may be a wrapper such as a DeepSpeed engine)."""
        ...

    def backward(self, loss: torch.Tensor) -> None:
        """Backprop the un-scaled micro-batch loss (the backend divides by grad_accum)."""
        ...

    def is_boundary(self) -> bool:
        """True when the next step() applies the optimizer."""
        ...

    def step(self) -> None:
        """Call after every backward; applies clip + optimizer + scheduler at boundaries."""
        ...

    def shard_access(self, params: list[nn.Parameter]) -> ShardAccess:
        """The rank controller's view of `params`: the slices this rank owns, their (master) values and
        reduced gradients, and a sum over ranks. Call after prepare()."""
        ...

    def current_lr(self) -> float: ...

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Full (gathered) trainable parameters as CPU tensors, keyed by parameter name."""
        ...

    def load_trainable_state(self, sd: dict[str, torch.Tensor]) -> None: ...

    def save_checkpoint(self, path: Path) -> None:
        """Write model trainable state + optimizer + scheduler into directory `path` (all ranks call)."""
        ...

    def load_checkpoint(self, path: Path) -> None: ...

    # Optional (the trainer falls back when absent):
    #   autocast() -> context manager for forward passes (mixed precision); default: none
    #   gathered() -> context in which the raw model holds full parameters (ZeRO-3); default: none
    #   grad_accum, max_grad_norm -> what the backend was built with (or on .settings); train() checks them


_UNSET = object()


def check_backend(backend: object, cfg: TrainConfig) -> None:
    """Raise ValueError when `backend` accumulates or clips otherwise than `cfg`: the trainer counts
    steps, epochs and the schedule from cfg.grad_accum, the backend applies the optimizer at its own
    boundaries, so a mismatch would train silently with another step count and clip."""
    # TorchBackend keeps them as attributes; DeepSpeedBackend (orchestrator) on its `settings`.
    for name, norm in (("grad_accum", int), ("max_grad_norm", lambda v: v or None)):  # None and 0: no clip
        have = getattr(backend, name, getattr(getattr(backend, "settings", None), name, _UNSET))
        if have is not _UNSET and norm(have) != norm(getattr(cfg, name)):
            raise ValueError(
                f"{type(backend).__name__}.{name} is {have!r} but TrainConfig.{name} is {getattr(cfg, name)!r}; "
                "build the backend from the config (TorchBackend.for_config, or the worker's build_backend)"
            )


def barrier() -> None:
    """Wait for every rank when torch.distributed runs; nothing in a single process."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def linear_warmup_decay(warmup_steps: int, total_steps: int):
    """lr multiplier: 0 -> 1 over warmup_steps, then linearly down to 0 at total_steps."""

    def f(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps  # +1: the very first update already moves the weights
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return f


def adamw_groups(params: list[nn.Parameter], weight_decay: float) -> list[dict]:
    """AdamW parameter groups: no decay on biases and norm weights (1-D), the usual AdamW practice."""
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay}]
    return groups + ([{"params": no_decay, "weight_decay": 0.0}] if no_decay else [])


def check_state_names(have: Iterable[str], sd: dict[str, torch.Tensor]) -> None:
    """ValueError when a trainable state `sd` does not hold exactly the parameter names `have`."""
    missing, unexpected = sorted(set(have) - set(sd)), sorted(set(sd) - set(have))
    if missing or unexpected:
        raise ValueError(f"trainable state mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")


def frozen_to_bf16(model: nn.Module, trainable: set[int]) -> None:
    """Store the frozen floating-point weights in bf16 (the LM is read, never updated: no fp32 copy of it
    is needed on the GPU). Trainable parameters keep fp32 for the optimizer."""
    for p in model.parameters():
        if id(p) not in trainable and p.is_floating_point() and p.dtype != torch.bfloat16:
            p.data = p.data.to(torch.bfloat16)


def optimizer_to_files(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """A torch optimizer state_dict -> (tensors "state.<param index>.<name>", JSON-able rest)."""
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        scalars[str(idx)] = {}
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = v.detach().cpu().contiguous()
            else:
                scalars[str(idx)][name] = v
    return tensors, {"state": scalars, "param_groups": sd["param_groups"]}


def optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """Inverse of optimizer_to_files (JSON turns tuples such as AdamW's betas into lists; torch accepts both)."""
    state: dict[int, dict] = {int(i): dict(v) for i, v in meta["state"].items()}
    for key, t in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = t
    return {"state": state, "param_groups": meta["param_groups"]}


class TorchBackend:
    """Single process, one device. On a bf16-capable GPU: frozen weights in bf16, trainable ones and the
    optimizer in fp32, forward under bf16 autocast, fused AdamW. On CPU: everything fp32."""

    def __init__(
        self,
        device: str | torch.device | None = None,
        *,
        grad_accum: int = 1,  # no accumulation unless asked; for_config passes cfg.grad_accum
        max_grad_norm: float | None = 1.0,  # standard clipping; for_config passes cfg.max_grad_norm
    ) -> None:
        if grad_accum < 1:
            raise ValueError(f"TorchBackend.grad_accum={grad_accum}: expected a positive integer")
        self.rank = 0
        self.world_size = 1
        self.local_rank = 0
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._model: nn.Module | None = None
        self._params: dict[str, nn.Parameter] = {}
        self._micro = 0  # micro-batches seen since start; boundary every grad_accum of them
        self.grad_accum = grad_accum
        self.max_grad_norm = max_grad_norm or None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None

    @classmethod
    def for_config(cls, cfg: TrainConfig, device: str | torch.device | None = None) -> TorchBackend:
        """The backend of a run of `cfg`: its accumulation and clipping come from the config, so the two
        cannot disagree."""
        return cls(device, grad_accum=cfg.grad_accum, max_grad_norm=cfg.max_grad_norm)

    # ---- set-up ------------------------------------------------------------------------------------------
    def prepare(self, model: nn.Module, params: list[nn.Parameter] | None = None, *, lr: float,
                weight_decay: float, warmup_steps: int, total_steps: int) -> nn.Module:
        wanted = {id(p) for p in params} if params is not None else None
        self._params = {
            n: p
            for n, p in model.named_parameters()
            if p.requires_grad and (wanted is None or id(p) in wanted)
        }
        if not self._params:
            raise ValueError("model has no trainable parameters; check the adapter method")
        if self._bf16:
            frozen_to_bf16(model, {id(p) for p in self._params.values()})
        model.to(self.device)
        self._model = model
        # GPU: one fused kernel for all tensors. CPU: foreach=False, identical numerics regardless of
        # tensor grouping (resume tests compare runs bit for bit).
        fast = {"fused": True} if self.device.type == "cuda" else {"foreach": False}
        groups = adamw_groups(list(self._params.values()), weight_decay)
        self.optimizer = torch.optim.AdamW(groups, lr=lr, **fast)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, linear_warmup_decay(warmup_steps, total_steps)
        )
        return model

    @property
    def _bf16(self) -> bool:
        return self.device.type == "cuda" and torch.cuda.is_bf16_supported()

    def autocast(self) -> contextlib.AbstractContextManager:
        if self._bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()  # CPU: fp32; CPU bf16 autocast is slower on most CPUs and noisier

    # ---- the step -----------------------------------------------------------------------------------------
    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.grad_accum).backward()

    def is_boundary(self) -> bool:
        return (self._micro + 1) % self.grad_accum == 0

    def step(self) -> None:
        assert self.optimizer is not None and self.scheduler is not None, "call prepare() first"
        boundary = self.is_boundary()
        self._micro += 1
        if not boundary:
            return
        if self.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(list(self._params.values()), self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def shard_access(self, params: list[nn.Parameter]) -> ShardAccess:
        return WholeParams(params)

    def current_lr(self) -> float:
        assert self.scheduler is not None, "call prepare() first"
        return float(self.scheduler.get_last_lr()[0])

    # ---- state ----------------------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in self._params.items()}

    def load_trainable_state(self, sd: dict[str, torch.Tensor]) -> None:
        check_state_names(self._params, sd)
        with torch.no_grad():
            for n, p in self._params.items():
                p.copy_(sd[n].to(device=p.device, dtype=p.dtype))

    def save_checkpoint(self, path: Path) -> None:
        assert self.optimizer is not None and self.scheduler is not None, "call prepare() first"
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file(self.trainable_state(), str(path / "trainable.safetensors"))
        # The optimizer state as safetensors + JSON, never a pickle: a checkpoint folder is data only.
        tensors, meta = optimizer_to_files(self.optimizer.state_dict())
        save_file(tensors, str(path / "optimizer.safetensors"))
        sched = {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"}
        (path / "backend_state.json").write_text(json.dumps({"scheduler": sched, "micro": self._micro,
                                                             "optimizer": meta}))

    def load_checkpoint(self, path: Path) -> None:
        assert self.optimizer is not None and self.scheduler is not None, "call prepare() first"
        path = Path(path)
        self.load_trainable_state(load_file(str(path / "trainable.safetensors")))
        state = json.loads((path / "backend_state.json").read_text())
        tensors = load_file(str(path / "optimizer.safetensors"))  # CPU: torch moves state to the params (and keeps "step" on CPU)
        self.optimizer.load_state_dict(optimizer_from_files(tensors, state["optimizer"]))
        sched = self.scheduler.state_dict()
        sched.update(state["scheduler"])
        self.scheduler.load_state_dict(sched)
        self._micro = int(state["micro"])

    @contextlib.contextmanager
    def gathered(self) -> Iterator[None]:
        yield  # single process: parameters are always whole
