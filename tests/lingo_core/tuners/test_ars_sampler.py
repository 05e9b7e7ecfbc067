"""RankSampler: AdaLoRA scores and schedule, equivalence with PEFT, sampling statistics and seeding."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from peft.tuners.adalora.layer import RankAllocator
from tuner_helpers import adam, build, train_steps

from lingo_core.tuners import ARSConfig, RankSampler


def _sampler(make_base, p_regrow: float, p_drop: float, sampling: str, seed: int = 0) -> RankSampler:
    model, controller = build(make_base, p_regrow=p_regrow, p_drop=p_drop, sampling=sampling)
    return RankSampler(controller.inner, controller.config, seed=seed)


def test_cubic_budget_schedule(make_base):
    _, controller = build(make_base, total_steps=40, tinit=4, tfinal=8)  # 14 matrices, r 4 -> 2
    sampler = controller.sampler
    assert (sampler.init_bgt, sampler.target_bgt) == (56, 28)
    budgets = {step: sampler.budget_schedule(step) for step in range(1, 41)}
    assert all(budgets[s] == (56, False) for s in range(1, 5))  # warm-up: full rank, no masking
    # decay: int((init - target) * (1 - (t - tinit) / (T - tfinal - tinit))^3 + target), every step
    for step, expected in [(5, int(28 * (27 / 28) ** 3 + 28)), (18, 31), (25, 28 + int(28 * 0.25**3)), (32, 28)]:
        assert budgets[step] == (expected, True)
    assert budgets[18][0] == 31  # (56-28) * 0.5^3 + 28 = 31.5 -> 31
    assert all(budgets[s] == (28, True) for s in range(33, 41))  # final phase: target
    values = [budgets[s][0] for s in range(1, 41)]
    assert values == sorted(values, reverse=True)


def test_without_sampling_mask_equals_peft_rank_allocator(make_base):
    """p_regrow = p_drop = 0: the same triplets as PEFT's own RankAllocator.mask_to_budget."""
    model, controller = build(make_base, method="adalora")
    optimizer = adam(model)
    train_steps(model, None, range(1, 4), optimizer)  # move E off zero so gradients reach P and Q
    gen = torch.Generator().manual_seed(7)
    from tuner_helpers import batch

    for _ in range(3):  # real importance state from real backward passes
        model(**batch(model, gen)).loss.backward()
        controller.observe(lambda p: p.grad)
        model.zero_grad()
    sampler = controller.sampler
    theirs = copy.deepcopy(controller.inner)
    for budget in (50, 40, 28, 17):
        ours_model = copy.deepcopy(controller.inner)
        ours = sampler.mask_to_budget(ours_model, budget)
        peft_pattern = RankAllocator.mask_to_budget(sampler, theirs, budget)
        assert ours == peft_pattern
        assert sampler.last_allocation == {"budget": budget, "active_ranks": budget, "regrown": 0, "dropped": 0}
        ours_e = {n: p for n, p in ours_model.named_parameters() if "lora_E" in n}
        for n, p in theirs.named_parameters():
            if "lora_E" in n:
                torch.testing.assert_close(ours_e[n], p, rtol=0, atol=0)
    # An ARS sampler with both probabilities at 0 is AdaLoRA too.
    ars_config = ARSConfig(**{**controller.config.to_dict(), "p_regrow": 0.0, "p_drop": 0.0})
    zero = RankSampler(controller.inner, ars_config)
    zero.exp_avg_ipt, zero.exp_avg_unc = sampler.exp_avg_ipt, sampler.exp_avg_unc
    assert zero.mask_to_budget(copy.deepcopy(controller.inner), 17) == peft_pattern


def _z(count: float, n_trials_probs: torch.Tensor) -> float:
    """Binomial (Poisson-binomial) z-score of `count` successes given per-trial probabilities."""
    mean = float(n_trials_probs.sum())
    var = float((n_trials_probs * (1 - n_trials_probs)).sum())
    return (count - mean) / math.sqrt(var)


@pytest.mark.parametrize("sampling", ["uniform", "importance"])
def test_regrow_and_drop_frequencies_match_probabilities(make_base, sampling):
    p_regrow, p_drop = 0.3, 0.1
    sampler = _sampler(make_base, p_regrow, p_drop, sampling)
    gen = torch.Generator().manual_seed(3)
    scores = 1.0 + torch.rand(2000, generator=gen)  # spread < 2x: importance probabilities never clip
    keep = sampler.select_top(scores, 1000)
    assert keep.sum() == 1000 and scores[keep].min() >= scores[~keep].max()
    regrow_p, drop_p = sampler.probabilities(scores, keep)
    assert torch.allclose(regrow_p[~keep].mean(), torch.tensor(p_regrow, dtype=torch.float64))
    assert torch.allclose(drop_p[keep].mean(), torch.tensor(p_drop, dtype=torch.float64))
    assert (regrow_p[keep] == 0).all() and (drop_p[~keep] == 0).all()
    rounds = 20
    regrown = torch.zeros(2000)
    dropped = torch.zeros(2000)
    for _ in range(rounds):
        active, r, d = sampler.sample(scores, keep)
        assert torch.equal(active, (keep & ~d) | r)
        regrown += r
        dropped += d
    n = rounds * 1000
    # |z| < 4.5: a false alarm has probability < 1e-5 per check, a wrong rate (e.g. 0.25 vs 0.3) z > 20
    assert abs(_z(regrown.sum(), torch.full((n,), p_regrow))) < 4.5
    assert abs(_z(dropped.sum(), torch.full((n,), p_drop))) < 4.5
    order_pruned = torch.argsort(scores[~keep])
    order_kept = torch.argsort(scores[keep])
    low_r, high_r = regrown[~keep][order_pruned[:500]].sum(), regrown[~keep][order_pruned[500:]].sum()
    low_d, high_d = dropped[keep][order_kept[:500]].sum(), dropped[keep][order_kept[500:]].sum()
    if sampling == "uniform":
        assert abs(_z(high_r, torch.full((n // 2,), p_regrow))) < 4.5
    else:  # importance: important pruned triplets regrow more, unimportant kept ones drop more
        assert high_r > low_r * 1.1 and low_d > high_d * 1.1
        assert abs(_z(high_r, regrow_p[~keep][order_pruned[500:]].repeat(rounds))) < 4.5
        assert abs(_z(low_d, drop_p[keep][order_kept[:500]].repeat(rounds))) < 4.5


def test_importance_probabilities_clip_and_handle_zero_scores(make_base):
    sampler = _sampler(make_base, 0.5, 0.5, "importance")
    scores = torch.tensor([0.0, 0.0, 1.0, 100.0, 5.0, 0.0])
    keep = torch.tensor([False, False, False, True, True, True])
    regrow, drop = sampler.probabilities(scores, keep)
    assert ((0 <= regrow) & (regrow <= 1) & (0 <= drop) & (drop <= 1)).all()
    assert regrow[2] == 1.0 and regrow[0] == 0.0  # 0.5 * 1 / (1/3) clipped; zero importance never regrows
    assert drop[5] == 1.0 and drop[3] < drop[4] < drop[5]  # zero-importance kept triplet surely drops
    regrow, drop = sampler.probabilities(torch.zeros(6), keep)  # no information: uniform
    assert torch.equal(regrow[~keep], torch.full((3,), 0.5, dtype=torch.float64))
    assert torch.equal(drop[keep], torch.full((3,), 0.5, dtype=torch.float64))


def test_same_seed_same_decisions_other_seed_different(make_base):
    """Data-parallel ranks build samplers with the trial seed: their draws must agree exactly."""
    a = _sampler(make_base, 0.2, 0.2, "uniform", seed=11)
    b = _sampler(make_base, 0.2, 0.2, "uniform", seed=11)
    c = _sampler(make_base, 0.2, 0.2, "uniform", seed=12)
    scores = torch.rand(500, generator=torch.Generator().manual_seed(0))
    keep = a.select_top(scores, 250)
    torch.manual_seed(0)
    runs_a = [a.sample(scores, keep)[0] for _ in range(5)]
    torch.manual_seed(99)  # the global RNG must not matter
    runs_b = [b.sample(scores, keep)[0] for _ in range(5)]
    runs_c = [c.sample(scores, keep)[0] for _ in range(5)]
    assert all(torch.equal(x, y) for x, y in zip(runs_a, runs_b, strict=True))
    assert not any(torch.equal(x, z) for x, z in zip(runs_a, runs_c, strict=True))
    assert not torch.equal(runs_a[0], runs_a[1])  # the stream advances between allocations
