"""KnapsackSampler: the one-shot profile + multiple-choice knapsack baseline."""

from __future__ import annotations

import itertools

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution

from automix.search import KnapsackSampler
from automix.search.knapsack import knapsack_path

optuna.logging.set_verbosity(optuna.logging.WARNING)

BITS = [2, 3, 4, 8]
N = 6
RNG = np.random.default_rng(4)
SENS = RNG.lognormal(0.0, 1.0, N)
SIZE = RNG.uniform(0.5, 2.0, N)
SPACE = {f"b{i}": CategoricalDistribution(BITS) for i in range(N)}


def _score(p: dict) -> np.ndarray:
    per = SENS * 4.0 ** -(np.array([p[f"b{i}"] for i in range(N)], dtype=float) - 2)
    return np.concatenate([per, [per.sum()]])  # features: per layer, then the total


def _cost(p: dict) -> float:
    return float((SIZE * np.array([p[f"b{i}"] for i in range(N)], dtype=float)).sum())


GRID = [dict(zip(SPACE, row)) for row in itertools.product(BITS, repeat=N)]


def _best_within(budget: float) -> float:
    return min(_score(p)[-1] for p in GRID if _cost(p) <= budget + 1e-9)


def test_path_points_are_optimal_for_their_own_cost() -> None:
    cost = [SIZE[i] * np.array(BITS, dtype=float) for i in range(N)]
    score = [SENS[i] * 4.0 ** -(np.array(BITS, dtype=float) - 2) for i in range(N)]
    path = knapsack_path(cost, score)
    assert len(path) > N and (path[0] == 0).all() and (path[-1] == len(BITS) - 1).all()
    for x in path[:: max(1, len(path) // 6)]:
        c = sum(cost[i][x[i]] for i in range(N))
        s = sum(score[i][x[i]] for i in range(N))
        assert s == pytest.approx(_best_within(c))


def test_first_proposal_is_the_allocation_at_the_budget_then_a_sweep_below() -> None:
    budget = _cost({k: 3 for k in SPACE}) + 0.5
    sampler = KnapsackSampler(score=_score, cost=_cost, search_space=SPACE, budget=budget, seed=0)
    study = optuna.create_study(sampler=sampler)
    for _ in range(8):
        t = study.ask()
        p = {k: t.suggest_categorical(k, BITS) for k in SPACE}
        study.tell(t, float(_score(p)[-1]))
    params = [t.params for t in study.trials]
    assert len({tuple(p.values()) for p in params}) == 8
    assert all(_cost(p) <= budget + 1e-9 for p in params)
    first = params[0]
    # within the budget and near the exact optimum (a knapsack is NP-hard; the fill gets close)
    assert _score(first)[-1] <= 1.15 * _best_within(budget)
    assert _cost(first) > _cost({k: 3 for k in SPACE}) - 1.0  # it spends the budget


def test_without_a_budget_the_sweep_spans_the_costs_and_methods_are_chosen() -> None:
    space = {**SPACE, "method": CategoricalDistribution(["dense", "quant"])}

    def cost(p):  # 'dense' keeps 16 bits everywhere: always dearer, never better
        return _cost(p) if p["method"] == "quant" else 16.0 * SIZE.sum()

    sampler = KnapsackSampler(score=_score, cost=cost, search_space=space, seed=0)
    props = sampler.proposals(10)
    costs = sorted(cost(p) for p in props)
    assert len(props) == 10 and costs[0] < _cost({k: 3 for k in SPACE}) < costs[-1]
    assert all(p["method"] == "quant" for p in props)


def test_rejects_continuous_parameters() -> None:
    with pytest.raises(ValueError, match="not categorical"):
        KnapsackSampler(score=_score, cost=_cost,
                        search_space={"x": optuna.distributions.FloatDistribution(0, 1)})
