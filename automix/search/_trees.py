"""Fitted scikit-learn tree ensembles evaluated as arrays, for the sampler's predictors.

The sampler's greedy paths ask a fitted predictor for a few hundred batches of candidates per
proposal, many of them a single row. scikit-learn's ``predict`` of a forest or a gradient
boosting model validates its input once per tree or stage (tens of microseconds each); over
hundreds of trees and calls that overhead, not the trees, is most of the cost. Here all the
trees of an ensemble (of all members of a bagged ensemble too) become one set of node arrays
(the public ``tree_`` attributes: children, feature, threshold, value), walked for every row
and tree at once, one level per step.

The results are bit-identical to scikit-learn's: the input is cast to float32 as ``predict``
casts it, a row goes left when ``x <= threshold`` (float32 against float64, as the trees
compare), and the per-tree values are summed in the order ``predict`` sums them (a forest's
mean: tree by tree from zero, then divided; gradient boosting: the initial prediction plus
``learning_rate`` times each stage's value, stage by stage). Models these arrays do not cover
(several outputs, an initial estimator that is not constant) are not taken over:
:func:`forest_predictor` and :func:`boosting_predictor` return None for them. An input with a
missing or infinite value is not covered either (a forest routes NaN by its own rule, boosting
rejects it): their predictors return None for it and the caller keeps scikit-learn's
``predict``. Only the columns that some split reads are converted and read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["TreeStack", "forest_predictor", "boosting_predictor"]


class TreeStack:
    """The nodes of many fitted regression trees (one output each) as flat arrays, renumbered
    so that a node's children are adjacent (right = left + 1): one step of a row is
    ``node = left[node] + (not x[feature[node]] <= threshold[node])``. A leaf is its own left
    child under an infinite threshold, so every row can take max-depth steps."""

    def __init__(self, trees: Sequence) -> None:
        lefts, features, thresholds, values, roots = [], [], [], [], []
        offset, depth = 0, 0
        for est in trees:
            t = est.tree_
            if t.n_outputs != 1 or t.value.shape[1:] != (1, 1):
                raise ValueError("TreeStack: only single-output regression trees")
            left, right = t.children_left.tolist(), t.children_right.tolist()
            order, new_left = [0], {}  # old ids in new order; old id -> new id of its left child
            for old in order:  # grows while it is walked: children appended as a pair
                if left[old] >= 0:
                    new_left[old] = len(order)
                    order.extend((left[old], right[old]))
            ids = np.array(order, dtype=np.int64)
            internal = np.array([o in new_left for o in order])
            lefts.append(np.array([new_left.get(o, k) for k, o in enumerate(order)], dtype=np.int64) + offset)
            features.append(np.where(internal, t.feature[ids], 0).astype(np.int64))
            thresholds.append(np.where(internal, t.threshold[ids], np.inf).astype(np.float64))
            values.append(t.value[ids, 0, 0].astype(np.float64))
            roots.append(offset)
            offset += len(order)
            depth = max(depth, int(t.max_depth))
        self.left = np.concatenate(lefts)
        feature = np.concatenate(features)
        # the features the splits read (a row is read at those columns only), and each split's
        # position among them
        self.used, self.feature = np.unique(feature, return_inverse=True)
        self.threshold = np.concatenate(thresholds)
        self.value = np.concatenate(values)
        self.roots = np.array(roots, dtype=np.int64)
        self.depth = depth

    def __len__(self) -> int:
        return len(self.roots)

    def columns(self, X: np.ndarray) -> np.ndarray | None:
        """The columns of ``X`` the splits read, as the trees read them (float32); None when
        ``X`` holds a missing or infinite value (scikit-learn decides what that means)."""
        if not np.isfinite(X.sum()):  # (a sum is NaN or infinite when any value is)
            return None
        return np.ascontiguousarray(X[:, self.used], dtype=np.float32)

    def leaf_values(self, X32: np.ndarray) -> np.ndarray:
        """The value of each tree's leaf for each row of ``X32`` (float32, the ``used`` columns
        only: :meth:`columns`): ``(n, trees)``."""
        n, d = X32.shape
        if not self.depth:  # stumps of a single leaf
            return np.broadcast_to(self.value[self.roots], (n, len(self.roots))).copy()
        # the first step from the roots: the same feature for every row
        r = self.roots
        node = self.left[r] + ~(X32[:, self.feature[r]] <= self.threshold[r])
        flat = X32.ravel()
        base = (np.arange(n, dtype=np.int64) * d)[:, None]
        for _ in range(self.depth - 1):
            at = self.feature.take(node)
            at += base
            right = flat.take(at) <= self.threshold.take(node)
            np.logical_not(right, out=right)
            node = self.left.take(node)
            node += right
        return self.value.take(node)


def forest_predictor(forest) -> Callable[[np.ndarray], np.ndarray | None] | None:
    """``X -> (trees, n)`` per-tree predictions of a fitted random forest / extra trees
    regressor, as ``np.stack([t.predict(X) for t in forest.estimators_])`` (None for an X with
    missing or infinite values); None when it is not a single-output forest the arrays cover."""
    if getattr(forest, "n_outputs_", 1) != 1:
        return None
    try:
        stack = TreeStack(forest.estimators_)
    except (AttributeError, ValueError):
        return None

    def predict(X: np.ndarray) -> np.ndarray | None:
        X32 = stack.columns(np.asarray(X, dtype=float))
        return None if X32 is None else np.ascontiguousarray(stack.leaf_values(X32).T)

    return predict


def forest_mean(per_tree: np.ndarray) -> np.ndarray:
    """A forest's ``predict`` from its per-tree predictions: summed tree by tree, divided."""
    out = np.zeros(per_tree.shape[1])
    for row in per_tree:
        out += row
    out /= len(per_tree)
    return out


def boosting_predictor(models: Sequence) -> Callable[[np.ndarray], np.ndarray | None] | None:
    """``X -> (models, n)``: each fitted ``GradientBoostingRegressor``'s ``predict(X)`` (None
    for an X with missing or infinite values); None unless every model is a single-output regressor with
    a constant initial estimator and all have as many stages."""
    if not models or any(type(m).__name__ != "GradientBoostingRegressor" for m in models):
        return None  # (before importing the ensembles: other members are common)
    from sklearn.dummy import DummyRegressor
    from sklearn.ensemble import GradientBoostingRegressor

    trees, inits, rates = [], [], []
    for m in models:
        if not isinstance(m, GradientBoostingRegressor) or m.estimators_.shape != models[0].estimators_.shape \
                or m.estimators_.shape[1] != 1:
            return None
        if isinstance(m.init_, DummyRegressor):
            init = float(np.asarray(m.init_.predict(np.zeros((1, m.n_features_in_)))).astype(np.float64).ravel()[0])
        elif isinstance(m.init_, str) and m.init_ == "zero":
            init = 0.0
        else:
            return None
        trees.extend(m.estimators_[:, 0])
        inits.append(init)
        rates.append(float(m.learning_rate))
    try:
        stack = TreeStack(trees)
    except (AttributeError, ValueError):
        return None
    n_models, n_stages = len(models), models[0].estimators_.shape[0]
    inits_, rates_ = np.array(inits), np.array(rates)[None, :, None]

    def predict(X: np.ndarray) -> np.ndarray | None:
        X32 = stack.columns(np.asarray(X, dtype=float))
        if X32 is None:
            return None
        values = stack.leaf_values(X32).reshape(len(X), n_models, n_stages)
        # init + rate * v_1 + rate * v_2 + ..., added stage by stage as sklearn adds them
        if len(X) < 32:  # few rows: one cumulative sum
            terms = np.empty((len(X), n_models, n_stages + 1))
            terms[:, :, 0] = inits_
            np.multiply(rates_, values, out=terms[:, :, 1:])
            return np.ascontiguousarray(np.cumsum(terms, axis=2)[:, :, -1].T)
        values = values.transpose(1, 2, 0).copy()  # (models, stages, n)
        out = np.repeat(inits_[:, None], len(X), axis=1)
        for s in range(n_stages):
            out += rates_[0] * values[:, s, :]
        return out

    return predict
