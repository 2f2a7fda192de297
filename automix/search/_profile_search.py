"""Where :class:`~automix.search.sampler.AutoMixSampler` starts and how it goes on from a profile.

With a sensitivity profile (the sampler's engineered features, whose last entry is the predicted
damage) and a memory function it can tabulate (a known constraint ``memory - budget``, or a
known memory objective), the search is built on the one-shot allocation instead of a
space-filling design:

* **start**: the one-shot allocation at the budget (``automix.search.oneshot``), one per method;
  the same with the profile trusted only between the two bit widths around the budget (where a
  profile extrapolates least); then, for each family of parameters the profile cannot score (prune ratios, ranks), the
  allocation with that family moved off its held level and the budget re-filled -- the trade a
  user would try by hand ("rank 4 everywhere, and spend what it saves on bits"); for a front
  (memory an objective), allocations at budgets down the cost axis. A user has the one-shot
  answer after the first trial, and every later trial can only add to it.
* **then**: :class:`~automix.search._residual.ResidualModel` learns from the trials how the
  loss departs from the profile, and each proposal is the exact optimum under the budget of its
  posterior mean (exploitation) or of a draw from its posterior (Thompson sampling), never a
  configuration tried before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from automix.search._residual import ResidualModel, family_of
from automix.search.batch import Shifted
from automix.search.oneshot import OneShotAllocator, van_der_corput

__all__ = ["ProfileSearch"]


class ProfileSearch:
    """The one-shot start and the residual model's proposals (module docstring).

    Build with :meth:`build`, which returns None when the sampler's functions do not allow it
    (no profile, no tabulable memory, or nothing to allocate)."""

    def __init__(self, allocator: OneShotAllocator, budget: float | None, seed: int | None) -> None:
        self.allocator = allocator
        self.budget = budget
        self.model = ResidualModel(allocator)
        self._rng = np.random.default_rng(None if seed is None else seed + 7)

    @classmethod
    def build(cls, space: Mapping[str, Any], features: Callable | None,
              known_objectives: Mapping[int, Callable], known_constraints: Sequence[Callable],
              hold: Mapping[str, Any] | None, seed: int | None) -> "ProfileSearch | None":
        if features is None:
            return None
        cost, budget = None, None
        for c in known_constraints:
            if isinstance(c, Shifted):
                cost, budget = c.fn, c.offset
                break
        if cost is None:
            if len(known_objectives) != 1:
                return None
            cost = next(iter(known_objectives.values()))
        try:
            allocator = OneShotAllocator(score=features, cost=cost, search_space=space, hold=hold)
        except ValueError:
            return None
        if not allocator.scored.any():
            return None
        return cls(allocator, budget, seed)

    # ----------------------------------------------------------------- the start
    def startup(self, n_front: int = 0) -> list[dict[str, Any]]:
        """The start-up configurations, in order (module docstring). ``n_front``: allocations
        down the cost axis too (memory an objective); without a budget, they come first and
        are the one-shot sampler's own sweep (``OneShotAllocator.sweep``), so the start covers
        the front at least as well as the one-shot does."""
        a = self.allocator
        conds = a.condition_values()
        first = conds[0] if conds else ()
        out: list[dict[str, Any]] = []
        if self.budget is None and n_front:
            out += a.sweep(n_front)
        top = self.budget if self.budget is not None else a.cost_range()[1]
        for cond in conds:
            p = a.allocate(top, cond)
            if p is not None:
                out.append(p)
        if self.budget is not None:  # the profile trusted only between the two values around the budget
            p = a.allocate(top, first, exclude=out, bracketed=True)
            if p is not None:
                out.append(p)
        for _, moved in self._family_moves():
            p = a.solve(top, first, hold=moved, exclude=out)
            if p is not None:
                out.append(p)
        if self.budget is not None and n_front:
            out += a.sweep(n_front + 1, top, first, exclude=out)[1:]
        return _distinct(out)

    def _family_moves(self) -> list[tuple[str, dict[int, int]]]:
        """Per family of held parameters: the hold with the whole family one level down (or
        up, where it is at its lowest level)."""
        a = self.allocator
        fams: dict[str, list[int]] = {}
        for j in a.hold:
            if a.n_levels[j] > 1:
                fams.setdefault(family_of(a.names[j]), []).append(j)
        out = []
        for fam, js in fams.items():
            moved = dict(a.hold)
            for j in js:
                level = a.hold[j]
                moved[j] = level - 1 if level > 0 else level + 1
            out.append((fam, moved))
        return out

    # ----------------------------------------------------------------- guided proposals
    def fit(self, params: Sequence[Mapping[str, Any]], losses: Sequence[float]) -> bool:
        return self.model.fit(params, losses)

    def turn(self, params: Sequence[Mapping[str, Any]], losses: Sequence[float], taken: Sequence[Mapping[str, Any]],
             n_asked: int, n_guided: int, memory_objective: bool) -> dict[str, Any] | None:
        """The proposal of the guided phase's ``n_guided``-th turn (``n_asked`` trials asked so
        far, ``params`` / ``losses`` the finished ones), in turns of three: the exact optimum
        within the budget of the model's posterior mean, then of a posterior draw (Thompson
        sampling), then -- when memory is also an objective -- the mean's optimum at a budget
        down the cost axis (the front below the budget), else None: the learned predictors'
        turn (EHVI and their exploitation steps). Without a budget (a front), every turn's
        budget is spread along the cost axis. None also when the model cannot be fitted yet."""
        turn = n_guided % 3
        front_turn = turn == 2 and memory_objective and self.budget is not None
        if turn == 2 and not front_turn:
            return None
        if not self.fit(params, losses):
            return None
        budget = None
        if self.budget is None or front_turn:  # budgets spread along the cost axis, turn by turn
            lo, hi = self.allocator.cost_range()
            hi = min(hi, self.budget) if self.budget is not None else hi
            budget = lo + (1.0 - van_der_corput(n_asked if self.budget is None else n_asked // 3 + 1)) * (hi - lo)
        return self.propose(taken, draw=turn == 1, budget=budget)

    def propose(self, taken: Sequence[Mapping[str, Any]], draw: bool, budget: float | None = None
                ) -> dict[str, Any] | None:
        """The allocation that minimises the model (its posterior mean, or a posterior draw)
        within the budget (``budget``, else the search's, else the top of the cost range), over
        every condition; never one of ``taken``. None when the model is not fitted or nothing
        new fits."""
        if not self.model.fitted:
            return None
        a = self.allocator
        top = budget if budget is not None else self.budget if self.budget is not None else a.cost_range()[1]
        theta = self.model.draw(self._rng) if draw else None
        best, best_value = None, np.inf
        for cond in a.condition_values():
            tables = self.model.tables(cond, theta)
            hold = {j: lvl for j, lvl in a.hold.items() if a.n_levels[j] <= 1}
            # a second or so per method: the optimum, or (when it was tried already and the
            # no-good cuts make the program hard) the best configuration found in that time
            p = a.solve(top, cond, objective=tables, hold=hold, exclude=taken, time_limit=1.0)
            if p is None:
                continue
            x, _ = a.levels(p)
            v = float(tables(x[None])[0])
            if v < best_value:
                best, best_value = p, v
        return best

    def predicted(self, params: Mapping[str, Any]) -> float:
        """The model's posterior mean loss of a configuration, on the losses' own scale."""
        mean, _ = self.model.predict([params])
        return float(np.exp(mean[0]) if self.model.log else mean[0])


def _distinct(configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen, out = set(), []
    for p in configs:
        k = tuple(sorted((a, str(b)) for a, b in p.items()))
        if k not in seen:
            seen.add(k)
            out.append(p)
    return out
