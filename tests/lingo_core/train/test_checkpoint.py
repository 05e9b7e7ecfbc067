"""Checkpoint storage (issue 10 item 4): the manifest is written last, a damaged newest checkpoint falls
back to the previous intact one, the optimizer state is safetensors + JSON, and a write that really fails
(a file-size limit in a subprocess) is one StorageError with no half-written folder left behind.

The backend is the real TorchBackend around a small linear model, so each test runs in milliseconds."""

from __future__ import annotations

import contextlib
import json
import resource
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

from lingo_core.artifacts import save_adapter
from lingo_core.data.task import TaskSpec
from lingo_core.storage import MANIFEST, StorageError, write_manifest
from lingo_core.train.backend import TorchBackend
from lingo_core.train.checkpoint import (
    KEEP,
    CheckpointError,
    CheckpointWarning,
    load_checkpoint,
    resume_point,
    save_checkpoint,
)


def _backend(seed: int = 0) -> tuple[TorchBackend, nn.Module]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 2))
    backend = TorchBackend("cpu", grad_accum=1, max_grad_norm=1.0)
    backend.prepare(model, list(model.parameters()), lr=0.05, weight_decay=0.01, warmup_steps=1, total_steps=20)
    return backend, model


def _train_step(backend: TorchBackend, model: nn.Module) -> None:
    loss = model(torch.linspace(-1, 1, 64).view(4, 16)).pow(2).mean()
    backend.backward(loss)
    backend.step()


def _save(root: Path, backend: TorchBackend, model: nn.Module, step: int) -> Path:
    _train_step(backend, model)
    return save_checkpoint(root, step, backend, None, {"step": step}, backend.trainable_state())


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_manifest_last_only_safetensors_and_json_and_two_kept(tmp_path):
    backend, model = _backend()
    for step in (1, 2, 3):
        last = _save(tmp_path, backend, model, step)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-0000002", "step-0000003"]  # KEEP newest
    assert KEEP == 2
    files = {p.relative_to(last).as_posix() for p in last.rglob("*") if p.is_file()}
    assert MANIFEST in files
    listed = json.loads((last / MANIFEST).read_text())["files"]
    assert set(listed) == files - {MANIFEST}  # every file, hashed after the last write
    assert all(f.endswith((".safetensors", ".json")) for f in files), files  # no pickle (optimizer.pt) any more


def test_resume_restores_optimizer_exactly(tmp_path):
    backend, model = _backend()
    ckpt = _save(tmp_path, backend, model, 1)
    _train_step(backend, model)
    after = _weights(model)
    other, other_model = _backend(seed=5)  # different init: everything must come from the checkpoint
    state, best = load_checkpoint(ckpt, other, None)
    assert state["step"] == 1 and best is not None
    _train_step(other, other_model)
    for k, v in after.items():  # same step from the restored AdamW moments + scheduler -> same weights
        assert torch.equal(v, other_model.state_dict()[k]), k


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_file", "delete_manifest"])
def test_damaged_newest_falls_back_to_previous(tmp_path, damage):
    backend, model = _backend()
    first = _save(tmp_path, backend, model, 1)
    at_first = _weights(model)
    newest = _save(tmp_path, backend, model, 2)
    target = newest / "backend" / "optimizer.safetensors"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-50])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[-1] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "delete_file":
        target.unlink()
    else:
        (newest / MANIFEST).unlink()
    fresh, fresh_model = _backend(seed=3)
    with pytest.warns(CheckpointWarning, match=rf"{newest} is damaged .*resuming from {first}"):
        state, _ = load_checkpoint(newest, fresh, None)
    assert state["step"] == 1
    assert all(torch.equal(v, fresh_model.state_dict()[k]) for k, v in at_first.items())


def test_no_intact_checkpoint_is_one_error_naming_the_file(tmp_path):
    backend, model = _backend()
    only = _save(tmp_path, backend, model, 1)
    (only / "trainer_state.json").write_text('{"step": 99}')  # same length class, different bytes
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(only, _backend()[0], None)
    msg = str(info.value)
    assert f"{only / 'trainer_state.json'}" in msg and "expected" in msg and "\n" not in msg
    with pytest.raises(CheckpointError, match="no checkpoint here; expected a step-\\* folder"):
        load_checkpoint(tmp_path / "empty", _backend()[0], None)


@pytest.mark.parametrize("remanifest", [False, True], ids=["after_manifest", "manifest_agrees"])
def test_corrupt_trainer_state_reports_the_step_of_the_fallback(tmp_path, remanifest):
    """The worker logs resume_point(resume_dir).step as the resumed step: it must be the step load_checkpoint
    restores (the intact older sibling), never a JSONDecodeError from the damaged newest. manifest_agrees:
    the state was bad before the manifest was taken (a bug, an edit), so only parsing it catches it."""
    backend, model = _backend()
    _save(tmp_path, backend, model, 1)
    newest = _save(tmp_path, backend, model, 2)
    (newest / "trainer_state.json").write_text('{"step": 2, "best')  # torn JSON
    if remanifest:
        write_manifest(newest)
    with pytest.warns(CheckpointWarning, match="trainer_state.json"):
        assert resume_point(newest).step == 1
    with pytest.warns(CheckpointWarning):
        state, _ = load_checkpoint(newest, _backend()[0], None)
    assert state["step"] == 1  # the step reported is the step restored


def test_both_trainer_states_corrupt_is_a_checkpoint_error_naming_the_file(tmp_path):
    backend, model = _backend()
    older, newest = _save(tmp_path, backend, model, 1), _save(tmp_path, backend, model, 2)
    for folder in (older, newest):
        (folder / "trainer_state.json").write_text("not json at all")
        write_manifest(folder)  # intact by the manifest: the bad JSON itself must be caught
    with pytest.raises(CheckpointError) as info:
        resume_point(newest)
    msg = str(info.value)
    assert f"{newest / 'trainer_state.json'}" in msg and "expected" in msg and "1 older damaged" in msg
    assert "\n" not in msg


def _torn_state(folder: Path) -> None:
    (folder / "trainer_state.json").write_text('{"step": 2, "best')


def _no_manifest(folder: Path) -> None:  # a copy interrupted before its last file
    (folder / MANIFEST).unlink()


def _missing_shard(folder: Path) -> None:  # a partial copy: a listed file never arrived
    next((folder / "backend").glob("*.safetensors")).unlink()


def _flipped_byte(folder: Path) -> None:  # same size, other bytes: only the sha256 sees it
    file = folder / "best_trainable.safetensors"
    data = bytearray(file.read_bytes())
    data[-1] ^= 0xFF
    file.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_torn_state, _no_manifest, _missing_shard, _flipped_byte],
                         ids=lambda f: f.__name__.strip("_"))
def test_one_verification_rule_for_the_logged_step_and_the_restored_one(tmp_path, damage):
    """The worker logs resume_point's step and train() restores resume_point's folder: for every kind of
    damage both name the intact older checkpoint, and a ResumePoint is restored as picked (no second
    check with rules of its own). Verifying in load_checkpoint again, or a worker-side check, would
    disagree on one of these damages or on the manifest lost after the pick below."""
    backend, model = _backend()
    older = _save(tmp_path, backend, model, 1)
    at_older = _weights(model)
    newest = _save(tmp_path, backend, model, 2)
    damage(newest)
    with pytest.warns(CheckpointWarning, match=f"{newest} is damaged"):
        point = resume_point(newest)
    assert (point.folder, point.step) == (older, 1)
    with pytest.warns(CheckpointWarning):
        state, _ = load_checkpoint(newest, _backend()[0], None)  # a plain path: the same pick
    assert state["step"] == point.step

    fresh, fresh_model = _backend(seed=3)
    (older / MANIFEST).unlink()  # after the pick: the picked point is restored, not verified again
    state, best = load_checkpoint(point, fresh, None)
    assert state["step"] == 1 and best is not None
    assert all(torch.equal(v, fresh_model.state_dict()[k]) for k, v in at_older.items())


class _Probe(nn.Module):
    """A classifier-shaped module: save_adapter exports its `score` head for the probe method."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.score = nn.Linear(64, 64), nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(self.body(x))


@contextlib.contextmanager
def _file_size_limit(limit: int):
    """A real write failure, as on a full disk: the kernel refuses to grow any file of this process past
    `limit` bytes (EFBIG). SIGXFSZ is ignored so the write fails instead of the signal killing pytest. In
    process rather than in a subprocess: a fresh interpreter importing torch costs seconds of CI."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


def test_full_disk_is_one_clear_error_and_leaves_the_previous_artifacts(tmp_path):
    torch.manual_seed(0)
    model = _Probe()
    backend = TorchBackend("cpu")
    backend.prepare(model, list(model.parameters()), lr=0.1, weight_decay=0.0, warmup_steps=0, total_steps=9)
    model(torch.ones(2, 64)).sum().backward()
    backend.step()
    kw = dict(task=TaskSpec("t", tmp_path, 2, ("a", "b"), 10, "test task"), tokenizer_mode="bbpe", template="T",
              base_identity={"name": "x"}, method="probe")
    save_checkpoint(tmp_path / "ckpt", 1, backend, None, {"step": 1}, None)
    save_adapter(model, tmp_path / "adapter", metrics={"v": 1}, **kw)
    with _file_size_limit(4096):  # the optimizer state is ~33 KiB, the head ~0.6 KiB, its lingo.json ~0.7 KiB
        with pytest.raises(StorageError) as ckpt:
            save_checkpoint(tmp_path / "ckpt", 2, backend, None, {"step": 2}, None)
        with pytest.raises(StorageError) as adapter:
            save_adapter(model, tmp_path / "adapter", metrics={"v": 2, "pad": "x" * 8000}, **kw)
    msg = str(ckpt.value)
    assert msg.startswith(f"cannot write checkpoint of step 2 (the previous one is kept) {tmp_path / 'ckpt'}/"
                          "step-0000002: File too large") and "\n" not in msg
    assert str(adapter.value).startswith(f"cannot write adapter folder {tmp_path / 'adapter'}: File too large")
    # nothing half-written under a final name, no temporary folder left, the previous ones intact
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step-0000001"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "ckpt"]
    assert json.loads((tmp_path / "adapter" / "lingo.json").read_text())["metrics"] == {"v": 1}
    assert load_checkpoint(tmp_path / "ckpt", backend, None)[0]["step"] == 1  # the root resolves to step 1
