"""Loading base language models: the tokenizer, the sequence classifier, the de-quantised GGUF cache,
the default adapter targets of a model family, and the tiny random LM of the tests.

A model is named by a `BaseModelRef` (`lingo_core.model_ref.resolve_model`); what was loaded is recorded by
`lingo_core.model_identity`. Loading always goes through `from_pretrained`, the same path users take, so
the tiny random model used in tests exercises the real code.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from lingo_core.model_identity import weights_sha256
from lingo_core.model_ref import DEFAULT_MODEL, BaseModelRef, resolve_model

_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEFAULT_TARGET_MODULES: dict[str, list[str]] = {
    "llama": list(_LLAMA_LIKE),
    "mistral": list(_LLAMA_LIKE),
    "qwen2": list(_LLAMA_LIKE),
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}
"""Attention + MLP projection names per model family (``config.model_type``), the default adapter targets."""
HEAD_NAMES = ("score", "classifier")
"""The head attribute of HF sequence classifiers (LLaMA/OPT: score): new for every task, never part of the
base."""


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Silence transformers' progress bars (GGUF de-quantising, shard reading/writing) for one call."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    gguf_utils = None
    try:  # local: the module exists only in some transformers versions (and needs the gguf package)
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # older transformers: nothing to silence there
        pass
    # The GGUF converter calls tqdm directly rather than through hf logging, so swap in a disabled one.
    original = getattr(gguf_utils, "tqdm", None)
    if original is not None:
        gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        if original is not None:
            gguf_utils.tqdm = original
        if was_enabled:
            hf_logging.enable_progress_bar()


def _from_pretrained_kwargs(ref: BaseModelRef) -> dict:
    return {"gguf_file": ref.gguf_file} if ref.gguf_file else {}


def _gguf_dequantize_config() -> dict:
    # transformers 5 keeps GGUF weights packed when a matmul kernel is installed and otherwise marks the
    # de-quantised model as "quantized" (not trainable, not serialisable, .float() refused). Asking for
    # dequantize explicitly gives a plain dense model either way. Older transformers always de-quantise.
    try:  # local: GgufConfig exists only in transformers 5
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


_TOKENIZER_CACHE: dict[tuple, PreTrainedTokenizerBase] = {}
_TOKENIZER_LOCK = threading.Lock()


CACHE_ENV = "LINGO_CACHE_DIR"
"""Where de-quantised GGUF models are kept (default ~/.cache/lingo, or $XDG_CACHE_HOME/lingo); set it to
the empty string to always read the GGUF file itself."""

_DENSE_DONE = "lingo-dense.json"  # written last: a folder without it is incomplete and is rebuilt


def _cache_root() -> Path | None:
    value = os.environ.get(CACHE_ENV)
    if value == "":
        return None
    if value:
        return Path(value)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lingo"


def dense_ref(ref: BaseModelRef) -> BaseModelRef:
    """For a GGUF model: a plain HF folder with its de-quantised fp32 weights and its tokenizer, built once
    per GGUF file (keyed by its sha256) and reused by every later load; other refs come back unchanged.

    Why: de-quantising SmolLM2's GGUF and building its tokenizer take 15-45 s of CPU on every load, and
    a sweep loads the base once per trial; the dense folder loads in about a second. Every load reads
    the folder (the first one builds it first), so a seed gives the same head whether or not the cache
    existed. The weights are the de-quantised values unchanged (fp32), so results do not depend on it.
    """
    root = _cache_root()
    if not ref.gguf_file or root is None:
        return ref
    source = Path(ref.path) / ref.gguf_file
    folder = root / "dense" / weights_sha256(source)[:24]
    if not (folder / _DENSE_DONE).is_file():
        _build_dense(ref, folder)
    return BaseModelRef(name=ref.name, path=str(folder))


def _build_dense(ref: BaseModelRef, folder: Path) -> None:
    """Write the dense folder next to its final name and rename it into place (processes that race
    here each build one; the first rename wins and the others drop theirs)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        # fork_rng: building must not advance the global RNG, or the head a seed gives would depend on
        # whether this load built the cache
        with _quiet_loading(), torch.random.fork_rng(devices=[]):
            tokenizer = AutoTokenizer.from_pretrained(ref.path, **_from_pretrained_kwargs(ref))
            model = _from_pretrained(ref, num_labels=2)
            head = _head_prefixes(model)
            weights = {k: v for k, v in model.state_dict().items() if not k.startswith(head)}
            model.save_pretrained(tmp, state_dict=weights, safe_serialization=True)  # no head: each load inits its own
            tokenizer.save_pretrained(tmp)
        (tmp / _DENSE_DONE).write_text(json.dumps({"source": str(Path(ref.path) / ref.gguf_file),
                                                   "gguf_file": ref.gguf_file}))
        tmp.rename(folder)  # atomic; the marker is inside, so a folder of this name is always complete
    except OSError as e:
        if not (folder / _DENSE_DONE).is_file():  # not a lost race with another process: a real failure
            raise OSError(f"cannot write the de-quantised model cache {folder} ({e}); free space there, "
                          f"point {CACHE_ENV} elsewhere, or set {CACHE_ENV}= to read the GGUF directly") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _head_prefixes(model: PreTrainedModel) -> tuple[str, ...]:
    return tuple(name + "." for name, _ in model.named_children() if name in HEAD_NAMES)


def _from_pretrained(ref: BaseModelRef, num_labels: int) -> PreTrainedModel:
    return AutoModelForSequenceClassification.from_pretrained(
        ref.path,
        num_labels=num_labels,
        dtype=torch.float32,  # GGUF is de-quantised; train adapters in fp32 (mixed precision is the backend's job)
        **_from_pretrained_kwargs(ref),
        **(_gguf_dequantize_config() if ref.gguf_file else {}),
    )


def load_tokenizer(ref: BaseModelRef) -> PreTrainedTokenizerBase:
    """The LM's own tokenizer with a pad token (eos when missing) and right padding.

    Building a tokenizer from GGUF takes seconds, so a template is kept per file and each call gets a
    deep copy (~0.1 s): callers may change their copy without affecting others.
    """
    ref = dense_ref(ref)
    key = _cache_key(ref)
    with _TOKENIZER_LOCK:
        template = _TOKENIZER_CACHE.get(key) if key is not None else None
    if template is None:
        with _quiet_loading():
            template = AutoTokenizer.from_pretrained(ref.path, **_from_pretrained_kwargs(ref))
        if template.pad_token_id is None:
            if template.eos_token is None:
                raise ValueError(f"tokenizer of {ref.name} has neither a pad nor an eos token to pad with")
            template.pad_token = template.eos_token
        # Right padding keeps position ids 0..n-1 for every prompt; the classifier reads the last non-pad token.
        template.padding_side = "right"
        if key is not None:
            with _TOKENIZER_LOCK:
                _TOKENIZER_CACHE[key] = template
    return copy.deepcopy(template)


def _cache_key(ref: BaseModelRef) -> tuple | None:
    # Keyed on the file's identity so a rewritten model folder is re-read; hub ids are not cached.
    target = Path(ref.path) / (ref.gguf_file or "tokenizer.json")
    try:
        st = target.stat()
    except OSError:
        return None
    return (str(target), st.st_mtime_ns, st.st_size)


def load_classifier(ref: BaseModelRef, num_labels: int) -> PreTrainedModel:
    """A fresh `AutoModelForSequenceClassification` in fp32 with `config.pad_token_id` set.

    Not cached: callers wrap and train the returned model in place. The head is newly initialised from
    torch's global RNG, so seed before calling for reproducible runs.
    """
    if num_labels < 1:
        raise ValueError(f"num_labels must be >= 1, got {num_labels}")
    ref = dense_ref(ref)
    tokenizer = load_tokenizer(ref)
    with _quiet_loading():
        model = _from_pretrained(ref, num_labels)
    if getattr(model, "hf_quantizer", None) is not None:
        raise RuntimeError(
            f"{ref.name} loaded as a quantized model ({model.hf_quantizer.quantization_config.quant_method}); "
            "adapters need dense weights: upgrade transformers or convert the weights to safetensors"
        )
    model = model.float()  # transformers 5 may still materialise config.dtype (bf16) for some layers
    model.config.dtype = torch.float32
    # The head picks the last token that is not pad; without this it raises for batch size > 1.
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def family(model: PreTrainedModel) -> str:
    """Model family (``config.model_type``), e.g. "llama" or "opt"; the key of DEFAULT_TARGET_MODULES."""
    base = getattr(model, "base_model", model)  # PEFT wrappers expose the wrapped model here
    config = getattr(model, "config", None) or getattr(base, "config", None)
    model_type = getattr(config, "model_type", None)
    if not model_type:
        raise ValueError(f"{type(model).__name__} has no config.model_type; cannot tell its family")
    return str(model_type)


def save_tiny_random_model(
    out_dir: str | Path,
    tokenizer_ref: BaseModelRef | None = None,
    hidden_size: int = 64,  # tiny: a forward pass on CPU takes milliseconds
    num_layers: int = 2,  # two layers still exercise per-layer adapter targeting
    num_heads: int = 4,
    num_kv_heads: int = 2,  # < num_heads, so grouped-query attention (as in SmolLM2) is covered
    intermediate_size: int = 128,
    seed: int = 0,  # fixed: the same folder contents (and model_identity hash) on every call
) -> Path:
    """Save a randomly initialised LLaMA causal LM with a real tokenizer as a normal HF folder.

    The vocabulary is the real tokenizer's (SmolLM2 by default), so prompts tokenise exactly as with the
    real model while loading and training take a fraction of a second. Returns `out_dir`.
    """
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ValueError(
            f"hidden_size ({hidden_size}) must divide by num_heads ({num_heads}) and num_heads by "
            f"num_kv_heads ({num_kv_heads})"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(tokenizer_ref or resolve_model(DEFAULT_MODEL))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=8192,  # as SmolLM2, so long one-hot prompts fit
        tie_word_embeddings=True,  # as SmolLM2; also halves the file
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    fork_devices: list = []  # fork_rng on CPU only; do not touch CUDA RNG state
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).float()
    with _quiet_loading():
        model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
