"""KnapsackSampler: a one-shot profile + multiple-choice-knapsack allocation, as an Optuna sampler.

The baseline that spends no trials on search: every parameter's choices get a *score* (the
damage a sensitivity profile predicts, e.g. per-layer KL at each bit width) and a *cost* (the
memory model), both taken as additive over parameters, and the allocation is the
multiple-choice knapsack optimum: least total score within the memory budget. This is what
NVIDIA ModelOpt's ``auto_quantize`` (per-layer sensitivity scores, a constrained search over
per-layer formats under an effective-bits target) and llama.cpp's target-bpw allocation
(per-tensor error estimates, bits allocated to the tensors where they buy the most) do.

The solver is the marginal-gain path of the knapsack (Sinha & Zoltners, "The multiple-choice
knapsack problem", Operations Research 1979): each parameter's choices are reduced to their
lower convex hull in (cost, score), and the path takes, from the cheapest configuration, the
hull step with the largest score decrease per unit of cost while it fits; the remaining budget
is then filled with the best single upgrades that still fit. The path's configurations are the
optima of the Lagrangian relaxation, so they trace the predicted front.

One optimum is one trial; a study gets a front: successive trials take the optimum for a sweep
of budgets (the study's budget first, then budgets spread below it by a van der Corput
sequence; without a budget, spread over the whole range of costs). Non-numeric categoricals
(the method) are solved per value; the value with the least score wins.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study
from optuna.trial import FrozenTrial

from automix.search.batch import evaluate_batch

__all__ = ["KnapsackSampler", "knapsack_path"]


def _van_der_corput(k: int) -> float:
    x, denom = 0.0, 1.0
    while k:
        denom *= 2
        k, r = divmod(k, 2)
        x += r / denom
    return x


def knapsack_path(cost: list[np.ndarray], score: list[np.ndarray]) -> list[np.ndarray]:
    """The marginal-gain path of a multiple-choice knapsack: level vectors from the cheapest
    configuration, each taking the convex-hull step with the best score decrease per cost."""
    start = np.array([int(np.lexsort((s, c))[0]) for c, s in zip(cost, score)])
    steps = []  # (ratio, param, from level, to level) along each parameter's hull
    for j, (c, s) in enumerate(zip(cost, score)):
        cur = start[j]
        while True:
            better = np.flatnonzero((c > c[cur] + 1e-12) & (s < s[cur] - 1e-12))
            if not len(better):
                break
            ratio = (s[cur] - s[better]) / (c[better] - c[cur])
            nxt = int(better[np.argmax(ratio)])
            steps.append((float(ratio.max()), j, cur, nxt))
            cur = nxt
    # hull steps of one parameter have decreasing ratios, so a global sort keeps their order
    steps.sort(key=lambda t: -t[0])
    x = start.copy()
    path = [x.copy()]
    for _, j, _, to in steps:
        x[j] = to
        path.append(x.copy())
    return path


class KnapsackSampler(BaseSampler):
    """Profile scores + a multiple-choice knapsack under the memory budget (module docstring).

    Args:
        score: params -> predicted damage (lower is better), additive over parameters; a
            vector (e.g. the sampler's engineered features) is read by its last entry, the
            total. A ``batch`` form (``automix.search.batch``) is used when present.
        cost: params -> memory (the analytic model), additive over parameters.
        search_space: the categorical parameters to allocate.
        budget: the memory budget (None: sweep the whole range of costs).
        seed: seed of the random sampler for parameters outside ``search_space``.
    """

    def __init__(self, *, score: Callable[[Mapping[str, Any]], Any],
                 cost: Callable[[Mapping[str, Any]], float],
                 search_space: Mapping[str, BaseDistribution], budget: float | None = None,
                 seed: int | None = None) -> None:
        for name, d in search_space.items():
            if not isinstance(d, CategoricalDistribution):
                raise ValueError(f"KnapsackSampler: parameter {name!r} is not categorical")
        self._space = dict(search_space)
        self._score, self._cost, self._budget = score, cost, budget
        self._random = RandomSampler(seed=seed)
        self._numeric = [n for n, d in sorted(self._space.items())
                         if all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in d.choices)]
        self._conds = [n for n in sorted(self._space) if n not in self._numeric]
        self._paths: dict[tuple, tuple] | None = None  # condition -> path, costs, scores, tables
        self._proposals: list[dict[str, Any]] = []
        self._sweep = 0  # next sweep index

    # ----------------------------------------------------------------- the allocation
    def _tables(self, cond: dict[str, Any]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per parameter and choice: cost and score relative to the first-choice configuration
        (single-parameter variations, evaluated as one batch)."""
        names = self._numeric
        choices = [list(self._space[n].choices) for n in names]
        rows = [(j, v) for j, ch in enumerate(choices) for v in range(len(ch))]
        n = len(rows) + 1
        columns: dict[str, Any] = {}
        for j, name in enumerate(names):
            col = np.full(n, choices[j][0], dtype=object)
            for r, (jj, v) in enumerate(rows, start=1):
                if jj == j:
                    col[r] = choices[j][v]
            columns[name] = col
        for name, value in cond.items():
            columns[name] = np.full(n, value, dtype=object)
        c = evaluate_batch(self._cost, columns, n)[:, 0]
        s = evaluate_batch(self._score, columns, n)[:, -1]
        cost = [np.zeros(len(ch)) for ch in choices]
        score = [np.zeros(len(ch)) for ch in choices]
        for r, (j, v) in enumerate(rows, start=1):
            cost[j][v], score[j][v] = c[r] - c[0], s[r] - s[0]
        return cost, score

    def _solve_all(self) -> None:
        self._paths = {}
        conds = list(itertools.product(*[list(self._space[n].choices) for n in self._conds]))
        for combo in conds:
            cond = dict(zip(self._conds, combo))
            cost, score = self._tables(cond)
            path = np.array(knapsack_path(cost, score)).reshape(-1, len(self._numeric))
            c0 = float(evaluate_batch(self._cost, self._columns(path[:1], cond), 1)[0, 0])
            s0 = float(evaluate_batch(self._score, self._columns(path[:1], cond), 1)[0, -1])
            pc = c0 + np.array([sum(cost[j][x[j]] for j in range(len(x))) for x in path]) \
                - sum(cost[j][path[0][j]] for j in range(len(path[0])))
            ps = s0 + np.array([sum(score[j][x[j]] for j in range(len(x))) for x in path]) \
                - sum(score[j][path[0][j]] for j in range(len(path[0])))
            self._paths[combo] = (path, pc, ps, cost, score)

    def _columns(self, X: np.ndarray, cond: dict[str, Any]) -> dict[str, Any]:
        cols = {n: np.array([self._space[n].choices[int(i)] for i in X[:, j]], dtype=object)
                for j, n in enumerate(self._numeric)}
        for name, value in cond.items():
            cols[name] = np.full(len(X), value, dtype=object)
        return cols

    def allocation(self, budget: float) -> dict[str, Any] | None:
        """The knapsack optimum within `budget` (None if nothing fits): the path's last point
        that fits, then the best single upgrades that still fit."""
        if self._paths is None:
            self._solve_all()
        best = None
        for combo, (path, pc, ps, cost, score) in self._paths.items():
            fits = np.flatnonzero(pc <= budget)
            if not len(fits):
                continue
            k = int(fits[-1])
            x, c, s = path[k].copy(), float(pc[k]), float(ps[k])
            while True:  # fill: the single move with the best score gain that fits
                gain, move = 0.0, None
                for j in range(len(x)):
                    dc = cost[j] - cost[j][x[j]]
                    ds = score[j][x[j]] - score[j]
                    ok = (c + dc <= budget) & (ds > gain + 1e-12)
                    if ok.any():
                        v = int(np.flatnonzero(ok)[np.argmax(ds[ok])])
                        gain, move = float(ds[v]), (j, v, float(dc[v]))
                if move is None:
                    break
                j, v, dc = move
                x[j], c, s = v, c + dc, s - gain
            if best is None or (s, c) < (best[0], best[1]):
                best = (s, c, x, combo)
        if best is None:
            return None
        _, _, x, combo = best
        params = {n: self._space[n].choices[int(i)] for n, i in zip(self._numeric, x)}
        params.update(dict(zip(self._conds, combo)))
        return params

    def budgets(self) -> tuple[float, float]:
        """(least, largest useful) cost over the solved paths."""
        if self._paths is None:
            self._solve_all()
        lo = min(float(pc[0]) for _, pc, *_ in self._paths.values())
        hi = max(float(pc[-1]) for _, pc, *_ in self._paths.values())
        return lo, hi

    def proposals(self, n: int) -> list[dict[str, Any]]:
        """The first `n` distinct allocations of the budget sweep (what n trials get; fewer
        when the sweep finds no more)."""
        lo, hi = self.budgets()
        top = min(hi, self._budget) if self._budget is not None else hi
        seen = {self._key(p) for p in self._proposals}
        stop = self._sweep + 50 * n + 50
        while len(self._proposals) < n and self._sweep < stop:
            k = self._sweep
            self._sweep += 1
            u = 1.0 if k == 0 else (_van_der_corput(k) if self._budget is None else 1.0 - _van_der_corput(k))
            p = self.allocation(lo + u * (top - lo))
            if p is not None and self._key(p) not in seen:
                seen.add(self._key(p))
                self._proposals.append(p)
        return self._proposals[:n]

    @staticmethod
    def _key(params: Mapping[str, Any]) -> tuple:
        return tuple(sorted((a, str(b)) for a, b in params.items()))

    # ----------------------------------------------------------------- BaseSampler API
    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self._space)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        done = {self._key({a: b for a, b in t.params.items() if a in self._space})
                for t in study.get_trials(deepcopy=False) if t.number != trial.number}
        for p in self.proposals(len(done) + 1):
            if self._key(p) not in done:
                return p
        return {}  # the sweep is exhausted: random (sample_independent)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._random.before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: Any, values: Any) -> None:
        self._random.after_trial(study, trial, state, values)
