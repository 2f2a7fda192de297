"""Known functions over many candidates at once: the checked decomposition and the sampler's
vectorised path."""

from __future__ import annotations

import warnings

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution

from automix.search._codec import Codec
from automix.search.batch import Shifted, decompose, evaluate_batch
from automix.search.sampler import AutoMixSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)

# two "blocks", each: bits of two layers and a prune ratio that shrinks both; plus the method
SPACE = {
    **{f"bits.{b}.{k}": CategoricalDistribution([2, 3, 4, 8]) for b in range(2) for k in "ab"},
    **{f"prune.{b}": CategoricalDistribution([0.0, 0.25, 0.5]) for b in range(2)},
    "method": CategoricalDistribution(["qlora", "lora"]),
}


def _memory(p: dict) -> float:
    """Block-separable like the analytic model: each layer's packed size depends on its bits
    and its block's pruning (rounded to whole units), dense weights under 'lora'."""
    total = 1000.0
    for b in range(2):
        kept = int(round(96 * (1 - p[f"prune.{b}"])))
        for k in "ab":
            bits = 16 if p["method"] == "lora" else p[f"bits.{b}.{k}"]
            total += kept * 64 * bits / 8
    return total


def _random_columns(rng: np.random.Generator, n: int) -> dict:
    return {name: np.array([d.choices[i] for i in rng.integers(0, len(d.choices), n)], dtype=object)
            for name, d in SPACE.items()}


def test_decomposition_is_exact_on_a_block_separable_model() -> None:
    fn = decompose(_memory, SPACE, may_interact=lambda a, c: a.split(".")[1] == c.split(".")[1])
    assert fn.exact and fn.max_error == 0.0
    assert ("bits.0.a", "prune.0") in fn.pairs and ("bits.0.a", "prune.1") not in fn.pairs
    rng = np.random.default_rng(0)
    cols = _random_columns(rng, 500)
    got = fn.batch(cols)
    want = [_memory({k: cols[k][i] for k in SPACE}) for i in range(500)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    assert fn({k: cols[k][0] for k in SPACE}) == want[0]


def test_without_the_interaction_hint_the_check_fails_and_calls_fall_back() -> None:
    with pytest.warns(UserWarning, match="not a sum"):
        fn = decompose(_memory, SPACE)
    assert not fn.exact and fn.max_error > 0
    cols = _random_columns(np.random.default_rng(1), 50)
    want = [_memory({k: cols[k][i] for k in SPACE}) for i in range(50)]
    np.testing.assert_allclose(fn.batch(cols), want)  # correct: one call per candidate


def test_evaluate_batch_and_shifted() -> None:
    cols = _random_columns(np.random.default_rng(2), 20)
    plain = evaluate_batch(_memory, cols, 20)
    assert plain.shape == (20, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fn = decompose(_memory, SPACE, may_interact=lambda a, c: True)
    assert fn.exact
    shifted = Shifted(fn, 5000.0)
    np.testing.assert_allclose(shifted.batch(cols), plain[:, 0] - 5000.0)
    assert shifted({k: cols[k][3] for k in SPACE}) == pytest.approx(plain[3, 0] - 5000.0)


def test_codec_columns_match_decode() -> None:
    codec = Codec(SPACE)
    G = codec.from_unit(np.random.default_rng(3).random((30, codec.dim)))
    cols = codec.columns(G)
    for i, g in enumerate(G):
        p = codec.decode(g)
        assert all(cols[k][i] == p[k] for k in SPACE)


class _Counting:
    """A known function that counts its scalar calls; with `batch`, also its batch calls."""

    def __init__(self, fn, vectorised: bool) -> None:
        self.fn, self.calls, self.batches = fn, 0, 0
        if vectorised:
            self.batch = self._batch

    def __call__(self, p):
        self.calls += 1
        return self.fn(p)

    def _batch(self, columns):
        self.batches += 1
        n = len(next(iter(columns.values())))
        return np.array([self.fn({k: columns[k][i] for k in columns}) for i in range(n)])


@pytest.mark.parametrize("n_trials", [14])
def test_sampler_proposals_are_the_same_with_and_without_batch(n_trials: int) -> None:
    space = {k: d for k, d in SPACE.items() if k != "method"}

    def memory(p):
        return _memory({**p, "method": "qlora"})

    def run(vectorised: bool):
        mem = _Counting(memory, vectorised)
        sampler = AutoMixSampler(search_space=space, seed=3, n_startup_trials=8,
                                 predictor_models=("ridge",), n_candidates=300,
                                 known_constraints=[Shifted(mem, 5200.0)] if vectorised
                                 else [lambda p: mem(p) - 5200.0])
        study = optuna.create_study(sampler=sampler)
        for _ in range(n_trials):
            t = study.ask()
            p = {k: t.suggest_categorical(k, list(d.choices)) for k, d in space.items()}
            study.tell(t, sum(4.0 ** -(v - 2) for k, v in p.items() if k.startswith("bits")) + sum(
                v for k, v in p.items() if k.startswith("prune")))
        return [t.params for t in study.trials], mem

    plain, mem_plain = run(False)
    vec, mem_vec = run(True)
    assert plain == vec
    assert mem_vec.batches > 0 and mem_plain.batches == 0
    assert all(memory(p) <= 5200.0 for p in vec)


def test_a_small_non_additive_term_gives_approximate_tables_and_exact_constraints() -> None:
    space = {k: d for k, d in SPACE.items() if k != "method"}

    def memory(p):  # plus a peak term: the largest block, counted once (not additive)
        blocks = [sum(p[f"bits.{b}.{k}"] for k in "ab") for b in range(2)]
        return _memory({**p, "method": "qlora"}) + 10.0 * max(blocks)

    with pytest.warns(UserWarning, match="approximate"):
        fn = decompose(memory, space, may_interact=lambda a, c: a.split(".")[1] == c.split(".")[1])
    assert not fn.exact and fn.use_tables and fn.error_bound > 0
    rng = np.random.default_rng(5)
    cols = {k: np.array([d.choices[i] for i in rng.integers(0, len(d.choices), 400)], dtype=object)
            for k, d in space.items()}
    want = np.array([memory({k: cols[k][i] for k in space}) for i in range(400)])
    limit = float(np.median(want))
    con = Shifted(fn, limit).batch(cols)
    assert ((con <= 0) == (want <= limit)).all()  # feasibility exact, near the limit too
    assert np.max(np.abs(fn.batch(cols) - want)) <= 2 * fn.error_bound


def _peak_terms(p: dict) -> list[float]:
    """Per-block terms of a maximum: each block's 'recomputation' grows with its bits and
    shrinks with its pruning (a pairwise term within the block)."""
    return [10.0 * sum(p[f"bits.{b}.{k}"] for k in "ab") * (1 - p[f"prune.{b}"]) for b in range(2)]


def _memory_with_peak(p: dict) -> float:
    return _memory({**p, "method": "qlora"}) + max(_peak_terms(p))


def test_a_declared_maximum_over_block_terms_is_tabulated_exactly() -> None:
    space = {k: d for k, d in SPACE.items() if k != "method"}
    same_block = lambda a, c: a.split(".")[1] == c.split(".")[1]  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exact: no warning
        fn = decompose(_memory_with_peak, space, may_interact=same_block, max_terms=_peak_terms)
    assert fn.exact and fn.error_bound == 0.0 and fn.n_terms == 2
    assert ("bits.0.a", "prune.0") in fn.pairs and ("bits.0.a", "prune.1") not in fn.pairs
    # learned from the calls: block 0's bits change the sum part and block 0's term, not block 1's
    _, first, _ = fn._tables[()]
    t = first[fn.names.index("bits.0.a")]
    assert np.any(t[:, 0] != 0) and np.any(t[:, 1] != 0) and np.all(t[:, 2] == 0)
    rng = np.random.default_rng(6)
    cols = {k: np.array([d.choices[i] for i in rng.integers(0, len(d.choices), 600)], dtype=object)
            for k, d in space.items()}
    want = np.array([_memory_with_peak({k: cols[k][i] for k in space}) for i in range(600)])
    peaks = {int(np.argmax(_peak_terms({k: cols[k][i] for k in space}))) for i in range(600)}
    assert peaks == {0, 1}
    np.testing.assert_allclose(fn.batch(cols), want, rtol=1e-12, atol=0)
    calls = fn.n_calls
    limit = float(np.median(want))
    assert ((Shifted(fn, limit).batch(cols) <= 0) == (want <= limit)).all()
    assert fn.n_calls == calls  # exact tables: nothing re-evaluated near the limit


def test_max_terms_must_keep_their_number() -> None:
    space = {k: d for k, d in SPACE.items() if k != "method"}
    with pytest.raises(ValueError, match="number must not depend"):
        decompose(_memory_with_peak, space, max_terms=lambda p: _peak_terms(p)[: 1 + (p["bits.0.a"] > 2)])


def test_batch_reuses_its_result_only_for_the_same_columns() -> None:
    space = {k: d for k, d in SPACE.items() if k != "method"}
    fn = decompose(_memory_with_peak, space, may_interact=lambda a, c: a.split(".")[1] == c.split(".")[1],
                   max_terms=_peak_terms)
    rng = np.random.default_rng(7)
    cols = {k: np.array([d.choices[i] for i in rng.integers(0, len(d.choices), 50)]) for k, d in space.items()}
    first = fn.batch(cols)
    first[:] = -1.0  # the caller's copy: the next answer is not affected
    again = fn.batch(cols)
    cols["bits.1.b"] = np.full(50, 8)  # another array under the same key: computed afresh
    changed = fn.batch(cols)
    want = [_memory_with_peak({k: cols[k][i] for k in space}) for i in range(50)]
    np.testing.assert_allclose(changed, want, rtol=1e-12)
    assert (again >= 0).all() and not np.array_equal(again, changed)


def test_integer_tables_are_folded_with_the_same_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole-number tables (bytes) are folded and read table by table; the components are
    those of the general layout to the bit. Tables with fractions keep the general layout."""
    import automix.search.batch as batch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fn = decompose(_memory, SPACE, may_interact=lambda a, c: True)
    rng = np.random.default_rng(4)
    X = np.stack([rng.integers(0, len(ch), 500) for ch in fn.choices], axis=1)
    for tables in fn._tables.values():
        folded = batch._Plan(*tables)
        assert folded.any_order and len(folded.a) < sum(len(t) for t in (tables[1], tables[2]))
        monkeypatch.setattr(batch, "_exact_in_any_order", lambda *a: False)
        general = batch._Plan(*tables)
        monkeypatch.undo()
        assert not general.any_order
        assert np.array_equal(folded.components(X), general.components(X))
        assert np.array_equal(folded.components(np.asfortranarray(X)), general.components(X))
    v0, first, second = next(iter(fn._tables.values()))
    assert not batch._exact_in_any_order(v0 + 0.5, first, second)
    assert not batch._exact_in_any_order(v0 + 2.0**53, first, second)


def test_columns_by_level_and_by_value_agree() -> None:
    """A sampler's columns carry level indices that the tables are read by: the same
    values as plain value columns, as one call per configuration; the result is reused for
    the same columns object only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fn = decompose(_memory, SPACE, may_interact=lambda a, c: True)
    codec = Codec(SPACE)
    G = codec.from_unit(np.random.default_rng(5).random((60, codec.dim)))
    cols = codec.columns(G)
    by_level = fn.batch(cols)
    assert fn.batch(cols) is not by_level and np.array_equal(fn.batch(cols), by_level)  # reused, copied
    plain = {k: np.asarray(v) for k, v in cols.items()}
    assert np.array_equal(fn.batch(plain), by_level)
    assert np.array_equal(by_level, [fn(codec.decode(g)) for g in G])
    H = G.copy()
    H[:, codec.names.index("bits.0.a")] = 0  # another configuration: another columns object
    assert np.array_equal(fn.batch(codec.columns(H)), [fn(codec.decode(g)) for g in H])
    # levels that are not among the function's choices: looked up by value
    other = Codec({**SPACE, "bits.0.a": CategoricalDistribution([2, 3, 4, 8, 16])})
    G2 = other.from_unit(np.random.default_rng(6).random((30, other.dim)))
    G2[:, other.names.index("bits.0.a")] = np.minimum(G2[:, other.names.index("bits.0.a")], 3)
    assert np.array_equal(fn.batch(other.columns(G2)), [fn(other.decode(g)) for g in G2])


def test_codec_features_keys_and_lazy_columns() -> None:
    space = {"a": CategoricalDistribution([1, 2, 4]), "b": CategoricalDistribution(["x", "y", "z"]),
             "c": optuna.distributions.FloatDistribution(0.1, 1.0, log=True), "d": CategoricalDistribution([0.5])}
    codec = Codec(space)
    G = codec.from_unit(np.random.default_rng(7).random((25, codec.dim)))
    want = []
    for j, g in enumerate(codec.genes):  # scaled ordinal genes, one-hot categoricals, [0, 1] continuous
        x = G[:, j]
        if g.levels is None:
            want.append(x[:, None])
        elif g.ordinal:
            want.append((x / max(1, g.n_levels - 1))[:, None])
        else:
            want.append(np.eye(g.n_levels)[x.astype(int)])
    assert np.array_equal(codec.features(G), np.concatenate(want, axis=1))
    assert codec.keys(G) == [codec.key(g) for g in G]
    cols = codec.columns(G)
    G[:] = 0  # the columns are a snapshot
    assert list(cols) == codec.names and len(cols) == codec.dim
    assert [cols["c"][i] for i in range(25)] == [codec.decode(g)["c"] for g in codec.from_unit(
        np.random.default_rng(7).random((25, codec.dim)))]
