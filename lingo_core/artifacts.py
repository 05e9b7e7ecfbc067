"""Exported fine-tuned models: one folder per task, safetensors + JSON only (nothing is ever unpickled).

Layout (`save_adapter`):
  adapter_config.json, adapter_model.safetensors   PEFT format (ars, lora, adalora, prefix); for ars and
                                                   adalora the config carries the final rank_pattern
  head.safetensors                                 the classification head (every method but full)
  model.safetensors                                the whole classifier (full fine-tuning only)
  lingo.json                                       task, labels, template, tokenization, base model identity
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn
from transformers import PreTrainedTokenizerBase

from lingo_core.adapter_checks import FORMAT_VERSION, AdapterError, read_adapter_meta
from lingo_core.cliparse import first_line
from lingo_core.method_names import PEFT_METHODS, RANK_METHODS
from lingo_core.model_identity import model_identity
from lingo_core.model_ref import BaseModelRef, resolve_model
from lingo_core.modeling import HEAD_NAMES, load_classifier, load_tokenizer
from lingo_core.storage import atomic_dir, sha256_file
from lingo_core.tokenization import LingoTokenizer, PromptTemplate

_HEAD_NAMES = (*HEAD_NAMES, "classification_head")  # LLaMA/OPT use score; BERT-likes classifier


def _base_model(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def head_module(model: nn.Module) -> nn.Module:
    """The classification head actually used in forward (PEFT's trained copy when wrapped)."""
    base = _base_model(model)
    for name in _HEAD_NAMES:
        head = getattr(base, name, None)
        if head is not None:
            break
    else:
        raise ValueError(f"{type(base).__name__} has no classification head named one of {_HEAD_NAMES}")
    to_save = getattr(head, "modules_to_save", None)  # PEFT ModulesToSaveWrapper
    if to_save is not None:
        return to_save[head.active_adapters[0]]
    return head


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_adapter(
    model: nn.Module,
    out_dir: str | Path,
    *,
    task,
    tokenizer_mode: str,
    template: str,
    base_identity: dict,
    metrics: dict,
    method: str,
    rank_pattern: dict[str, list[bool]] | None = None,
    max_length: int | None = None,
) -> Path:
    """Write the exported model to `out_dir` (replaced if present) and return it.

    `task` is the TaskSpec (name, label names, description). The folder is assembled next to its final
    name and renamed into place, so readers never see a half-written export; a failed write (full disk)
    is a StorageError and leaves any previous export in place.
    """
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, "adapter folder") as tmp:
        files = []
        if method in PEFT_METHODS:
            if not hasattr(model, "save_pretrained") or not hasattr(model, "peft_config"):
                raise ValueError(f"method {method!r} needs a PEFT model; got {type(model).__name__}")
            if method in RANK_METHODS and rank_pattern is not None:
                for cfg in model.peft_config.values():
                    # PEFT trims the saved lora_E/A/B to this mask and resizes the modules on load.
                    cfg.rank_pattern = {k: list(map(bool, v)) for k, v in rank_pattern.items()}
            with warnings.catch_warnings():
                # Rank allocation may prune a module to rank 0; PEFT reads the resulting (0, d) tensors
                # as unsharded ZeRO-3 / FSDP shards. Here they are the intended final pattern.
                warnings.filterwarnings("ignore", message=r".*LoRA tensor\(s\) have invalid shape")
                model.save_pretrained(str(tmp), safe_serialization=True)
            files += ["adapter_config.json", "adapter_model.safetensors"]
        if method == "full":
            save_model(_base_model(model), str(tmp / "model.safetensors"))  # handles tied weights
            files.append("model.safetensors")
        else:
            head = {k: v.detach().cpu().contiguous() for k, v in head_module(model).state_dict().items()}
            save_file(head, str(tmp / "head.safetensors"))
            files.append("head.safetensors")
        meta = {
            "format_version": FORMAT_VERSION,
            "task": task.name,
            "description": task.description,
            "num_labels": task.num_labels,
            "label_names": list(task.label_names),
            "template": template,
            "tokenization": tokenizer_mode,
            "max_length": max_length,
            "base_model": dict(base_identity),
            "method": method,
            "metrics": metrics,
            "rank_pattern": rank_pattern if method in RANK_METHODS else None,
            "files": files,
            # lingo.json is written last: the loader checks every file against these before reading it
            "sha256": {name: sha256_file(tmp / name) for name in files},
        }
        (tmp / "lingo.json").write_text(json.dumps(_json_safe(meta), indent=1))
    return out_dir


def resolve_base(meta: dict, base_model: str | Path | None = None, meta_file: Path | None = None):
    """The BaseModelRef an export was trained on (or `base_model`), verified against its recorded sha256;
    AdapterError "<lingo.json>: base_model.sha256: base model mismatch ..." when the weights found differ."""
    ident = meta["base_model"]
    if base_model is not None:
        ref = resolve_model(str(base_model))
    elif ident.get("path") and Path(ident["path"]).is_dir():
        ref = BaseModelRef(name=ident["name"], path=ident["path"], gguf_file=ident.get("gguf_file"))
    else:
        ref = resolve_model(ident["name"])  # moved machines: the alias / hub id still resolves
    want = ident.get("sha256")
    if want:
        got = model_identity(ref)["sha256"]
        if got != want:
            raise AdapterError(
                f"{meta_file or 'lingo.json'}: base_model.sha256: base model mismatch: adapter was trained on "
                f"{ident['name']!r} with weights sha256 {want}, but {ref.path} has sha256 {got}; point base_model "
                "(lingo predict: --base-model) at the original weights"
            )
    return ref


def read_meta(path: str | Path) -> dict:
    """The lingo.json of an exported folder, after the folder itself is checked (adapter_checks: no pickle
    files, keys and types, every listed file present with its recorded sha256); AdapterError otherwise."""
    return read_adapter_meta(Path(path))


def apply_adapter(model: nn.Module, path: str | Path, meta: dict) -> nn.Module:
    """Put an export's trained part onto a fresh classifier of its base: the PEFT adapter (PEFT reads
    adapter_model.safetensors, which read_meta found intact, so never its pickle fallback), then the head,
    or the whole weights for full fine-tuning. Eval mode. Weights that do not fit are one AdapterError."""
    path = Path(path)
    method = meta["method"]
    try:
        if method in PEFT_METHODS:
            from peft import PeftModel  # PEFT is heavy and only PEFT-format exports need it

            with warnings.catch_warnings():
                # AdaLoRA keys rank_pattern by parameter ('...q_proj.lora_E'), which PEFT's generic LoRA-style
                # pattern check reports as unmatched; the pattern is still applied (resize on state-dict load).
                warnings.filterwarnings("ignore", message="The following rank_pattern keys did not match")
                model = PeftModel.from_pretrained(model, str(path))
        if method == "full":
            load_model(model, str(path / "model.safetensors"))  # strict: any missing/extra tensor raises
        else:
            head_module(model).load_state_dict(load_file(str(path / "head.safetensors")))
    except (RuntimeError, ValueError, KeyError) as e:  # shapes or names that do not fit this base model
        if isinstance(e, AdapterError):
            raise
        name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        raise AdapterError(f"{path}: weights do not fit base model {name!r} with {meta['num_labels']} labels "
                           f"({first_line(e)}); expected an adapter trained on this base") from None
    return model.eval()


def export_tokenizer(hf_tokenizer: PreTrainedTokenizerBase, meta: dict) -> LingoTokenizer:
    """The prompts an export was trained on: its template, tokenization mode and max_length over the base's
    own tokenizer (load_adapter and every Predictor slot build it here)."""
    return LingoTokenizer(hf_tokenizer, mode=meta["tokenization"], max_length=meta["max_length"],
                          template=PromptTemplate(meta["template"]))


def load_adapter(path: str | Path, base_model: str | Path | None = None):
    """Load an exported folder -> (model in eval mode, LingoTokenizer, lingo.json dict).

    The folder is checked first (read_meta), then the base is resolved from lingo.json (or `base_model`)
    and verified against the recorded sha256. Every problem is an AdapterError naming the file and key.
    Only JSON and safetensors are read; nothing is unpickled.
    """
    path = Path(path)
    meta = read_meta(path)
    ref = resolve_base(meta, base_model, path / "lingo.json")
    model = apply_adapter(load_classifier(ref, meta["num_labels"]), path, meta)
    return model, export_tokenizer(load_tokenizer(ref), meta), meta
