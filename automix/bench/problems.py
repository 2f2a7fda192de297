"""Generated mixed-precision problems for benchmarking and testing the search on many
structures, not one (`automix bench search`; tests of the samplers).

**The problem family.**

A real study costs GPU-hours per trial, so samplers are compared on cheap stand-ins with the
structure of measured quantization studies. A :class:`ProblemCase` names the structure and a
seed draws one instance (:class:`SyntheticProblem`):

* linears: ``n_blocks`` Llama-7B-shaped decoder blocks of 7 linears (6 blocks = 42 linears,
  32 blocks = 224); one bits choice per linear, optionally a prune ratio per linear or per
  block and a LoRA rank per block;
* sensitivity spread: ``flat`` (all layers alike), ``lognormal`` (log-normal, higher in the
  first/last blocks and for ``down_proj``/``v_proj``, a few *fragile* layers an order of
  magnitude above the rest) or ``dominant`` (a handful of layers hold most of the damage);
* the damage of quantizing a layer to b bits falls like 4^(-a (b - 2)) (uniform quantization
  error) with a per-layer exponent a; pruning ratio r costs about r^1.5 (0.3 ~ 3 bits), and
  compounds with quantization of the same layer; a larger rank recovers part of its block's
  damage;
* interactions: ``none`` (separable), ``block`` (partners inside a block, q/k, gate/up, v/o:
  quantizing both hurts more than the sum) or ``cross`` (those plus the same kind in adjacent
  blocks and random distant pairs);
* accuracy saturates: chance + (top - chance) * exp(-ln2 * damage / damage(all 3-bit)), so
  all-3-bit sits half-way between chance and full precision; observed accuracy has noise;
* memory (bytes -> GB): parameters x (1 - prune) x (bits + fp16 scale/zero per 64-group) / 8,
  LoRA adapters with their gradients and AdamW states, embeddings and head. A case says
  whether the sampler is told this function (``known``, as the analytic memory model is) or
  must learn it from the trials (``learned``);
* a sensitivity profile for the sampler's features: ``exact`` (the true per-layer, per-bits
  damage), ``rough`` (the true sensitivity times log-normal(0, 0.7) error, with the textbook
  exponent) or ``none`` (4^-(bits-2) alone, what a study with ``sensitivity: off`` gets).

Each problem computes a *reference front* on the noiseless function (greedy marginal-gain paths
plus a long NSGA-II run) against which hypervolumes are normalised, and the best feasible
accuracy under its budget (the front's best point within the budget, improved by a long
swap-move local search).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from optuna.distributions import CategoricalDistribution

from automix.search.pareto import (crowding_distance, nondominated_mask, nondominated_rank,
                                   normalized_hypervolume)

__all__ = ["KINDS", "ProblemCase", "SUITE", "SyntheticProblem"]

KINDS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
_KIND_SENS = {"q_proj": 0.7, "k_proj": 0.7, "v_proj": 1.6, "o_proj": 1.0,
              "gate_proj": 0.9, "up_proj": 0.9, "down_proj": 1.8}
_PAIRS = (("q_proj", "k_proj"), ("gate_proj", "up_proj"), ("v_proj", "o_proj"))
_D, _FFN = 4096, 11008


@dataclasses.dataclass(frozen=True)
class ProblemCase:
    """The structure of one generated problem (a seed draws an instance of it).

    Args:
        name: the case's name in the suite.
        n_blocks: decoder blocks of 7 linears each.
        bits: bits choices per linear (16 = unquantized).
        prune: prune-ratio choices (() = no pruning); per linear or per block (``prune_per``).
        rank: LoRA rank choices per block (() = a fixed rank, not searched).
        spread: sensitivity spread, ``flat`` | ``lognormal`` | ``dominant``.
        interaction: ``none`` | ``block`` | ``cross``.
        noise: standard deviation of observed accuracy, in points.
        memory: ``known`` (the sampler gets the memory function) or ``learned``.
        profile: the sampler's sensitivity features, ``exact`` | ``rough`` | ``none``.
        budget: where the memory budget sits between the all-3-bit (0) and all-4-bit (1)
            configurations (no pruning, the smallest rank); negative values go below all-3-bit.
    """

    name: str = "default"
    n_blocks: int = 8
    bits: tuple[int, ...] = (2, 3, 4, 8, 16)
    prune: tuple[float, ...] = ()
    prune_per: str = "linear"
    rank: tuple[int, ...] = ()
    spread: str = "lognormal"
    interaction: str = "block"
    noise: float = 0.3
    memory: str = "known"
    profile: str = "rough"
    budget: float = 0.5

    def __post_init__(self) -> None:
        for field, allowed in (("spread", ("flat", "lognormal", "dominant")),
                               ("interaction", ("none", "block", "cross")),
                               ("memory", ("known", "learned")),
                               ("profile", ("exact", "rough", "none")),
                               ("prune_per", ("linear", "block"))):
            if getattr(self, field) not in allowed:
                raise ValueError(f"ProblemCase.{field}: {getattr(self, field)!r} is not one of {allowed}")
        if self.n_blocks < 1 or len(self.bits) < 2:
            raise ValueError("ProblemCase needs n_blocks >= 1 and at least two bits choices")

    @property
    def n_linears(self) -> int:
        return 7 * self.n_blocks


# The benchmark suite: structurally different cases (names say what differs). Not one of them is
# the problem the sampler has to do well on; the suite's median and worst case are what count.
SUITE: tuple[ProblemCase, ...] = (
    ProblemCase("flat-separable-56", n_blocks=8, spread="flat", interaction="none", noise=0.2,
                profile="none", budget=0.5),
    ProblemCase("lognormal-block-56", n_blocks=8, spread="lognormal", interaction="block",
                noise=0.3, profile="rough", budget=-0.5),
    ProblemCase("dominant-cross-84", n_blocks=12, spread="dominant", interaction="cross",
                noise=0.5, profile="rough", budget=0.5),
    ProblemCase("lognormal-prune-learned-42", n_blocks=6, prune=(0.0, 0.1, 0.2, 0.3),
                spread="lognormal", interaction="block", noise=0.3, memory="learned",
                profile="none", budget=0.3),
    ProblemCase("flat-prune-block-rank-42", n_blocks=6, bits=(2, 3, 4, 8),
                prune=(0.0, 0.15, 0.3), prune_per="block", rank=(8, 16, 32), spread="flat",
                interaction="block", noise=0.3, profile="exact", budget=0.6),
    ProblemCase("dominant-none-learned-70", n_blocks=10, spread="dominant", interaction="none",
                noise=0.1, memory="learned", profile="rough", budget=0.2),
    ProblemCase("lognormal-noisy-cross-42", n_blocks=6, spread="lognormal", interaction="cross",
                noise=1.0, profile="exact", budget=0.5),
    ProblemCase("lognormal-block-224", n_blocks=32, bits=(2, 3, 4, 8), spread="lognormal",
                interaction="block", noise=0.3, profile="rough", budget=0.5),
)


class SyntheticProblem:
    """One generated mixed-precision problem (see the module docstring).

    ``SyntheticProblem(case, seed=0)``; keyword arguments override fields of ``case`` (or of
    the default case), e.g. ``SyntheticProblem(seed=3, n_blocks=4)``.
    """

    def __init__(self, case: ProblemCase | None = None, seed: int = 0, *,
                 top_accuracy: float = 70.0, chance_accuracy: float = 50.0,
                 interaction_weight: float = 0.5, group_size: int = 64, reference_bits: int = 8,
                 **overrides: Any) -> None:
        case = dataclasses.replace(case or ProblemCase(), **overrides)
        self.case, self.seed = case, seed
        rng = np.random.default_rng([seed, case.n_blocks, len(case.name)])
        n_blocks = case.n_blocks
        self.bits = tuple(int(b) for b in case.bits)
        self.layer_names = [f"model.layers.{i}.{k}" for i in range(n_blocks) for k in KINDS]
        L = len(self.layer_names)
        kinds = [n.rsplit(".", 1)[1] for n in self.layer_names]
        self.block_of = np.array([int(n.split(".")[2]) for n in self.layer_names])
        mlp = np.array([k in ("gate_proj", "up_proj", "down_proj") for k in kinds])
        self.sizes = np.where(mlp, _FFN * _D, _D * _D).astype(float)
        self.in_out = np.where(mlp, _FFN + _D, 2 * _D).astype(float)
        kind_sens = np.array([_KIND_SENS[k] for k in kinds])
        blocks = self.block_of
        depth = 1.0 + 1.5 * np.exp(-blocks) + 1.0 * np.exp(-(n_blocks - 1 - blocks))
        if case.spread == "flat":
            sens = kind_sens ** 0.3 * rng.lognormal(0.0, 0.15, L)
            fragile = np.zeros(0, dtype=int)
        elif case.spread == "lognormal":
            sens = rng.lognormal(0.0, 0.8, L) * kind_sens * depth
            fragile = rng.choice(L, max(1, L // 18), replace=False)
            sens[fragile] *= 12.0
        else:  # dominant: a handful of layers hold most of the damage
            sens = rng.lognormal(0.0, 0.3, L)
            fragile = rng.choice(L, min(L, 3), replace=False)
            sens[fragile] *= 40.0
        self.sensitivity, self.fragile = sens, sorted(fragile.tolist())
        self.exponent = rng.uniform(0.85, 1.1, L)
        self.prune_scale = 1.5 * rng.lognormal(0.0, 0.5, L)  # damage of prune 0.3 ~ of 3 bits
        self.noise, self.top, self.chance = case.noise, top_accuracy, chance_accuracy
        self.group_size, self.reference_bits = group_size, reference_bits
        index = {(b, k): j for j, (b, k) in enumerate(zip(blocks, kinds))}
        pairs = []
        if case.interaction in ("block", "cross"):
            pairs += [(index[(b, p)], index[(b, q)]) for b in range(n_blocks) for p, q in _PAIRS]
        if case.interaction == "cross":
            pairs += [(index[(b, k)], index[(b + 1, k)]) for b in range(n_blocks - 1)
                      for k in ("q_proj", "down_proj")]
            far = rng.choice(L, (L // 4, 2))
            pairs += [(int(a), int(c)) for a, c in far if self.block_of[a] != self.block_of[c]]
        self.pairs = np.array(pairs, dtype=int).reshape(-1, 2)
        self.interaction = interaction_weight if len(self.pairs) else 0.0
        self.fixed_bytes = 2 * 32000 * _D * 2.0  # fp16 embeddings + LM head
        self.fixed_rank = 16

        # the decision variables: name -> choices, and which layer / block each one sets
        self.param_names: list[str] = []
        self.choices: list[tuple] = []
        self._kind: list[str] = []  # "bits" | "prune" | "rank"
        self._target: list[np.ndarray] = []  # layers (bits, prune) or block (rank) it sets
        for j, n in enumerate(self.layer_names):
            self._add(f"bits.{n}", self.bits, "bits", np.array([j]))
        if case.prune:
            if case.prune_per == "linear":
                for j, n in enumerate(self.layer_names):
                    self._add(f"prune.{n}", case.prune, "prune", np.array([j]))
            else:
                for b in range(n_blocks):
                    self._add(f"prune.model.layers.{b}", case.prune, "prune",
                              np.flatnonzero(self.block_of == b))
        if case.rank:
            for b in range(n_blocks):
                self._add(f"rank.model.layers.{b}", case.rank, "rank", np.array([b]))
        self.distributions = {n: CategoricalDistribution(list(c))
                              for n, c in zip(self.param_names, self.choices)}
        self._rng = np.random.default_rng([seed, 10_000])
        self._damage_ref = float(self._damage(self.uniform_levels(self.bits.index(3) if 3 in self.bits else 1))[0])
        self._reference: np.ndarray | None = None
        self._reference_configs: np.ndarray | None = None
        self._best: dict[float, float] = {}

    def _add(self, name: str, choices: Sequence, kind: str, target: np.ndarray) -> None:
        self.param_names.append(name)
        self.choices.append(tuple(sorted(choices)))
        self._kind.append(kind)
        self._target.append(target)

    # ------------------------------------------------------------------ encoding
    @property
    def n_layers(self) -> int:
        return len(self.layer_names)

    @property
    def n_params(self) -> int:
        return len(self.param_names)

    def n_levels(self) -> np.ndarray:
        return np.array([len(c) for c in self.choices])

    def uniform_levels(self, bits_level: int) -> np.ndarray:
        """Level matrix (1, n_params): every bits parameter at `bits_level`, no pruning, the
        smallest rank."""
        x = np.zeros((1, self.n_params), dtype=int)
        for j, k in enumerate(self._kind):
            if k == "bits":
                x[0, j] = min(bits_level, len(self.choices[j]) - 1)
        return x

    def levels_of(self, params: Mapping[str, Any]) -> np.ndarray:
        """Level indices (n_params,) of one configuration."""
        return np.array([c.index(type(c[0])(params[n]))
                         for n, c in zip(self.param_names, self.choices)])

    def levels_of_columns(self, columns: Mapping[str, Sequence]) -> np.ndarray:
        """Level matrix (n, n_params) of a batch given as parameter -> values."""
        cols = []
        for n, c in zip(self.param_names, self.choices):
            v = np.asarray(columns[n], dtype=float)
            cols.append(np.searchsorted(np.asarray(c, dtype=float), v - 1e-9))
        return np.stack(cols, axis=1)

    def params_of(self, levels: np.ndarray) -> dict[str, Any]:
        return {n: c[int(i)] for n, c, i in zip(self.param_names, self.choices, levels)}

    def _settings(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-layer bits and prune ratio, per-block rank, of a level matrix (n, n_params)."""
        X = np.atleast_2d(X)
        n = len(X)
        bits = np.zeros((n, self.n_layers))
        prune = np.zeros((n, self.n_layers))
        rank = np.full((n, self.case.n_blocks), float(self.fixed_rank))
        for j, (kind, target, c) in enumerate(zip(self._kind, self._target, self.choices)):
            v = np.asarray(c, dtype=float)[X[:, j]]
            {"bits": bits, "prune": prune, "rank": rank}[kind][:, target] = v[:, None]
        return bits, prune, rank

    # ------------------------------------------------------------------ the function
    def error(self, bits: np.ndarray) -> np.ndarray:
        """Per-layer relative quantization damage for a bits matrix (n, n_layers)."""
        b = np.asarray(bits, dtype=float)
        return np.where(b >= 16, 0.0, 4.0 ** (-self.exponent * (b - 2)))

    def _damage(self, X: np.ndarray) -> np.ndarray:
        bits, prune, rank = self._settings(X)
        q = self.sensitivity * self.error(bits)
        p = self.sensitivity * self.prune_scale * prune ** 1.5
        per = q + p + 0.5 * np.sqrt(q * p)
        if self.case.rank:
            recover = 1.0 - 0.12 * np.log2(rank / min(self.case.rank))
            per = per * recover[:, self.block_of]
        total = per.sum(axis=1)
        if len(self.pairs):
            a, b = self.pairs[:, 0], self.pairs[:, 1]
            total = total + 2 * self.interaction * np.sqrt(per[:, a] * per[:, b]).sum(axis=1)
        return total

    def accuracy(self, X: np.ndarray) -> np.ndarray:
        """Noiseless accuracy in points for a level matrix (n, n_params)."""
        damage = self._damage(np.atleast_2d(X))
        return self.chance + (self.top - self.chance) * np.exp(-math.log(2) * damage / self._damage_ref)

    def memory_gb(self, X: np.ndarray) -> np.ndarray:
        """Training memory in GB: packed weights with fp16 scale and zero per group, LoRA
        adapters (weights, gradients, AdamW states: 16 bytes per parameter), fixed parts."""
        bits, prune, rank = self._settings(np.atleast_2d(X))
        per_param = np.where(bits >= 16, 16.0, bits + 32.0 / self.group_size)
        weights = (per_param * self.sizes * (1 - prune)).sum(axis=1) / 8
        adapters = 16.0 * (rank[:, self.block_of] * self.in_out * (1 - prune)).sum(axis=1)
        return (weights + adapters + self.fixed_bytes) / 1e9

    def observe(self, X: np.ndarray) -> np.ndarray:
        """Accuracy as a trial would measure it (with noise)."""
        acc = self.accuracy(X)
        return acc + self._rng.normal(0.0, self.noise, acc.shape)

    # ------------------------------------------------------------------ Optuna glue
    def suggest(self, trial: Any) -> np.ndarray:
        """Ask a trial for every parameter; its level indices."""
        params = {n: trial.suggest_categorical(n, list(c)) for n, c in zip(self.param_names, self.choices)}
        return self.levels_of(params)

    def memory_of_params(self, params: Mapping[str, Any]) -> float:
        return float(self.memory_gb(self.levels_of(params)[None])[0])

    def memory_fn(self) -> "_BatchFn":
        """The memory function as the sampler gets it when memory is known: params -> GB,
        with a vectorised ``batch(columns)`` (as the study backend's analytic model has)."""
        return _BatchFn(self, lambda X: self.memory_gb(X))

    def budget_gb(self) -> float:
        """The case's memory budget (between the all-3-bit and all-4-bit memory)."""
        i3 = self.bits.index(3) if 3 in self.bits else 1
        lo = float(self.memory_gb(self.uniform_levels(i3))[0])
        hi = float(self.memory_gb(self.uniform_levels(i3 + 1))[0])
        return lo + self.case.budget * (hi - lo)

    def profile_scores(self, seed: int = 1) -> np.ndarray:
        """What the sampler's profile says: (n_layers, len(bits)) damage of each layer at each
        bits choice (0 at 16 bits), per ``case.profile``."""
        b = np.asarray(self.bits, dtype=float)
        flat = np.where(b >= 16, 0.0, 4.0 ** -(b - 2))[None, :]
        if self.case.profile == "none":
            return np.repeat(flat, self.n_layers, axis=0)
        if self.case.profile == "exact":
            return self.sensitivity[:, None] * self.error(np.repeat(b[None], self.n_layers, 0).T).T
        rng = np.random.default_rng([self.seed, seed])
        return (self.sensitivity * rng.lognormal(0.0, 0.7, self.n_layers))[:, None] * flat

    def features(self) -> "_BatchFn":
        """Predictor features as a study computes them from a profile: per-layer score of
        its bits, and their total (vectorised ``batch`` too)."""
        scores = self.profile_scores()
        bits_cols = [j for j, k in enumerate(self._kind) if k == "bits"]

        def f(X: np.ndarray) -> np.ndarray:
            per = scores[np.arange(self.n_layers)[None, :], X[:, bits_cols]]
            return np.concatenate([per, per.sum(axis=1, keepdims=True)], axis=1)

        return _BatchFn(self, f)

    def proxy_sensitivity(self, noise: float = 0.5, seed: int = 1) -> np.ndarray:
        """What a cheap profile would measure: the true sensitivity times log-normal error."""
        rng = np.random.default_rng(seed)
        return self.sensitivity * rng.lognormal(0.0, noise, self.n_layers)

    # ------------------------------------------------------------------ reference front
    def _cheapest(self) -> np.ndarray:
        """Level matrix (1, n_params) of least memory: coordinate-wise (memory is additive)."""
        x = np.zeros((1, self.n_params), dtype=int)
        for j, c in enumerate(self.choices):
            trial = np.repeat(x, len(c), axis=0)
            trial[:, j] = np.arange(len(c))
            x[0, j] = int(np.argmin(self.memory_gb(trial)))
        return x

    def hv_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(ideal, reference) in minimisation space (-accuracy, memory): chance accuracy at
        the memory of the uniform ``reference_bits`` model (no pruning, smallest rank)."""
        m_lo = float(self.memory_gb(self._cheapest())[0])
        ref_level = self.bits.index(self.reference_bits) if self.reference_bits in self.bits else len(self.bits) - 1
        m_hi = float(self.memory_gb(self.uniform_levels(ref_level))[0])
        return np.array([-self.top, m_lo]), np.array([-self.chance, m_hi])

    def normalized_hv(self, X: np.ndarray) -> float:
        """Hypervolume of the configurations' noiseless (accuracy, memory), scaled to [0, 1]
        by the reference front's hypervolume."""
        X = np.atleast_2d(X)
        return self._hv(np.stack([-self.accuracy(X), self.memory_gb(X)], 1)) / self.reference_hv()

    def _hv(self, points: np.ndarray) -> float:
        return normalized_hypervolume(points, *self.hv_bounds())

    def reference_hv(self) -> float:
        return self._hv(self.reference_front())

    def _objectives(self, X: np.ndarray) -> np.ndarray:
        return np.stack([-self.accuracy(X), self.memory_gb(X)], 1)

    def reference_front(self, generations: int = 300, pop: int = 300) -> np.ndarray:
        """Near-exact front of the noiseless function (cached): the marginal-gain path from
        the cheapest configuration, then NSGA-II seeded with it."""
        if self._reference is not None:
            return self._reference
        rng = np.random.default_rng(0)
        path = self._greedy_path()
        configs = [path]
        population = path[np.unique(np.linspace(0, len(path) - 1, pop).astype(int))]
        n_levels = self.n_levels()
        for _ in range(generations):
            parents = population[rng.integers(0, len(population), (2, pop))]
            child = np.where(rng.random((pop, self.n_params)) < 0.5, parents[0], parents[1])
            hit = rng.random(child.shape) < 1.5 / self.n_params
            child = np.clip(child + hit * rng.choice([-1, 1], child.shape), 0, n_levels - 1)
            merged = np.unique(np.vstack([population, child]), axis=0)
            y = self._objectives(merged)
            ranks = nondominated_rank(y)
            order = np.lexsort((-crowding_distance(y), ranks))
            population = merged[order[:pop]]
            configs.append(population)
        allc = np.unique(np.vstack(configs), axis=0)
        y = self._objectives(allc)
        keep = nondominated_mask(y)
        self._reference, self._reference_configs = y[keep], allc[keep]
        return self._reference

    def _greedy_path(self) -> np.ndarray:
        """Configurations along the best accuracy gained per byte: from the cheapest one, move
        one parameter to any level that costs more, best ratio first."""
        x = self._cheapest()[0]
        path = [x.copy()]
        n_levels = self.n_levels()
        rows = [(j, v) for j in range(self.n_params) for v in range(n_levels[j])]
        js = np.array([r[0] for r in rows])
        vs = np.array([r[1] for r in rows])
        while True:
            cand = np.repeat(x[None], len(rows), axis=0)
            cand[np.arange(len(rows)), js] = vs
            d_acc = self.accuracy(cand) - self.accuracy(x[None])[0]
            d_mem = self.memory_gb(cand) - self.memory_gb(x[None])[0]
            ratio = np.where((d_mem > 1e-12) & (d_acc > 0), d_acc / np.maximum(d_mem, 1e-12), -np.inf)
            if not np.isfinite(ratio).any():
                break
            x = cand[int(np.argmax(ratio))]
            path.append(x.copy())
        return np.array(path)

    def best_feasible_accuracy(self, budget_gb: float | None = None) -> float:
        """Best noiseless accuracy of any configuration within the budget (default: the
        case's): the reference front's best point within it, improved by swap-move local
        search (one parameter to another level, optionally paid for by another one)."""
        budget = self.budget_gb() if budget_gb is None else float(budget_gb)
        if budget in self._best:
            return self._best[budget]
        self.reference_front()
        mem = self.memory_gb(self._reference_configs)
        ok = mem <= budget
        if not ok.any():
            self._best[budget] = float("nan")
            return self._best[budget]
        x = self._reference_configs[ok][int(np.argmax(self.accuracy(self._reference_configs[ok])))]
        best = float(self.accuracy(x[None])[0])
        rng = np.random.default_rng(1)
        n_levels = self.n_levels()
        stale = 0
        while stale < 3:
            # single moves to any level, and random pairs of single moves
            rows = [(j, v) for j in range(self.n_params) for v in range(n_levels[j]) if v != x[j]]
            single = np.repeat(x[None], len(rows), axis=0)
            single[np.arange(len(rows)), [r[0] for r in rows]] = [r[1] for r in rows]
            a = rng.integers(0, len(rows), 20_000)
            b = rng.integers(0, len(rows), 20_000)
            pair = single[a].copy()
            cols = np.array([r[0] for r in rows])[b]
            pair[np.arange(len(b)), cols] = np.array([r[1] for r in rows])[b]
            cand = np.vstack([single, pair])
            acc = np.where(self.memory_gb(cand) <= budget, self.accuracy(cand), -np.inf)
            k = int(np.argmax(acc))
            if acc[k] > best + 1e-9:
                x, best, stale = cand[k], float(acc[k]), 0
            else:
                stale += 1
        self._best[budget] = best
        return best


class _BatchFn:
    """A function of a configuration's params with a vectorised ``batch(columns)`` form."""

    def __init__(self, problem: SyntheticProblem, fn) -> None:
        self._problem, self._fn = problem, fn

    def __call__(self, params: Mapping[str, Any]):
        out = self._fn(self._problem.levels_of(params)[None])[0]
        return float(out) if np.ndim(out) == 0 else np.asarray(out)

    def batch(self, columns: Mapping[str, Sequence]) -> np.ndarray:
        return np.asarray(self._fn(self._problem.levels_of_columns(columns)))
