"""The one-shot allocation: profile scores + an exact integer program under the memory budget
(`automix.search.oneshot`, solved by `automix.search._allocation`)."""

from __future__ import annotations

import itertools

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution

from automix.search._allocation import Additive, solve
from automix.search.batch import Shifted, decompose
from automix.search.oneshot import OneShotAllocator, OneShotSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)

BITS = [2, 3, 4, 8]
N = 6
RNG = np.random.default_rng(4)
SENS = RNG.lognormal(0.0, 1.0, N)
SIZE = RNG.uniform(0.5, 2.0, N)
SPACE = {f"b{i}": CategoricalDistribution(BITS) for i in range(N)}
GRID = [dict(zip(SPACE, row)) for row in itertools.product(BITS, repeat=N)]


def _score(p: dict) -> np.ndarray:
    per = SENS * 4.0 ** -(np.array([p[f"b{i}"] for i in range(N)], dtype=float) - 2)
    return np.concatenate([per, [per.sum()]])  # features: per layer, then the total


def _cost(p: dict) -> float:
    return float((SIZE * np.array([p[f"b{i}"] for i in range(N)], dtype=float)).sum())


def _best_within(budget: float, cost=_cost) -> float:
    return min(_score(p)[-1] for p in GRID if cost(p) <= budget + 1e-9)


@pytest.mark.parametrize("seed", range(40))
def test_solver_is_exact_with_pairs_maxima_holds_and_cuts(seed: int) -> None:
    """Against brute force on random small problems: pairwise tables in the objective and the
    cost, a cost that is a sum plus a maximum, held parameters and excluded configurations."""
    rng = np.random.default_rng(seed)
    P = int(rng.integers(2, 6))
    L = rng.integers(2, 4, P)
    obj = Additive(np.zeros(1), [rng.normal(size=(l, 1)) for l in L], {(0, 1): rng.normal(size=(L[0], L[1], 1))})
    cost = Additive(rng.uniform(0, 1, 3), [rng.uniform(0, 1, (l, 3)) for l in L],
                    {(0, P - 1): rng.uniform(0, 1, (L[0], L[-1], 3))} if seed % 2 else {}, has_max=True)
    every = np.array(list(itertools.product(*[range(l) for l in L])))
    costs = cost(every)
    budget = float(np.quantile(costs, rng.uniform(0.1, 0.9)))
    hold = {P - 1: int(rng.integers(L[-1]))} if seed % 3 == 0 else {}
    cut = [every[int(rng.integers(len(every)))]] if seed % 4 == 0 else []
    ok = costs <= budget
    for j, level in hold.items():
        ok &= every[:, j] == level
    for x in cut:
        ok &= ~np.all(every == x, axis=1)
    got = solve(L, obj, [(cost, budget)], hold=hold, exclude=cut)
    if not ok.any():
        assert got is None
        return
    assert got is not None and cost(got[None])[0] <= budget + 1e-9
    assert obj(got[None])[0] == pytest.approx(obj(every)[ok].min(), abs=1e-9)


def test_first_proposal_is_the_exact_optimum_at_the_budget_then_a_sweep_below() -> None:
    budget = _cost({k: 3 for k in SPACE}) + 0.5
    sampler = OneShotSampler(score=_score, cost=_cost, search_space=SPACE, budget=budget, seed=0)
    study = optuna.create_study(sampler=sampler)
    for _ in range(8):
        t = study.ask()
        p = {k: t.suggest_categorical(k, BITS) for k in SPACE}
        study.tell(t, float(_score(p)[-1]))
    params = [t.params for t in study.trials]
    assert len({tuple(p.values()) for p in params}) == 8
    assert all(_cost(p) <= budget + 1e-9 for p in params)
    assert _score(params[0])[-1] == pytest.approx(_best_within(budget))
    assert _cost(params[1]) < _cost(params[0])


def test_the_maximum_over_blocks_is_spent_exactly() -> None:
    """Memory with gradient checkpointing holds the largest block's recomputation: a sum-only
    knapsack over-counts it; the program spends the budget the maximum leaves."""
    def peak(p: dict) -> float:
        b = np.array([p[f"b{i}"] for i in range(N)], dtype=float)
        return float((SIZE * b).sum() + max(SIZE[i] * b[i] for i in range(N)))

    def blocks(p: dict) -> list[float]:
        return [SIZE[i] * p[f"b{i}"] for i in range(N)]

    fn = decompose(peak, SPACE, max_terms=blocks)
    assert fn.exact
    budget = peak({k: 3 for k in SPACE}) + 1.0
    p = OneShotAllocator(score=_score, cost=fn, search_space=SPACE).allocate(budget)
    assert peak(p) <= budget + 1e-9
    assert _score(p)[-1] == pytest.approx(_best_within(budget, peak))


def test_unscored_parameters_are_held_and_methods_allocated_each() -> None:
    space = {**SPACE, "prune.all": CategoricalDistribution([0.0, 0.3]), "rank.all": CategoricalDistribution([4, 8, 16]),
             "method": CategoricalDistribution(["a", "b"])}

    def cost(p):  # pruning and a smaller rank save memory; the profile cannot see their damage
        return _cost(p) - 5.0 * p["prune.all"] + 0.05 * p["rank.all"] + (1.0 if p["method"] == "b" else 0.0)

    budget = cost({**{k: 3 for k in SPACE}, "prune.all": 0.0, "rank.all": 8, "method": "a"})
    a = OneShotAllocator(score=_score, cost=cost, search_space=space, hold={"rank.all": 8})
    assert sorted(a.names[j] for j in a.hold) == ["prune.all", "rank.all"]
    for method in ("a", "b"):
        p = a.allocate(budget, (method,))
        assert p["method"] == method and p["prune.all"] == 0.0 and p["rank.all"] == 8
        assert cost(p) <= budget + 1e-9
    held_default = OneShotAllocator(score=_score, cost=cost, search_space=space).allocate(budget, ("a",))
    assert held_default["rank.all"] == 4 and held_default["prune.all"] == 0.0  # first choices
    sampler = OneShotSampler(score=_score, cost=Shifted(cost, 0.0), search_space=space, budget=budget,
                             hold={"rank.all": 8})
    assert [p["method"] for p in sampler.proposals(2)] == ["a", "b"]


def test_without_a_budget_the_sweep_spans_the_costs() -> None:
    sampler = OneShotSampler(score=_score, cost=_cost, search_space=SPACE, seed=0)
    props = sampler.proposals(10)
    costs = sorted(_cost(p) for p in props)
    assert len(props) == 10 and costs[0] < _cost({k: 3 for k in SPACE}) < costs[-1]


def test_rejects_continuous_parameters() -> None:
    with pytest.raises(ValueError, match="not categorical"):
        OneShotAllocator(score=_score, cost=_cost, search_space={"x": optuna.distributions.FloatDistribution(0, 1)})


def test_bracketed_allocation_uses_only_the_two_widths_around_the_budget() -> None:
    budget = _cost({k: 3 for k in SPACE}) + 0.5
    a = OneShotAllocator(score=_score, cost=_cost, search_space=SPACE)
    assert a.bracket(budget, ()) == {j: [1, 2] for j in range(N)}  # the levels of 3 and 4 bits
    p = a.allocate(budget, bracketed=True)
    assert set(p.values()) <= {3, 4} and _cost(p) <= budget + 1e-9
    within = [q for q in GRID if set(q.values()) <= {3, 4} and _cost(q) <= budget + 1e-9]
    assert _score(p)[-1] == pytest.approx(min(_score(q)[-1] for q in within))
    assert a.bracket(_cost({k: 8 for k in SPACE}) + 1.0, ()) is None  # every width fits: no bracket
