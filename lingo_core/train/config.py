"""TrainConfig: every knob of one fine-tuning run. The dataclass IS the CLI (lingo_core.cli builds flags
from it) and the orchestrator's job spec builds it through `from_dict`, so validation lives here."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from lingo_core.tokenization import MODES
from lingo_core.tuners.config import AdapterSettings
from lingo_core.typed import build, is_int


@dataclass
class TrainConfig:
    task: str = "prom_core_tata"  # 70 bp promoters: short prompts, learns within a few hundred steps
    """GUE task name or unique suffix (see `lingo data report`)."""
    data_root: str | None = None  # None -> $LINGO_DATA_ROOT or ../shared/data/gue (default_data_root())
    """Folder holding tasks.json and the task folders."""
    model: str = "smollm2"  # the bundled SmolLM2-135M: small enough to fine-tune on CPU
    """Base LM: alias, local HF folder, local .gguf file or hub id."""
    tokenization: str = "bbpe"  # the LM's own byte-level BPE: no vocabulary surgery needed
    """How DNA is tokenized: "bbpe" (model tokenizer) or "onehot" (one token per nucleotide)."""
    max_length: int | None = None  # None -> suggest_max_length(): covers the task's sequences + prompt
    """Max tokens per example (prompt included); longer sequences are cut."""
    epochs: int = 3  # GUE fine-tuning recipes (DNABERT-2) converge in a few epochs
    """Passes over the (sub-sampled) training set."""
    max_steps: int | None = None  # None -> epochs decide
    """Upper bound on optimizer steps (a cap; never extends training beyond `epochs`)."""
    batch_size: int = 8  # per device micro-batch; fits SmolLM2-135M at 512 tokens on CPU and small GPUs
    """Micro-batch size per device."""
    grad_accum: int = 1  # 1: no accumulation unless memory forces it
    """Micro-batches accumulated per optimizer step."""
    lr: float = 5e-4  # adapters tolerate larger lr than full fine-tuning; 5e-4 is the LoRA/AdaLoRA norm
    """Peak learning rate (after warm-up)."""
    weight_decay: float = 0.01  # mild AdamW decay, standard for transformer fine-tuning
    """AdamW decoupled weight decay."""
    warmup_ratio: float = 0.06  # RoBERTa/LoRA recipes: 6% linear warm-up avoids early divergence
    """Fraction of total steps spent warming the lr up linearly from 0."""
    max_grad_norm: float | None = 1.0  # standard clipping; None/0 disables
    """Global gradient-norm clip."""
    eval_batch_size: int | None = None  # None -> 4 x batch_size: a forward pass keeps no activations for backward
    """Batch size of the dev and test passes (results do not depend on it)."""
    eval_every: int | None = None  # None -> once per epoch: cheap and enough for model selection
    """Evaluate on dev every N optimizer steps (and at the last step)."""
    log_every: int = 10  # frequent enough for a live loss curve, rare enough not to flood MLflow
    """Report loss/lr/budget every N optimizer steps."""
    seed: int = 42  # fixed so reruns are identical
    """Seeds data order, subsets, dropout and the adapter's rank sampler."""
    max_train_samples: int | None = None  # None -> the whole training split
    """Seeded class-stratified training subset size (quick runs, tests)."""
    max_eval_samples: int | None = None  # None -> whole dev/test splits
    """Seeded class-stratified subset size for dev and test each."""
    output_dir: str = "runs/train"  # ignored by git (.gitignore has runs/)
    """The run folder (layout: lingo_core/run_folder.py). train() writes adapter/ and, with save_checkpoints,
    checkpoints/; write_result (called by `lingo train` and the orchestrator's worker) adds result.json,
    test_predictions.json and plots/."""
    num_workers: int = 0  # examples are pre-tokenized lists: worker processes only add fork overhead
    """DataLoader worker processes."""
    save_checkpoints: bool = False  # checkpoints cost disk and time; only the orchestrator needs resume
    """Write a resumable checkpoint at every evaluation."""
    adapter: AdapterSettings = field(default_factory=AdapterSettings)
    """Adapter method and its hyper-parameters (ars, lora, adalora, prefix, full, probe)."""

    def __post_init__(self) -> None:
        if isinstance(self.adapter, dict):  # allow TrainConfig(adapter={...}) like from_dict does
            self.adapter = build(AdapterSettings, self.adapter, "adapter")
        if not isinstance(self.task, str) or not self.task:
            raise ValueError(f"TrainConfig.task={self.task!r}: expected a non-empty task name like 'prom_core_tata'")
        if self.tokenization not in MODES:
            raise ValueError(f"TrainConfig.tokenization={self.tokenization!r}: expected one of {MODES}")
        for name in ("epochs", "batch_size", "grad_accum", "log_every"):
            _positive_int(self, name)
        for name in ("max_length", "max_steps", "eval_batch_size", "eval_every", "max_train_samples",
                     "max_eval_samples"):
            if getattr(self, name) is not None:
                _positive_int(self, name)
        if self.max_length is not None and self.max_length < 8:
            raise ValueError(f"TrainConfig.max_length={self.max_length}: expected >= 8 (the prompt alone needs more)")
        if not isinstance(self.lr, (int, float)) or not (0 < self.lr < 1):
            raise ValueError(f"TrainConfig.lr={self.lr!r}: expected a float in (0, 1), e.g. 5e-4")
        if not isinstance(self.weight_decay, (int, float)) or self.weight_decay < 0:
            raise ValueError(f"TrainConfig.weight_decay={self.weight_decay!r}: expected a float >= 0")
        if not isinstance(self.warmup_ratio, (int, float)) or not (0 <= self.warmup_ratio < 1):
            raise ValueError(f"TrainConfig.warmup_ratio={self.warmup_ratio!r}: expected a float in [0, 1)")
        if self.max_grad_norm is not None and (
            not isinstance(self.max_grad_norm, (int, float)) or self.max_grad_norm < 0
        ):
            raise ValueError(f"TrainConfig.max_grad_norm={self.max_grad_norm!r}: expected a float >= 0 or None")
        if not is_int(self.seed) or self.seed < 0:
            raise ValueError(f"TrainConfig.seed={self.seed!r}: expected an int >= 0")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"TrainConfig.num_workers={self.num_workers!r}: expected an int >= 0")
        if not isinstance(self.save_checkpoints, bool):
            raise ValueError(f"TrainConfig.save_checkpoints={self.save_checkpoints!r}: expected true or false")
        if not isinstance(self.output_dir, str) or not self.output_dir:
            raise ValueError(f"TrainConfig.output_dir={self.output_dir!r}: expected a non-empty path string")

    # ---- derived quantities -------------------------------------------------------------------------
    @property
    def eval_batch(self) -> int:
        """Examples per dev/test forward pass."""
        return self.eval_batch_size or 4 * self.batch_size

    def steps_per_epoch(self, n_train: int, world_size: int = 1) -> int:
        """Optimizer steps per epoch. Each rank sees ceil(n/world) examples (DistributedSampler pads);
        an incomplete accumulation group at the end of an epoch is dropped so every step sees
        batch_size * grad_accum * world_size examples (except a short last micro-batch)."""
        if n_train <= 0:
            raise ValueError(f"no training examples for task {self.task!r} (n_train={n_train})")
        per_rank = math.ceil(n_train / world_size)
        micro = math.ceil(per_rank / self.batch_size)
        steps = micro // self.grad_accum
        if steps == 0:
            raise ValueError(
                f"TrainConfig: {n_train} training examples over {world_size} rank(s) give {micro} micro-batch(es) "
                f"of batch_size={self.batch_size}, fewer than grad_accum={self.grad_accum}; "
                "lower batch_size/grad_accum or use more data"
            )
        return steps

    def total_steps(self, n_train: int, world_size: int = 1) -> int:
        """Optimizer steps of the whole run: epochs x steps_per_epoch, capped by max_steps."""
        total = self.epochs * self.steps_per_epoch(n_train, world_size)
        return min(total, self.max_steps) if self.max_steps is not None else total

    def warmup_steps(self, total_steps: int) -> int:
        return int(math.ceil(self.warmup_ratio * total_steps))

    def logs_at(self, step: int, total_steps: int) -> bool:
        """Whether optimizer step `step` is logged: every log_every steps, and the last step."""
        return step % self.log_every == 0 or step == total_steps

    def evaluates_at(self, step: int, steps_per_epoch: int, total_steps: int) -> bool:
        """Whether dev is evaluated after optimizer step `step`: every eval_every steps (None: at each epoch's
        end instead), and always after the last step."""
        due = step % self.eval_every == 0 if self.eval_every else step % steps_per_epoch == 0
        return due or step == total_steps

    # ---- (de)serialization ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Nested, JSON-safe dict; `from_dict(to_dict())` round-trips."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a nested dict (job spec, JSON, `lingo train`) through lingo_core.typed.build: unknown keys
        and wrong types raise FieldError (a ValueError) naming the full key path."""
        return build(cls, d, "")


def _positive_int(cfg: TrainConfig, name: str) -> None:
    v = getattr(cfg, name)
    if not is_int(v) or v < 1:
        raise ValueError(f"TrainConfig.{name}={v!r}: expected a positive integer")
