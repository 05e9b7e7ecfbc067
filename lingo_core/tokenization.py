"""DNA prompts for a natural-language LM: the Lingo template, BBPE or one-hot DNA tokens, right padding.

A prompt is built from separately encoded segments, ``[specials] prefix DNA suffix [specials]``, so the
DNA span is known exactly and truncation can cut DNA without ever touching the template.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from transformers import PreTrainedTokenizerBase

TEMPLATE = "Domain: DNA {description}\nSequence: {sequence}\nAnnotation:"
MODES = ("bbpe", "onehot")  # the tokenization modes; TrainConfig and adapter_checks check against them
NUCLEOTIDES = "ACGTN"

_BBPE_TOKENS_PER_BP = 0.6  # SmolLM2 BBPE on all GUE train splits: mean 0.53, p99 0.60 tokens per bp
_TEMPLATE_TOKENS = 32  # the template is ~10 tokens; the rest leaves room for a task description
_PAD_MULTIPLE = 8  # lengths in multiples of 8 suit tensor cores and keep the number small to read


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt with one `{sequence}` slot and an optional `{description}` slot before it."""

    text: str = TEMPLATE
    """Format string; the default is the Lingo template from the paper."""

    def __post_init__(self) -> None:
        if self.text.count("{sequence}") != 1:
            raise ValueError(f"template must contain '{{sequence}}' exactly once, got {self.text!r}")
        head = self.text.split("{sequence}")[0]
        if "{description}" in self.text.split("{sequence}")[1] or self.text.count("{description}") > 1:
            raise ValueError(
                f"'{{description}}' may appear at most once and only before '{{sequence}}', got {self.text!r}"
            )
        try:
            head.format(description="")
        except (KeyError, IndexError) as exc:
            raise ValueError(f"template has a slot other than {{description}}/{{sequence}}: {exc}") from exc

    def prefix(self, description: str) -> str:
        """Text before the DNA (ends with "Sequence: " for the default template)."""
        return self.text.split("{sequence}")[0].format(description=description)

    @property
    def suffix(self) -> str:
        """Text after the DNA ("\\nAnnotation:" for the default template)."""
        return self.text.split("{sequence}")[1]

    def render(self, sequence: str, description: str) -> str:
        """The whole prompt as text; what decoding the prompt's tokens gives back."""
        return self.prefix(description) + sequence + self.suffix


@dataclass(frozen=True)
class Encoded:
    """One tokenised prompt."""

    input_ids: list[int]
    dna_span: tuple[int, int]
    """[start, end) of the DNA tokens inside input_ids."""
    truncated: bool
    """True when DNA tokens were cut from the 3' end to fit max_length."""


def suggest_max_length(task_seq_len_bp: int, mode: str = "bbpe",
                       template_tokens: int = _TEMPLATE_TOKENS) -> int:
    """A max_length that fits nearly every prompt of a task whose sequences are ~`task_seq_len_bp` long.

    bbpe: SmolLM2's BBPE packs ~1.9 bp per token on GUE (not the 3+ bp of DNA-trained BPEs);
    onehot: one token per bp. Adds the template allowance and a 10% margin, rounded up to a multiple of 8.
    """
    _check_mode(mode)
    if task_seq_len_bp < 1:
        raise ValueError(f"task_seq_len_bp must be >= 1, got {task_seq_len_bp}")
    dna = math.ceil(task_seq_len_bp * _BBPE_TOKENS_PER_BP) if mode == "bbpe" else task_seq_len_bp
    total = dna + math.ceil(0.1 * dna) + template_tokens
    return _PAD_MULTIPLE * math.ceil(total / _PAD_MULTIPLE)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown tokenization mode {mode!r}; choose one of {MODES}")


class LingoTokenizer:
    """Turns (DNA, task description) into LM prompts, and batches them with right padding.

    Right padding keeps position ids 0..n-1 for every prompt (LLaMA/OPT compute positions from the
    start), and the HF classification head reads the last non-pad token, i.e. the template's final ":".
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, mode: str = "bbpe", max_length: int | None = None,
                 template: PromptTemplate | None = None) -> None:
        _check_mode(mode)
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be >= 1 or None (no truncation), got {max_length}")
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no pad token; load it with lingo_core.modeling.load_tokenizer")
        self.tokenizer = tokenizer
        self.mode = mode
        self.max_length = max_length
        self.template = template or PromptTemplate()
        self.pad_token_id: int = int(tokenizer.pad_token_id)
        self._head, self._tail = self._special_tokens()
        self._suffix_ids = self._segment(self.template.suffix, "template suffix")
        self._prefix_ids: dict[str, list[int]] = {}
        self._onehot_lut = self._onehot_table() if mode == "onehot" else None

    # --- building blocks -------------------------------------------------------------------------

    def _special_tokens(self) -> tuple[list[int], list[int]]:
        # Whatever the tokenizer adds around one text (BOS for LLaMA-2, </s> for OPT, nothing for SmolLM2),
        # added once around the whole prompt so prompts look like the LM's own inputs.
        probe = "Sequence"
        bare = self.tokenizer(probe, add_special_tokens=False)["input_ids"]
        full = self.tokenizer(probe, add_special_tokens=True)["input_ids"]
        for start in range(len(full) - len(bare) + 1):
            if full[start : start + len(bare)] == bare:
                return full[:start], full[start + len(bare) :]
        return [], []  # specials merged into the text: add none rather than guess

    def _segment(self, text: str, what: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if self.pad_token_id in ids:
            raise ValueError(
                f"the {what} {text!r} contains the pad token {self.tokenizer.pad_token!r}; the classifier "
                "would skip it when looking for the last real token. Remove it from the template/description"
            )
        return ids

    def _prefix(self, description: str) -> list[int]:
        ids = self._prefix_ids.get(description)
        if ids is None:
            ids = self._segment(self.template.prefix(description), "template prefix")
            self._prefix_ids[description] = ids
        return ids

    def _onehot_table(self) -> np.ndarray:
        lut = np.full(256, -1, dtype=np.int64)  # byte -> token id; -1 = not a nucleotide
        for letter in NUCLEOTIDES:
            token_id = self.tokenizer.convert_tokens_to_ids(letter)
            if token_id is None or token_id == self.tokenizer.unk_token_id:
                ids = self.tokenizer(letter, add_special_tokens=False)["input_ids"]
                token_id = ids[0] if len(ids) == 1 else None
            if token_id is None or self.tokenizer.decode([token_id]).strip() != letter:
                raise ValueError(
                    f"onehot mode needs a single-character token for {letter!r}, but this vocabulary "
                    f"({type(self.tokenizer).__name__}, {len(self.tokenizer)} tokens) has none; use mode='bbpe'"
                )
            lut[ord(letter)] = token_id
        return lut

    @property
    def nucleotide_ids(self) -> dict[str, int]:
        """onehot mode: the token id of each nucleotide letter."""
        if self._onehot_lut is None:
            raise AttributeError("nucleotide_ids exists in onehot mode only")
        return {letter: int(self._onehot_lut[ord(letter)]) for letter in NUCLEOTIDES}

    def _dna_ids(self, sequences: list[str]) -> list[list[int]]:
        if self.mode == "bbpe":
            return self.tokenizer(sequences, add_special_tokens=False)["input_ids"]
        out = []
        for index, seq in enumerate(sequences):
            ids = self._onehot_lut[np.frombuffer(seq.encode("latin-1", "replace"), dtype=np.uint8)]
            if (ids < 0).any():
                pos = int(np.argmax(ids < 0))
                raise ValueError(
                    f"sequence {index} has {seq[pos]!r} at position {pos}; onehot mode accepts only "
                    f"{NUCLEOTIDES} (upper case)"
                )
            out.append(ids.tolist())
        return out

    def _assemble(self, prefix: list[int], dna: list[int]) -> Encoded:
        fixed = len(self._head) + len(prefix) + len(self._suffix_ids) + len(self._tail)
        truncated = False
        if self.max_length is not None:
            room = self.max_length - fixed
            if room < 1:
                raise ValueError(
                    f"max_length={self.max_length} leaves no room for DNA: the template alone takes {fixed} "
                    f"tokens; use max_length >= {fixed + 1} (suggest_max_length() gives a fitting value)"
                )
            if len(dna) > room:
                dna, truncated = dna[:room], True  # keep the 5' start: cut from the 3' end
        start = len(self._head) + len(prefix)
        ids = self._head + prefix + dna + self._suffix_ids + self._tail
        return Encoded(input_ids=ids, dna_span=(start, start + len(dna)), truncated=truncated)

    # --- public API ------------------------------------------------------------------------------

    def encode(self, sequence: str, description: str) -> Encoded:
        """Tokenise one prompt; `dna_span` marks the DNA tokens."""
        return self._assemble(self._prefix(description), self._dna_ids([sequence])[0])

    def encode_table(self, table: pa.Table, description: str) -> list[dict]:
        """Tokenise a split (columns `sequence`, and `label` when present) into collate-ready rows.

        Warns once per call with how many sequences were cut to max_length.
        """
        if "sequence" not in table.column_names:
            raise ValueError(f"table needs a 'sequence' column, has {table.column_names}")
        sequences = table.column("sequence").to_pylist()
        labels = table.column("label").to_pylist() if "label" in table.column_names else None
        prefix = self._prefix(description)
        rows, cut = [], 0
        for index, dna in enumerate(self._dna_ids(sequences)):
            enc = self._assemble(prefix, dna)
            cut += enc.truncated
            row = {"input_ids": enc.input_ids}
            if labels is not None:
                row["label"] = int(labels[index])
            rows.append(row)
        if cut:
            warnings.warn(
                f"{cut} of {len(rows)} sequences were cut to max_length={self.max_length} tokens "
                f"(DNA 3' end dropped, template kept)",
                stacklevel=2,
            )
        return rows

    def collate(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        """Right-pad a batch: input_ids, attention_mask, and labels (LongTensor) when rows carry them."""
        if not batch:
            raise ValueError("cannot collate an empty batch")
        width = max(len(row["input_ids"]) for row in batch)
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, row in enumerate(batch):
            n = len(row["input_ids"])
            input_ids[i, :n] = torch.as_tensor(row["input_ids"], dtype=torch.long)
            attention_mask[i, :n] = 1
        out = {"input_ids": input_ids, "attention_mask": attention_mask}
        if all("label" in row for row in batch):
            out["labels"] = torch.tensor([row["label"] for row in batch], dtype=torch.long)
        elif any("label" in row for row in batch):
            raise ValueError(
                "some rows have a label and some do not; collate labelled and unlabelled rows apart"
            )
        return out

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        """Alias of `collate`, so the tokenizer can be passed as a DataLoader collate_fn."""
        return self.collate(batch)
