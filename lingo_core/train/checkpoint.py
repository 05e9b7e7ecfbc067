"""Resumable training checkpoints: one folder per evaluation step, written by every rank.

Layout of `step-NNNNNNN/`:
  backend/                       the backend's own state (trainable weights, optimizer, scheduler)
  trainer_state.json             step, best-so-far bookkeeping, config
  best_trainable.safetensors     the dev-selected trainable weights so far (rank 0)
  controller.rank<R>.safetensors the rank controller's state (ars/adalora), one per rank: under ZeRO each
                                 rank keeps importance statistics for the slice of the adapter it owns
  MANIFEST.sha256.json           sha256 + size of every file above, written last (lingo_core.storage)

Resuming verifies the manifest first; a damaged newest checkpoint falls back to the previous intact one.
`usable_checkpoint` makes that choice and is the only one that does, once per resume: `resume_point` wraps
what it picks with its step, and `load_checkpoint` restores a ResumePoint as it is (a plain path is picked
first), so a caller that logs "resumed from step N" before training names the checkpoint then restored.

  given folder --resume_point--> ResumePoint(folder, step) --+--> .step               (the worker logs it)
  (Ray's copy, or  (usable_checkpoint: itself, or the       +--> load_checkpoint()   (train() restores it)
   checkpoints/step-*)  newest intact sibling, verified once)
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lingo_core.storage import (
    MANIFEST,
    IntegrityError,
    is_write_failure,
    replace_dir,
    storage_error,
    verify_manifest,
    write_manifest,
)
from lingo_core.train.backend import barrier

TRAINER_STATE = "trainer_state.json"
"""The checkpoint's bookkeeping file (step, best-so-far, config)."""


KEEP = 2
"""Checkpoint folders kept under a root: the newest, and the previous one to fall back to when the newest
turns out damaged."""


class CheckpointError(ValueError):
    """No intact checkpoint to resume from; the message names the damaged file and what was expected."""


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped and an older intact one used instead."""


@dataclass(frozen=True)
class ResumePoint:
    """An intact checkpoint folder that `usable_checkpoint` picked, and the optimizer step it restores."""

    folder: Path
    step: int


def resume_point(path: str | Path) -> ResumePoint:
    """What resuming from `path` restores: `usable_checkpoint(path)` and its step, so an older intact
    sibling when `path` itself is damaged (its trainer_state.json corrupt, missing, or not matching the
    manifest). CheckpointError, naming the damaged file, when no checkpoint there is intact."""
    folder = usable_checkpoint(path)
    return ResumePoint(folder, _step(_read_state(folder)))


def _read_state(folder: Path) -> dict:
    """trainer_state.json of `folder`; CheckpointError naming the file when it is missing or does not parse
    (a JSONDecodeError traceback would not say which checkpoint is damaged)."""
    file = Path(folder) / TRAINER_STATE
    try:
        state = json.loads(file.read_text())
    except (OSError, ValueError) as e:  # ValueError: JSONDecodeError and UnicodeDecodeError
        raise CheckpointError(f"{file}: unreadable ({e}); expected the trainer's state as JSON") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{file}: a JSON {type(state).__name__}; expected an object with an integer 'step'")
    _step(state, file)  # a state without a step cannot be resumed: damaged
    return state


def _step(state: dict, file: Path | None = None) -> int:
    step = state.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"{file or TRAINER_STATE}: step={step!r}; expected an integer >= 0")
    return step


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
    share a disk); global rank 0 adds the trainer files. Written as temp dir, then the sha256 manifest
    (last), then the rename: a crash or a full disk never leaves a half-written checkpoint under its
    final name, and the previous checkpoint stays until the new one is complete."""
    root = Path(root)
    final, tmp = root / f"step-{step:07d}", root / f".tmp-step-{step:07d}"
    node_leader = backend.local_rank == 0
    try:
        if node_leader:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        backend.save_checkpoint(tmp / "backend")
        if controller is not None:
            tensors, kinds = _controller_to_tensors(controller.state_dict())
            save_file(tensors, str(tmp / _controller_file(backend.rank)), metadata={"kinds": json.dumps(kinds)})
        if backend.rank == 0:
            (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=1))
            if best_state is not None:
                save_file(best_state, str(tmp / "best_trainable.safetensors"))
        barrier()  # every rank's shards are in tmp before the manifest is taken and the folder renamed
        if node_leader:
            write_manifest(tmp)
            replace_dir(tmp, final)
    except Exception as e:
        if node_leader:
            shutil.rmtree(tmp, ignore_errors=True)
        if not is_write_failure(e):
            raise
        raise storage_error(f"checkpoint of step {step} (the previous one is kept)", final, e) from e
    if node_leader:
        # Keep the newest KEEP: hooks (Ray) persist what they need, and the one before the newest is the
        # fallback should the newest be damaged later.
        for old in sorted(root.glob("step-*"))[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in root.glob(".tmp-step-*"):  # left by an earlier crash; every rank is past its writes
            shutil.rmtree(stale, ignore_errors=True)
    barrier()
    return final


def _candidates(path: Path) -> list[Path]:
    """`path` first, then the other checkpoint folders beside it (Ray's storage or our `checkpoints/`
    root), newest step first; a root folder given itself yields its checkpoints."""
    if (path / MANIFEST).is_file() or (path / TRAINER_STATE).is_file():
        siblings = [p for p in path.parent.iterdir() if p.is_dir() and p != path]
        first = [path]
    else:
        siblings, first = ([p for p in path.iterdir() if p.is_dir()] if path.is_dir() else []), []
    steps = []
    for p in siblings:
        if p.name.startswith(".") or not (p / MANIFEST).is_file():
            continue  # temporary or incomplete: never a candidate
        try:
            steps.append((_step(_read_state(p)), p))
        except CheckpointError:
            steps.append((-1, p))  # unreadable bookkeeping: damaged; last, so the error counts it
    return first + [p for _, p in sorted(steps, key=lambda sp: sp[0], reverse=True)]


def usable_checkpoint(path: str | Path) -> Path:
    """The checkpoint to resume from: `path` when its files match its manifest, else the newest intact
    one beside it (with a CheckpointWarning naming what was wrong). CheckpointError when none is intact."""
    path = Path(path)
    problems = []
    for cand in _candidates(path):
        try:
            verify_manifest(cand)
            _read_state(cand)  # a manifest taken over a bad state (or none at all) does not make it usable
        except (IntegrityError, CheckpointError) as e:
            problems.append(str(e))
            continue
        if problems:
            warnings.warn(f"checkpoint {path} is damaged ({problems[0]}); resuming from {cand} instead",
                          CheckpointWarning, stacklevel=2)
        return cand
    if not problems:
        raise CheckpointError(f"resume_from={path}: no checkpoint here; expected a step-* folder with "
                              f"{TRAINER_STATE} and {MANIFEST}")
    raise CheckpointError(f"resume_from={path}: no intact checkpoint: {problems[0]}"
                          + (f" (and {len(problems) - 1} older damaged)" if len(problems) > 1 else ""))


def _agree(step: int) -> None:
    """Every rank must resume from the same step (nodes verify their own copies)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    steps: list = [None] * dist.get_world_size()
    dist.all_gather_object(steps, step)
    if len(set(steps)) != 1:
        raise CheckpointError(f"ranks found different intact checkpoints (steps {steps}); expected one step "
                              "for all: the nodes' checkpoint copies differ")


def load_checkpoint(point: ResumePoint | str | Path, backend, controller) -> tuple[dict, dict | None]:
    """Restore backend, controller and trainer state from `point`, or from the newest intact checkpoint at a
    path (resume_point picks it). Only safetensors and JSON files of our own are read here."""
    point = point if isinstance(point, ResumePoint) else resume_point(point)  # verified once, by its picker
    path = point.folder
    _agree(point.step)
    backend.load_checkpoint(path / "backend")
    state = _read_state(path)
    if controller is not None:
        file = path / _controller_file(backend.rank)
        with safe_open(str(file), "pt") as f:
            kinds = json.loads(f.metadata()["kinds"])
        controller.load_state_dict(_controller_from_tensors(load_file(str(file)), kinds))
    best = path / "best_trainable.safetensors"
    return state, (load_file(str(best)) if best.is_file() else None)
