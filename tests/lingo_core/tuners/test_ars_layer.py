"""The gated SVD layer: PEFT's function, a LoRA-equivalent start, PEFT's orthogonality penalty."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, TaskType, get_peft_model
from tuner_helpers import batch, build

from lingo_core.tuners.ars import GatedSVDLinear


def _logits(model, inputs) -> torch.Tensor:
    inputs = {k: v for k, v in inputs.items() if k != "labels"}
    return model(**inputs).logits


def _randomize(model) -> None:
    """Give every factor non-trivial values so the comparison covers P, Λ and Q."""
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def test_gated_forward_is_peft_svd_forward(make_base):
    """Catches: a gated layer computing anything but PEFT's W x + P diag(Λ) Q x * alpha / ranknum."""
    model, controller = build(make_base, lora_dropout=0.0)
    _randomize(model)
    assert all(isinstance(layer, GatedSVDLinear) for layer in controller.layers)
    inputs = batch(model, torch.Generator().manual_seed(1))
    with torch.no_grad():
        ungated = _logits(model, inputs)  # no gate bound yet: every triplet at PEFT's scale
        controller.bind()  # all active
        gated = _logits(model, inputs)
        for layer in controller.layers:  # PEFT's own SVDLinear.forward on the same parameters
            layer.__class__ = GatedSVDLinear.__mro__[1]
        peft = _logits(model, inputs)
    # float32 summation order differs between the two forwards (1e-6 was exceeded by 1.3% with
    # transformers 5.23); a wrong formula is off by orders of magnitude more
    torch.testing.assert_close(ungated, peft, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gated, peft, rtol=1e-5, atol=1e-5)


def test_lora_init_starts_and_learns_as_lora(make_base):
    """Catches: an SVD init under which P and Q get no task gradient at first (PEFT's Λ = 0).

    With P = 0, Λ = 1 and Q drawn like LoRA's A, the adapter starts as the identity on the base model, and
    one SGD step changes every weight exactly as one step of LoRA with A = Q, B = 0 and the same scale."""
    model, controller = build(make_base, lora_dropout=0.0, target_modules=["q_proj"])
    inputs = batch(model, torch.Generator().manual_seed(1))
    torch.testing.assert_close(_logits(model, inputs), _logits(make_base(), inputs), rtol=0, atol=0)
    scale = controller.layers[0].rank_scale
    lora = get_peft_model(make_base(), LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=4 * scale,
                                                  lora_dropout=0.0, target_modules=["q_proj"]))
    lora_layers = sorted((n, m) for n, m in lora.base_model.model.named_modules()
                         if n.endswith("q_proj") and hasattr(m, "lora_A"))
    assert len(lora_layers) == len(controller.layers) == 2
    with torch.no_grad():
        for (_, lora_layer), svd in zip(lora_layers, controller.layers, strict=True):
            lora_layer.lora_A["default"].weight.copy_(svd.lora_A["default"])
    for net in (model, lora):  # one plain SGD step on the same batch
        opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
        torch.nn.functional.cross_entropy(_logits(net, inputs), inputs["labels"]).backward()
        opt.step()
    with torch.no_grad():
        for (_, lora_layer), svd in zip(lora_layers, controller.layers, strict=True):
            p, e, q = svd.lora_B["default"], svd.lora_E["default"], svd.lora_A["default"]
            d_svd = p @ (q * e) * svd.rank_scale
            d_lora = lora_layer.lora_B["default"].weight @ lora_layer.lora_A["default"].weight * lora_layer.scaling["default"]
            assert torch.count_nonzero(d_svd) > 0
            torch.testing.assert_close(d_svd, d_lora, rtol=1e-5, atol=1e-9)
            assert torch.equal(e, torch.ones_like(e))  # Λ had no gradient yet (P was 0)


def test_adalora_init_gives_p_and_q_no_gradient_at_first(make_base):
    """Documents why "lora" is the default: under PEFT's init (Λ = 0) only Λ learns at step one."""
    model, controller = build(make_base, svd_init="adalora", lora_dropout=0.0)
    inputs = batch(model, torch.Generator().manual_seed(1))
    torch.nn.functional.cross_entropy(_logits(model, inputs), inputs["labels"]).backward()
    layer = controller.layers[0]
    assert torch.count_nonzero(layer.lora_A["default"].grad) == 0
    assert torch.count_nonzero(layer.lora_B["default"].grad) == 0
    assert torch.count_nonzero(controller.singular_values.grad[: layer.lora_E["default"].shape[0]]) > 0  # Λ: pooled


@pytest.mark.parametrize("kind", ["llama", "opt"])
def test_orthogonality_penalty_is_peft_value(make_base, kind):
    """Catches: a batched penalty that differs from PEFT's AdaLoraModel term (all triplets active)."""
    model, controller = build(make_base, kind, lora_dropout=0.0, orth_reg_weight=0.5)
    model.eval()  # OPT built from a config has dropout on: both forward passes must see the same net
    _randomize(model)
    inputs = batch(model, torch.Generator().manual_seed(2))
    with torch.no_grad():
        peft_loss = model(**inputs).loss  # labels given: PEFT adds 0.5 x its own orthogonality term
        ce = torch.nn.functional.cross_entropy(_logits(model, inputs), inputs["labels"])
        ours = controller.regularization()
    torch.testing.assert_close(ours, peft_loss - ce, rtol=1e-5, atol=1e-6)
    assert float(ours) > 0
    # Inactive triplets are left out: masking every triplet of the model leaves nothing to penalise.
    controller.active_f.zero_()
    assert float(controller.regularization()) == 0.0


def test_pooled_lambda_stays_the_lora_e_that_peft_saves(make_base):
    """Catches: lora_E left as a stale copy of the pooled Λ once the model has moved (`.to()` copies every
    tensor on its own; bind must point lora_E back at the pooled slices), so PEFT would save untrained Λ.

    A dtype move stands in for the move to the GPU (or DeepSpeed's flat buffers)."""
    from lingo_core.tuners.ars.layer import SINGULAR_VALUES

    model, controller = build(make_base, lora_dropout=0.0)
    model.to(torch.float64)
    controller.bind()
    inputs = batch(model, torch.Generator().manual_seed(1))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):  # step 1 moves P off zero; step 2 gives Λ a gradient
        torch.nn.functional.cross_entropy(_logits(model, inputs), inputs["labels"]).backward()
        opt.step()
        opt.zero_grad()
    pooled = dict(model.named_parameters())[f"base_model.model.{SINGULAR_VALUES}"]
    assert pooled is controller.singular_values and not torch.equal(pooled, torch.ones_like(pooled))  # Λ trained
    e_values = torch.cat([layer.lora_E["default"] for layer in controller.layers])
    assert torch.equal(e_values, pooled.detach())
    assert all(not layer.lora_E["default"].requires_grad for layer in controller.layers)  # one trainable copy
