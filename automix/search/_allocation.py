"""Exact allocation: the configuration that minimises an additive score under additive budgets.

Both sides are *tables* (:class:`Additive`): a function of a configuration's level indices
written as ``v0 + sum_j first_j[x_j] + sum_(i,j) second_ij[x_i, x_j]``, per component. A cost may
carry, after its sum component, the terms of a maximum (gradient checkpointing: the training
peak holds the largest block recomputation, ``s(x) + max_b m_b(x)``; see
``automix.search.batch``). :func:`solve` writes the problem as a mixed-integer linear program
and solves it exactly with HiGHS (``scipy.optimize.milp``):

* one binary ``z[j, l]`` per parameter and level, ``sum_l z[j, l] = 1``;
* a pairwise table becomes a continuous ``y[i, j, a, b] >= 0`` whose row and column sums are
  ``z[i, a]`` and ``z[j, b]`` (with one-hot ``z`` that forces ``y`` to their product, so
  pairwise terms cost no extra integers);
* a maximum becomes a continuous ``M`` with ``m_b(x) <= M`` for every term and
  ``s(x) + M <= budget``;
* parameters held at a level are folded into the tables first; configurations already tried are
  excluded by no-good cuts (``sum_j z[j, x_j] <= P - 1``).

This is the integer program NVIDIA ModelOpt's ``auto_quantize`` solves (there with PuLP/CBC, per
layer and format, an effective-bits bound) and the knapsack Intel AutoRound's AutoScheme solves
by dynamic programming; written over tables, the same program takes the memory model's exact
maximum over blocks and its pairwise terms (a layer's packed size depends on its block's prune
ratio), which a sum-only knapsack cannot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

__all__ = ["Additive", "solve"]

_STDOUT_LOCK = threading.Lock()


@contextlib.contextmanager
def _quiet_native_stdout() -> Iterator[None]:
    """HiGHS (C++) writes a debug line straight to the process's standard output when it repairs
    an integer solution after presolve; keep it out of the user's terminal. Python's own output
    is flushed first; without a real file descriptor (captured output) nothing is redirected."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    with _STDOUT_LOCK:
        sys.stdout.flush()
        saved = os.dup(fd)
        try:
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), fd)
                try:
                    yield
                finally:
                    os.dup2(saved, fd)
        finally:
            os.close(saved)


@dataclasses.dataclass
class Additive:
    """``v0 + sum_j first[j][x_j] + sum_(i,j) second[(i, j)][x_i, x_j]`` per component.

    ``v0``: (C,); ``first[j]``: (L_j, C); ``second[(i, j)]``: (L_i, L_j, C), i < j. With
    ``has_max`` the function is ``component 0 + max(components 1..)`` (0 when there are none)."""

    v0: np.ndarray
    first: list[np.ndarray]
    second: dict[tuple[int, int], np.ndarray] = dataclasses.field(default_factory=dict)
    has_max: bool = False

    @property
    def n_components(self) -> int:
        return len(self.v0)

    def components(self, X: np.ndarray) -> np.ndarray:
        """(n, C) component values of level matrices X (n, P)."""
        X = np.atleast_2d(X)
        out = np.repeat(np.asarray(self.v0, float)[None], len(X), axis=0)
        for j, t in enumerate(self.first):
            out += t[X[:, j]]
        for (i, j), t in self.second.items():
            out += t[X[:, i], X[:, j]]
        return out

    def __call__(self, X: np.ndarray) -> np.ndarray:
        """(n,) function values (with the maximum over components 1.. when ``has_max``)."""
        c = self.components(X)
        if self.has_max and c.shape[1] > 1:
            return c[:, 0] + c[:, 1:].max(axis=1)
        return c[:, 0]

    def held(self, hold: Mapping[int, int]) -> "Additive":
        """The same function with parameters ``hold`` (index -> level) fixed: their tables
        folded into the constant and into the first-order tables of their partners."""
        if not hold:
            return self
        v0 = np.asarray(self.v0, float).copy()
        first = [t.copy() for t in self.first]
        for j, level in hold.items():
            v0 += first[j][level]
            first[j] = np.zeros_like(first[j])
        second = {}
        for (i, j), t in self.second.items():
            if i in hold and j in hold:
                v0 += t[hold[i], hold[j]]
            elif i in hold:
                first[j] += t[hold[i]]
            elif j in hold:
                first[i] += t[:, hold[j]]
            else:
                second[(i, j)] = t
        return Additive(v0, first, second, self.has_max)


def solve(n_levels: Sequence[int], objective: Additive, costs: Sequence[tuple[Additive, float]] = (),
          hold: Mapping[int, int] | None = None, exclude: Sequence[np.ndarray] = (),
          time_limit: float = 20.0, allowed: Mapping[int, Sequence[int]] | None = None) -> np.ndarray | None:
    """The level vector minimising ``objective`` (its component 0) with every ``cost <= bound``;
    None when no configuration satisfies them (or HiGHS found none within ``time_limit`` s).

    ``hold``: parameter index -> level, kept fixed. ``exclude``: level vectors not to return.
    ``allowed``: parameter index -> the only levels it may take.
    Past ``time_limit`` seconds, the best configuration HiGHS has found (exact before that)."""
    hold = dict(hold or {})
    P = len(n_levels)
    objective = objective.held(hold)
    costs = [(c.held(hold), float(b)) for c, b in costs]
    free = [j for j in range(P) if j not in hold]
    # variable layout: z for the free parameters' levels, then pair variables, then maxima
    z_at = {}
    n = 0
    for j in free:
        z_at[j] = n
        n += int(n_levels[j])
    pairs = sorted({p for fn in [objective, *[c for c, _ in costs]] for p, t in fn.second.items() if np.any(t)})
    y_at = {}
    for i, j in pairs:
        y_at[(i, j)] = n
        n += int(n_levels[i]) * int(n_levels[j])
    m_at = {}
    for k, (c, _) in enumerate(costs):
        if c.has_max and c.n_components > 1:
            m_at[k] = n
            n += 1

    rows, cols, vals, lo, hi = [], [], [], [], []

    def add_row(entries: list[tuple[int, float]], lower: float, upper: float) -> None:
        r = len(lo)
        for col, v in entries:
            rows.append(r)
            cols.append(col)
            vals.append(v)
        lo.append(lower)
        hi.append(upper)

    for j in free:
        add_row([(z_at[j] + level, 1.0) for level in range(n_levels[j])], 1.0, 1.0)
    for i, j in pairs:
        Li, Lj, base = int(n_levels[i]), int(n_levels[j]), y_at[(i, j)]
        for a in range(Li):
            add_row([(base + a * Lj + b, 1.0) for b in range(Lj)] + [(z_at[i] + a, -1.0)], 0.0, 0.0)
        for b in range(Lj):
            add_row([(base + a * Lj + b, 1.0) for a in range(Li)] + [(z_at[j] + b, -1.0)], 0.0, 0.0)

    def linear(fn: Additive, comp: int, scale: float) -> tuple[list[tuple[int, float]], float]:
        """Coefficients of one component over the variables, and its constant."""
        entries = []
        for j in free:
            t = fn.first[j][:, comp]
            entries += [(z_at[j] + level, float(v) * scale) for level, v in enumerate(t) if v != 0]
        for (i, j), t in fn.second.items():
            if (i, j) in y_at:
                Lj = int(n_levels[j])
                tc = t[:, :, comp]
                entries += [(y_at[(i, j)] + a * Lj + b, float(tc[a, b]) * scale)
                            for a, b in zip(*np.nonzero(tc))]
        return entries, float(fn.v0[comp]) * scale

    for k, (c, bound) in enumerate(costs):
        scale = 1.0 / max(abs(bound), 1.0)
        entries, const = linear(c, 0, scale)
        if k in m_at:
            add_row(entries + [(m_at[k], 1.0)], -np.inf, bound * scale - const)
            for comp in range(1, c.n_components):
                e, cst = linear(c, comp, scale)
                add_row(e + [(m_at[k], -1.0)], -np.inf, -cst)
        else:
            add_row(entries, -np.inf, bound * scale - const)
    for x in exclude:
        x = np.asarray(x, dtype=int)
        if all(x[j] == level for j, level in hold.items()):
            add_row([(z_at[j] + int(x[j]), 1.0) for j in free], -np.inf, len(free) - 1.0)

    c = np.zeros(n)
    obj_entries, _ = linear(objective, 0, 1.0)
    for col, v in obj_entries:
        c[col] += v
    top = np.max(np.abs(c)) if n else 0.0
    if top > 0:
        c /= top
    integrality = np.zeros(n)
    integrality[:sum(int(n_levels[j]) for j in free)] = 1
    lb, ub = np.zeros(n), np.ones(n)
    for k in m_at.values():
        lb[k], ub[k] = -np.inf, np.inf
    for j, levels in (allowed or {}).items():
        if j in z_at:
            ub[z_at[j]:z_at[j] + int(n_levels[j])] = 0.0
            ub[[z_at[j] + int(level) for level in levels]] = 1.0
    if not n:
        x = np.array([hold.get(j, 0) for j in range(P)])
        ok = all(float(cf(x[None])[0]) <= b + 1e-9 * max(abs(b), 1.0) for cf, b in costs)
        return x if ok else None
    A = coo_matrix((vals, (rows, cols)), shape=(len(lo), n)).tocsr()
    with _quiet_native_stdout():
        res = milp(c, integrality=integrality, bounds=Bounds(lb, ub),
                   constraints=LinearConstraint(A, np.array(lo), np.array(hi)),
                   options={"time_limit": float(time_limit), "mip_rel_gap": 1e-9, "presolve": True})
    if res.x is None:
        return None
    x = np.empty(P, dtype=int)
    for j in range(P):
        x[j] = hold[j] if j in hold else int(np.argmax(res.x[z_at[j]:z_at[j] + int(n_levels[j])]))
    return x
