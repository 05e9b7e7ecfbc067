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
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

PEFT_METHODS = ("ars", "lora", "adalora", "prefix")
"""Methods whose trainable part is a PEFT adapter saved with `save_pretrained`."""

RANK_METHODS = ("ars", "adalora")
"""Methods whose adapter_config.json needs the final rank_pattern (AdaLoRA resizes on load from it)."""

FORMAT_VERSION = 1
"""lingo.json schema version; bump when the folder layout changes."""

_HEAD_NAMES = ("score", "classifier", "classification_head")  # LLaMA/OPT use score; BERT-likes classifier


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
    name and renamed into place, so readers never see a half-written export.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
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
        }
        (tmp / "lingo.json").write_text(json.dumps(_json_safe(meta), indent=1))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def resolve_base(meta: dict, base_model: str | Path | None = None):
    """The BaseModelRef an export was trained on (or ``base_model``), verified against its recorded sha256;
    ValueError "base model mismatch ..." when the weights found differ."""
    from lingo_core.modeling import BaseModelRef, model_identity, resolve_model

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
            raise ValueError(
                f"base model mismatch: adapter was trained on {ident['name']!r} with weights sha256 {want}, "
                f"but {ref.path} has sha256 {got}; point base_model (lingo predict: --base-model) at the original weights"
            )
    return ref


def read_meta(path: str | Path) -> dict:
    """The lingo.json of an exported folder, checked for the format this code reads."""
    path = Path(path)
    meta_file = path / "lingo.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{path} is not a Lingo export: lingo.json missing")
    meta = json.loads(meta_file.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{meta_file}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
    return meta


def apply_adapter(model: nn.Module, path: str | Path, meta: dict) -> nn.Module:
    """Put an export's trained part onto a fresh classifier of its base: the PEFT adapter (plain
    ``PeftModel.from_pretrained``), then the head, or the whole weights for full fine-tuning. Eval mode."""
    path = Path(path)
    method = meta["method"]
    if method in PEFT_METHODS:
        from peft import PeftModel

        with warnings.catch_warnings():
            # AdaLoRA keys rank_pattern by parameter ('...q_proj.lora_E'), which PEFT's generic LoRA-style
            # pattern check reports as unmatched; the pattern is still applied (resize on state-dict load).
            warnings.filterwarnings("ignore", message="The following rank_pattern keys did not match")
            model = PeftModel.from_pretrained(model, str(path))
    if method == "full":
        load_model(model, str(path / "model.safetensors"))  # strict: any missing/extra tensor raises
    else:
        head_module(model).load_state_dict(load_file(str(path / "head.safetensors")))
    return model.eval()


def load_adapter(path: str | Path, base_model: str | Path | None = None):
    """Load an exported folder -> (model in eval mode, LingoTokenizer, lingo.json dict).

    The base is resolved from lingo.json (or `base_model`) and verified against the recorded sha256.
    """
    from lingo_core.modeling import load_classifier, load_tokenizer
    from lingo_core.tokenization import LingoTokenizer, PromptTemplate

    meta = read_meta(path)
    ref = resolve_base(meta, base_model)
    model = apply_adapter(load_classifier(ref, meta["num_labels"]), path, meta)
    tok = LingoTokenizer(load_tokenizer(ref), mode=meta["tokenization"], max_length=meta["max_length"],
                         template=PromptTemplate(meta["template"]))
    return model, tok, meta
