"""Resumable training checkpoints: one folder per evaluation step, written by every rank.

Layout of `step-NNNNNNN/`:
  backend/                       the backend's own state (trainable weights, optimizer, scheduler)
  trainer_state.json             step, best-so-far bookkeeping, config
  best_trainable.safetensors     the dev-selected trainable weights so far (rank 0)
  controller.rank<R>.safetensors the rank controller's state (ars/adalora), one per rank: under ZeRO each
                                 rank keeps importance statistics for the slice of the adapter it owns
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load_file, save_file

TRAINER_STATE = "trainer_state.json"
"""The checkpoint's bookkeeping file; its presence marks a complete checkpoint folder."""


def checkpoint_step(path: str | Path) -> int:
    """The optimizer step a checkpoint folder was written at."""
    return int(json.loads((Path(path) / TRAINER_STATE).read_text())["step"])


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _controller_file(rank: int) -> str:
    return f"controller.rank{rank}.safetensors"


def _controller_to_tensors(sd: dict) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors, kinds = {}, {}
    for k, v in sd.items():
        kinds[k] = "tensor" if isinstance(v, torch.Tensor) else type(v).__name__
        tensors[k] = v.detach().cpu().contiguous() if isinstance(v, torch.Tensor) else torch.tensor(v)
    return tensors, kinds


def _controller_from_tensors(tensors: dict[str, torch.Tensor], kinds: dict[str, str]) -> dict:
    cast = {"int": int, "float": float, "bool": bool}
    return {k: (t if kinds[k] == "tensor" else cast[kinds[k]](t.item())) for k, t in tensors.items()}


def save_checkpoint(root: Path, step: int, backend, controller, state: dict, best_state) -> Path:
    """All ranks call (backend shards). Each node's local rank 0 owns that node's folder (nodes need not
    share a disk); global rank 0 adds the trainer files. temp dir + rename: a crash never leaves a
    half-written checkpoint under its final name."""
    final, tmp = root / f"step-{step:07d}", root / f".tmp-step-{step:07d}"
    node_leader = backend.local_rank == 0
    if node_leader:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    backend.save_checkpoint(tmp / "backend")
    if controller is not None:
        tensors, kinds = _controller_to_tensors(controller.state_dict())
        save_file(tensors, str(tmp / _controller_file(backend.rank)), metadata={"kinds": json.dumps(kinds)})
    if backend.rank == 0:
        (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=1))
        if best_state is not None:
            save_file(best_state, str(tmp / "best_trainable.safetensors"))
    _barrier()  # every rank's shards are in tmp before it takes its final name
    if node_leader:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in root.glob("step-*"):  # keep only the newest: hooks (Ray) persist what they need
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load_checkpoint(path: Path, backend, controller) -> tuple[dict, dict | None]:
    path = Path(path)
    if not (path / TRAINER_STATE).is_file():
        raise FileNotFoundError(f"resume_from={path}: no trainer_state.json; expected a checkpoint dir step-*")
    backend.load_checkpoint(path / "backend")
    state = json.loads((path / TRAINER_STATE).read_text())
    if controller is not None:
        file = path / _controller_file(backend.rank)
        with safe_open(str(file), "pt") as f:
            kinds = json.loads(f.metadata()["kinds"])
        controller.load_state_dict(_controller_from_tensors(load_file(str(file)), kinds))
    best = path / "best_trainable.safetensors"
    return state, (load_file(str(best)) if best.is_file() else None)
