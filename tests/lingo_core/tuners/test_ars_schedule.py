"""RankSchedule: AdaLoRA's cubic budget, event steps, and the exploration rates that keep E[active] = b."""

from __future__ import annotations

import re

import pytest

from lingo_core.tuners.ars import RankSchedule, exploration_probabilities

SCHEDULE = dict(init_budget=56, target_budget=28, total_steps=40, tinit=4, tfinal=8)


def test_cubic_budget_matches_peft_formula():
    s = RankSchedule(**SCHEDULE)
    assert s.final_step == 32
    budgets = {step: s.budget(step) for step in range(1, 41)}
    assert all(budgets[t] == 56 for t in range(1, 5))  # warm-up: full rank
    # int((init - target) * (1 - (t - tinit) / (T - tfinal - tinit))^3 + target)
    for step in (5, 11, 18, 25, 31):
        expected = int(28 * (1 - (step - 4) / 28) ** 3 + 28)
        assert budgets[step] == expected, step
    assert budgets[18] == 31  # (56 - 28) * 0.5^3 + 28 = 31.5 -> 31
    assert all(budgets[t] == 28 for t in range(32, 41))  # final selection and frozen phase: target
    values = list(budgets.values())
    assert values == sorted(values, reverse=True)


def test_event_steps():
    s = RankSchedule(**SCHEDULE, deltaT=3, resample_every=10, exploration=0.1)
    # first pruning step, then every 10, while a period still starts before 32 - 10 = 22
    assert s.exploration_end == 22
    assert [t for t in range(1, 41) if s.resamples(t)] == [5, 15]
    assert [t for t in range(1, 41) if s.settles(t)] == [22]  # the kept set alone from here to the final step
    selects = [t for t in range(1, 41) if s.selects(t)]
    assert selects == sorted({5, 15, 22} | {t for t in range(5, 32) if t % 3 == 0})
    assert all(s.observes(t) for t in range(1, 32)) and not any(s.observes(t) for t in range(32, 41))
    adalora = RankSchedule(**SCHEDULE)  # exploration 0: never draws
    assert not any(adalora.resamples(t) or adalora.settles(t) for t in range(1, 41))
    assert [t for t in range(1, 41) if adalora.selects(t)] == list(range(5, 32))


@pytest.mark.parametrize(("n", "b", "eps"), [(56, 50, 0.1), (56, 28, 0.1), (3360, 1700, 0.2), (100, 99, 1.0)])
def test_exploration_keeps_the_expected_active_count_on_budget(n, b, eps):
    p_regrow, p_drop = exploration_probabilities(n, b, eps)
    assert p_regrow == pytest.approx(eps) and 0 <= p_drop <= 1
    assert p_drop * b == pytest.approx(p_regrow * (n - b))  # as many drops as reintroductions, on average
    assert b * (1 - p_drop) + (n - b) * p_regrow == pytest.approx(b)


def test_exploration_clips_when_the_budget_is_small():
    p_regrow, p_drop = exploration_probabilities(100, 5, 0.5)  # 0.5 x 95 expected swaps > 5 kept
    assert p_drop == 1.0 and p_regrow == pytest.approx(5 / 95)
    assert 5 * (1 - p_drop) + 95 * p_regrow == pytest.approx(5)
    assert exploration_probabilities(10, 10, 0.3) == (0.0, 0.0)  # nothing pruned: nothing to swap
    assert exploration_probabilities(10, 0, 0.3) == (0.0, 0.0)
    assert exploration_probabilities(10, 4, 0.0) == (0.0, 0.0)
    with pytest.raises(ValueError, match="outside"):
        exploration_probabilities(10, 11, 0.1)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"target_budget": 60}, "target budget 60"), ({"tinit": 20, "tfinal": 20}, "tinit (20) + tfinal (20)"),
     ({"deltaT": 0}, "deltaT (0)"), ({"exploration": 2.0}, "RankSchedule.exploration"),
     ({"sampling": "gumbel"}, "RankSchedule.sampling")],
)
def test_bad_schedule_is_rejected(kwargs, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        RankSchedule(**{**SCHEDULE, **kwargs})
