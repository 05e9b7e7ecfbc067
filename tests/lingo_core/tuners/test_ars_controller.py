"""RankController over a full simulated schedule with real backward passes; gradients per method; resume."""

from __future__ import annotations

import copy

import pytest
import torch
from tuner_helpers import adam, batch, build, train_steps

from lingo_core.tuners import METHODS, AdapterSettings, build_model, trainable_summary


def _e_params(controller):
    return {n: p for n, p in controller.inner.named_parameters() if "lora_E" in n}


@pytest.mark.parametrize(
    ("kind", "method", "sampling"),
    [("llama", "ars", "uniform"), ("llama", "ars", "importance"), ("llama", "adalora", "uniform"),
     ("opt", "ars", "uniform")],
)
def test_full_schedule_respects_budget_and_ends_on_target(make_base, kind, method, sampling):
    model, controller = build(make_base, kind, method=method, sampling=sampling, p_regrow=0.2, p_drop=0.2)
    n_matrices = len(controller.sampler.name_set)
    assert controller.method == method
    train_steps(model, controller, range(1, 41), adam(model))
    assert [h[0] for h in controller.budget_history] == list(range(1, 41))  # allocation at every step
    budgets = [b for _, b, _ in controller.budget_history]
    assert budgets == sorted(budgets, reverse=True) and len(set(budgets)) > 10
    for record in controller.allocations:
        assert record["active_ranks"] <= record["budget"] + record["regrown"], record
        if record["step"] >= 32:  # final allocation and frozen phase: exactly the target
            assert record["budget"] == record["active_ranks"] == 2 * n_matrices
            assert record["regrown"] == record["dropped"] == 0
    sampled = controller.allocations[4:31]  # decay phase, before the final allocation
    if method == "ars":
        assert sum(r["regrown"] for r in sampled) > 0 and sum(r["dropped"] for r in sampled) > 0
        assert any(r["active_ranks"] != r["budget"] for r in sampled)
    else:
        assert all(r["active_ranks"] == r["budget"] and r["regrown"] == r["dropped"] == 0 for r in sampled)
    # The weights carry the final pattern: exactly `target` non-zero singular values.
    nonzero = sum(int((p != 0).sum()) for p in _e_params(controller).values())
    assert nonzero == 2 * n_matrices
    pattern = controller.rank_pattern()
    assert sum(sum(bits) for bits in pattern.values()) == 2 * n_matrices
    assert all(".default" not in key and key.endswith("lora_E") for key in pattern)
    assert controller.config.rank_pattern is not None  # save_pretrained will resize to it


def test_grad_of_and_write_are_the_only_io(make_base):
    """observe reads gradients only via grad_of; allocate writes masks only via write_."""
    model, controller = build(make_base)
    optimizer = adam(model)
    train_steps(model, None, range(1, 3), optimizer)
    model(**batch(model, torch.Generator().manual_seed(1))).loss.backward()
    controller.observe(lambda p: torch.zeros_like(p))  # a backend whose full grads are zero
    assert all(float(t.abs().sum()) == 0 for t in controller.sampler.exp_avg_ipt.values())
    controller.observe(lambda p: p.grad)
    assert any(float(t.abs().sum()) > 0 for t in controller.sampler.exp_avg_ipt.values())
    optimizer.zero_grad()
    writes = []

    def record(p, value):  # e.g. DeepSpeed: update the fp32 master copy too
        writes.append(p)
        with torch.no_grad():
            p.copy_(value)

    for step in range(1, 5):  # warm-up (tinit 4): nothing masked, nothing written
        controller.allocate(step, record)
    assert writes == []
    before = {n: p.detach().clone() for n, p in _e_params(controller).items()}
    stats = controller.allocate(5, lambda p, v: None)  # a write_ that drops the write
    assert stats["active_ranks"] < 56
    assert all(torch.equal(before[n], p) for n, p in _e_params(controller).items())
    controller.allocate(6, record)
    assert writes and all(any(p is e for e in _e_params(controller).values()) for p in writes)


def _adapter_or_head(name: str) -> bool:
    return any(key in name for key in ("lora_", "prompt_encoder", "modules_to_save"))


@pytest.mark.parametrize("kind", ["llama", "opt"])
@pytest.mark.parametrize("method", METHODS)
def test_only_adapter_and_head_receive_gradients(make_base, kind, method):
    model, controller = build_model(make_base(kind), AdapterSettings(method=method, init_r=4, target_r=2), 40, 0)
    train_steps(model, controller, range(1, 3), adam(model))  # E leaves zero: P and Q get gradients too
    model(**batch(model, torch.Generator().manual_seed(5))).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert with_grad == trainable
    if method == "full":
        assert trainable == {n for n, _ in model.named_parameters()}
    elif method == "probe":
        assert trainable == {"score.weight"}
    else:
        assert trainable and all(_adapter_or_head(n) for n in trainable)
        assert any("score" in n for n in trainable)  # the head always trains
        assert any("lora_" in n or "prompt_encoder" in n for n in trainable)
    n_train, n_all, fraction = trainable_summary(model)
    assert n_train == sum(p.numel() for n, p in model.named_parameters() if n in trainable)
    assert fraction == pytest.approx(n_train / n_all)


def test_state_dict_resume_continues_identically(make_base):
    """Stop at step 15 (mid-decay), rebuild, load model + controller state: the rest matches exactly."""
    knobs = dict(sampling="importance", p_regrow=0.3, p_drop=0.3, lora_dropout=0.0)  # dropout: global RNG
    ref_model, ref = build(make_base, **knobs)
    ref_opt = adam(ref_model)
    train_steps(ref_model, ref, range(1, 16), ref_opt)
    weights = {k: v.clone() for k, v in ref_model.state_dict().items()}
    opt_state = copy.deepcopy(ref_opt.state_dict())  # state_dict() shares the live moment tensors
    ctl_state = ref.state_dict()
    assert isinstance(ctl_state["generator_state"], torch.Tensor) and ctl_state["step"] == 15
    train_steps(ref_model, ref, range(16, 41), ref_opt)

    model, resumed = build(make_base, **knobs)
    model.load_state_dict(weights)
    optimizer = adam(model)
    optimizer.load_state_dict(opt_state)
    resumed.load_state_dict(ctl_state)
    assert resumed.budget_history == ref.budget_history[:15]
    train_steps(model, resumed, range(16, 41), optimizer)
    assert resumed.budget_history == ref.budget_history
    assert resumed.rank_pattern() == ref.rank_pattern()
    assert [a for a in resumed.allocations] == ref.allocations[15:]


def test_two_ranks_with_same_seed_agree_and_other_seed_differs(make_base):
    """Two identically seeded replicas (data-parallel ranks) take the same decisions at every step."""
    runs = []
    for seed in (5, 5, 6):
        model, controller = build(make_base, seed=seed, p_regrow=0.3, p_drop=0.3)
        torch.manual_seed(seed * 17)  # global RNG differs between the two "ranks" of seed 5: must not matter
        train_steps(model, controller, range(1, 20), adam(model))
        runs.append(controller.allocations)
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
