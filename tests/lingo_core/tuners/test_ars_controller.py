"""RankController over real backward passes: budget, masking semantics, importance, seeding, resume.

Each test names the broken implementation it exists to catch."""

from __future__ import annotations

import copy

import pytest
import torch
from peft.tuners.adalora.layer import RankAllocator
from tuner_helpers import adam, batch, build, loss_of, train_steps

from lingo_core.tuners import METHODS, AdapterSettings, build_model, trainable_summary
from lingo_core.tuners.ars import select_top
from lingo_core.tuners.ars.layer import SINGULAR_VALUES


def _gates(controller) -> torch.Tensor:
    return torch.cat([layer.rank_gate.view(-1) for layer in controller.layers])


def _triplet_values(controller) -> list[torch.Tensor]:
    """Per triplet, its stored (q_i row, p_i column, λ_i) concatenated: what masking must never change."""
    out = []
    for layer in controller.layers:
        a, b, e = layer.lora_A["default"], layer.lora_B["default"], layer.lora_E["default"]
        out += [torch.cat([a[i], b[:, i], e[i]]).detach().clone() for i in range(e.shape[0])]
    return out


def _triplet_grads(controller) -> list[torch.Tensor]:
    """Per triplet, the gradients of its (q_i row, p_i column, λ_i); Λ's live in the pooled parameter."""
    out = []
    e_grads = controller.singular_values.grad.split(controller.ranks_init)
    for layer, e_grad in zip(controller.layers, e_grads, strict=True):
        a, b = layer.lora_A["default"], layer.lora_B["default"]
        out += [torch.cat([a.grad[i], b.grad[:, i], e_grad[i]]).clone() for i in range(e_grad.shape[0])]
    return out


def _lend_lambda_grads(controller) -> None:
    """PEFT's RankAllocator reads Λ's gradient from each lora_E; Λ trains pooled here (layer.py), so hand
    every lora_E its slice of the pooled gradient: the reference sees exactly the gradients we use."""
    e_grads = controller.singular_values.grad.split(controller.ranks_init)
    for layer, e_grad in zip(controller.layers, e_grads, strict=True):
        layer.lora_E["default"].grad = e_grad


@pytest.mark.parametrize(
    ("kind", "method", "sampling"),
    [("llama", "ars", "uniform"), ("llama", "ars", "importance"), ("llama", "adalora", "uniform"),
     ("opt", "ars", "uniform")],
)
def test_full_schedule_follows_budget_and_ends_on_target(make_base, kind, method, sampling):
    """Catches: gates that disagree with the reported pattern, a final pattern off target, sampling in adalora."""
    model, controller = build(make_base, kind, method=method, sampling=sampling, exploration=0.3, resample_every=5)
    n_matrices = len(controller.layers)
    gates_per_step = []
    train_steps(model, controller, range(1, 41), adam(model),
                after_step=lambda step: gates_per_step.append(int((_gates(controller) != 0).sum())))
    history = controller.history()
    assert [h["step"] for h in history] == list(range(1, 41))
    assert [h["active_ranks"] for h in history] == gates_per_step  # the forward uses what is reported
    budgets = [h["budget"] for h in history]
    assert budgets == sorted(budgets, reverse=True) and len(set(budgets)) > 10
    pruning = history[4:31]
    for h in history[31:]:  # final selection (step 32) and frozen phase: exactly the target, no exploration
        assert h["budget"] == h["active_ranks"] == 2 * n_matrices and h["regrown"] == h["dropped"] == 0
    settled = history[controller.schedule.exploration_end - 1 : 31]  # the last period: the kept set alone
    assert settled and all(h["regrown"] == h["dropped"] == 0 and h["active_ranks"] == h["budget"] for h in settled)
    if method == "ars":
        assert sum(h["regrown"] for h in pruning) > 0 and sum(h["dropped"] for h in pruning) > 0
    else:
        assert all(h["active_ranks"] == h["budget"] and h["regrown"] == h["dropped"] == 0 for h in pruning)
    pattern = controller.rank_pattern()
    assert sum(sum(bits) for bits in pattern.values()) == 2 * n_matrices
    assert all(".default" not in key and key.endswith("lora_E") for key in pattern)


def test_masking_keeps_stored_values_and_isolates_gradients(make_base):
    """Catches: a drop/prune that zeroes (or otherwise writes) a triplet's stored P, Λ or Q.

    Plain SGD (no momentum, no decay) changes a parameter only through its gradient, so an inactive
    triplet must keep its values exactly, receive exactly zero gradient, and its Λ stays what it was."""
    model, controller = build(make_base, exploration=0.5, resample_every=3, lora_dropout=0.0)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    controller.bind()
    checked = {"inactive": 0, "dropped_kept": 0}
    gen = torch.Generator().manual_seed(0)
    for step in range(1, 32):
        before = _triplet_values(controller)
        inactive = (_gates(controller) == 0).tolist()
        dropped, kept = controller.dropped.tolist(), controller.kept.tolist()
        loss_of(model, batch(model, gen), controller).backward()
        grads = _triplet_grads(controller)
        controller.capture_grads()
        optimizer.step()
        controller.allocate(step)
        optimizer.zero_grad()
        after = _triplet_values(controller)
        for i, off in enumerate(inactive):
            if off:
                assert torch.count_nonzero(grads[i]) == 0, f"step {step}: inactive triplet {i} got gradient"
                assert torch.equal(before[i], after[i]), f"step {step}: stored values of triplet {i} changed"
                assert before[i][-1] != 0, f"step {step}: Λ of inactive triplet {i} is zero"
                checked["inactive"] += 1
                checked["dropped_kept"] += int(dropped[i] and kept[i])
            elif step > 2:
                assert torch.count_nonzero(grads[i]) > 0, f"step {step}: active triplet {i} got no gradient"
    assert checked["inactive"] > 100 and checked["dropped_kept"] > 5  # the test saw drops and prunes


def test_reintroduced_triplets_change_the_output_and_train(make_base):
    """Catches: a reintroduction that is counted but leaves the forward pass (and the weights) unchanged."""
    model, controller = build(make_base, exploration=0.5, resample_every=3, lora_dropout=0.0)
    optimizer = adam(model)
    seen = []

    def inspect(step: int) -> None:
        reintroduced = controller.reintroduced & ~controller.kept
        if not controller.schedule.resamples(step) or not reintroduced.any():
            return
        gates = _gates(controller)
        assert (gates[reintroduced] != 0).all(), "a reintroduced triplet is not active in the forward pass"
        inputs = batch(model, torch.Generator().manual_seed(step))
        inputs.pop("labels")
        with torch.no_grad():
            live = model(**inputs).logits
            saved = controller.gate.clone()
            controller.gate[reintroduced] = 0
            without = model(**inputs).logits
            controller.gate.copy_(saved)
        assert not torch.allclose(live, without), "reintroduced triplets do not change the output"
        seen.append((step, reintroduced.clone(), _triplet_values(controller)))

    train_steps(model, controller, range(1, 32), optimizer, after_step=inspect)
    assert seen, "no resample reintroduced a triplet"
    for _step, reintroduced, values in seen[:-1]:  # each trained during its period
        now = _triplet_values(controller)
        moved = [i for i in reintroduced.nonzero().view(-1).tolist() if not torch.equal(values[i], now[i])]
        assert moved, "reintroduced triplets never trained"


def test_importance_equals_peft_on_the_same_steps(make_base):
    """Catches: importance of reintroduced (or any) triplets that ignores their gradients, importance read
    before the optimizer step, or a score combination other than AdaLoRA's.

    PEFT's own RankAllocator runs beside the controller in PEFT's documented order (after optimizer.step,
    before zero_grad) on the same model; the per-triplet scores must agree at every step."""
    model, controller = build(make_base, exploration=0.5, resample_every=3, lora_dropout=0.0)
    peft_alloc = RankAllocator(model.base_model.model, model.peft_config["default"], "default")
    checked_reintroduced = []

    def compare(step: int) -> None:
        if step >= controller.schedule.final_step:
            return
        _lend_lambda_grads(controller)
        RankAllocator.update_ipt(peft_alloc, model.base_model.model)
        theirs = []
        for key in peft_alloc.name_set:
            a = peft_alloc._element_score(key % "lora_A").mean(dim=1)
            b = peft_alloc._element_score(key % "lora_B").mean(dim=0)
            e = peft_alloc._element_score(key % "lora_E")
            theirs.append(peft_alloc._combine_ipt(e, torch.stack([a, b], dim=1)).view(-1))
        ours = controller.importance.scores()
        torch.testing.assert_close(ours, torch.cat(theirs), rtol=1e-4, atol=1e-12)
        reintroduced = controller.reintroduced & ~controller.kept
        if reintroduced.any():
            checked_reintroduced.append(float(ours[reintroduced].sum()))

    train_steps(model, controller, range(1, 41), adam(model), after_step=compare)
    assert len(checked_reintroduced) > 3 and max(checked_reintroduced) > 0


def test_reintroduced_triplets_compete_for_the_budget(make_base):
    """Catches: a selection that ignores the importance a reintroduced (or any pruned) triplet earned, so
    that a triplet, once pruned, can never win its place back.

    Every selection must keep exactly the top-budget triplets by the current scores of all triplets, and
    over a run some triplet that was pruned, then reintroduced, must be kept again on its own merit."""
    model, controller = build(make_base, exploration=0.5, resample_every=3, lora_dropout=0.0)
    selections, came_back = [], []
    pruned_then_reintroduced = torch.zeros(controller.n, dtype=torch.bool)

    def check(step: int) -> None:
        s = controller.schedule
        if not s.selects(step):
            return
        want = select_top(controller.importance.scores(), s.budget(step))
        assert torch.equal(controller.kept, want), f"step {step}: kept set is not the top-budget by importance"
        selections.append(step)
        came_back.append(int((controller.kept & pruned_then_reintroduced).sum()))
        pruned_then_reintroduced.logical_or_(controller.reintroduced & ~controller.kept)

    train_steps(model, controller, range(1, 32), adam(model), after_step=check)
    assert len(selections) == 27
    assert sum(came_back) > 0, "no reintroduced triplet was ever kept again"


@pytest.mark.parametrize("hold", [True, False])
def test_dropped_triplets_hold_their_importance_only_when_asked(make_base, hold):
    """Catches: `hold_dropped_importance` that still lets a dropped triplet's EMAs decay (its zero
    gradients then prune it at the next selection: the drop becomes a random prune), or that freezes them
    when it is off (the default keeps PEFT's EMA update for every triplet).

    On every pruning step, the scores of the triplets dropped during that step are compared with their
    scores one step earlier: equal to the last bit when held, lower for some when not."""
    model, controller = build(make_base, exploration=0.5, resample_every=6, lora_dropout=0.0,
                              hold_dropped_importance=hold)
    previous: dict[str, torch.Tensor] = {}
    compared, decayed = 0, 0

    def check(step: int) -> None:
        nonlocal compared, decayed
        scores = controller.importance.scores()
        if previous and step < controller.schedule.final_step and previous["dropped"].any():
            held = previous["dropped"]  # the mask in force while this step's gradients were computed
            compared += 1
            if hold:
                assert torch.equal(scores[held], previous["scores"][held]), f"step {step}: held scores moved"
            decayed += int((scores[held] < previous["scores"][held]).any())
        previous.update(scores=scores, dropped=controller.dropped.clone())

    train_steps(model, controller, range(1, 32), adam(model), after_step=check)
    assert compared > 5, "the schedule dropped nothing: the test compared no step"
    assert (decayed == 0) if hold else (decayed > 0)


def test_adalora_keeps_exactly_what_peft_keeps(make_base):
    """Catches: a selection that differs from PEFT's mask_to_budget (exploration 0 is PEFT's AdaLoRA)."""
    model, controller = build(make_base, method="adalora", lora_dropout=0.0)
    peft_alloc = RankAllocator(model.base_model.model, model.peft_config["default"], "default")
    compared = []

    def compare(step: int) -> None:
        _lend_lambda_grads(controller)
        RankAllocator.update_ipt(peft_alloc, model.base_model.model)  # PEFT's order: after the step
        if not controller.schedule.tinit < step < controller.schedule.final_step:
            return
        budget = controller.schedule.budget(step)
        theirs = RankAllocator.mask_to_budget(peft_alloc, copy.deepcopy(model.base_model.model), budget)
        bits = [bit for key in sorted(theirs) for bit in theirs[key]]
        assert controller.active().tolist() == bits, f"step {step}"
        compared.append(step)

    train_steps(model, controller, range(1, 32), adam(model), after_step=compare)
    assert len(compared) == 27


def test_replicas_agree_and_global_rng_is_never_used(make_base):
    """Catches: exploration drawn from the global RNG, or any run-to-run nondeterminism of the pattern."""
    runs = []
    for seed, global_seed in ((5, 0), (5, 123), (6, 0)):
        model, controller = build(make_base, seed=seed, exploration=0.3, resample_every=4, lora_dropout=0.0)
        torch.manual_seed(global_seed)  # must not matter: dropout is off, the sampler has its own generator
        states = []
        train_steps(model, controller, range(1, 41), adam(model), data_seed=1,
                    after_step=lambda _s, st=states: st.append(torch.get_rng_state()))
        assert all(torch.equal(states[0], s) for s in states)  # no allocation drew from the global RNG
        runs.append((controller.history(), controller.rank_pattern()))
    assert runs[0] == runs[1]
    assert runs[0][0] != runs[2][0]  # another trial seed explores differently


def test_state_dict_resume_continues_identically(make_base):
    """Catches: a resume that loses the EMAs, the kept set, the decisions in force or the generator.

    Stop at step 15, inside a resample period (draws at 5, 11, 17, 23, 29) and mid-pruning."""
    knobs = dict(sampling="importance", exploration=0.3, resample_every=6, lora_dropout=0.0)
    ref_model, ref = build(make_base, **knobs)
    ref_opt = adam(ref_model)
    train_steps(ref_model, ref, range(1, 16), ref_opt)
    weights = {k: v.clone() for k, v in ref_model.state_dict().items()}
    opt_state = copy.deepcopy(ref_opt.state_dict())
    ctl_state = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in ref.state_dict().items()}
    assert ctl_state["step"] == 15
    train_steps(ref_model, ref, range(16, 41), ref_opt)

    model, resumed = build(make_base, **knobs)
    model.load_state_dict(weights)
    optimizer = adam(model)
    optimizer.load_state_dict(opt_state)
    resumed.load_state_dict(ctl_state)
    assert resumed.history() == ref.history()[:15]
    train_steps(model, resumed, range(16, 41), optimizer)
    assert resumed.history() == ref.history()
    assert resumed.rank_pattern() == ref.rank_pattern()


def test_frozen_phase_reads_nothing(make_base):
    """Catches: importance work (gradient or weight reads) after the final selection."""
    model, controller = build(make_base)
    optimizer = adam(model)
    train_steps(model, controller, range(1, 33), optimizer)  # through the final selection at step 32
    assert controller.final

    class NoReads:
        shards = controller.access.shards

        def values(self):
            raise AssertionError("values read in the frozen phase")

        def grads(self):
            raise AssertionError("gradients read in the frozen phase")

        def all_reduce_(self, tensor):
            raise AssertionError("all-reduce in the frozen phase")

    controller.importance.access = NoReads()
    pattern = controller.rank_pattern()
    train_steps(model, controller, range(33, 41), optimizer)
    assert controller.rank_pattern() == pattern and controller.history()[-1]["step"] == 40


def _adapter_or_head(name: str) -> bool:
    return any(key in name for key in ("lora_", SINGULAR_VALUES, "prompt_encoder", "modules_to_save"))


@pytest.mark.parametrize("kind", ["llama", "opt"])
@pytest.mark.parametrize("method", METHODS)
def test_only_adapter_and_head_receive_gradients(make_base, kind, method):
    model, controller = build_model(make_base(kind), AdapterSettings(method=method, init_r=4, target_r=2), 40, 0)
    train_steps(model, controller, range(1, 3), adam(model))  # P leaves zero: Q gets gradients too
    loss_of(model, batch(model, torch.Generator().manual_seed(5)), controller).backward()
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
