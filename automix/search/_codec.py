"""Genome encoding of an Optuna search space for :class:`AutoMixSampler`.

Every parameter becomes one gene. Discrete parameters (categoricals, ints and stepped floats
with few values) are stored as a *level index*; numeric categorical choices are sorted so their
levels are ordinal (bits 2 < 3 < 4 < 8 < 16) and mutation moves to neighbouring levels.
Continuous parameters are stored in [0, 1] after the distribution's (log) transform.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

_MAX_LEVELS = 64


class Columns(Mapping):
    """``Codec.columns``' result: parameter name -> values of many configurations, each
    column computed when first read (vectorised functions that look their tables up by level
    read few or none). It also says where the values come from: ``levels``, the genomes'
    level indices ``(n, genes)``, and ``level_info``, name -> (gene index, the gene's levels in
    order; one object per codec), so such a function can look up by level instead of by value
    (``automix.search.batch.choice_indices``). Immutable: a snapshot of the genomes."""

    def __init__(self, codec: "Codec", genomes: np.ndarray) -> None:
        self.levels = np.rint(genomes).astype(int)
        self.level_info = codec._level_info
        self._codec = codec
        self._decoded = {j: genomes[:, j].copy() for j in codec._decoded}  # continuous genes
        self._values: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        out = self._values.get(name)
        if out is None:
            j = self._codec._gene_index[name]
            g = self._codec.genes[j]
            if g.plain:
                out = g.values[self.levels[:, j]]
            else:
                out = np.array([g.decode(x) for x in self._decoded[j]])
            self._values[name] = out
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(self._codec.names)

    def __len__(self) -> int:
        return self._codec.dim


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

        # ordinal levels by value (fast path of encode: an exact level is the nearest)
        self._index: dict[float, int] = {}
        if self.levels is not None and self.ordinal:
            for k, v in enumerate(self.levels):
                self._index.setdefault(float(v), k)
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
            exact = self._index.get(float(value))
            if exact is not None:
                return float(exact)
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
        self._layout()

    def _layout(self) -> None:
        """Precomputed index arrays of the vectorised ``features`` and ``columns``."""
        # features: scaled genes (source gene, destination column, divisor) and one-hot blocks
        src, dst, scale, hot = [], [], [], []
        col = 0
        for j, g in enumerate(self.genes):
            if g.levels is not None and not g.ordinal:
                hot.append((j, col, g.n_levels))
                col += g.n_levels
            else:
                src.append(j)
                dst.append(col)
                scale.append(1.0 if g.levels is None else float(max(1, g.n_levels - 1)))
                col += 1
        self._n_features = col
        # the scaled genes as runs of consecutive genes to consecutive columns (slices)
        runs: list[list[int]] = []  # [first gene, first column, length]
        for j, c in zip(src, dst):
            if runs and runs[-1][0] + runs[-1][2] == j and runs[-1][1] + runs[-1][2] == c:
                runs[-1][2] += 1
            else:
                runs.append([j, c, 1])
        divisor = dict(zip(src, scale))
        self._runs = [(slice(j, j + k), slice(c, c + k), np.array([divisor[i] for i in range(j, j + k)]))
                      for j, c, k in runs]
        self._hot = hot
        self._gene_columns = {j: [c] for j, c in zip(src, dst)}
        self._gene_columns.update({j: list(range(c, c + n)) for j, c, n in hot})
        # numeric values of the ordinal genes (``values``): source genes and their level values
        self._numeric = np.array(self.ordinal_genes, dtype=int)
        width = max((self.genes[j].n_levels for j in self._numeric), default=0)
        self._numeric_table = np.zeros((len(self._numeric), width))  # row: a gene's level values
        for row, j in enumerate(self._numeric):
            self._numeric_table[row, : self.genes[j].n_levels] = self.genes[j].levels
        # columns: each gene's position; the genes whose values are not their levels (decoded)
        self._gene_index = {g.name: j for j, g in enumerate(self.genes)}
        self._decoded = [j for j, g in enumerate(self.genes) if not g.plain]
        self._level_info = {g.name: (j, list(g.levels)) for j, g in enumerate(self.genes) if g.plain}

    def encode(self, params: dict[str, Any]) -> np.ndarray:
        return np.array([g.encode(params[g.name]) for g in self.genes], dtype=float)

    def decode(self, genome: np.ndarray) -> dict[str, Any]:
        ints = np.rint(genome).astype(int).tolist()
        return {
            g.name: g.levels[i] if g.plain else g.decode(x)
            for g, x, i in zip(self.genes, genome.tolist(), ints)
        }

    def columns(self, genomes: np.ndarray) -> Columns:
        """Params of many genomes at once: parameter name -> array of values (the input of
        vectorised known functions, ``automix.search.batch``), with their level indices
        (:class:`Columns`)."""
        return Columns(self, genomes)

    def key(self, genome: np.ndarray) -> tuple:
        return tuple(np.round(genome, 9).tolist())

    def keys(self, genomes: np.ndarray) -> list[tuple]:
        """``key`` of every row of ``genomes``."""
        return [tuple(row) for row in np.round(genomes, 9).tolist()]

    def features(self, genomes: np.ndarray) -> np.ndarray:
        """Ordinal genes scaled to [0, 1]; non-ordinal categoricals one-hot."""
        genomes = np.asarray(genomes, dtype=float)
        out = np.zeros((len(genomes), self._n_features))
        for genes, columns, scale in self._runs:
            np.divide(genomes[:, genes], scale, out=out[:, columns])
        rows = np.arange(len(genomes))
        for j, start, n_levels in self._hot:
            level = genomes[:, j].astype(int)
            level = np.where(level < 0, level + n_levels, level)  # -1: the last level, as indexing
            if len(level) and (level.min() < 0 or level.max() >= n_levels):
                raise IndexError(f"gene {self.genes[j].name!r}: level out of range 0..{n_levels - 1}")
            out[rows, start + level] = 1.0
        return out

    def feature_columns(self, genes: Sequence[int]) -> list[int]:
        """The columns of ``features`` that the given genes fill, in gene order."""
        return [c for j in genes for c in self._gene_columns[int(j)]]

    def values(self, genomes: np.ndarray) -> np.ndarray:
        """The numeric value (not the level index) of every ordinal gene: e.g. bits 2, 3, 4, 8,
        16 rather than levels 0-4. Resource use (memory, latency) is usually linear in these
        values, where it is convex in the level index."""
        levels = np.asarray(genomes, dtype=float)[:, self._numeric].astype(int)
        return self._numeric_table[np.arange(len(self._numeric))[None, :], levels]

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
