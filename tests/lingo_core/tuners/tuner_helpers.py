"""Helpers for the tuner tests: random batches, the trainer's loop, small schedules."""

from __future__ import annotations

import torch

from lingo_core.tuners import AdapterSettings, RankController, build_model

VOCAB_LOW = 5  # token ids below this are special (pad/bos/eos) in both tiny vocabularies


def batch(model: torch.nn.Module, generator: torch.Generator, size: int = 4, length: int = 10) -> dict:
    """A right-padded random batch (last sequence shorter) with labels."""
    vocab = model.config.vocab_size
    ids = torch.randint(VOCAB_LOW, min(vocab, 500), (size, length), generator=generator)
    mask = torch.ones_like(ids)
    ids[-1, length - 3 :] = model.config.pad_token_id
    mask[-1, length - 3 :] = 0
    labels = torch.randint(0, 2, (size,), generator=generator)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def loss_of(model: torch.nn.Module, inputs: dict, controller: RankController | None = None) -> torch.Tensor:
    """The trainer's loss: cross-entropy of the logits (no labels passed to the model) + regularizer."""
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    loss = torch.nn.functional.cross_entropy(model(**inputs).logits.float(), labels)
    return loss + controller.regularization() if controller is not None else loss


def train_steps(
    model: torch.nn.Module,
    controller: RankController | None,
    steps: range,
    optimizer: torch.optim.Optimizer,
    data_seed: int = 0,
    after_step=None,
) -> None:
    """The trainer's loop: backward, capture gradients, optimizer step, allocate (DESIGN.md, Training).
    `after_step(step)` runs after each allocation (tests inspect state there)."""
    gen = torch.Generator().manual_seed(data_seed)
    for step in steps:
        gen.manual_seed(data_seed * 100_003 + step)  # the batch depends on the step only: resumable
        loss_of(model, batch(model, gen), controller).backward()
        if controller is not None:
            controller.capture_grads()
        optimizer.step()
        if controller is not None:
            controller.allocate(step)
        if after_step is not None:
            after_step(step)
        optimizer.zero_grad()


def adam(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)


SMALL = dict(init_r=4, target_r=2, tinit=4, tfinal=8)  # 40 steps: 4 warm-up, 27 pruning, final at 32


def build(make_base, kind: str = "llama", total_steps: int = 40, seed: int = 0, **settings):
    return build_model(make_base(kind), AdapterSettings(**{**SMALL, **settings}), total_steps, seed)
