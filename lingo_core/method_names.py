"""The fine-tuning method names: the one owner of which methods exist and which of them share a trait.

A leaf module that imports nothing, so light modules (the adapter folder checks, job validation, the
export code) can read the names without `lingo_core.tuners`, whose package `__init__` imports torch and
PEFT. Everyone else imports these tuples from here (`lingo_core.tuners` re-exports them).
"""

from __future__ import annotations

METHODS = ("ars", "lora", "adalora", "prefix", "full", "probe")
"""Every fine-tuning method `build_model` knows."""

RANK_METHODS = ("ars", "adalora")
"""Methods with an adaptive rank budget (init_r -> target_r) and a RankController; their exported
adapter_config.json carries the final rank_pattern (AdaLoRA resizes on load from it)."""

PEFT_METHODS = ("ars", "lora", "adalora", "prefix")
"""Methods whose trainable part is a PEFT adapter saved with `save_pretrained`."""

PACKABLE_METHODS = ("lora",)
"""Methods whose trials several tasks can share, on one frozen base (lingo_core.train.group: MultiTaskLoRA
routes plain LoRA factors; the rank controller of ars/adalora is per model)."""
