"""Inference with exported adapters (the folders `artifacts.save_adapter` writes).

The base model is read and its sha256 checked once; each adapter is loaded by plain PEFT onto its own
module tree whose base weights are the very same tensors (frozen, so sharing is safe), with the task's
own head. The LoRA exports (lora; ars and adalora, whose SVD form B diag(E) A folds into LoRA factors)
are then copied into one `MultiTaskLoRA` (the training code's routed forward) and their PEFT trees
dropped; the others (prefix, full) keep their own.

    length-sorted batch of B sequences
      |-- each LoRA export tokenizes it (own template, tokenization, max_length)
      |     -> K blocks stacked, right-padded to the widest -> ONE routed forward, Routing.blocks(B)
      '-- each other export: its own tokenization and forward
    -> softmax probabilities per export, identical to loading each export alone
"""

from __future__ import annotations

import copy
import itertools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from lingo_core.artifacts import apply_adapter, export_tokenizer, read_meta, resolve_base
from lingo_core.data.errors import DataError
from lingo_core.data.loading import invalid_letter
from lingo_core.method_names import RANK_METHODS
from lingo_core.model_identity import model_identity
from lingo_core.modeling import HEAD_NAMES, load_classifier, load_tokenizer
from lingo_core.tokenization import LingoTokenizer

if TYPE_CHECKING:
    from lingo_core.multitask import MultiTaskLoRA

_ROUTED_METHODS = ("lora", *RANK_METHODS)  # what MultiTaskLoRA.from_peft_models loads exactly


class PredictError(ValueError):
    """Adapters that cannot run here or together; the message names the adapter and what to do."""


@dataclass(frozen=True)
class PredictSettings:
    batch_size: int = 16
    """Sequences per forward pass (per adapter: the routed forward holds batch_size rows per LoRA export)."""
    device: str | None = None
    """torch device; None: the first CUDA GPU when there is one, else CPU."""

    routed: bool = True
    """Run the LoRA-form exports (lora, ars, adalora) in one routed forward per batch (the same numbers, fewer passes);
    False: one forward per export, the reference path."""

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size!r}: expected an integer >= 1")
        if self.device is not None:
            try:
                torch.device(self.device)
            except RuntimeError as e:
                raise ValueError(f"device={self.device!r}: {e}") from None


def prediction_columns(label_names: Sequence[str], probs: np.ndarray, prefix: str = "") -> dict[str, object]:
    """Output columns for one task: label (int), label_name, and prob_<name> per class, in label order.
    The one owner of these names: the pyfunc signature and `lingo predict` both use it."""
    labels = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=np.int64)
    cols: dict[str, object] = {f"{prefix}label": labels.astype(np.int64),
                               f"{prefix}label_name": [label_names[i] for i in labels]}
    for k, name in enumerate(label_names):
        cols[f"{prefix}prob_{name}"] = probs[:, k].astype(np.float64)
    return cols


def base_key(meta: dict) -> str:
    """What must agree for adapters to share one base: the weights' sha256 (the name when unhashed)."""
    ident = meta["base_model"]
    return ident.get("sha256") or f"name:{ident['name']}"


@dataclass
class LoadedAdapter:
    path: Path
    meta: dict
    model: nn.Module | None
    """Its own classifier; None when it runs as a slot of `Predictor.routed`."""
    tokenizer: LingoTokenizer
    slot: int | None = None
    """Its task index in `Predictor.routed`, or None."""

    @property
    def task(self) -> str:
        return self.meta["task"]

    @property
    def label_names(self) -> list[str]:
        return list(self.meta["label_names"])


class Predictor:
    """Several exported adapters over one base model, loaded once."""

    def __init__(self, adapters: Sequence[str | Path], settings: PredictSettings | None = None,
                 base_model: str | Path | None = None, names: Sequence[str] | None = None) -> None:
        if not adapters:
            raise ValueError("Predictor needs at least one adapter folder")
        self.settings = settings or PredictSettings()
        names = list(names) if names is not None else [str(a) for a in adapters]
        metas = [read_meta(a) for a in adapters]
        keys = [base_key(m) for m in metas]
        if len(set(keys)) > 1:
            j = next(i for i, k in enumerate(keys) if k != keys[0])
            raise PredictError(
                f"models with different bases in one call: {names[0]} was trained on "
                f"{metas[0]['base_model']['name']!r} (sha256 {keys[0]}), {names[j]} on "
                f"{metas[j]['base_model']['name']!r} (sha256 {keys[j]}); predict with each base in its own call")
        try:
            ref = resolve_base(metas[0], base_model, Path(adapters[0]) / "lingo.json")  # checks the sha256: once, for all adapters
        except ValueError as e:
            raise PredictError(f"{names[0]}: {e}") from None
        self.base_identity = model_identity(ref)
        self.device = torch.device(self.settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        base = load_classifier(ref, 1)  # the head is replaced per task below
        hf_tokenizer = load_tokenizer(ref)
        self.adapters = [self._load(Path(a), m, base, hf_tokenizer) for a, m in zip(adapters, metas, strict=True)]
        self.routed: MultiTaskLoRA | None = self._route(base) if self.settings.routed else None

    def _route(self, base: nn.Module) -> MultiTaskLoRA | None:
        """The LoRA exports as slots of one MultiTaskLoRA over a shared-weight copy of `base`; None (every
        export keeps its own forward, with the same numbers) when there is none, or when one is not plain
        LoRA/AdaLoRA over the same layers as the others (from_peft_models raises then)."""
        # lingo_core.multitask imports PEFT (via lingo_core.tuners), heavy: importers of this module that only
        # need prediction_columns (orchestrator.mlflow_model) stay light, as apply_adapter's PEFT import does
        from lingo_core.multitask import MultiTaskLoRA

        lora = [a for a in self.adapters if a.meta["method"] in _ROUTED_METHODS]
        if not lora:
            return None
        try:
            routed = MultiTaskLoRA.from_peft_models(_shared_copy(base), [a.model for a in lora],
                                                    [f"{i}:{a.task}" for i, a in enumerate(lora)])
        except ValueError:
            return None
        for k, adapter in enumerate(lora):
            adapter.model, adapter.slot = None, k  # its factors and head now live in the routed slot
        return routed.to(self.device)

    def _load(self, path: Path, meta: dict, base: nn.Module, hf_tokenizer) -> LoadedAdapter:
        # full replaces every weight: it gets its own copy
        tree = copy.deepcopy(base) if meta["method"] == "full" else _shared_copy(base)
        _fresh_head(tree, meta["num_labels"])
        model = apply_adapter(tree, path, meta).to(self.device)
        return LoadedAdapter(path, meta, model, export_tokenizer(hf_tokenizer, meta))

    def predict(self, sequences: Sequence[str],
                progress: Callable[[int], None] | None = None) -> list[np.ndarray]:
        """Class probabilities, one (len(sequences), num_labels) float64 array per adapter, in input order.
        `progress(n)` is called after each batch with the number of sequences it held."""
        column = pa.array(list(sequences), pa.string())
        if (bad := invalid_letter(column)) is not None or column.null_count:
            row, problem = bad if bad is not None else (column.to_pylist().index(None), "missing sequence")
            raise DataError(f"row {row}: {problem}")
        seqs = [s.upper() for s in column.to_pylist()]
        out = [np.zeros((len(seqs), a.meta["num_labels"]), dtype=np.float64) for a in self.adapters]
        cut = [0] * len(self.adapters)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths: little padding
        size = self.settings.batch_size
        with torch.inference_mode():
            for start in range(0, len(order), size):
                idx = order[start:start + size]
                batch = [seqs[i] for i in idx]
                routed = self._routed_forward(batch) if self.routed is not None else {}
                for k, adapter in enumerate(self.adapters):
                    probs, n_cut = routed[k] if k in routed else self._forward(adapter, batch)
                    out[k][idx] = probs
                    cut[k] += n_cut
                if progress is not None:
                    progress(len(idx))
        for adapter, n in zip(self.adapters, cut, strict=True):
            if n:
                warnings.warn(f"{adapter.task}: {n} of {len(seqs)} sequences were cut to max_length="
                              f"{adapter.tokenizer.max_length} tokens (DNA 3' end dropped)", stacklevel=2)
        return out

    def _forward(self, adapter: LoadedAdapter, seqs: list[str]) -> tuple[np.ndarray, int]:
        encoded = [adapter.tokenizer.encode(s, adapter.meta["description"]) for s in seqs]
        batch = adapter.tokenizer.collate([{"input_ids": e.input_ids} for e in encoded])
        logits = adapter.model(**{k: v.to(self.device) for k, v in batch.items()}).logits
        probs = torch.softmax(logits.float(), dim=-1).cpu().numpy().astype(np.float64)
        return probs, sum(e.truncated for e in encoded)

    def _routed_forward(self, seqs: list[str]) -> dict[int, tuple[np.ndarray, int]]:
        """(probabilities, sequences cut) of every routed export, by its index in `adapters`: its block of
        the stacked batch is `seqs` tokenized its own way; the stack is right-padded to the widest block
        (padding after a row's last token changes nothing under causal attention)."""
        from lingo_core.routed_lora import Routing  # imported by _route already; see there

        slots = sorted((a.slot, k) for k, a in enumerate(self.adapters) if a.slot is not None)
        encoded = {k: [self.adapters[k].tokenizer.encode(s, self.adapters[k].meta["description"]) for s in seqs]
                   for _, k in slots}
        rows = [{"input_ids": e.input_ids} for _, k in slots for e in encoded[k]]  # block by block, in slot order
        batch = self.adapters[slots[0][1]].tokenizer.collate(rows)  # one base, one tokenizer: one pad id
        logits = self.routed(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device),
                             Routing.blocks(len(seqs)))
        out = {}
        for slot, k in slots:
            block = logits[slot * len(seqs):(slot + 1) * len(seqs), : self.adapters[k].meta["num_labels"]]
            probs = torch.softmax(block, dim=-1).cpu().numpy().astype(np.float64)
            out[k] = (probs, sum(e.truncated for e in encoded[k]))
        return out


def _shared_copy(base: nn.Module) -> nn.Module:
    """A copy of `base` with new modules over the very same (frozen) weight tensors."""
    shared = {id(t): t for t in itertools.chain(base.parameters(), base.buffers())}  # memo: each tensor is itself
    return copy.deepcopy(base, memo=shared)


def _fresh_head(model: nn.Module, num_labels: int) -> None:
    """Give a classifier a new head of `num_labels` outputs (its values come from the export)."""
    for name in HEAD_NAMES:
        old = getattr(model, name, None)
        if isinstance(old, nn.Linear):
            setattr(model, name, nn.Linear(old.in_features, num_labels, bias=old.bias is not None,
                                           dtype=old.weight.dtype))
            model.config.num_labels = num_labels
            if hasattr(model, "num_labels"):
                model.num_labels = num_labels
            return
    raise ValueError(f"{type(model).__name__} has no linear head named one of {HEAD_NAMES}")
