"""The study-level rules of `automix.study.results` on hand-computed trials: which trials are on
the overall and per-method fronts (complete, with values, within the budget) and the normalised
hypervolume (quality as accuracy or 1/max(perplexity, 1) against 0, memory as a fraction of the
budget against 1), on Optuna trials and on plain columns alike."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from automix.config.study import StudyConfig
from automix.study.results import (front_masks, hypervolume_history, is_feasible, memory_scale,
                                   normalized_hypervolume, normalized_hypervolume_history, pareto_numbers,
                                   points_hypervolume, within_budget)

METHODS = ["lora", "qlora"]


def cfg(quality: str, budget: int) -> StudyConfig:
    return StudyConfig(name="hand", methods=METHODS, task="boolq" if quality == "accuracy" else "lm",
                       objectives={"quality": quality}, search_space={"path": "synthetic"},
                       memory_budget=budget, n_trials=1)


def trials(directions: list[str], rows: list[tuple]) -> list:
    """rows: (method, quality, memory) of a complete trial, or (method, None, None) of a failed one."""
    study = optuna.create_study(directions=directions)
    dist = {"method": CategoricalDistribution(METHODS)}
    for method, quality, memory in rows:
        done = quality is not None
        study.add_trial(create_trial(
            state=TrialState.COMPLETE if done else TrialState.FAIL, values=[quality, memory] if done else None,
            params={"method": method}, distributions=dist, user_attrs={"method": method,
                                                                      **({"memory_objective": memory} if done else {})}))
    return study.get_trials(deepcopy=False)


# accuracy (maximised) and memory, budget 100
ACC = [("lora", 0.8, 50.0),    # 0 front
       ("lora", 0.6, 30.0),    # 1 front
       ("lora", 0.7, 60.0),    # 2 dominated by 0
       ("qlora", 0.5, 40.0),   # 3 dominated by 1; on qlora's front
       ("qlora", 0.9, 120.0),  # 4 over the budget
       ("qlora", None, None),  # 5 failed
       ("qlora", 0.65, 80.0)]  # 6 dominated by 0; on qlora's front (vs 3)

# perplexity (minimised) and memory, budget 1000
PPL = [("lora", 4.0, 500.0),   # 0 front
       ("lora", 2.0, 800.0),   # 1 front
       ("qlora", 0.5, 900.0),  # 2 front (a perplexity below 1 counts as 1 in the hypervolume)
       ("qlora", 5.0, 200.0),  # 3 front
       ("lora", 8.0, 400.0),   # 4 dominated by 3; on lora's front
       ("qlora", 0.4, 1500.0)]  # 5 over the budget; without one, on both fronts (best perplexity)


def test_fronts_maximize_accuracy_with_and_without_budget() -> None:
    ts = trials(["maximize", "minimize"], ACC)
    assert pareto_numbers(ts, ["maximize", "minimize"], 100) == ({0, 1}, {0, 1, 3, 6})
    assert pareto_numbers(ts, ["maximize", "minimize"], None) == ({0, 1, 4}, {0, 1, 3, 4, 6})
    assert [is_feasible(t, 100) for t in ts if t.values] == [True, True, True, True, False, True]


def test_fronts_minimize_perplexity_with_and_without_budget() -> None:
    ts = trials(["minimize", "minimize"], PPL)
    assert pareto_numbers(ts, ["minimize", "minimize"], 1000) == ({0, 1, 2, 3}, {0, 1, 2, 3, 4})
    assert pareto_numbers(ts, ["minimize", "minimize"], None) == ({0, 1, 2, 3, 5}, {0, 1, 2, 3, 4, 5})


def test_normalized_hypervolume_accuracy() -> None:
    ts, c = trials(["maximize", "minimize"], ACC), cfg("accuracy", 100)
    # front (0.8, 0.5) and (0.6, 0.3) of the budget: 0.8 * 0.5 + 0.6 * 0.7 - 0.6 * 0.5
    assert normalized_hypervolume(ts, c) == pytest.approx(0.52)
    assert normalized_hypervolume_history(ts, c) == pytest.approx([0.4, 0.52, 0.52, 0.52, 0.52, 0.52, 0.52])
    assert normalized_hypervolume(ts[4:6], c) == 0.0  # over the budget, failed: nothing counts


def test_normalized_hypervolume_perplexity() -> None:
    ts, c = trials(["minimize", "minimize"], PPL), cfg("perplexity", 1000)
    # 1/perplexity (1 for perplexity 0.5) against memory / budget, integrated over memory:
    # [0.2, 0.5): 0.2, [0.5, 0.8): 0.25, [0.8, 0.9): 0.5, [0.9, 1): 1.0
    expected = 0.3 * 0.2 + 0.3 * 0.25 + 0.1 * 0.5 + 0.1 * 1.0
    assert normalized_hypervolume(ts, c) == pytest.approx(expected)
    history = normalized_hypervolume_history(ts, c)
    assert history[0] == pytest.approx(0.25 * 0.5)
    assert history[-1] == history[-2] == pytest.approx(expected)


def test_rules_on_plain_columns() -> None:
    """The dashboards' rows: methods may be missing (their own group), rows come in finishing order."""
    quality = [0.8, 0.6, math.nan, 0.5, 0.7]
    memory = [50.0, 30.0, math.nan, 40.0, 45.0]
    methods = ["a", "a", "a", None, None]
    ok = [within_budget(m, 100) for m in memory]
    assert ok == [True, True, False, True, True]
    overall, per_method = front_masks(list(zip(quality, memory)), ["maximize", "minimize"], methods, ok)
    assert overall.tolist() == [True, True, False, False, True]
    assert per_method.tolist() == [True, True, False, True, True]
    # finishing order 4, 0, 1: the history is over the order given
    hist = hypervolume_history([0.7, 0.8, 0.6], [45.0, 50.0, 30.0], [True, True, True], True, 100.0)
    assert hist == pytest.approx([0.7 * 0.55, 0.7 * 0.55 + 0.1 * 0.5, 0.7 * 0.55 + 0.1 * 0.5 + 0.6 * 0.15])
    assert hist[-1] == pytest.approx(points_hypervolume([0.8, 0.6, 0.7], [50.0, 30.0, 45.0], True, 100.0))
    # without a budget, memory is a fraction of the largest memory seen
    assert memory_scale(None, [50.0, math.nan, 80.0]) == 80.0 and memory_scale(None, []) == 1.0
    assert memory_scale(100, [150.0]) == 100.0
    assert within_budget(150.0, None) and not within_budget(None, None)
