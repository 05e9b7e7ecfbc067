"""Adapter settings shared by every fine-tuning method, and the default rank budget rule.

`AdapterSettings` is what users and job specs set; `build_model` (methods.py) turns it into a PEFT
config. Ranks and schedule lengths may stay None here: they depend on the task size and on the number
of optimizer steps, which are known only when training starts (`resolve_ranks`, `validate_schedule`).
The rank rule is applied to a run's training rows, counted one way, in `budget.py`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from lingo_core.method_names import METHODS
from lingo_core.typed import is_int

SAMPLING_MODES = ("uniform", "importance")
"""How ARS picks triplets to reintroduce / drop: fixed probabilities, or scaled by importance."""

SVD_INITS = ("lora", "adalora")
"""How the SVD factors start: "lora" (Q like LoRA's A, P = 0, Λ = 1) or "adalora" (PEFT's: Λ = 0, P, Q ~ N(0, 0.02))."""

RENAMED_KEYS = {
    "p_regrow": "adapter.p_regrow is now adapter.exploration (the probability that a pruned triplet is "
                "reintroduced for one resample period); p_drop is derived from it",
    "p_drop": "adapter.p_drop is derived from adapter.exploration so that the expected active rank equals "
              "the budget (p_drop = exploration x (n - b) / b); set adapter.exploration instead",
}
"""Adapter keys of earlier releases -> what to write instead (shown by every config builder)."""


def check_sampling(owner: str, exploration: float, sampling: str) -> None:
    """The one check of the ARS sampling knobs, shared by AdapterSettings and the rank schedule."""
    if isinstance(exploration, bool) or not isinstance(exploration, (int, float)) or not 0.0 <= exploration <= 1.0:
        raise ValueError(f"{owner}.exploration: got {exploration!r}; expected a probability in [0, 1]")
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"{owner}.sampling: unknown mode {sampling!r}; expected one of {', '.join(SAMPLING_MODES)}")


DEFAULT_INIT_R = 8
"""Initial rank per adapted matrix. At 8 on all 7 LLaMA projections SmolLM2-135M trains ~1.8% of its
parameters (< 2%), small enough for the 135M model yet enough headroom for pruning to choose from."""

RANK_TIERS = ((5_000, 2), (30_000, 4))
"""(train-set size upper bound, target_r): small tasks get a small final rank (less data cannot fit
more directions without over-fitting); sets of 30k or more get DEFAULT_LARGE_TARGET_R."""

DEFAULT_LARGE_TARGET_R = 6
"""target_r for train sets of 30k sequences or more: enough data to use more of the init_r budget."""

TINIT_FRACTION = 0.10
"""Default warm-up before pruning: importance EMAs need some steps of gradients (E starts at zero, so
the first scores are all zero) before they rank triplets meaningfully."""

TFINAL_FRACTION = 0.20
"""Default final phase at fixed ranks: the surviving triplets need steps to adapt after the last prune."""

RESAMPLES_PER_DECAY = 8
"""Default number of ARS resample periods over the pruning phase: a period of 1/8 of it (about 50 steps
in a 600-step run) lets a reintroduced triplet train and its importance EMA (time constant
1 / (1 - beta1) ~ 7 steps) reflect its own gradients before it competes for the budget again."""


@dataclass
class AdapterSettings:
    """How to adapt the base model (contract in docs/DESIGN.md, section Tuners)."""

    RENAMED_KEYS: ClassVar[dict[str, str]] = RENAMED_KEYS  # lingo_core.typed.build explains these old keys
    method: str = "ars"  # the project's method; baselines are opt-in
    """One of METHODS."""
    init_r: int | None = None  # None: default_rank_budget picks it from the task size
    """ars/adalora: initial rank of every adapted matrix."""
    target_r: int | None = None  # None: default_rank_budget picks it from the task size
    """ars/adalora: average final rank per adapted matrix (total budget = target_r x matrices)."""
    tinit: int | None = None  # None: TINIT_FRACTION of total steps
    """ars/adalora: warm-up steps at full rank before pruning starts."""
    tfinal: int | None = None  # None: TFINAL_FRACTION of total steps
    """ars/adalora: final steps at the frozen final rank pattern."""
    deltaT: int = 1  # PEFT's default: the budget follows the cubic schedule step by step
    """ars/adalora: optimizer steps between two budget selections (top-budget by importance)."""
    resample_every: int | None = None  # None: RESAMPLES_PER_DECAY periods over the pruning phase
    """ars: optimizer steps a sampling decision (which pruned triplets are reintroduced, which kept ones
    dropped) holds before it is drawn again."""
    beta1: float = 0.85  # AdaLoRA paper value
    """EMA coefficient of the sensitivity (|w * grad|)."""
    beta2: float = 0.85  # AdaLoRA paper value
    """EMA coefficient of the uncertainty (|sensitivity - its EMA|)."""
    orth_reg_weight: float = 0.5  # AdaLoRA paper and PEFT value. 0.0 led a 600-step GPU dev screen by a noise-
    # level 0.004 but cost ars 0.06 dev MCC in the 80-step CPU learning test, so 0.5 stays (BENCHMARKS.md)
    """ars/adalora: weight of AdaLoRA's orthogonality penalty on P and Q, added to the training loss."""
    exploration: float = 0.1  # one pruned triplet in ten is retried per resample period
    """ars: probability that a pruned triplet is reintroduced for one resample period. Kept triplets are
    dropped with p_drop = exploration x (n - b) / b, so the expected active count equals the budget b."""
    hold_dropped_importance: bool = False  # off until a dev screen on GPU says otherwise (BENCHMARKS.md)
    """ars: a kept triplet that exploration drops keeps its importance EMAs while dropped. Off, its
    zero gradients decay them within ~10 steps, so the next selection (every deltaT steps) prunes it for
    good and a drop acts as a random prune; on, it competes on the importance it had when dropped."""
    sampling: str = "uniform"  # simplest: no dependence on noisy importance scores
    """ars: "uniform" (fixed probabilities) or "importance" (scaled by triplet importance)."""
    svd_init: str = "lora"  # P = 0, Q as LoRA's A, Λ = 1: the adapter starts as LoRA and learns as fast
    """ars/adalora: "lora" (P = 0, Q kaiming-uniform as LoRA's A, Λ = 1) or "adalora" (PEFT's init:
    Λ = 0, P and Q ~ N(0, 0.02), under which P and Q get no task gradient until Λ leaves zero)."""
    lora_r: int = 8  # same parameter count as ars/adalora at the default init_r
    """lora: rank."""
    lora_alpha: int = 16  # 2 x rank, the common LoRA choice
    """lora/ars/adalora: scaling numerator (LoRA: alpha / r; AdaLoRA: alpha / init_r)."""
    lora_dropout: float = 0.05  # light regularisation; small GUE tasks over-fit quickly
    """lora/ars/adalora: dropout on the adapter input."""
    num_virtual_tokens: int = 16  # PEFT's usual prefix length; short next to GUE prompts
    """prefix: number of virtual key/value tokens per layer."""
    target_modules: list[str] | None = None  # None: attention + MLP projections of the model family
    """lora/ars/adalora: names (last path component) of the linear layers to adapt."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"AdapterSettings.method: unknown method {self.method!r}; expected one of {', '.join(METHODS)}"
            )
        for name in ("init_r", "target_r"):
            value = getattr(self, name)
            if value is not None and (not is_int(value) or value < 1):
                raise ValueError(f"AdapterSettings.{name}: got {value!r}; expected a positive integer (>= 1) or None")
        if self.init_r is not None and self.target_r is not None and self.target_r > self.init_r:
            raise ValueError(
                f"AdapterSettings.target_r ({self.target_r}) > init_r ({self.init_r}); pruning can only "
                "lower the rank, so expected target_r <= init_r"
            )
        for name in ("tinit", "tfinal"):
            value = getattr(self, name)
            if value is not None and (not is_int(value) or value < 0):
                raise ValueError(f"AdapterSettings.{name}: got {value!r}; expected a number of steps >= 0 or None")
        if self.resample_every is not None and (not is_int(self.resample_every) or self.resample_every < 1):
            raise ValueError(
                f"AdapterSettings.resample_every: got {self.resample_every!r}; expected steps >= 1 or None"
            )
        if self.svd_init not in SVD_INITS:
            raise ValueError(f"AdapterSettings.svd_init: got {self.svd_init!r}; expected one of {', '.join(SVD_INITS)}")
        for name in ("deltaT", "lora_r", "num_virtual_tokens"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"AdapterSettings.{name}: got {value!r}; expected an integer >= 1")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"AdapterSettings.{name}: got {value!r}; expected an EMA coefficient in (0, 1)")
        check_sampling("AdapterSettings", self.exploration, self.sampling)
        if not isinstance(self.hold_dropped_importance, bool):
            raise ValueError(f"AdapterSettings.hold_dropped_importance: got {self.hold_dropped_importance!r}; "
                             "expected true or false")
        if isinstance(self.orth_reg_weight, bool) or not isinstance(self.orth_reg_weight, (int, float)) \
                or not self.orth_reg_weight >= 0:  # `not >=`: NaN fails too
            raise ValueError(f"AdapterSettings.orth_reg_weight: got {self.orth_reg_weight!r}; expected a number >= 0")
        if self.lora_alpha <= 0:
            raise ValueError(f"AdapterSettings.lora_alpha: got {self.lora_alpha!r}; expected > 0")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"AdapterSettings.lora_dropout: got {self.lora_dropout!r}; expected a value in [0, 1)")
        if isinstance(self.target_modules, str):  # CLI / YAML convenience: "q_proj,v_proj"
            self.target_modules = [m.strip() for m in self.target_modules.split(",") if m.strip()]
        if self.target_modules is not None:
            if not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
                raise ValueError(
                    f"AdapterSettings.target_modules: got {self.target_modules!r}; expected a non-empty list "
                    "of module names (e.g. ['q_proj', 'v_proj']) or None for the model family's default"
                )
            self.target_modules = list(self.target_modules)

    def resample_period(self, tinit: int, tfinal: int, total_steps: int) -> int:
        """Steps between two ARS sampling draws: resample_every, or RESAMPLES_PER_DECAY per pruning phase."""
        if self.resample_every is not None:
            return self.resample_every
        return max(1, (total_steps - tinit - tfinal) // RESAMPLES_PER_DECAY)

    def validate_schedule(self, total_steps: int) -> tuple[int, int]:
        """(tinit, tfinal) in steps for a run of `total_steps` optimizer steps; raises if no pruning phase fits.

        None values become TINIT_FRACTION / TFINAL_FRACTION of total_steps.
        """
        if not is_int(total_steps) or total_steps < 1:
            raise ValueError(f"total_steps: got {total_steps!r}; expected a positive number of optimizer steps")
        tinit = self.tinit if self.tinit is not None else int(TINIT_FRACTION * total_steps)
        tfinal = self.tfinal if self.tfinal is not None else int(TFINAL_FRACTION * total_steps)
        if tinit + tfinal >= total_steps:
            raise ValueError(
                f"AdapterSettings: tinit ({tinit}) + tfinal ({tfinal}) = {tinit + tfinal} >= total_steps "
                f"({total_steps}); no steps are left to prune the rank budget. Lower tinit/tfinal or train "
                "for more steps"
            )
        return tinit, tfinal


def default_rank_budget(n_train: int) -> tuple[int, int]:
    """(init_r, target_r) for a run on `n_train` training sequences (counted by lingo_core.tuners.budget,
    the one count of a run's rows).

    Rule: init_r = DEFAULT_INIT_R (8); target_r = 2 below 5k sequences, 4 below 30k, 6 otherwise.
    Larger tasks can afford (and need) more rank; tiny ones over-fit with it.
    """
    if not is_int(n_train) or n_train < 0:
        raise ValueError(f"default_rank_budget: n_train is {n_train!r}; expected the number of training "
                         "sequences (>= 0)")
    for bound, target in RANK_TIERS:
        if n_train < bound:
            return DEFAULT_INIT_R, target
    return DEFAULT_INIT_R, DEFAULT_LARGE_TARGET_R


def resolve_ranks(settings: AdapterSettings, n_train: int) -> AdapterSettings:
    """A copy of `settings` with init_r / target_r filled from default_rank_budget where they are None.

    A user-set init_r below the default target caps the target, and a user-set target_r above the
    default init_r raises the init rank, so target_r <= init_r always holds.
    """
    if settings.init_r is not None and settings.target_r is not None:
        return dataclasses.replace(settings)
    init_r, target_r = default_rank_budget(n_train)
    init_r = settings.init_r if settings.init_r is not None else max(init_r, settings.target_r or 0)
    target_r = settings.target_r if settings.target_r is not None else min(target_r, init_r)
    return dataclasses.replace(settings, init_r=init_r, target_r=target_r)
