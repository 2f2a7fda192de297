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
gets its own tables.

A maximum is not a sum: with gradient checkpointing the memory holds the largest block
recomputation, ``f(x) = s(x) + max_b m_b(x)``. When the caller can say what the ``m_b`` are
(``max_terms(x)``, e.g. from the memory model's per-block terms), the same tables are built for
the vector ``(s, m_1, ..., m_K)`` (``s = f - max_b m_b``), each component a sum of per-parameter
and pairwise terms of its own (a block's term depends on that block's parameters only: the
tables of the others are zero and skipped), and ``batch`` returns ``s + max_b m_b`` -- exact.

The decomposition is then *checked* against the function on random configurations (the value
and, with ``max_terms``, every component). When every check matches, ``batch`` is exact. When
some differ by a little (a term that is not of this form, e.g. a maximum not declared through
``max_terms``), the tables are an approximation within ``error_bound`` (three times the largest
difference seen); a known constraint built on them (:class:`Shifted`) re-evaluates exactly every
candidate that close to its limit, so feasibility stays exact. When they differ by more than
``max_rel_error``, ``batch`` calls the function per candidate (correct, slow) and says so with a
warning.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution

from automix.search._allocation import Additive

__all__ = ["evaluate_batch", "decompose", "DecomposedFunction", "Shifted", "choice_indices"]


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


def choice_indices(columns: Mapping[str, Sequence], names: Sequence[str], choices: Sequence[Sequence],
                   memo: dict, values: Sequence[Sequence[float]] | None = None) -> np.ndarray | None:
    """The position of each configuration's value of each of ``names`` in that parameter's
    ``choices``, ``(n, len(names))`` -- or, given ``values`` (one per choice of each name),
    the value at that position -- read off the level indices that a sampler's columns carry
    (``automix.search._codec.Columns``: no value is compared); None when the columns carry
    none, or their levels are not all among ``choices`` (then look the values up). ``memo``
    (the caller's, one per set of arguments) keeps the translation from levels for the
    columns' codec."""
    levels, info = getattr(columns, "levels", None), getattr(columns, "level_info", None)
    if levels is None or info is None:
        return None
    hit = memo.get("levels")
    if hit is None or hit[0] is not info:
        hit = (info, _level_translation(info, names, choices, values))
        memo["levels"] = hit
    if hit[1] is None:
        return None
    genes, offset, table = hit[1]
    return table[offset + levels[:, genes]]


def _level_translation(info: Mapping[str, tuple[int, list]], names: Sequence[str], choices: Sequence[Sequence],
                       values: Sequence[Sequence[float]] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(gene of each name, its offset in ``table``, ``table``: level -> position in choices,
    or the value there)."""
    genes, offset, table = [], [], []
    for k, (name, ch) in enumerate(zip(names, choices)):
        if name not in info:
            return None
        j, levels = info[name]
        pos = []
        for v in levels:
            # the same value: a numeric level equals the numeric choice it was sorted from
            at = [i for i, c in enumerate(ch) if type(c) is type(v) and c == v] \
                or [i for i, c in enumerate(ch) if _numeric([c, v]) and float(c) == float(v)]
            if not at:
                return None
            pos.append(at[0] if values is None else values[k][at[0]])
        genes.append(j)
        offset.append(len(table))
        table.extend(pos)
    return (np.array(genes, dtype=np.int64), np.array(offset, dtype=np.int64),
            np.array(table, dtype=np.int64 if values is None else float))


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
        n_terms: the number of terms of the maximum (``max_terms``; 0 without).
    """

    def __init__(self, fn: Callable[[Mapping[str, Any]], float], names: list[str],
                 choices: list[list], conditions: list[str],
                 max_terms: Callable[[Mapping[str, Any]], Sequence[float]] | None = None) -> None:
        self.fn, self.max_terms = fn, max_terms
        self.names, self.choices, self.conditions = names, choices, conditions
        self.exact = False
        self.max_error = float("inf")
        self.error_bound = 0.0
        self.use_tables = False
        self.n_calls = 0
        self.n_terms = 0
        self.pairs: list[tuple[str, str]] = []
        # condition values -> (components at x0 (P,), first-order tables (levels, P), pairwise
        # tables {(i, j): (levels_i, levels_j, P)}), and the same laid out for batch (_Plan)
        self._tables: dict[tuple, tuple[np.ndarray, list[np.ndarray], dict[tuple[int, int], np.ndarray]]] = {}
        self._plans: dict[tuple, _Plan] = {}
        self._index = [{c: k for k, c in enumerate(ch)} for ch in choices]
        self._cache: dict[tuple, tuple[float, np.ndarray]] = {}
        # numeric parameters with the same choices are looked up together: (sorted values, the
        # level of each sorted value, the parameters' positions)
        groups: dict[tuple, list[int]] = {}
        for j, ch in enumerate(choices):
            if _numeric(ch):
                groups.setdefault(tuple(float(c) for c in ch), []).append(j)
        self._numeric_groups = []
        for values, js in groups.items():
            order = np.argsort(values, kind="stable")
            self._numeric_groups.append((np.asarray(values)[order], order, js))
        self._other = [j for j, ch in enumerate(choices) if not _numeric(ch)]
        self._last: tuple[Mapping[str, Sequence], list, np.ndarray] | None = None
        self._level_memo: dict = {}  # choice_indices' translation for a sampler's columns

    def _key(self, params: Mapping[str, Any]) -> tuple:
        return tuple(params[n] for n in self.names) + tuple(params[c] for c in self.conditions)

    def _evaluate(self, params: Mapping[str, Any]) -> tuple[float, np.ndarray]:
        """(f(x), components): ``(f,)``, or ``(f - max_b m_b, m_1, ..., m_K)`` with ``max_terms``."""
        key = self._key(params)
        if key not in self._cache:
            if len(self._cache) > 100_000:
                self._cache.clear()
            value = float(self.fn(params))
            if self.max_terms is None:
                parts = np.array([value])
            else:
                m = np.asarray(self.max_terms(params), dtype=float).reshape(-1)
                parts = np.concatenate([[value - (m.max() if len(m) else 0.0)], m])
            self._cache[key] = (value, parts)
            self.n_calls += 1
        return self._cache[key]

    def __call__(self, params: Mapping[str, Any]) -> float:
        return self._evaluate(params)[0]

    @property
    def condition_values(self) -> list[tuple]:
        """The value combinations of the non-numeric parameters that have tables."""
        return list(self._tables)

    def additive(self, condition: tuple = ()) -> Additive:
        """The tables of one combination of the non-numeric parameters' values, as the exact
        allocation reads them (``automix.search._allocation``): over the level indices of
        ``names``; with ``max_terms``, component 0 plus the maximum of the others."""
        v0, first, second = self._tables[tuple(condition)]
        return Additive(np.asarray(v0, float), [np.asarray(t, float) for t in first],
                        {k: np.asarray(t, float) for k, t in second.items()}, has_max=self.max_terms is not None)

    def _levels(self, columns: Mapping[str, Sequence], n: int) -> np.ndarray:
        """Level indices ``(n, parameters)`` of the columns' values (numeric: the nearest choice)."""
        X = choice_indices(columns, self.names, self.choices, self._level_memo)
        if X is not None:
            return X
        X = np.empty((n, len(self.names)), dtype=np.int64)
        for values, order, js in self._numeric_groups:
            v = np.array([columns[self.names[j]] for j in js], dtype=float).reshape(len(js), n)
            pos = np.clip(np.searchsorted(values, v), 0, len(values) - 1)
            lo = np.maximum(pos - 1, 0)
            pick = np.where(np.abs(values[lo] - v) < np.abs(values[pos] - v), lo, pos)
            X[:, js] = order[pick].T
        for j in self._other:
            X[:, j] = [self._index[j][c] for c in columns[self.names[j]]]
        return X

    def _components(self, cond: tuple, X: np.ndarray) -> np.ndarray:
        """The components ``(n, P)`` from the tables: ``v0 + sum_j d_j[x_j] + sum_ij d_ij[x_i, x_j]``."""
        if cond not in self._plans:
            self._plans[cond] = _Plan(*self._tables[cond])
        return self._plans[cond].components(X)

    @staticmethod
    def _combine(parts: np.ndarray) -> np.ndarray:
        """``s + max_b m_b`` of components ``(s, m_1, ..., m_K)`` (just ``s`` when K = 0)."""
        return parts[:, 0] + (parts[:, 1:].max(axis=1) if parts.shape[1] > 1 else 0.0)

    def _from_tables(self, cond: tuple, X: np.ndarray) -> np.ndarray:
        return self._combine(self._components(cond, X))

    def batch(self, columns: Mapping[str, Sequence]) -> np.ndarray:
        """The function over ``columns`` (parameter -> values). The same columns passed again
        (the same mapping holding the same arrays, as a sampler does for a known objective and
        the constraint built on it) give the result again without recomputing it."""
        n = len(next(iter(columns.values()))) if columns else 1
        if not self.use_tables:
            return _call_rows(self, columns, n)[:, 0]
        # an immutable mapping (a sampler's Columns) is the same columns when it is the same
        # object; a dict, when it also holds the same arrays
        frozen = not isinstance(columns, MutableMapping)
        arrays = [] if frozen else list(columns.values())
        last = self._last
        if last is not None and last[0] is columns and len(last[1]) == len(arrays) \
                and all(a is b for a, b in zip(last[1], arrays)):
            return last[2].copy()
        X = self._levels(columns, n)
        if not self.conditions:
            out = self._from_tables((), X)
        else:
            conds = list(zip(*[list(columns[c]) for c in self.conditions]))
            out = np.empty(n)
            for cond in set(conds):
                rows = np.array([k for k, c in enumerate(conds) if c == cond])
                out[rows] = self._from_tables(cond, X[rows])
        self._last = (columns, arrays, out.copy())
        return out


class _Plan:
    """The tables of one condition laid out for many configurations at once.

    Every table (first-order ``d_j``, pairwise ``d_ij``) is a block of rows of one value matrix
    ``G`` (rows: the table's level combinations, columns: the components; a last row of zeros),
    so a configuration's row in table ``t`` is ``offset_t + x_i * stride_t + x_j`` (first-order:
    ``i = j``, stride 0). Component ``c`` is ``v0_c + sum_t G[row_t, c]`` over the tables that
    change it: for the first component (the sum part) one gather of all its tables, for the
    terms of the maximum one gather of a (terms, tables per term) index array padded with the
    zero row -- a block's term only reads its own block's tables.

    When every table holds whole numbers whose sums stay exact in floating point (memory in
    bytes), the order of the additions cannot change a result, and each first-order table is
    folded into a pairwise table of its parameter (:func:`_fold`) and the tables are read table
    by table (contiguous rows of configurations): fewer and cheaper reads, the same values.
    """

    def __init__(self, v0: np.ndarray, first: list[np.ndarray], second: dict[tuple[int, int], np.ndarray]) -> None:
        self.any_order = _exact_in_any_order(v0, first, second)
        if self.any_order:
            first, second = _fold(first, second)
        tables = [(j, j, 0, t.reshape(-1, t.shape[-1])) for j, t in enumerate(first)]
        tables += [(i, j, t.shape[1], t.reshape(-1, t.shape[-1])) for (i, j), t in second.items()]
        tables = [tb for tb in tables if np.any(tb[3] != 0)]
        self.v0 = v0
        P = len(v0)
        self.a = np.array([tb[0] for tb in tables], dtype=np.int64)
        self.b = np.array([tb[1] for tb in tables], dtype=np.int64)
        self.stride = np.array([tb[2] for tb in tables], dtype=np.int64)
        sizes = [len(tb[3]) for tb in tables]
        self.offset = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if tables \
            else np.zeros(0, dtype=np.int64)
        self.zero = int(sum(sizes))  # the row of zeros
        self.G = np.concatenate([tb[3] for tb in tables] + [np.zeros((1, P))])
        changes = np.stack([np.any(tb[3] != 0, axis=0) for tb in tables]) if tables else np.zeros((0, P), bool)
        self.sum_tables = np.flatnonzero(changes[:, 0])
        self.G0 = np.ascontiguousarray(self.G[:, 0])
        by_term = [np.flatnonzero(changes[:, c]) for c in range(1, P)]
        width = max((len(t) for t in by_term), default=0)
        # (terms, width) table positions; padding: position len(tables), an extra column of `rows`
        # that holds the zero row
        self.term_tables = np.full((P - 1, width), len(tables), dtype=np.int64)
        for c, t in enumerate(by_term):
            self.term_tables[c, :len(t)] = t
        self.Gt = np.ascontiguousarray(self.G[:, 1:])
        # components' shortcuts: the first-order tables come first (stride 0: no product);
        # when every table changes the sum, the sum reads `rows` as it is
        first = self.stride == 0
        self.n_first = len(first) if first.all() else int(np.argmin(first))  # the leading ones
        self.first_in_order = np.array_equal(self.a[:self.n_first], np.arange(self.n_first))
        self.all_sum = np.array_equal(self.sum_tables, np.arange(len(tables)))

    def components(self, X: np.ndarray) -> np.ndarray:
        if self.any_order:
            return self._components_by_table(X)
        n, P = len(X), len(self.v0)
        T, F = len(self.a), self.n_first
        # rows (n, tables + 1): each table's row, then the zero row (the padding of term_tables)
        rows = np.empty((n, T + 1), dtype=np.int64)
        np.add(self.offset[:F], X if self.first_in_order and F == X.shape[1] else X[:, self.a[:F]],
               out=rows[:, :F])
        if F < T:
            a, b, stride = self.a[F:], self.b[F:], self.stride[F:]
            rows[:, F:T] = self.offset[F:] + X[:, a] * stride + X[:, b]
        rows[:, T] = self.zero
        out = np.empty((n, P))
        table_rows = rows[:, :T] if self.all_sum else rows[:, self.sum_tables]
        out[:, 0] = self.v0[0] + self.G0[table_rows].sum(axis=1)
        if P > 1:
            term_rows = rows[:, self.term_tables]  # (n, terms, width)
            out[:, 1:] = self.v0[1:] + self.Gt[term_rows, np.arange(P - 1)[:, None]].sum(axis=2)
        return out

    def _components_by_table(self, X: np.ndarray) -> np.ndarray:
        """``components`` laid out table by table (rows: tables, columns: configurations):
        contiguous reads, the sums in another order -- for tables where the order cannot
        change a result (``any_order``)."""
        n, P = len(X), len(self.v0)
        T, F = len(self.a), self.n_first
        XT = X.T  # (parameters, n): a view when X is column-major, as choice_indices gives it
        rows = np.empty((T + 1, n), dtype=np.int64)
        np.add(self.offset[:F, None], XT if self.first_in_order and F == len(XT) else XT[self.a[:F]],
               out=rows[:F])
        if F < T:
            pair = rows[F:T]
            np.multiply(XT[self.a[F:]], self.stride[F:, None], out=pair)
            pair += XT[self.b[F:]]
            pair += self.offset[F:, None]
        rows[T] = self.zero
        out = np.empty((n, P))
        table_rows = rows[:T] if self.all_sum else rows[self.sum_tables]
        out[:, 0] = self.v0[0] + self.G0.take(table_rows).sum(axis=0)
        if P > 1:
            term_rows = rows[self.term_tables]  # (terms, width, n)
            terms = self.Gt[term_rows, np.arange(P - 1)[:, None, None]].sum(axis=1)  # (terms, n)
            out[:, 1:] = (self.v0[1:, None] + terms).T
        return out


def _exact_in_any_order(v0: np.ndarray, first: list[np.ndarray], second: dict[tuple[int, int], np.ndarray]) -> bool:
    """Whether every sum of ``v0`` and table entries (one per table, in any order) is exact in
    floating point: all whole numbers, and per component the base plus the largest magnitude
    of each table below 2**53 (every partial sum is then a representable whole number)."""
    parts = [np.asarray(v0, dtype=float)[None]] + [t.reshape(-1, t.shape[-1]) for t in first] \
        + [t.reshape(-1, t.shape[-1]) for t in second.values()]
    if not all(np.all(np.isfinite(t)) and np.all(t == np.round(t)) for t in parts):
        return False
    bound = sum(np.abs(t).max(axis=0) for t in parts if len(t))
    return bool(np.all(bound < 2.0**53))


def _fold(first: list[np.ndarray], second: dict[tuple[int, int], np.ndarray]
          ) -> tuple[list[np.ndarray], dict[tuple[int, int], np.ndarray]]:
    """Each first-order table added into the first pairwise table of its parameter (then
    zero: left out); ``d_i(x_i) + d_j(x_j) + d_ij(x_i, x_j)`` read as one table. Exact only
    under :func:`_exact_in_any_order`."""
    first = [t.copy() for t in first]
    out = {}
    for (i, j), t in second.items():
        t = t.copy()
        for k, axis in ((i, 0), (j, 1)):
            if np.any(first[k] != 0):
                t += first[k][:, None, :] if axis == 0 else first[k][None, :, :]
                first[k] = np.zeros_like(first[k])
        out[(i, j)] = t
    return first, out


def decompose(
    fn: Callable[[Mapping[str, Any]], float],
    distributions: Mapping[str, BaseDistribution],
    *,
    may_interact: Callable[[str, str], bool] | None = None,
    max_terms: Callable[[Mapping[str, Any]], Sequence[float]] | None = None,
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
        max_terms: params -> ``(m_1, ..., m_K)`` (K fixed per condition) when
            ``fn = s + max_b m_b`` with ``s`` and each ``m_b`` sums of per-parameter and pairwise
            terms (the memory model's per-block recomputations); ``max`` of none is 0.
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
    out = DecomposedFunction(fn, names, choices, conditions, max_terms)
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

        def f(levels: Sequence[int]) -> tuple[float, np.ndarray]:
            return out._evaluate({**{n: ch[int(v)] for n, ch, v in zip(names, choices, levels)}, **cond})

        x0 = np.zeros(len(names), dtype=int)
        f0, v0 = f(x0)
        scale = rtol * max(1.0, abs(f0))

        def parts(x: np.ndarray) -> np.ndarray:
            v = f(x)[1]
            if v.shape != v0.shape:
                raise ValueError(f"decompose: max_terms gave {len(v) - 1} terms, {len(v0) - 1} at the base "
                                 "configuration; their number must not depend on the parameters")
            return v

        first = []
        for j, ch in enumerate(choices):
            t = np.zeros((len(ch), len(v0)))
            for v in range(1, len(ch)):
                x = x0.copy()
                x[j] = v
                t[v] = parts(x) - v0
            first.append(t)
        second: dict[tuple[int, int], np.ndarray] = {}
        for i, j in pair_hint:
            ti, tj = len(choices[i]) - 1, len(choices[j]) - 1
            x = x0.copy()
            x[i], x[j] = ti, tj
            if np.all(np.abs(parts(x) - v0 - first[i][ti] - first[j][tj]) <= scale):
                continue
            t = np.zeros((ti + 1, tj + 1, len(v0)))
            for a in range(1, ti + 1):
                for b in range(1, tj + 1):
                    x = x0.copy()
                    x[i], x[j] = a, b
                    t[a, b] = parts(x) - v0 - first[i][a] - first[j][b]
            second[(i, j)] = t
            pairs_found.add((names[i], names[j]))
        out._tables[combo] = (v0, first, second)
        out.n_terms = max(out.n_terms, len(v0) - 1)
        # the check: random configurations, the function (and its components) against the tables
        X = np.stack([rng.integers(0, len(ch), n_check) for ch in choices], axis=1) if names \
            else np.zeros((n_check, 0), dtype=int)
        evaluated = [f(x) for x in X]
        want = np.array([value for value, _ in evaluated])
        want_parts = np.stack([parts(x) for x in X])
        got_parts = out._components(combo, X)
        diff = np.maximum(np.abs(want - out._combine(got_parts)), np.max(np.abs(want_parts - got_parts), axis=1))
        worst = max(worst, float(np.max(diff / np.maximum(1.0, np.abs(want)))))
        worst_abs = max(worst_abs, float(np.max(diff)))
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
