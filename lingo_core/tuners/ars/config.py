"""ARSConfig: an AdaLoRA config plus the stochastic rank-sampling knobs.

The peft_type stays ADALORA, so `get_peft_model` builds a plain AdaLoraModel (SVD adapters, orthogonal
regularisation, rank-pattern resizing on save) and the saved adapter is a normal AdaLoRA adapter: the
sampling knobs only matter during training and are left out of `adapter_config.json`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peft import AdaLoraConfig

from lingo_core.tuners.config import check_sampling

ARS_ONLY_FIELDS = ("p_regrow", "p_drop", "sampling", "sampling_seed")
"""Fields AdaLoraConfig does not have; stripped by `to_dict` so plain PEFT loads the saved config."""


@dataclass
class ARSConfig(AdaLoraConfig):
    """AdaLoRA configuration with adaptive rank sampling (see lingo_core.tuners.ars)."""

    p_regrow: float = field(default=0.1, metadata={"help": "Probability that a pruned triplet regrows."})
    """Probability (mean over pruned triplets) that a pruned triplet stays unmasked at an allocation.
    Default 0.1: one pruned direction in ten gets another chance, the budget still shrinks."""
    p_drop: float = field(default=0.1, metadata={"help": "Probability that a kept triplet is dropped."})
    """Probability (mean over kept triplets) that a kept triplet is masked anyway. Default 0.1, equal to
    p_regrow so active ranks stay near the budget."""
    sampling: str = field(default="uniform", metadata={"help": "'uniform' or 'importance'."})
    """"uniform": fixed probabilities; "importance": regrow ~ importance, drop ~ 1 / importance.
    Default uniform: it does not lean on the noisy early importance estimates."""
    sampling_seed: int = field(default=0, metadata={"help": "Seed of the sampler's own generator."})
    """Seed of the sampler's private torch.Generator; the same on every data-parallel rank so all ranks
    mask the same triplets. Default 0; build_model passes the trial seed."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sampling("ARSConfig", self.p_regrow, self.p_drop, self.sampling)
        if isinstance(self.sampling_seed, bool) or not isinstance(self.sampling_seed, int):
            raise ValueError(f"ARSConfig.sampling_seed: got {self.sampling_seed!r}; expected an integer")

    def to_dict(self) -> dict:
        """The AdaLoRA view of this config: what `save_pretrained` writes to adapter_config.json."""
        out = super().to_dict()
        for name in ARS_ONLY_FIELDS:
            out.pop(name, None)
        return out
