"""Performance predictors rank held-out configurations of an additive-sensitivity objective."""

from __future__ import annotations

import numpy as np
import pytest

from automix.search.predictors import PerformancePredictor, available_models, kendall_tau, make_model


def _data(n: int, seed: int = 0, d: int = 12):
    rng = np.random.default_rng(seed)
    w = np.random.default_rng(99).lognormal(0, 1, d)
    levels = rng.integers(0, 4, (n, d))
    y = (w * 4.0 ** -levels).sum(axis=1) + rng.normal(0, 0.02, n)
    return levels / 3.0, y


@pytest.mark.parametrize("name", available_models())
def test_each_model_fits_and_ranks(name: str) -> None:
    X, y = _data(120)
    Xt, yt = _data(200, seed=1)
    mean, std = make_model(name, seed=0).fit(X, y).predict(Xt)
    assert mean.shape == std.shape == (200,)
    assert np.all(std >= 0)
    assert kendall_tau(yt, mean) > 0.45, name


def test_selection_by_kendall_tau_and_uncertainty() -> None:
    X, y = _data(80)
    Xt, yt = _data(200, seed=2)
    p = PerformancePredictor(models=("gp", "ridge", "extra_trees"), seed=0).fit(X, y)
    assert p.chosen in ("gp", "ridge", "extra_trees")
    assert set(p.scores) == {"gp", "ridge", "extra_trees"}
    best = max(p.scores, key=lambda m: p.scores[m]["kendall_tau"])
    assert p.chosen == best
    mean, std = p.predict(Xt)
    assert kendall_tau(yt, mean) > 0.6
    assert np.all(std > 0)  # floored by the cross-validated error


def test_warm_start_from_earlier_trials_helps() -> None:
    X, y = _data(10, seed=3)
    prior_X, prior_y = _data(150, seed=4)
    Xt, yt = _data(200, seed=5)
    cold = PerformancePredictor(models=("ridge",), seed=0).fit(X, y)
    warm = PerformancePredictor(models=("ridge",), seed=0).fit(X, y, prior_X, prior_y)
    assert kendall_tau(yt, warm.predict(Xt)[0]) > kendall_tau(yt, cold.predict(Xt)[0])


def test_unknown_model_and_bad_shapes() -> None:
    with pytest.raises(ValueError, match="available"):
        PerformancePredictor(models=("svm",))
    with pytest.raises(ValueError):
        PerformancePredictor().fit(np.zeros((3, 2)), np.zeros(4))


@pytest.mark.parametrize("name", ["gbm", "extra_trees", "random_forest"])
def test_tree_models_predict_as_scikit_learn_to_the_bit(name: str) -> None:
    """The tree ensembles' array form (automix.search._trees) gives scikit-learn's own
    predictions exactly: means and spreads, one row or many."""
    X, y = _data(90, d=20)
    Xt, _ = _data(300, seed=6, d=20)
    model = make_model(name, seed=2).fit(X, y)
    fast = model._fast
    assert fast is not None
    for rows in (Xt, Xt[:1]):
        for with_std in (True, False):
            got = model.predict(rows, with_std)
            model._fast = None  # scikit-learn's predict
            want = model.predict(rows, with_std)
            model._fast = fast
            assert all(np.array_equal(g, w) for g, w in zip(got, want))
    assert fast(np.full((2, 20), np.nan)) is None  # missing values: scikit-learn decides


def test_tree_arrays_of_single_leaf_trees() -> None:
    X, _ = _data(40)
    model = make_model("gbm", seed=0).fit(X, np.full(40, 3.0))  # nothing to split on
    mean, _ = model.predict(X[:5])
    model._fast = None
    assert np.array_equal(mean, model.predict(X[:5])[0])


@pytest.mark.parametrize("name", ["ridge", "linear"])
def test_linear_ensembles_predict_as_scikit_learn_to_the_bit(name: str) -> None:
    """Bagged ridges apply their members' coefficients directly (no per-call validation):
    the same values as the members' own `predict`."""
    X, y = _data(60)
    Xt, _ = _data(37, seed=6)
    model = make_model(name, seed=0).fit(X, y)
    mean, std = model.predict(Xt)
    Xe = model._tf.transform(Xt) if model._tf else Xt
    raw = np.stack([m.predict(Xe) for m in model._members]) * model._y_sd + model._y_mu
    np.testing.assert_array_equal(mean, raw[0] * 0.5 + raw.mean(axis=0) * 0.5)
    np.testing.assert_array_equal(std, raw.std(axis=0))
