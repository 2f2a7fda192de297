"""The one-shot allocation: a sensitivity profile's scores, then an exact integer program under
the memory budget -- the strongest baseline a search must beat, and where AutoMixSampler starts.

NVIDIA ModelOpt's ``auto_quantize`` (a Fisher-weighted score per layer and format, then an
integer program under an effective-bits bound) and Intel AutoRound's AutoScheme (a
gradient-weighted loss change per layer and option, then a knapsack over layers) allocate bits
this way: score each layer's damage at each choice, assume the damage adds up, and fill the
budget. :class:`OneShotAllocator` does the same over a search space's parameters:

* *scores*: any function of a configuration whose value (or last entry: the total of the
  sampler's engineered features) is the predicted damage; it must be a sum over parameters
  (a profile is), which :func:`~automix.search.batch.decompose` checks;
* *cost*: the memory function, as tables (a study's :class:`~automix.search.batch.DecomposedFunction`
  already is one: its pairwise terms and the maximum over blocks with gradient checkpointing
  included); any other function is decomposed here;
* *parameters the scores do not see* (a profile scores bit widths, not prune ratios or adapter
  ranks, nor the fine-tuning method) are held where the user put them (``hold``: a study passes
  its search space's ``fixed`` values), else at their first choice (no pruning, the smallest
  rank): with no score, the program would spend them as free memory. Each non-numeric value (a
  method) is allocated on its own;
* the allocation is the exact optimum (``automix.search._allocation``: a mixed-integer program
  solved by HiGHS), re-checked against the cost function itself; when the cost's tables are
  approximate and the optimum breaks the budget, the bound is tightened by the excess and the
  program solved again, as ModelOpt retries at 0.99 / 0.90 of its bound.

:class:`OneShotSampler` runs it as an Optuna sampler (``sampler: oneshot`` in a study): its
first trial is the allocation at the study's budget, each further one the allocation at a
budget further down the sweep (its front), each method in turn.

Example::

    allocator = OneShotAllocator(score=features, cost=memory, search_space=space,
                                 hold={"rank.all": 8})
    params = allocator.allocate(budget=345 * 2**20)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study
from optuna.trial import FrozenTrial

from automix.search._allocation import Additive, solve
from automix.search.batch import DecomposedFunction, Shifted, decompose

__all__ = ["OneShotAllocator", "OneShotSampler", "same_group", "van_der_corput"]


def same_group(a: str, b: str) -> bool:
    """Whether two parameters named ``<field>.<group>`` (a search space's names) may interact
    in a memory model: the same group, or one group inside the other (a block's prune ratio
    and the bits of its linears)."""
    ga, gb = a.split(".", 1)[-1], b.split(".", 1)[-1]
    return ga == gb or ga.startswith(gb + ".") or gb.startswith(ga + ".")


def _total(fn: Callable[[Mapping[str, Any]], Any]) -> Callable[[Mapping[str, Any]], float]:
    """A score function read as a scalar: a vector's last entry (the features' total)."""
    return lambda params: float(np.ravel(np.asarray(fn(params), dtype=float))[-1])


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _nearest_level(choices: Sequence[Any], value: Any) -> int:
    if value in choices:
        return list(choices).index(value)
    try:
        return int(np.argmin([abs(float(c) - float(value)) for c in choices]))
    except (TypeError, ValueError):
        raise ValueError(f"hold value {value!r} is not one of {list(choices)}") from None


class OneShotAllocator:
    """Profile scores + an exact integer program under a memory budget (module docstring).

    Args:
        score: params -> predicted damage (lower is better; a vector is read by its last
            entry), a sum over parameters.
        cost: params -> memory; a :class:`DecomposedFunction` is used as it is (a
            :class:`Shifted` constraint: its function).
        search_space: categorical distributions (numeric choices are allocated, the others
            are conditions: one allocation per value combination).
        hold: parameter -> value for the parameters the scores do not see (default: their
            first choice). Parameters the scores do see are never held.
        may_interact: which pairs of parameters the cost may couple (default:
            :func:`same_group`), when the cost is decomposed here.
    """

    def __init__(self, *, score: Callable[[Mapping[str, Any]], Any], cost: Callable[[Mapping[str, Any]], float],
                 search_space: Mapping[str, BaseDistribution], hold: Mapping[str, Any] | None = None,
                 may_interact: Callable[[str, str], bool] | None = None) -> None:
        for name, d in search_space.items():
            if not isinstance(d, CategoricalDistribution):
                raise ValueError(f"one-shot allocation: parameter {name!r} is not categorical ({d!r})")
        self.space = dict(search_space)
        if isinstance(cost, Shifted):
            cost = cost.fn
        if not (isinstance(cost, DecomposedFunction) and cost.use_tables
                and set(cost.names) | set(cost.conditions) == set(self.space)):
            cost = decompose(cost, self.space, may_interact=may_interact or same_group)
        if not cost.use_tables or not cost.condition_values:
            raise ValueError("one-shot allocation: the memory function is not a sum of per-parameter and "
                             "pairwise terms (or has too many method combinations); it cannot be tabulated")
        self.cost = cost
        self.score = decompose(_total(score), self.space)
        self.names, self.conditions = list(cost.names), list(cost.conditions)
        self.choices = [list(self.space[n].choices) for n in self.names]
        self.n_levels = [len(c) for c in self.choices]
        scored = np.zeros(len(self.names), dtype=bool)
        for cond in self.score.condition_values:
            add = self.score.additive(cond)
            scored |= np.array([np.ptp(t[:, 0]) > 1e-12 * (1 + np.abs(t).max()) for t in add.first], dtype=bool)
            for i, j in add.second:
                scored[[i, j]] = True
        self.scored = scored
        hold = dict(hold or {})
        self.hold = {j: _nearest_level(self.choices[j], hold[n]) if n in hold else 0
                     for j, n in enumerate(self.names) if not scored[j]}

    # ----------------------------------------------------------------- tables and levels
    def condition_values(self) -> list[tuple]:
        return self.cost.condition_values

    def levels(self, params: Mapping[str, Any]) -> tuple[np.ndarray, tuple]:
        """(level vector over ``names``, condition) of a configuration."""
        x = np.array([_nearest_level(ch, params[n]) for n, ch in zip(self.names, self.choices)])
        return x, tuple(params[c] for c in self.conditions)

    def params(self, x: np.ndarray, condition: tuple) -> dict[str, Any]:
        out = {n: ch[int(v)] for n, ch, v in zip(self.names, self.choices, x)}
        out.update(zip(self.conditions, condition))
        return out

    def score_tables(self, condition: tuple) -> Additive:
        return self.score.additive(condition)

    def cost_tables(self, condition: tuple) -> Additive:
        return self.cost.additive(condition)

    # ----------------------------------------------------------------- allocation
    def solve(self, budget: float, condition: tuple, objective: Additive | None = None,
              hold: Mapping[int, int] | None = None, exclude: Sequence[Mapping[str, Any]] = (),
              time_limit: float = 20.0, allowed: Mapping[int, Sequence[int]] | None = None) -> dict[str, Any] | None:
        """The best configuration of one condition under ``budget`` by ``objective`` (default:
        the scores), ``hold`` (level per parameter index; default: the unscored parameters at
        their held levels), none of ``exclude``; checked against the cost function itself.
        ``time_limit``: seconds per solve (past it, the best configuration found so far);
        ``allowed``: parameter index -> the only levels it may take."""
        objective = objective if objective is not None else self.score_tables(condition)
        hold = self.hold if hold is None else hold
        cuts = []
        for p in exclude:
            x, cond = self.levels(p)
            if cond == tuple(condition):
                cuts.append(x)
        tables = self.cost_tables(condition)
        bound = float(budget)
        for _ in range(6):
            x = solve(self.n_levels, objective, [(tables, bound)], hold=hold, exclude=cuts, time_limit=time_limit,
                      allowed=allowed)
            if x is None:
                return None
            params = self.params(x, condition)
            excess = float(self.cost(params)) - float(budget)
            if excess <= 0:
                return params
            bound -= excess + 1e-6 * abs(float(budget))  # approximate tables: tighten and solve again
        return None

    def bracket(self, budget: float, condition: tuple) -> dict[int, list[int]] | None:
        """The two choices of the scored parameters between which ``budget`` falls when every
        one of them takes the same value (all 3-bit fits, all 4-bit does not: 3 and 4), as
        allowed levels per parameter; None when no such pair exists (the budget fits every
        value, or none)."""
        values = sorted({float(c) for j in np.flatnonzero(self.scored) for c in self.choices[j]
                         if _is_number(c)})
        fits = []
        for v in values:
            x = np.array([self.hold.get(j, _nearest_level(self.choices[j], v)) for j in range(len(self.names))])
            fits.append(float(self.cost(self.params(x, condition))) <= budget)
        for k in range(len(values) - 1):
            if fits[k] and not fits[k + 1]:
                lo, hi = values[k], values[k + 1]
                return {j: [level for level, c in enumerate(self.choices[j]) if _is_number(c) and lo <= float(c) <= hi]
                        for j in np.flatnonzero(self.scored)}
        return None

    def allocate(self, budget: float, condition: tuple | None = None,
                 exclude: Sequence[Mapping[str, Any]] = (), bracketed: bool = False) -> dict[str, Any] | None:
        """The one-shot allocation within ``budget``: of one condition (a method), or the best
        by score over all of them (ties: the first); None when nothing fits. ``bracketed``:
        the scored parameters take only the two values that bracket the budget
        (:meth:`bracket`): an allocation that trusts the profile only between two
        neighbouring values, never where it extrapolates (a quadratic Fisher estimate is least
        reliable for the largest errors, at 2 bits: see benchmarks/search_smollm2.md)."""
        best, best_score = None, np.inf
        for cond in ([tuple(condition)] if condition is not None else self.condition_values()):
            allowed = self.bracket(budget, cond) if bracketed else None
            if bracketed and allowed is None:
                continue
            p = self.solve(budget, cond, exclude=exclude, allowed=allowed)
            if p is None:
                continue
            s = float(self.score(p))
            if s < best_score - 1e-12:
                best, best_score = p, s
        return best

    def cost_range(self) -> tuple[float, float]:
        """(the least cost, the cost of the best-scored configuration) with the held parameters
        held: the span a budget sweep covers."""
        lo, hi = np.inf, -np.inf
        for cond in self.condition_values():
            tables = self.cost_tables(cond)
            cheap = solve(self.n_levels, Additive(tables.v0[:1], [t[:, :1] for t in tables.first],
                                                  {k: t[:, :, :1] for k, t in tables.second.items()}),
                          hold=self.hold)
            if cheap is not None:
                lo = min(lo, float(self.cost(self.params(cheap, cond))))
            top = solve(self.n_levels, self.score_tables(cond), hold=self.hold)
            if top is not None:
                hi = max(hi, float(self.cost(self.params(top, cond))))
        return float(lo), float(max(hi, lo))

    def sweep(self, n: int, budget: float | None = None, condition: tuple | None = None,
              exclude: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
        """Up to ``n`` distinct allocations along the budget axis: at ``budget`` (default: the
        top of :meth:`cost_range`) first, then at budgets spread below it (a van der Corput
        sequence between the least cost and the top)."""
        lo, hi = self.cost_range()
        top = min(hi, budget) if budget is not None else hi
        out: list[dict[str, Any]] = []
        seen = {_key(p) for p in exclude}
        for k in range(4 * n + 8):
            if len(out) >= n:
                break
            u = 1.0 if k == 0 else 1.0 - van_der_corput(k)
            p = self.allocate(lo + u * (top - lo), condition)
            if p is not None and _key(p) not in seen:
                seen.add(_key(p))
                out.append(p)
        return out


def van_der_corput(k: int) -> float:
    """The k-th point of the base-2 van der Corput sequence in [0, 1) (0, 1/2, 1/4, 3/4, ...)."""
    x, denom = 0.0, 1.0
    while k:
        denom *= 2
        k, r = divmod(k, 2)
        x += r / denom
    return x


def _key(params: Mapping[str, Any]) -> tuple:
    return tuple(sorted((a, str(b)) for a, b in params.items()))


class OneShotSampler(BaseSampler):
    """The one-shot allocation as an Optuna sampler (``sampler: oneshot``).

    Trial 0 is the allocation at ``budget`` for the first method (value combination of the
    non-numeric parameters), the next ones the same for each other method, then allocations at
    budgets further down the sweep (:meth:`OneShotAllocator.sweep`); once the sweep finds
    nothing new, parameters are sampled at random. Args are :class:`OneShotAllocator`'s, plus
    ``budget`` (None: sweep the whole range of costs) and ``seed`` (for the random fallback).
    """

    def __init__(self, *, score: Callable[[Mapping[str, Any]], Any], cost: Callable[[Mapping[str, Any]], float],
                 search_space: Mapping[str, BaseDistribution], budget: float | None = None,
                 hold: Mapping[str, Any] | None = None, seed: int | None = None) -> None:
        self._allocator = OneShotAllocator(score=score, cost=cost, search_space=search_space, hold=hold)
        self._space = dict(search_space)
        self._budget = budget
        self._random = RandomSampler(seed=seed)
        self._proposals: list[dict[str, Any]] = []

    @property
    def allocator(self) -> OneShotAllocator:
        return self._allocator

    def proposals(self, n: int) -> list[dict[str, Any]]:
        """The first ``n`` proposals (what n trials get; fewer when the sweep finds no more)."""
        if len(self._proposals) < n:
            a = self._allocator
            top = self._budget if self._budget is not None else a.cost_range()[1]
            seen = {_key(p) for p in self._proposals}
            for cond in a.condition_values():
                p = a.allocate(top, cond)
                if p is not None and _key(p) not in seen:
                    seen.add(_key(p))
                    self._proposals.append(p)
            per = max(1, -(-n // max(1, len(a.condition_values()))))
            for cond in a.condition_values():
                for p in a.sweep(per + 1, self._budget, cond, exclude=self._proposals):
                    if _key(p) not in seen:
                        seen.add(_key(p))
                        self._proposals.append(p)
        return self._proposals[:n]

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self._space)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        done = {_key({a: b for a, b in t.params.items() if a in self._space})
                for t in study.get_trials(deepcopy=False) if t.number != trial.number}
        for p in self.proposals(len(done) + 1):
            if _key(p) not in done:
                return p
        return {}  # the sweep is exhausted: random (sample_independent)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._random.before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: Any, values: Any) -> None:
        self._random.after_trial(study, trial, state, values)
