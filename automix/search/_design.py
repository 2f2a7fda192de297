"""The start-up design of :class:`AutoMixSampler` and its feasible random points.

Without a one-shot start (no profile, or a memory the sampler cannot tabulate) the first trials
are a space-filling design: given configurations first (``startup_configs``), then uniform
configurations (every parameter at the same relative level), then a Latin hypercube repaired
into the known constraints; under a budget that binds, half of the hypercube's share goes to
random fills of the budget boundary (``automix.search._exploit.boundary_fills``), spread by
greedy max-min distance. With a one-shot start, the design is its configurations
(:meth:`Design.fixed`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import qmc

from automix.search._candidates import UNIFORM_FRACTIONS
from automix.search._codec import Codec
from automix.search._exploit import boundary_fills

__all__ = ["Design"]

# evaluate(G, features=True) -> (features, known objectives, known-constraint feasibility, constraint values)
Evaluate = Callable[..., tuple[Any, np.ndarray, np.ndarray, np.ndarray]]


class Design:
    """Start-up points and feasible random points over one codec.

    Args:
        codec: the genome encoding.
        evaluate: the sampler's evaluation of its known functions for genomes.
        rng: the sampler's random generator (shared: the same seed gives the same proposals).

    ``points`` holds the design once built (None before).
    """

    def __init__(self, codec: Codec, evaluate: Evaluate, rng: np.random.Generator) -> None:
        self.codec, self.evaluate, self.rng = codec, evaluate, rng
        self.points: list[np.ndarray] | None = None

    def feasible(self, genome: np.ndarray) -> bool:
        return bool(self.evaluate(genome[None])[2][0])

    def fixed(self, configs: Sequence[Mapping[str, Any]]) -> list[np.ndarray]:
        """The feasible, distinct configurations of ``configs``, in order."""
        design: list[np.ndarray] = []
        seen: set[tuple] = set()
        self._add_configs(configs, design, seen)
        return design

    def _add_configs(self, configs: Sequence[Mapping[str, Any]], design: list, seen: set) -> None:
        codec = self.codec
        for params in configs:
            if set(codec.names) <= params.keys():
                g = codec.encode(params)
                if codec.key(g) not in seen and self.feasible(g):
                    design.append(g)
                    seen.add(codec.key(g))

    def space_filling(self, configs: Sequence[Mapping[str, Any]], n_uniform: int, size: int,
                      budget: bool) -> list[np.ndarray]:
        """``configs``, ``n_uniform`` uniform configurations and a repaired Latin hypercube, up
        to ``size`` points (module docstring); ``budget``: known constraints exist."""
        codec = self.codec
        design: list[np.ndarray] = []
        seen: set[tuple] = set()
        self._add_configs(configs, design, seen)
        for frac in UNIFORM_FRACTIONS[:n_uniform]:
            g = codec.uniform(frac)
            if codec.key(g) not in seen and self.feasible(g):
                design.append(g)
                seen.add(codec.key(g))
        n_lhs = max(0, size - len(design))
        if n_lhs and codec.dim:
            seed = int(self.rng.integers(2**31))
            pool = codec.from_unit(qmc.LatinHypercube(d=codec.dim, seed=seed).random(8 * n_lhs))
            pool = self.repair(pool)
            anchor = self.anchor() if budget else None
            if anchor is not None and not self.feasible(codec.uniform(1.0)):
                # a budget that binds: half the points spread the budget over random subsets
                def evaluate(g: np.ndarray) -> tuple[bool, float]:
                    _, _, ok, cons = self.evaluate(g[None])
                    return bool(ok[0]), float(cons[0].sum())

                fills = boundary_fills(codec, anchor, evaluate, 4 * n_lhs, self.rng)
                self._spread(fills, design, seen, len(design) + n_lhs // 2)
            self._spread(pool, design, seen, size)
        return design

    def anchor(self) -> np.ndarray | None:
        """A feasible uniform configuration (the cheapest first) to repair others towards."""
        for frac in UNIFORM_FRACTIONS:
            g = self.codec.uniform(frac)
            if self.feasible(g):
                return g
        return None

    def repair(self, pool: np.ndarray) -> np.ndarray:
        """Make infeasible rows feasible by copying a random subset of genes from the anchor:
        the smallest such subset found by bisection (random configurations under a tight
        memory budget are mostly infeasible; repaired ones sit near the budget)."""
        codec = self.codec
        ok = self.evaluate(pool)[2]
        if ok.all():
            return pool
        anchor = self.anchor()
        if anchor is None:
            return pool[ok]
        out = [g for g in pool[ok]]
        for g in pool[~ok]:
            order = self.rng.permutation(codec.dim)
            lo, hi = 0, codec.dim  # replacing all `hi` genes gives the (feasible) anchor
            while lo < hi:
                mid = (lo + hi) // 2
                trial = g.copy()
                trial[order[:mid]] = anchor[order[:mid]]
                if self.feasible(trial):
                    hi = mid
                else:
                    lo = mid + 1
            fixed = g.copy()
            fixed[order[:hi]] = anchor[order[:hi]]
            if self.feasible(fixed):
                out.append(fixed)
        return np.array(out).reshape(-1, codec.dim)

    def _spread(self, pool: np.ndarray, design: list, seen: set, size: int) -> None:
        """Add points of `pool` to `design` (up to `size`) by greedy max-min distance."""
        codec = self.codec
        feats = codec.features(pool)
        used = np.zeros(len(pool), dtype=bool)
        while len(design) < size and not used.all():
            if design:
                ref = codec.features(np.array(design))
                d = np.min(((feats[:, None, :] - ref[None]) ** 2).sum(-1), axis=1)
            else:
                d = self.rng.random(len(pool))
            d[used] = -np.inf
            i = int(np.argmax(d))
            used[i] = True
            if codec.key(pool[i]) not in seen:
                design.append(pool[i])
                seen.add(codec.key(pool[i]))

    def random_feasible(self, taken: set[tuple]) -> np.ndarray:
        """A random configuration that satisfies the known constraints and is not ``taken``
        (else, with a warning, the least violating of 256 random ones)."""
        codec = self.codec
        pool = np.empty((0, codec.dim))
        for _ in range(20):
            pool = self.repair(codec.from_unit(self.rng.random((64, codec.dim))))
            for g in pool:
                if codec.key(g) not in taken:
                    return g
        # nothing new and feasible: the least violating configuration, with a warning
        warnings.warn("AutoMixSampler: no new configuration satisfies known_constraints")
        pool = codec.from_unit(self.rng.random((256, codec.dim)))
        violation = np.clip(self.evaluate(pool)[3], 0, None).sum(axis=1)
        return pool[int(np.argmin(violation))]
