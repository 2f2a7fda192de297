"""The generated benchmark problems behave like real mixed-precision studies, and the suite
benchmark runs end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from automix.bench import search as bench
from automix.bench.problems import SUITE, ProblemCase, SyntheticProblem


@pytest.fixture(scope="module")
def problem() -> SyntheticProblem:
    return SyntheticProblem(seed=3, n_blocks=4)


def test_shape_and_monotonicity(problem: SyntheticProblem) -> None:
    L = problem.n_layers
    assert L == 28 and len(set(problem.layer_names)) == L and problem.n_params == L
    acc = [problem.accuracy(problem.uniform_levels(i))[0] for i in range(len(problem.bits))]
    mem = [problem.memory_gb(problem.uniform_levels(i))[0] for i in range(len(problem.bits))]
    assert all(a < b for a, b in zip(acc, acc[1:]))  # more bits, more accuracy
    assert all(a < b for a, b in zip(mem, mem[1:]))
    assert acc[1] == pytest.approx(60.0)  # all-3-bit sits half-way by construction
    # fragile layers dominate: dropping one of them to 2 bits costs more than a typical layer
    base = problem.uniform_levels(3)
    drop = []
    for j in range(L):
        x = base.copy()
        x[0, j] = 0
        drop.append(problem.accuracy(base)[0] - problem.accuracy(x)[0])
    drop = np.array(drop)
    assert all(drop[j] > 3 * np.median(drop) for j in problem.fragile)
    assert int(np.argmax(drop)) in problem.fragile


def test_interactions_and_noise(problem: SyntheticProblem) -> None:
    a, b = problem.pairs[0]
    base = problem.uniform_levels(len(problem.bits) - 1)

    def loss(layers):
        x = base.copy()
        x[0, layers] = 0
        return problem.top - problem.accuracy(x)[0]

    assert loss([a, b]) > loss([a]) + loss([b]) + 1e-9  # both partners hurt more than the sum
    obs = problem.observe(np.repeat(base, 200, axis=0))
    assert 0.2 < obs.std() < 0.4
    flat = SyntheticProblem(ProblemCase(n_blocks=4, interaction="none"), seed=3)
    x = flat.uniform_levels(len(flat.bits) - 1)
    d = [flat._damage(np.where(np.arange(flat.n_params) == j, 0, x))[0] for j in (a, b)]
    both = x.copy()
    both[0, [a, b]] = 0
    assert flat._damage(both)[0] == pytest.approx(sum(d))  # separable: damages add


def test_structures_differ_across_the_suite() -> None:
    names = [c.name for c in SUITE]
    assert len(set(names)) == len(names) >= 6
    sizes = {c.n_linears for c in SUITE}
    assert min(sizes) == 42 and max(sizes) == 224
    assert {c.memory for c in SUITE} == {"known", "learned"}
    assert {c.profile for c in SUITE} == {"exact", "rough", "none"}
    assert {c.interaction for c in SUITE} == {"none", "block", "cross"}
    assert {c.spread for c in SUITE} == {"flat", "lognormal", "dominant"}
    p = SyntheticProblem(ProblemCase(n_blocks=2, prune=(0.0, 0.3), rank=(8, 32), prune_per="block"))
    assert p.n_params == 14 + 2 + 2
    x = p.uniform_levels(1)
    pruned, ranked = x.copy(), x.copy()
    pruned[0, 14] = 1  # block 0 pruned: less memory, less accuracy
    ranked[0, 16] = 1  # block 0 at rank 32: more memory, more accuracy
    assert p.memory_gb(pruned)[0] < p.memory_gb(x)[0] and p.accuracy(pruned)[0] < p.accuracy(x)[0]
    assert p.memory_gb(ranked)[0] > p.memory_gb(x)[0] and p.accuracy(ranked)[0] > p.accuracy(x)[0]
    with pytest.raises(ValueError, match="spread"):
        ProblemCase(spread="steep")


def test_vectorised_memory_and_features_match_single_calls() -> None:
    p = SyntheticProblem(ProblemCase(n_blocks=2, prune=(0.0, 0.1, 0.3), rank=(8, 16)), seed=1)
    rng = np.random.default_rng(0)
    X = np.stack([rng.integers(0, k, 40) for k in p.n_levels()], axis=1)
    cols = {n: np.array([p.choices[j][i] for i in X[:, j]]) for j, n in enumerate(p.param_names)}
    mem, feats = p.memory_fn(), p.features()
    for i in range(40):
        params = p.params_of(X[i])
        assert mem(params) == pytest.approx(mem.batch(cols)[i])
        np.testing.assert_allclose(feats(params), feats.batch(cols)[i])
    assert feats.batch(cols).shape == (40, p.n_layers + 1)


def test_reference_front_and_best_feasible(problem: SyntheticProblem) -> None:
    front = problem.reference_front(generations=60, pop=120)
    assert len(front) > 20
    assert problem.normalized_hv(problem._reference_configs) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    X = rng.integers(0, len(problem.bits), (200, problem.n_params))
    assert problem.normalized_hv(X) < 0.9
    budget = problem.budget_gb()
    best = problem.best_feasible_accuracy()
    assert best >= problem.accuracy(problem.uniform_levels(1))[0] - 1e-9  # all-3-bit fits
    ok = problem.memory_gb(X) <= budget
    assert not ok.any() or problem.accuracy(X[ok]).max() <= best + 1e-9


def test_suite_bench_runs_and_writes_tables(tmp_path: Path, monkeypatch) -> None:
    small = ProblemCase("tiny-test", n_blocks=2, noise=0.1)
    monkeypatch.setattr(bench, "SUITE", (small,))
    cache, out = tmp_path / "c.json", tmp_path / "t.md"
    argv = ["--trials", "6", "--samplers", "automix,oneshot,random,tpe", "--cache", str(cache), "--out", str(out)]
    assert bench.main(argv) == 0
    text = out.read_text()
    assert "tiny-test" in text and "**median**" in text and "**worst**" in text
    keys = json.loads(cache.read_text())
    assert "front/tiny-test/random/0/6" in keys and "budget/tiny-test/oneshot/0/6" in keys
    # AutoMix's lead over the one-shot from the same profile: it starts from it, so under the
    # budget its pick is never worse when the observations are this little noisy
    assert "lead over the one-shot allocation" in text
    run = keys["budget/tiny-test/automix/0/6"]
    assert bench.lead(small, 0, run, "budget", 6, keys) >= -0.2
    # the budget gap splits into the search's part (the truly best trial evaluated) and the
    # pick by noisy values: the first is never larger
    assert "the search's part" in text
    for s in ("oneshot", "random", "tpe"):
        run = keys[f"budget/tiny-test/{s}/0/6"]
        picked = bench.score(small, 0, run, "budget", 6, keys)
        found = bench.score(small, 0, run, "budget", 6, keys, found=True)
        assert 0.0 <= found <= picked + 1e-9
