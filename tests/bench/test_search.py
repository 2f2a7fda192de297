"""The synthetic benchmark problem behaves like a real mixed-precision study."""

from __future__ import annotations

import numpy as np
import pytest

from automix.testing import SyntheticProblem


@pytest.fixture(scope="module")
def problem() -> SyntheticProblem:
    return SyntheticProblem(seed=3, n_blocks=4)


def test_shape_and_monotonicity(problem: SyntheticProblem) -> None:
    L = problem.n_layers
    assert L == 28 and len(set(problem.layer_names)) == L
    acc = [problem.accuracy(np.full((1, L), b))[0] for b in problem.bits]
    mem = [problem.memory_gb(np.full((1, L), b))[0] for b in problem.bits]
    assert all(a < b for a, b in zip(acc, acc[1:]))  # more bits, more accuracy
    assert all(a < b for a, b in zip(mem, mem[1:]))
    assert acc[1] == pytest.approx(60.0)  # all-3-bit sits half-way by construction
    # fragile layers dominate: dropping one of them to 2 bits costs more than a typical layer
    base = np.full((1, L), 8)
    drop = []
    for j in range(L):
        b = base.copy()
        b[0, j] = 2
        drop.append(problem.accuracy(base)[0] - problem.accuracy(b)[0])
    drop = np.array(drop)
    assert all(drop[j] > 3 * np.median(drop) for j in problem.fragile)
    assert int(np.argmax(drop)) in problem.fragile


def test_interactions_and_noise(problem: SyntheticProblem) -> None:
    L = problem.n_layers
    a, b = problem.pairs[0]
    base = np.full((1, L), 16)

    def loss(layers):
        x = base.copy()
        x[0, layers] = 2
        return problem.chance + 20 - problem.accuracy(x)[0]

    # quantizing both partners hurts more than the two alone
    assert loss([a, b]) > loss([a]) + loss([b]) - 1e-9
    obs = problem.observe(np.repeat(base, 200, axis=0))
    assert 0.2 < obs.std() < 0.4


def test_reference_front_dominates_simple_designs(problem: SyntheticProblem) -> None:
    front = problem.reference_front(generations=60, pop=120)
    assert len(front) > 20
    cfgs = problem._reference_configs
    assert problem.normalized_hv(cfgs) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    assert problem.normalized_hv(rng.choice(problem.bits, (200, problem.n_layers))) < 0.9
    budget = problem.memory_gb(np.full((1, problem.n_layers), 3))[0]
    assert problem.best_feasible_accuracy(budget) >= 60.0 - 1e-9
