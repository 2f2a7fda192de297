"""AutoMixSampler's start from the one-shot allocation and its profile-residual proposals
(`automix.search._profile_search`, `automix.search._residual`)."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution

from automix.search import AutoMixSampler, OneShotAllocator, SamplerInputs, make_sampler
from automix.search._residual import ResidualModel
from automix.search.batch import Shifted
from automix.bench.problems import SUITE, SyntheticProblem

optuna.logging.set_verbosity(optuna.logging.WARNING)

N = 8
RNG = np.random.default_rng(7)
SENS = RNG.lognormal(0.0, 1.0, N)
SIZE = RNG.uniform(0.5, 2.0, N)
BITS = [2, 3, 4, 8]
SPACE = {**{f"bits.l{i}": CategoricalDistribution(BITS) for i in range(N)},
         "rank.all": CategoricalDistribution([4, 8, 16]), "method": CategoricalDistribution(["qlora", "loftq"])}


def _bits(p: dict) -> np.ndarray:
    return np.array([p[f"bits.l{i}"] for i in range(N)], dtype=float)


def _profile(p: dict) -> np.ndarray:
    per = SENS * 4.0 ** -(_bits(p) - 2)
    return np.concatenate([per, [per.sum()]])


def _memory(p: dict) -> float:
    return float((SIZE * _bits(p)).sum() + 0.4 * p["rank.all"])


def _loss(p: dict) -> float:
    """What the trials measure: the profile is right up to a factor per layer, the method and
    the rank matter and the profile cannot see them."""
    per = SENS * np.linspace(0.5, 1.5, N) * 4.0 ** -(_bits(p) - 2)
    return float(per.sum() + (0.0 if p["method"] == "loftq" else 0.3) - 0.02 * np.log2(p["rank.all"]))


BUDGET = _memory({**{f"bits.l{i}": 3 for i in range(N)}, "rank.all": 8}) + 2.0


def _study(n: int, seed: int = 0) -> optuna.Study:
    sampler = AutoMixSampler(search_space=SPACE, features=_profile, known_constraints=[Shifted(_memory, BUDGET)],
                             hold={"rank.all": 8}, seed=seed)
    study = optuna.create_study(sampler=sampler)
    for _ in range(n):
        t = study.ask()
        p = {k: t.suggest_categorical(k, list(d.choices)) for k, d in SPACE.items()}
        study.tell(t, _loss(p))
    return study


def test_the_first_trials_are_the_one_shot_per_method_then_the_family_trade() -> None:
    study = _study(5)
    alloc = OneShotAllocator(score=_profile, cost=_memory, search_space=SPACE, hold={"rank.all": 8})
    params = [t.params for t in study.trials]
    assert params[0] == alloc.allocate(BUDGET, ("qlora",))
    assert params[1] == alloc.allocate(BUDGET, ("loftq",))
    # the profile trusted only between the two widths around the budget (3 and 4 bits here)
    assert set(_bits(params[2])) <= {3, 4} and params[2] != params[0]
    # the profile cannot score the rank: one trial trades it (one level down) for bits
    assert params[3]["rank.all"] == 4 and _bits(params[3]).sum() > _bits(params[0]).sum()
    assert all(_memory(p) <= BUDGET + 1e-9 for p in params)


def test_the_search_only_adds_to_the_one_shot() -> None:
    study = _study(16)
    params = [t.params for t in study.trials]
    assert len({tuple(sorted(p.items())) for p in params}) == len(params)  # never the same twice
    assert all(_memory(p) <= BUDGET + 1e-9 for p in params)
    first = min(_loss(p) for p in params[:2])
    best = min(_loss(p) for p in params)
    assert best < first - 0.01  # the method and the profile's errors were learned
    assert study.best_trial.params["method"] == "loftq"


def test_residual_model_tables_agree_with_its_predictions() -> None:
    alloc = OneShotAllocator(score=_profile, cost=_memory, search_space=SPACE, hold={"rank.all": 8})
    model = ResidualModel(alloc)
    rng = np.random.default_rng(0)
    params = [{k: d.choices[int(rng.integers(len(d.choices)))] for k, d in SPACE.items()} for _ in range(20)]
    assert model.fit(params, [_loss(p) for p in params])
    mean, std = model.predict(params)
    for p, m in zip(params, mean):
        x, cond = alloc.levels(p)
        assert model.tables(cond)(x[None])[0] == pytest.approx(m, rel=1e-9, abs=1e-9)
    assert np.all(std > 0)


def test_a_profile_that_does_not_predict_the_loss_is_not_followed() -> None:
    alloc = OneShotAllocator(score=_profile, cost=_memory, search_space=SPACE)
    params = [alloc.allocate(BUDGET - d, ("qlora",)) for d in (0.0, 2.0, 4.0, 6.0)]
    # losses that fall as the profile's damage rises: no positive slope, no model
    damage = [_profile(p)[-1] for p in params]
    assert not ResidualModel(alloc).fit(params, [-d for d in damage])


@pytest.mark.parametrize("case", [c for c in SUITE if c.memory == "known"][:3], ids=lambda c: c.name)
def test_generated_problems_start_at_the_one_shot_and_stay_feasible(case) -> None:
    problem = SyntheticProblem(case, seed=0)
    budget = problem.budget_gb()
    s = AutoMixSampler(search_space=problem.distributions, features=problem.features(), seed=0,
                       known_constraints=[Shifted(problem.memory_fn(), budget)])
    study = optuna.create_study(direction="maximize", sampler=s)
    for _ in range(6):
        t = study.ask()
        x = problem.suggest(t)
        study.tell(t, float(problem.observe(x[None])[0]))
    one = OneShotAllocator(score=problem.features(), cost=problem.memory_fn(),
                           search_space=problem.distributions).allocate(budget)
    assert study.trials[0].params == one
    assert all(problem.memory_of_params(t.params) <= budget + 1e-9 for t in study.trials)


def test_samplers_by_name() -> None:
    inputs = SamplerInputs(distributions=SPACE, memory=_memory, budget=BUDGET, features=_profile,
                           hold={"rank.all": 8})
    assert isinstance(make_sampler("automix", inputs), AutoMixSampler)
    assert make_sampler("knapsack", inputs).proposals(1)[0] == make_sampler("oneshot", inputs).proposals(1)[0]
    assert type(make_sampler("tpe", inputs)).__name__ == "TPESampler"
    with pytest.raises(ValueError, match="unknown sampler 'tpf'"):
        make_sampler("tpf", inputs)
