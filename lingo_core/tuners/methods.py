"""build_model: wrap a sequence-classification LM for one fine-tuning method.

    ars      PEFT AdaLoRA layers, gated (ars/layer.py) + RankController with exploration
    adalora  the same, exploration 0 (PEFT's AdaLoRA allocation)
    lora     PEFT LoRA
    prefix   PEFT prefix tuning
    full     every parameter trainable
    probe    only the classification head trainable

The head (`score`) is trainable for every method; PEFT methods keep it in `modules_to_save` so it is
saved with the adapter.
"""

from __future__ import annotations

import warnings

import torch
from peft import AdaLoraConfig, LoraConfig, PrefixTuningConfig, TaskType, get_peft_model
from torch import nn
from transformers import PreTrainedModel

from lingo_core.method_names import METHODS, RANK_METHODS
from lingo_core.modeling import DEFAULT_TARGET_MODULES, family
from lingo_core.tuners.ars import RankController, RankSchedule, gate_svd_layers
from lingo_core.tuners.config import AdapterSettings, resolve_ranks

__all__ = ["HEAD", "METHODS", "build_model", "default_target_modules", "linear_module_names", "trainable_summary"]

HEAD = "score"
"""Name of the classification head of transformers' *ForSequenceClassification (LLaMA, OPT, Mistral, ...)."""

_FALLBACK_N_TRAIN = 10_000  # ranks unresolved at build time (no task known): the middle tier of the rule


def default_target_modules(model: nn.Module) -> list[str]:
    """Attention + MLP projections of the model's family (lingo_core.modeling.DEFAULT_TARGET_MODULES)."""

    fam = family(model)
    if fam not in DEFAULT_TARGET_MODULES:
        raise ValueError(
            f"no default adapter targets for model family {fam!r} (known: {', '.join(DEFAULT_TARGET_MODULES)}); "
            f"set AdapterSettings.target_modules to some of the model's linear layers: "
            f"{', '.join(linear_module_names(model))}"
        )
    return list(DEFAULT_TARGET_MODULES[fam])


def linear_module_names(model: nn.Module) -> list[str]:
    """Sorted distinct last path components of the model's nn.Linear layers, head excluded."""
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear) and n}
    names.discard(HEAD)
    return sorted(names)


def _check_targets(model: nn.Module, targets: list[str]) -> None:
    available = linear_module_names(model)
    missing = [t for t in targets if t not in available]
    if missing:
        raise ValueError(
            f"AdapterSettings.target_modules: {missing} not found in {type(model).__name__}; "
            f"its linear modules are: {', '.join(available)}"
        )


def trainable_summary(model: nn.Module) -> tuple[int, int, float]:
    """(trainable parameters, all parameters, trainable / all); shared tensors are counted once."""
    trainable = total = 0
    for p in model.parameters():  # parameters() already de-duplicates tied weights
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total, (trainable / total if total else 0.0)


def _head(model: nn.Module) -> nn.Module:
    head = getattr(model, HEAD, None)
    if not isinstance(head, nn.Module):
        raise ValueError(
            f"{type(model).__name__} has no `{HEAD}` head; build the base with "
            "lingo_core.modeling.load_classifier (AutoModelForSequenceClassification)"
        )
    return head


def _with_ranks(settings: AdapterSettings) -> AdapterSettings:
    if settings.init_r is not None and settings.target_r is not None:
        return settings
    # No task here: resolve_ranks (the rule's owner, config.py) at a mid-size row count.
    resolved = resolve_ranks(settings, _FALLBACK_N_TRAIN)
    warnings.warn(
        "AdapterSettings.init_r/target_r unset at build_model; using the mid-size default "
        f"({resolved.init_r}, {resolved.target_r}). Call lingo_core.tuners.budget.resolve_adapter(settings, "
        "task, max_train_samples) first for the task-size rule",
        stacklevel=3,
    )
    return resolved


def _rank_model(base: PreTrainedModel, settings: AdapterSettings, targets: list[str], total_steps: int,
                seed: int) -> tuple[nn.Module, RankController]:
    tinit, tfinal = settings.validate_schedule(total_steps)
    settings = _with_ranks(settings)
    # A plain AdaLoRA config: that is what save_pretrained writes, so plain PEFT loads the adapter.
    config = AdaLoraConfig(
        task_type=TaskType.SEQ_CLS,
        init_r=settings.init_r,
        target_r=settings.target_r,
        tinit=tinit,
        tfinal=tfinal,
        deltaT=settings.deltaT,
        beta1=settings.beta1,
        beta2=settings.beta2,
        orth_reg_weight=settings.orth_reg_weight,
        total_step=total_steps,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=list(targets),
        modules_to_save=[HEAD],
    )
    model = get_peft_model(base, config)
    layers = gate_svd_layers(model, init=settings.svd_init)
    n = settings.init_r * len(layers)
    schedule = RankSchedule(
        init_budget=n,
        target_budget=settings.target_r * len(layers),
        total_steps=total_steps,
        tinit=tinit,
        tfinal=tfinal,
        deltaT=settings.deltaT,
        resample_every=settings.resample_period(tinit, tfinal, total_steps),
        exploration=settings.exploration if settings.method == "ars" else 0.0,
        sampling=settings.sampling,
    )
    controller = RankController(model, layers, schedule, seed=seed, beta1=settings.beta1, beta2=settings.beta2,
                                orth_reg_weight=settings.orth_reg_weight,
                                hold_dropped_importance=settings.hold_dropped_importance)
    return model, controller


def build_model(
    base: PreTrainedModel, settings: AdapterSettings, total_steps: int, seed: int
) -> tuple[nn.Module, RankController | None]:
    """Wrap `base` (a *ForSequenceClassification model, modified in place) for `settings.method`.

    Returns the model to train and, for ars / adalora, the RankController the trainer drives. Adapter
    weights are initialised from `seed` without touching the global RNG state. Train it without passing
    labels and add `controller.regularization()` to the loss: PEFT's AdaLoRA forward adds its own
    orthogonality penalty (a Python loop over every matrix) only when labels are given.
    """
    if settings.method not in METHODS:  # settings mutated after construction
        raise ValueError(f"AdapterSettings.method: unknown method {settings.method!r}; expected one of {METHODS}")
    _head(base)
    method = settings.method
    targets: list[str] = []
    if method in ("lora", *RANK_METHODS):
        targets = settings.target_modules or default_target_modules(base)
        _check_targets(base, targets)
    with torch.random.fork_rng(devices=[]):  # CPU stream only: adapters are created on CPU, then moved
        torch.manual_seed(seed)
        if method == "full":
            base.requires_grad_(True)
            return base, None
        if method == "probe":
            base.requires_grad_(False)
            _head(base).requires_grad_(True)
            return base, None
        if method == "lora":
            config = LoraConfig(
                task_type=TaskType.SEQ_CLS,
                r=settings.lora_r,
                lora_alpha=settings.lora_alpha,
                lora_dropout=settings.lora_dropout,
                target_modules=list(targets),
                modules_to_save=[HEAD],
            )
            return get_peft_model(base, config), None
        if method == "prefix":
            config = PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=settings.num_virtual_tokens)
            return get_peft_model(base, config), None  # SEQ_CLS adds the head to modules_to_save itself
        return _rank_model(base, settings, targets, total_steps, seed)
