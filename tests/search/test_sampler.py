"""AutoMixSampler on small known problems: what a study relies on."""

from __future__ import annotations

import warnings

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from automix.search import pareto
from automix.search.sampler import AutoMixSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)

CHOICES = [2, 3, 4, 8]
N = 6
WEIGHTS = np.array([3.0, 0.2, 1.5, 0.1, 2.0, 0.5])
SPACE = {f"b{i}": CategoricalDistribution(CHOICES) for i in range(N)}


def _damage(p: dict) -> float:
    bits = np.array([p[f"b{i}"] for i in range(N)], dtype=float)
    return float((WEIGHTS * 4.0 ** -(bits - 2)).sum())


def _memory(p: dict) -> float:
    return float(sum(p[f"b{i}"] for i in range(N)))


def _fast(**kw) -> AutoMixSampler:
    kw.setdefault("predictor_models", ("gp", "ridge"))
    kw.setdefault("n_candidates", 600)
    return AutoMixSampler(**kw)


def test_finds_optimum_of_additive_objective() -> None:
    # minimise damage + 0.05 * memory: optimum has the heavy layers at higher bits
    def value(p):
        return _damage(p) + 0.05 * _memory(p)

    grid = np.array(np.meshgrid(*[CHOICES] * N)).reshape(N, -1).T
    best = min(value({f"b{i}": int(b) for i, b in enumerate(row)}) for row in grid)
    study = optuna.create_study(sampler=_fast(seed=0, n_startup_trials=8, search_space=SPACE))
    study.optimize(lambda t: value({k: t.suggest_categorical(k, CHOICES) for k in SPACE}), n_trials=30)
    assert study.best_value <= best + 0.05, (study.best_value, best)


def test_multi_objective_known_memory_and_no_infeasible_proposals() -> None:
    budget = 22.0
    sampler = _fast(
        seed=1, n_startup_trials=8, search_space=SPACE,
        known_objectives={1: _memory}, known_constraints=[lambda p: _memory(p) - budget],
    )
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    study.optimize(
        lambda t: (_damage({k: t.suggest_categorical(k, CHOICES) for k in SPACE}), _memory(t.params)),
        n_trials=25,
    )
    mems = [_memory(t.params) for t in study.trials]
    assert max(mems) <= budget  # known constraint: never proposed
    assert ("obj", 1) not in sampler._predictors  # the known objective is never predicted
    assert len({tuple(t.params.values()) for t in study.trials}) == len(study.trials)
    front = np.array([t.values for t in study.best_trials])
    assert len(front) >= 4  # a spread-out front, not one point


def test_set_constraint_is_respected() -> None:
    # feasible iff b0 + b1 <= 6; best feasible needs b0 high (weight 3) so b1 must stay low
    def objective(t):
        p = {k: t.suggest_categorical(k, CHOICES) for k in SPACE}
        t.set_constraint("pair", p["b0"] + p["b1"] - 6)
        return _damage(p)

    study = optuna.create_study(sampler=_fast(seed=2, n_startup_trials=8))
    study.optimize(objective, n_trials=30)
    feasible = [t for t in study.trials if all(v <= 0 for v in t.constraints.values())]
    assert feasible
    best = min(feasible, key=lambda t: t.value)
    assert best.params["b0"] + best.params["b1"] <= 6
    late = study.trials[15:]
    assert sum(all(v <= 0 for v in t.constraints.values()) for t in late) >= len(late) // 2


def test_constraints_func_is_recorded() -> None:
    def cons(trial):
        return [trial.params["b0"] - 3]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.create_study(sampler=_fast(seed=3, n_startup_trials=4, constraints_func=cons))
    study.optimize(lambda t: _damage({k: t.suggest_categorical(k, CHOICES) for k in SPACE}), n_trials=8)
    assert all(t.constraints for t in study.trials)


def test_batch_of_asks_has_no_duplicates() -> None:
    study = optuna.create_study(sampler=_fast(seed=4, n_startup_trials=6))
    for _ in range(3):
        batch = [study.ask(SPACE) for _ in range(6)]
        keys = [tuple(t.params.values()) for t in batch]
        assert len(set(keys)) == len(keys)
        for t in batch:
            study.tell(t, _damage(t.params))
    all_keys = [tuple(t.params.values()) for t in study.trials]
    assert len(set(all_keys)) == len(all_keys)


def test_n_jobs_two() -> None:
    study = optuna.create_study(sampler=_fast(seed=5, n_startup_trials=4, search_space=SPACE))
    study.optimize(lambda t: _damage({k: t.suggest_categorical(k, CHOICES) for k in SPACE}),
                   n_trials=10, n_jobs=2)
    assert len(study.trials) == 10
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 10


def test_survives_failed_and_pruned_trials() -> None:
    def objective(t):
        p = {k: t.suggest_categorical(k, CHOICES) for k in SPACE}
        if t.number % 4 == 1:
            raise RuntimeError("trial crashed")
        if t.number % 4 == 2:
            raise optuna.TrialPruned()
        return _damage(p)

    study = optuna.create_study(sampler=_fast(seed=6, n_startup_trials=4))
    study.optimize(objective, n_trials=16, catch=(RuntimeError,))
    states = [t.state for t in study.trials]
    assert states.count(TrialState.FAIL) == 4 and states.count(TrialState.PRUNED) == 4
    assert states.count(TrialState.COMPLETE) == 8


def test_reproducible_with_seed() -> None:
    def run():
        study = optuna.create_study(sampler=_fast(seed=7, n_startup_trials=5))
        study.optimize(lambda t: _damage({k: t.suggest_categorical(k, CHOICES) for k in SPACE}),
                       n_trials=10)
        return [tuple(t.params.values()) for t in study.trials]

    assert run() == run()


def test_mixed_int_float_log_params_single_objective() -> None:
    def objective(t):
        x = t.suggest_float("x", -3, 3)
        lr = t.suggest_float("lr", 1e-5, 1e-1, log=True)
        n = t.suggest_int("n", 1, 9)
        opt = t.suggest_categorical("opt", ["adam", "sgd"])
        return (x - 1) ** 2 + (np.log10(lr) + 3) ** 2 + (n - 4) ** 2 + (opt == "sgd")

    study = optuna.create_study(sampler=_fast(seed=8, n_startup_trials=8))
    study.optimize(objective, n_trials=30)
    p = study.best_params
    assert 1e-5 <= p["lr"] <= 1e-1 and 1 <= p["n"] <= 9 and isinstance(p["n"], int)
    assert study.best_value < 2.0


def test_uniform_configurations_come_first() -> None:
    study = optuna.create_study(sampler=_fast(seed=9, n_startup_trials=8, search_space=SPACE))
    study.optimize(lambda t: _damage({k: t.suggest_categorical(k, CHOICES) for k in SPACE}), n_trials=4)
    firsts = [set(t.params.values()) for t in study.trials]
    assert all(len(s) == 1 for s in firsts)  # every param at the same level
    assert {next(iter(s)) for s in firsts} == set(CHOICES)


def test_bad_known_objective_index() -> None:
    sampler = _fast(seed=0, n_startup_trials=2, known_objectives={5: _memory})
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    study.optimize(lambda t: (_damage({k: t.suggest_categorical(k, CHOICES) for k in SPACE}), 0.0),
                   n_trials=2)
    with pytest.raises(ValueError, match="known_objectives"):
        study.optimize(lambda t: (_damage({k: t.suggest_categorical(k, CHOICES) for k in SPACE}), 0.0),
                       n_trials=1)


def test_pareto_hypervolume_and_ehvi() -> None:
    pts = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0], [3.0, 3.0]])
    assert pareto.nondominated_mask(pts).tolist() == [True, True, True, False]
    assert pareto.nondominated_rank(pts).tolist() == [0, 0, 0, 1]
    assert pareto.hypervolume(pts, np.array([4.0, 4.0])) == pytest.approx(6.0)
    # n-D path agrees with a 3-D embedding of the same front
    pts3 = np.hstack([pts, np.zeros((4, 1))])
    assert pareto.hypervolume(pts3, np.array([4.0, 4.0, 1.0])) == pytest.approx(6.0)
    # as a fraction of the box from the ideal to the reference point
    assert pareto.normalized_hypervolume(pts, [0.0, 0.0], [4.0, 4.0]) == pytest.approx(6.0 / 16)
    assert pareto.normalized_hypervolume(pts, [1.0, 1.0], [4.0, 4.0]) == pytest.approx(6.0 / 9)
    assert pareto.normalized_hypervolume(pts, [1.0, 1.0], [2.0, 2.0]) == 0.0  # all beyond the reference
    lo, hi = pareto.nondominated_boxes(pts[:3], np.array([4.0, 4.0]))
    cand = np.array([[0.5, 0.5], [2.5, 2.5], [1.5, 1.5]])
    hvi = pareto.hypervolume_improvement(cand, lo, hi)
    for c, v in zip(cand, hvi):
        exact = pareto.hypervolume(np.vstack([pts[:3], c]), np.array([4.0, 4.0])) - 6.0
        assert v == pytest.approx(exact)
    ehvi = pareto.expected_hypervolume_improvement(cand, np.zeros_like(cand), pts[:3], np.array([4.0, 4.0]))
    assert np.allclose(ehvi, hvi)
    # uncertainty gives a dominated point a positive expected improvement
    assert pareto.expected_hypervolume_improvement(
        np.array([[2.5, 2.5]]), np.array([[1.0, 1.0]]), pts[:3], np.array([4.0, 4.0]))[0] > 0


def test_warm_start_from_an_earlier_study() -> None:
    def objective(t):
        return _damage({k: t.suggest_categorical(k, CHOICES) for k in SPACE}) + 0.05 * _memory(t.params)

    earlier = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    earlier.optimize(objective, n_trials=40)

    def run(prior):
        sampler = _fast(seed=11, n_startup_trials=2, search_space=SPACE, prior_trials=prior)
        study = optuna.create_study(sampler=sampler)
        study.optimize(objective, n_trials=6)
        return min(t.value for t in study.trials[2:])  # the guided proposals only

    assert run(earlier.trials) < run([])


def test_tight_known_budget_startup_stays_feasible_and_distinct() -> None:
    # only 28 of 4^6 configurations fit: random / Latin-hypercube points must be repaired
    budget = 14.0
    sampler = _fast(seed=12, n_startup_trials=8, search_space=SPACE,
                    known_constraints=[lambda p: _memory(p) - budget])
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: _damage({k: t.suggest_categorical(k, CHOICES) for k in SPACE}), n_trials=12)
    assert all(_memory(t.params) <= budget for t in study.trials)
    assert len({tuple(t.params.values()) for t in study.trials}) == 12


def test_guided_proposals_record_their_predicted_values() -> None:
    # Reports and MLflow compare what the predictor expected with what the trial measured.
    sampler = _fast(seed=3, n_startup_trials=6, search_space=SPACE, known_objectives={1: _memory})
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    study.optimize(
        lambda t: (_damage({k: t.suggest_categorical(k, CHOICES) for k in SPACE}), _memory(t.params)),
        n_trials=10,
    )
    startup, guided = study.trials[:6], study.trials[6:]
    assert all("automix:predicted_values" not in t.system_attrs for t in startup)
    for t in guided:
        predicted = t.system_attrs["automix:predicted_values"]
        assert len(predicted) == 2 and all(np.isfinite(predicted))
        assert predicted[1] == pytest.approx(_memory(t.params))  # known objective: exact
    damage = np.array([t.values[0] for t in guided])
    guess = np.array([t.system_attrs["automix:predicted_values"][0] for t in guided])
    assert np.all(np.abs(guess - damage) < 0.5 * damage.max() + 1.0)  # same scale as the truth


def test_evaluate_reuses_a_result_only_for_the_same_unchanged_genomes() -> None:
    """The sampler evaluates the same candidates twice in a row (predictors, then their
    engineered features) and reuses the result -- never for a changed or another array."""
    from automix.search.batch import Shifted

    calls = []

    class Features:
        def __call__(self, p):
            return [float(p["b0"])]

        def batch(self, columns):
            calls.append(1)
            return np.asarray(columns["b0"], dtype=float)[:, None]

    memory = Shifted(_Vector(_memory), 20.0)
    sampler = _fast(search_space=SPACE, features=Features(), known_constraints=[memory])
    codec = sampler._get_codec(SPACE)
    G = codec.from_unit(np.random.default_rng(0).random((7, codec.dim)))
    first = sampler._evaluate(codec, G)
    again = sampler._evaluate(codec, G)
    assert len(calls) == 1 and again is first
    G[0, 0] = 3 - G[0, 0]  # changed in place: evaluated anew
    changed = sampler._evaluate(codec, G)
    assert len(calls) == 2 and changed[0][0, -1] == CHOICES[int(G[0, 0])]
    sampler._evaluate(codec, G.copy())  # another array: evaluated anew
    assert len(calls) == 3
    ok = sampler._evaluate(codec, G, features=False)[2]
    assert np.array_equal(ok, np.array([_memory(codec.decode(g)) <= 20.0 for g in G]))


class _Vector:
    """A known function with a (per-row) batch form."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def __call__(self, p):
        return self.fn(p)

    def batch(self, columns):
        n = len(next(iter(columns.values())))
        return np.array([self.fn({k: columns[k][i] for k in columns}) for i in range(n)])


def test_learned_memory_constraint_is_spent_not_broken() -> None:
    """Memory only observed through `set_constraint` (no analytic model): the constraint model
    sees the bit widths' values, in which memory is linear, so after start-up the proposals
    both hold the budget and use most of it (on level indices they left ~11% unspent)."""
    bits = [2, 3, 4, 8, 16]
    sizes = np.random.default_rng(7).choice([1.0, 2.7, 5.4], 16)
    weights = np.random.default_rng(8).lognormal(0, 1, 16)
    space = {f"q{i:02d}": CategoricalDistribution(bits) for i in range(16)}
    budget = float(sizes.sum() * 3.5)

    def memory(p: dict) -> float:
        return float(sum(s * p[f"q{i:02d}"] for i, s in enumerate(sizes)))

    def objective(t) -> float:
        p = {k: t.suggest_categorical(k, bits) for k in space}
        t.set_constraint("memory", memory(p) - budget)
        return float(sum(w * 4.0 ** -(p[f"q{i:02d}"] - 2) for i, w in enumerate(weights)))

    sampler = _fast(seed=0, n_startup_trials=10, search_space=space)
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=30)
    late = [memory(t.params) / budget for t in study.trials[10:]]
    assert sum(u <= 1.0 for u in late) >= 18, late
    assert np.median([u for u in late if u <= 1.0]) >= 0.93, late
