"""Bad adapter folders (issue 10 items 5-6): each is one AdapterError naming the file (and key) and what
was expected, raised before any weights are read; a pickle offered as weights is refused and never
unpickled (its __reduce__ would create a marker file). One real LoRA export of the tiny model is made per
module and copied per case."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from lingo_core.adapter_checks import AdapterError
from lingo_core.artifacts import load_adapter, save_adapter
from lingo_core.data.task import TaskSpec
from lingo_core.model_identity import model_identity
from lingo_core.model_ref import resolve_model
from lingo_core.modeling import load_classifier
from lingo_core.tokenization import TEMPLATE
from lingo_core.tuners.config import AdapterSettings
from lingo_core.tuners.methods import build_model


class _Payload:
    """Unpickling this runs open(marker, "w"): the marker file proves whether anything unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def export(tiny_model_dir, tmp_path_factory) -> Path:
    ref = resolve_model(str(tiny_model_dir))
    torch.manual_seed(0)
    model, _ = build_model(load_classifier(ref, 2), AdapterSettings(method="lora", lora_r=2), total_steps=4, seed=0)
    root = tmp_path_factory.mktemp("adapter")
    task = TaskSpec("t", root, 2, ("a", "b"), 10, "test task")
    return save_adapter(model, root / "export", task=task, tokenizer_mode="bbpe", template=TEMPLATE,
                        base_identity=model_identity(ref), metrics={}, method="lora", max_length=32)


@pytest.fixture
def folder(export, tmp_path) -> Path:
    return Path(shutil.copytree(export, tmp_path / "adapter"))


def _edit_meta(folder: Path, **changes) -> None:
    meta = json.loads((folder / "lingo.json").read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    (folder / "lingo.json").write_text(json.dumps(meta))


def _error(path: Path) -> str:
    with pytest.raises(AdapterError) as info:
        load_adapter(path)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_pickle_offered_as_weights_is_refused_and_never_unpickled(folder, tmp_path):
    marker = tmp_path / "UNPICKLED"
    payload = pickle.dumps(_Payload(marker))
    pickle.loads(payload)  # the payload is live: loading it really creates the marker ...
    assert marker.is_file()
    marker.unlink()
    # ... as PEFT's fallback file (it would torch.load adapter_model.bin when the safetensors is gone)
    (folder / "adapter_model.safetensors").unlink()
    (folder / "adapter_model.bin").write_bytes(payload)
    msg = _error(folder)
    assert msg.startswith(f"{folder / 'adapter_model.bin'}: pickle-format file in an adapter folder, refused")
    # ... and under the safetensors name, with the checksum removed so only the format check stands
    (folder / "adapter_model.bin").unlink()
    (folder / "adapter_model.safetensors").write_bytes(payload)
    _edit_meta(folder, sha256=None)
    msg = _error(folder)
    assert msg.startswith(f"{folder / 'adapter_model.safetensors'}: not a safetensors file")
    assert not marker.exists()


@pytest.mark.parametrize(("damage", "expected"), [
    ("truncated weights", "adapter_model.safetensors: sha256 differs from lingo.json 'sha256'"),
    ("missing head", "head.safetensors: missing (listed in lingo.json 'files')"),
    ("missing lingo.json", "lingo.json: missing; expected the folder written by lingo train / lingo tune"),
    ("broken lingo.json", "lingo.json:1: not valid JSON"),
    ("unknown method", "lingo.json: key 'method': expected one of"),
    ("label names", "lingo.json: key 'label_names': 3 names for num_labels=2"),
    ("old format", "lingo.json: format_version 0, expected 1"),
    ("files list", "lingo.json: key 'files' lacks ['head.safetensors']"),
])
def test_damaged_folder_names_file_and_key(folder, damage, expected):
    if damage == "truncated weights":
        f = folder / "adapter_model.safetensors"
        f.write_bytes(f.read_bytes()[:-16])
    elif damage == "missing head":
        (folder / "head.safetensors").unlink()
    elif damage == "missing lingo.json":
        (folder / "lingo.json").unlink()
    elif damage == "broken lingo.json":
        (folder / "lingo.json").write_text('{"format_version": 1,,}')
    elif damage == "unknown method":
        _edit_meta(folder, method="dora")
    elif damage == "label names":
        _edit_meta(folder, label_names=["a", "b", "c"])
    elif damage == "old format":
        _edit_meta(folder, format_version=0)
    else:
        _edit_meta(folder, files=["adapter_config.json", "adapter_model.safetensors"])
    msg = _error(folder)
    assert msg.startswith(str(folder)) and expected in msg, msg


def test_not_a_folder(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    assert _error(tmp_path / "weights.safetensors").endswith("not a folder; expected a Lingo adapter folder "
                                                              "holding lingo.json")


def test_weights_for_another_label_count_name_the_base(folder):
    _edit_meta(folder, num_labels=3, label_names=["a", "b", "c"])  # the head file still has 2 rows
    msg = _error(folder)
    assert msg.startswith(f"{folder}: weights do not fit base model") and "with 3 labels" in msg


def test_wrong_base_model_names_lingo_json_and_key(folder):
    meta = json.loads((folder / "lingo.json").read_text())
    meta["base_model"]["sha256"] = "0" * 64
    (folder / "lingo.json").write_text(json.dumps(meta))
    msg = _error(folder)
    assert msg.startswith(f"{folder / 'lingo.json'}: base_model.sha256: base model mismatch")
