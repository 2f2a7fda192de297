"""Known functions of a configuration evaluated over many candidates at once.

The sampler scores thousands of candidate configurations per proposal on its *known* functions
(memory from the analytic model, engineered features). Called one configuration at a time,
a model with hundreds of layers costs milliseconds per call and minutes per proposal. A
function that also has a vectorised form, ``fn.batch(columns)`` (``columns``: parameter name
-> array of values, one per candidate; returns an array with one row per candidate), is
evaluated that way; :func:`evaluate_batch` falls back to one call per candidate otherwise.

:func:`decompose` builds the vectorised form of a scalar function from calls to it alone, so it
stays correct whatever the function computes: memory is a sum of per-layer and per-block
terms, so ``f(x) = f(x0) + sum_j d_j(x_j) + sum_(i,j) d_ij(x_i, x_j)`` with first-order tables
``d_j`` (one parameter moved from a base configuration ``x0``) and second-order tables
``d_ij`` for pairs that interact (a layer's bits and its block's prune ratio: the packed size
depends on both). Which pairs may interact is a hint (``may_interact``, e.g. "set layers of the
same block"); a pair is tabulated when it interacts at its highest levels. Non-numeric
categoricals (the fine-tuning method) change everything, so each of their value combinations
gets its own tables. The decomposition is then *checked* against the function on random
configurations. When every check matches, ``batch`` is exact. When some differ by a little (a
term that is not of this form, e.g. a maximum over blocks), the tables are an approximation
within ``error_bound`` (three times the largest difference seen); a known constraint built on them
(:class:`Shifted`) re-evaluates exactly every candidate that close to its limit, so feasibility
stays exact. When they differ by more than ``max_rel_error``, ``batch`` calls the function per
candidate (correct, slow) and says so with a warning.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution

__all__ = ["evaluate_batch", "decompose", "DecomposedFunction", "Shifted"]


def _call_rows(fn: Callable, columns: Mapping[str, Sequence], n: int) -> np.ndarray:
    names = list(columns)
    # plain Python values, as a trial's params are (numpy scalars fail strict validators)
    cols = [[v.item() if isinstance(v, np.generic) else v for v in columns[k]] for k in names]
    out = [fn(dict(zip(names, vals))) for vals in zip(*cols)] if names else [fn({}) for _ in range(n)]
    return np.asarray(out, dtype=float).reshape(n, -1)


def evaluate_batch(fn: Callable, columns: Mapping[str, Sequence], n: int) -> np.ndarray:
    """``fn`` over ``n`` configurations given as parameter -> values: (n, k) array (k = 1
    for a scalar function); ``fn.batch`` when it has one."""
    batch = getattr(fn, "batch", None)
    if batch is not None:
        return np.asarray(batch(columns), dtype=float).reshape(n, -1)
    return _call_rows(fn, columns, n)


class Shifted:
    """``fn(params) - offset`` (a known constraint from a known objective and a budget),
    vectorised when ``fn`` is."""

    def __init__(self, fn: Callable, offset: float) -> None:
        self.fn, self.offset = fn, float(offset)

    def __call__(self, params: Mapping[str, Any]) -> float:
        return float(self.fn(params)) - self.offset

    def batch(self, columns: Mapping[str, Sequence]) -> np.ndarray:
        n = len(next(iter(columns.values()))) if columns else 1
        out = evaluate_batch(self.fn, columns, n)[:, 0] - self.offset
        bound = float(getattr(self.fn, "error_bound", 0.0))
        if bound > 0:  # approximate tables: exact values where the sign could be wrong
            close = np.flatnonzero(np.abs(out) <= bound)
            if len(close):
                sub = {k: [columns[k][i] for i in close] for k in columns}
                out[close] = _call_rows(self.fn, sub, len(close))[:, 0] - self.offset
        return out


def _numeric(choices: Sequence) -> bool:
    return all(isinstance(c, (int, float, np.integer, np.floating)) and not isinstance(c, bool)
               for c in choices)


class DecomposedFunction:
    """A scalar function with a checked second-order decomposition (see :func:`decompose`).

    Calling it calls the function itself (exact, cached by configuration); ``batch`` uses the
    tables unless the check found them far off (then one call per candidate).

    Attributes:
        exact: every check configuration matched the tables.
        max_error: the largest relative difference seen on the check configurations.
        error_bound: 0 when exact, else three times the largest absolute difference seen (what
            :class:`Shifted` re-evaluates exactly around its limit).
        n_calls: calls of the function spent building and checking the tables.
        pairs: the interacting parameter pairs that got a second-order table.
    """

    def __init__(self, fn: Callable[[Mapping[str, Any]], float], names: list[str],
                 choices: list[list], conditions: list[str]) -> None:
        self.fn = fn
        self.names, self.choices, self.conditions = names, choices, conditions
        self.exact = False
        self.max_error = float("inf")
        self.error_bound = 0.0
        self.use_tables = False
        self.n_calls = 0
        self.pairs: list[tuple[str, str]] = []
        # condition values -> (f(x0), first-order tables, {(i, j): table})
        self._tables: dict[tuple, tuple[float, list[np.ndarray], dict[tuple[int, int], np.ndarray]]] = {}
        self._index = [{c: k for k, c in enumerate(ch)} for ch in choices]
        self._cache: dict[tuple, float] = {}

    def __call__(self, params: Mapping[str, Any]) -> float:
        key = tuple(params[n] for n in self.names) + tuple(params[c] for c in self.conditions)
        if key not in self._cache:
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[key] = float(self.fn(params))
            self.n_calls += 1
        return self._cache[key]

    def _levels(self, columns: Mapping[str, Sequence], n: int) -> np.ndarray:
        X = np.empty((n, len(self.names)), dtype=np.int64)
        for j, (name, ch) in enumerate(zip(self.names, self.choices)):
            col = columns[name]
            if _numeric(ch):
                values = np.asarray(ch, dtype=float)
                order = np.argsort(values)
                v = np.asarray(col, dtype=float)
                pos = np.clip(np.searchsorted(values[order], v), 0, len(values) - 1)
                lo = np.clip(pos - 1, 0, len(values) - 1)
                pick = np.where(np.abs(values[order][lo] - v) < np.abs(values[order][pos] - v), lo, pos)
                X[:, j] = order[pick]
            else:
                X[:, j] = [self._index[j][c] for c in col]
        return X

    def _from_tables(self, cond: tuple, X: np.ndarray) -> np.ndarray:
        f0, first, second = self._tables[cond]
        out = np.full(len(X), f0)
        for j, t in enumerate(first):
            out += t[X[:, j]]
        for (i, j), t in second.items():
            out += t[X[:, i], X[:, j]]
        return out

    def batch(self, columns: Mapping[str, Sequence]) -> np.ndarray:
        n = len(next(iter(columns.values()))) if columns else 1
        if not self.use_tables:
            return _call_rows(self, columns, n)[:, 0]
        X = self._levels(columns, n)
        if not self.conditions:
            return self._from_tables((), X)
        conds = list(zip(*[list(columns[c]) for c in self.conditions]))
        out = np.empty(n)
        for cond in set(conds):
            rows = np.array([k for k, c in enumerate(conds) if c == cond])
            out[rows] = self._from_tables(cond, X[rows])
        return out


def decompose(
    fn: Callable[[Mapping[str, Any]], float],
    distributions: Mapping[str, BaseDistribution],
    *,
    may_interact: Callable[[str, str], bool] | None = None,
    n_check: int = 48,
    seed: int = 0,
    rtol: float = 1e-9,
    max_rel_error: float = 5e-2,
    max_conditions: int = 64,
) -> DecomposedFunction:
    """The vectorised form of a scalar function of a discrete configuration (module docstring).

    Args:
        fn: params -> float (e.g. the backend's predicted memory).
        distributions: the space; categorical distributions only (numeric choices are
            tabulated per value, other categoricals become conditions).
        may_interact: which numeric parameter pairs may interact (default: none; every pair is
            then assumed additive and the check decides).
        n_check: random configurations (per condition) compared against the function.
        rtol: relative tolerance of the check (memory in bytes is an integer sum: exact).
        max_rel_error: beyond this relative difference on a check the tables are not used.
        max_conditions: more value combinations of non-numeric categoricals than this: no
            tables (``exact`` False, per-candidate calls).
    """
    names, choices, conditions, cond_choices = [], [], [], []
    for name, dist in sorted(distributions.items()):
        if not isinstance(dist, CategoricalDistribution):
            raise ValueError(f"decompose: parameter {name!r} is not categorical ({dist!r})")
        if _numeric(dist.choices):
            names.append(name)
            choices.append(list(dist.choices))
        else:
            conditions.append(name)
            cond_choices.append(list(dist.choices))
    out = DecomposedFunction(fn, names, choices, conditions)
    combos = list(itertools.product(*cond_choices))
    if len(combos) > max_conditions:
        warnings.warn(f"decompose: {len(combos)} combinations of {conditions}; evaluating per candidate")
        return out
    pair_hint = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))
                 if may_interact is not None and may_interact(names[i], names[j])]
    rng = np.random.default_rng(seed)
    worst, worst_abs, pairs_found = 0.0, 0.0, set()
    for combo in combos:
        cond = dict(zip(conditions, combo))

        def f(levels: Sequence[int]) -> float:
            return out({**{n: ch[int(v)] for n, ch, v in zip(names, choices, levels)}, **cond})

        x0 = np.zeros(len(names), dtype=int)
        f0 = f(x0)
        first = []
        for j, ch in enumerate(choices):
            t = np.zeros(len(ch))
            for v in range(1, len(ch)):
                x = x0.copy()
                x[j] = v
                t[v] = f(x) - f0
            first.append(t)
        second: dict[tuple[int, int], np.ndarray] = {}
        for i, j in pair_hint:
            ti, tj = len(choices[i]) - 1, len(choices[j]) - 1
            x = x0.copy()
            x[i], x[j] = ti, tj
            if abs(f(x) - f0 - first[i][ti] - first[j][tj]) <= rtol * max(1.0, abs(f0)):
                continue
            t = np.zeros((ti + 1, tj + 1))
            for a in range(1, ti + 1):
                for b in range(1, tj + 1):
                    x = x0.copy()
                    x[i], x[j] = a, b
                    t[a, b] = f(x) - f0 - first[i][a] - first[j][b]
            second[(i, j)] = t
            pairs_found.add((names[i], names[j]))
        out._tables[combo] = (f0, first, second)
        # the check: random configurations, the function against the tables
        X = np.stack([rng.integers(0, len(ch), n_check) for ch in choices], axis=1) if names \
            else np.zeros((n_check, 0), dtype=int)
        want = np.array([f(x) for x in X])
        got = out._from_tables(combo, X)
        worst = max(worst, float(np.max(np.abs(want - got) / np.maximum(1.0, np.abs(want)))))
        worst_abs = max(worst_abs, float(np.max(np.abs(want - got))))
    out.max_error = worst
    out.exact = worst <= rtol
    out.use_tables = worst <= max_rel_error
    out.error_bound = 0.0 if out.exact else 3.0 * worst_abs
    out.pairs = sorted(pairs_found)
    if not out.use_tables:
        warnings.warn(f"decompose: the function is not a sum of per-parameter and pairwise terms "
                      f"(relative error {worst:.2e} on a check configuration); evaluating it per "
                      "candidate")
    elif not out.exact:
        warnings.warn(f"decompose: per-parameter and pairwise tables approximate the function "
                      f"within {worst:.2e} (relative) on the check configurations; constraints "
                      "re-evaluate it exactly near their limit")
    return out
