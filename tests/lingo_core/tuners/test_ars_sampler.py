"""Budget selection and exploration draws: exactness, frequencies (binomial z-tests), seeding."""

from __future__ import annotations

import math

import pytest
import torch

from lingo_core.tuners.ars import TripletSampler, exploration_probabilities, select_top


def _z(count: float, probs: torch.Tensor) -> float:
    """Poisson-binomial z-score of `count` successes given per-trial probabilities."""
    mean = float(probs.sum())
    var = float((probs * (1 - probs)).sum())
    return (count - mean) / math.sqrt(var)


def test_select_top_is_exact_and_stable():
    scores = torch.tensor([0.5, 2.0, 0.5, 3.0, 0.5, 0.1])
    assert select_top(scores, 3).tolist() == [True, True, False, True, False, False]  # tie: earlier wins
    assert select_top(scores, 0).sum() == 0 and select_top(scores, 99).all()
    assert select_top(torch.zeros(5), 2).tolist() == [True, True, False, False, False]


@pytest.mark.parametrize("sampling", ["uniform", "importance"])
def test_reintroduce_and_drop_frequencies_match_probabilities(sampling):
    exploration, n, budget = 0.3, 2000, 1400
    p_regrow, p_drop = exploration_probabilities(n, budget, exploration)  # 0.3, 0.3 * 600 / 1400
    sampler = TripletSampler(exploration, sampling, seed=0)
    # scores in [1, 5]: the pruned ones span ~2x (regrow weights clearly differ) and no probability clips
    scores = 1.0 + 4.0 * torch.rand(n, generator=torch.Generator().manual_seed(3))
    keep = select_top(scores, budget)
    regrow_p, drop_p = sampler.probabilities(scores, keep, budget)
    assert float(regrow_p[~keep].mean()) == pytest.approx(p_regrow)
    assert float(drop_p[keep].mean()) == pytest.approx(p_drop)
    assert (regrow_p[keep] == 0).all() and (drop_p[~keep] == 0).all()
    rounds = 20
    regrown, dropped, active = torch.zeros(n), torch.zeros(n), []
    for _ in range(rounds):
        r, d = sampler.draw(scores, keep, budget)
        assert not (r & keep).any() and not (d & ~keep).any()
        regrown += r
        dropped += d
        active.append(int(((keep & ~d) | r).sum()))
    # |z| < 4.5: a false alarm has probability < 1e-5 per check; a wrong rate (0.25 vs 0.3) gives z > 10
    assert abs(_z(regrown[~keep].sum(), regrow_p[~keep].repeat(rounds))) < 4.5
    assert abs(_z(dropped[keep].sum(), drop_p[keep].repeat(rounds))) < 4.5
    # E[active] = budget: the active count is budget + (reintroduced - dropped), both ~ binomial
    var = rounds * float((regrow_p * (1 - regrow_p)).sum() + (drop_p * (1 - drop_p)).sum())
    assert abs(sum(active) - rounds * budget) / math.sqrt(var) < 4.5
    low, high = torch.argsort(scores[~keep])[:300], torch.argsort(scores[~keep])[300:]
    low_k, high_k = torch.argsort(scores[keep])[:700], torch.argsort(scores[keep])[700:]
    if sampling == "importance":  # important pruned triplets come back more, unimportant kept ones drop more
        assert regrown[~keep][high].sum() > regrown[~keep][low].sum() * 1.2
        assert dropped[keep][low_k].sum() > dropped[keep][high_k].sum() * 1.2


def test_importance_probabilities_clip_and_handle_zero_scores():
    sampler = TripletSampler(0.5, "importance", seed=0)
    scores = torch.tensor([0.0, 0.0, 1.0, 100.0, 5.0, 0.0])
    keep = torch.tensor([False, False, False, True, True, True])
    regrow, drop = sampler.probabilities(scores, keep, 3)
    assert ((0 <= regrow) & (regrow <= 1) & (0 <= drop) & (drop <= 1)).all()
    assert regrow[2] == 1.0 and regrow[0] == 0.0  # 0.5 x 1 / (1/3) clipped; zero importance never returns
    assert drop[5] == 1.0 and drop[3] < drop[4] < drop[5]  # a zero-importance kept triplet surely drops
    regrow, drop = sampler.probabilities(torch.zeros(6), keep, 3)  # no information: uniform
    assert torch.equal(regrow[~keep], torch.full((3,), 0.5, dtype=torch.float64))
    assert torch.equal(drop[keep], torch.full((3,), 0.5, dtype=torch.float64))


def test_private_generator_same_seed_same_draws_global_rng_untouched():
    """Data-parallel ranks build samplers with the trial seed: their draws agree; global RNG is never used."""
    scores = torch.rand(500, generator=torch.Generator().manual_seed(0))
    keep = select_top(scores, 250)

    def draws(seed: int, global_seed: int) -> list[torch.Tensor]:
        torch.manual_seed(global_seed)
        sampler = TripletSampler(0.2, "uniform", seed=seed)
        before = torch.get_rng_state()
        out = [sampler.draw(scores, keep, 250)[0] for _ in range(5)]
        assert torch.equal(before, torch.get_rng_state())  # no draw from the global generator
        return out

    a, b, c = draws(11, 0), draws(11, 99), draws(12, 0)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not any(torch.equal(x, z) for x, z in zip(a, c, strict=True))
    assert not torch.equal(a[0], a[1])  # the stream advances between draws
