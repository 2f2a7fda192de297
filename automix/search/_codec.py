"""Genome encoding of an Optuna search space for :class:`AutoMixSampler`.

Every parameter becomes one gene. Discrete parameters (categoricals, ints and stepped floats
with few values) are stored as a *level index*; numeric categorical choices are sorted so their
levels are ordinal (bits 2 < 3 < 4 < 8 < 16) and mutation moves to neighbouring levels.
Continuous parameters are stored in [0, 1] after the distribution's (log) transform.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

_MAX_LEVELS = 64


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


class _Gene:
    def __init__(self, name: str, dist: BaseDistribution) -> None:
        self.name, self.dist = name, dist
        self.levels: list[Any] | None = None  # discrete values in gene order
        self.ordinal = True
        self.log = False
        if isinstance(dist, CategoricalDistribution):
            choices = list(dist.choices)
            if all(_is_number(c) for c in choices):
                self.levels = sorted(choices, key=float)
            else:
                self.levels, self.ordinal = choices, False
        elif isinstance(dist, IntDistribution):
            n = (dist.high - dist.low) // dist.step + 1
            self.log = dist.log
            if n <= _MAX_LEVELS and not dist.log:
                self.levels = list(range(dist.low, dist.high + 1, dist.step))
        elif isinstance(dist, FloatDistribution):
            self.log = dist.log
            if dist.step is not None:
                n = int(round((dist.high - dist.low) / dist.step)) + 1
                if n <= _MAX_LEVELS:
                    self.levels = [dist.low + k * dist.step for k in range(n)]
        else:  # pragma: no cover - optuna has no other distribution types
            raise ValueError(f"parameter {name!r}: unsupported distribution {dist!r}")

        # levels that decode to themselves (fast path of Codec.decode)
        self.plain = self.levels is not None and not isinstance(dist, IntDistribution)
        if isinstance(dist, IntDistribution) and self.levels is not None:
            self.levels = [int(v) for v in self.levels]
            self.plain = True
        # the levels as an array (Codec.columns); mixed-type choices stay Python objects
        self.values = None
        if self.levels is not None:
            self.values = np.empty(len(self.levels), dtype=object)
            self.values[:] = self.levels
            if all(_is_number(v) for v in self.levels) or all(isinstance(v, str) for v in self.levels):
                self.values = np.asarray(self.levels)

    @property
    def n_levels(self) -> int:
        return len(self.levels) if self.levels is not None else 0

    def _bounds(self) -> tuple[float, float]:
        lo, hi = float(self.dist.low), float(self.dist.high)
        return (math.log(lo), math.log(hi)) if self.log else (lo, hi)

    def encode(self, value: Any) -> float:
        if self.levels is not None:
            if not self.ordinal:
                return float(self.levels.index(value))
            diffs = [abs(float(v) - float(value)) for v in self.levels]
            return float(int(np.argmin(diffs)))
        lo, hi = self._bounds()
        v = math.log(value) if self.log else float(value)
        return 0.0 if hi == lo else min(1.0, max(0.0, (v - lo) / (hi - lo)))

    def decode(self, gene: float) -> Any:
        if self.levels is not None:
            value = self.levels[int(round(gene))]
            if isinstance(self.dist, IntDistribution):
                return int(value)
            return value
        lo, hi = self._bounds()
        v = lo + float(gene) * (hi - lo)
        if self.log:
            v = math.exp(v)
        if isinstance(self.dist, IntDistribution):
            step = self.dist.step
            v = self.dist.low + step * round((v - self.dist.low) / step)
            return int(min(self.dist.high, max(self.dist.low, v)))
        return float(min(self.dist.high, max(self.dist.low, v)))

    def from_unit(self, u: np.ndarray) -> np.ndarray:
        """Map u in [0, 1) to genes (levels get equal-width strata)."""
        if self.levels is not None:
            return np.minimum(np.floor(u * self.n_levels), self.n_levels - 1)
        return u

    def at_fraction(self, frac: float) -> float:
        """The gene at relative position `frac` of the ordered range (uniform configurations)."""
        if self.levels is not None:
            if not self.ordinal:
                return float(int(round(frac * (self.n_levels - 1))) % self.n_levels)
            return float(int(round(frac * (self.n_levels - 1))))
        return float(frac)


class Codec:
    """Maps params <-> genomes <-> predictor features for one search space."""

    def __init__(self, search_space: dict[str, BaseDistribution]) -> None:
        self.names = sorted(search_space)
        self.genes = [_Gene(n, search_space[n]) for n in self.names]
        self.dim = len(self.genes)
        # indices of the discrete genes: ordered levels (walked up/down) and unordered categories
        self.ordinal_genes = [j for j, g in enumerate(self.genes) if g.levels is not None and g.ordinal]
        self.categorical_genes = [j for j, g in enumerate(self.genes) if g.levels is not None and not g.ordinal]

    def encode(self, params: dict[str, Any]) -> np.ndarray:
        return np.array([g.encode(params[g.name]) for g in self.genes], dtype=float)

    def decode(self, genome: np.ndarray) -> dict[str, Any]:
        ints = np.rint(genome).astype(int).tolist()
        return {
            g.name: g.levels[i] if g.plain else g.decode(x)
            for g, x, i in zip(self.genes, genome.tolist(), ints)
        }

    def columns(self, genomes: np.ndarray) -> dict[str, np.ndarray]:
        """Params of many genomes at once: parameter name -> array of values (the input of
        vectorised known functions, ``automix.search.batch``)."""
        out = {}
        idx = np.rint(genomes).astype(int)
        for j, g in enumerate(self.genes):
            if g.plain:
                out[g.name] = g.values[idx[:, j]]
            else:
                out[g.name] = np.array([g.decode(x) for x in genomes[:, j]])
        return out

    def key(self, genome: np.ndarray) -> tuple:
        return tuple(np.round(genome, 9).tolist())

    def features(self, genomes: np.ndarray) -> np.ndarray:
        """Ordinal genes scaled to [0, 1]; non-ordinal categoricals one-hot."""
        cols = []
        for j, g in enumerate(self.genes):
            x = genomes[:, j]
            if g.levels is None:
                cols.append(x[:, None])
            elif g.ordinal:
                cols.append((x / max(1, g.n_levels - 1))[:, None])
            else:
                cols.append(np.eye(g.n_levels)[x.astype(int)])
        return np.concatenate(cols, axis=1) if cols else np.zeros((len(genomes), 0))

    def from_unit(self, u: np.ndarray) -> np.ndarray:
        return np.stack([g.from_unit(u[:, j]) for j, g in enumerate(self.genes)], axis=1)

    def uniform(self, frac: float) -> np.ndarray:
        return np.array([g.at_fraction(frac) for g in self.genes], dtype=float)

    def max_levels(self) -> int:
        return max((g.n_levels for g in self.genes), default=0)

    def mutate(self, genomes: np.ndarray, rng: np.random.Generator, rate: float) -> np.ndarray:
        """Per-gene mutation: ordinal genes mostly step to a neighbouring level."""
        out = genomes.copy()
        n = len(out)
        hit = rng.random((n, self.dim)) < rate
        # guarantee at least one change per genome
        hit[np.arange(n), rng.integers(0, max(1, self.dim), n)] = True
        for j, g in enumerate(self.genes):
            rows = np.flatnonzero(hit[:, j])
            if not len(rows):
                continue
            if g.levels is None:
                out[rows, j] = np.clip(out[rows, j] + rng.normal(0, 0.15, len(rows)), 0, 1)
            elif g.ordinal and g.n_levels > 2:
                step = rng.choice([-2, -1, 1, 2], size=len(rows), p=[0.15, 0.35, 0.35, 0.15])
                jump = rng.random(len(rows)) < 0.15
                new = np.where(jump, rng.integers(0, g.n_levels, len(rows)), out[rows, j] + step)
                out[rows, j] = np.clip(new, 0, g.n_levels - 1)
            else:
                out[rows, j] = rng.integers(0, g.n_levels, len(rows))
        return out

    def crossover(self, a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Uniform crossover of paired parents (rows of a and b)."""
        mask = rng.random(a.shape) < 0.5
        return np.where(mask, a, b)
