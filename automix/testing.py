"""Test doubles shared by the tests and the benchmarks (no library module imports this one).

* `SyntheticProblem`: a synthetic mixed-precision objective that behaves like a real one, for
  benchmarking and testing the search (below).
* `synthetic_trial` / `SyntheticBackend`: a real, cheap trial function and the `TrialBackend`
  over it, so the study loop (Ray, Optuna, MLflow) runs end to end in milliseconds per trial: per-block
  round-to-nearest quantization of a fixed random matrix; quality falls with the
  reconstruction error, memory grows with the bits, so fronts and hypervolumes are meaningful.

**SyntheticProblem.**

A real study costs GPU-hours per trial, so samplers are compared on a cheap stand-in with
the same structure as measured quantization studies:

* each linear layer has a *sensitivity*, log-normally distributed, higher for the first and last
  blocks and for ``down_proj``/``v_proj``, and a few *fragile* layers an order of magnitude
  more sensitive than the rest;
* the damage of quantizing a layer to b bits falls like 4^(-a (b - 2)) (uniform quantization
  error), with a per-layer exponent a;
* partners inside a block (q/k, gate/up, v/o) interact: quantizing both hurts more than the sum;
* accuracy saturates: chance + (top - chance) * exp(-ln2 * damage / damage(all 3-bit)), so
  all-3-bit sits half-way between chance and full precision; observed accuracy has noise;
* memory is known analytically: parameters x (bits + per-group scale/zero overhead) / 8 plus a
  fixed part (embeddings, head), like the analytic memory model.

The class also computes a *reference front* on the noiseless function (greedy marginal-gain
paths plus a long NSGA-II run) against which hypervolumes are normalised.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from optuna.distributions import CategoricalDistribution

from automix.search.pareto import (crowding_distance, nondominated_mask, nondominated_rank,
                                   normalized_hypervolume)

__all__ = ["SyntheticProblem", "SyntheticBackend", "synthetic_trial"]

KINDS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
_KIND_SENS = {"q_proj": 0.7, "k_proj": 0.7, "v_proj": 1.6, "o_proj": 1.0,
              "gate_proj": 0.9, "up_proj": 0.9, "down_proj": 1.8}
_PAIRS = (("q_proj", "k_proj"), ("gate_proj", "up_proj"), ("v_proj", "o_proj"))


class SyntheticProblem:
    """A Llama-7B-shaped mixed-precision problem: one bits choice per linear layer.

    Args:
        n_blocks: decoder blocks (7 linears each).
        bits: the bits choices (16 = unquantized).
        seed: draws sensitivities, fragile layers and exponents.
        noise: standard deviation of observed accuracy, in points.
        n_fragile: layers whose sensitivity is multiplied by ``fragile_factor``.
        interaction: weight of within-block partner interactions.
    """

    def __init__(
        self,
        n_blocks: int = 8,
        bits: Sequence[int] = (2, 3, 4, 8, 16),
        seed: int = 0,
        noise: float = 0.3,
        n_fragile: int = 3,
        fragile_factor: float = 12.0,
        interaction: float = 0.5,
        top_accuracy: float = 70.0,
        chance_accuracy: float = 50.0,
        group_size: int = 64,
        reference_bits: int = 8,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.bits = tuple(int(b) for b in bits)
        self.layer_names = [f"model.layers.{i}.{k}" for i in range(n_blocks) for k in KINDS]
        kinds = [n.rsplit(".", 1)[1] for n in self.layer_names]
        blocks = np.array([int(n.split(".")[2]) for n in self.layer_names])
        d, ffn = 4096, 11008
        self.sizes = np.array([ffn * d if k.endswith(("gate_proj", "up_proj", "down_proj"))
                               else d * d for k in kinds], dtype=float)
        depth = 1.0 + 1.5 * np.exp(-blocks) + 1.0 * np.exp(-(n_blocks - 1 - blocks))
        sens = rng.lognormal(0.0, 0.8, len(kinds)) * np.array([_KIND_SENS[k] for k in kinds]) * depth
        fragile = rng.choice(len(kinds), n_fragile, replace=False)
        sens[fragile] *= fragile_factor
        self.sensitivity, self.fragile = sens, sorted(fragile.tolist())
        self.exponent = rng.uniform(0.85, 1.1, len(kinds))
        self.noise, self.interaction = noise, interaction
        self.top, self.chance = top_accuracy, chance_accuracy
        self.group_size = group_size
        self.reference_bits = reference_bits
        index = {(b, k): j for j, (b, k) in enumerate(zip(blocks, kinds))}
        self.pairs = np.array([(index[(b, p)], index[(b, q)]) for b in range(n_blocks)
                               for p, q in _PAIRS])
        self.fixed_bytes = 2 * 32000 * d * 2.0  # fp16 embeddings + LM head
        self._rng = np.random.default_rng(seed + 10_000)
        self._damage_ref = float(self._damage(np.full((1, len(kinds)), 3))[0])
        self._reference: np.ndarray | None = None

    # ------------------------------------------------------------------ the function
    @property
    def n_layers(self) -> int:
        return len(self.layer_names)

    def error(self, bits: np.ndarray) -> np.ndarray:
        """Per-layer relative quantization damage for a bits matrix (n, n_layers)."""
        b = np.asarray(bits, dtype=float)
        return np.where(b >= 16, 0.0, 4.0 ** (-self.exponent * (b - 2)))

    def _damage(self, bits: np.ndarray) -> np.ndarray:
        per = self.sensitivity * self.error(bits)
        a, b = self.pairs[:, 0], self.pairs[:, 1]
        return per.sum(axis=1) + self.interaction * np.sqrt(per[:, a] * per[:, b]).sum(axis=1) * 2

    def accuracy(self, bits: np.ndarray) -> np.ndarray:
        """Noiseless accuracy in points for a bits matrix (n, n_layers)."""
        damage = self._damage(np.atleast_2d(bits))
        return self.chance + (self.top - self.chance) * np.exp(-math.log(2) * damage / self._damage_ref)

    def memory_gb(self, bits: np.ndarray) -> np.ndarray:
        """Weight memory in GB: bits plus fp16 scale and zero per group when quantized."""
        b = np.atleast_2d(np.asarray(bits, dtype=float))
        per_param = np.where(b >= 16, 16.0, b + 32.0 / self.group_size)
        return ((per_param * self.sizes).sum(axis=1) / 8 + self.fixed_bytes) / 1e9

    def observe(self, bits: np.ndarray) -> np.ndarray:
        """Accuracy as a trial would measure it (with noise)."""
        acc = self.accuracy(bits)
        return acc + self._rng.normal(0.0, self.noise, acc.shape)

    # ------------------------------------------------------------------ Optuna glue
    def params_to_bits(self, params: dict[str, Any]) -> np.ndarray:
        return np.array([int(params[n]) for n in self.layer_names])

    def suggest(self, trial: Any) -> np.ndarray:
        return np.array([trial.suggest_categorical(n, list(self.bits)) for n in self.layer_names])

    def memory_of_params(self, params: dict[str, Any]) -> float:
        return float(self.memory_gb(self.params_to_bits(params)[None])[0])

    def proxy_sensitivity(self, noise: float = 0.5, seed: int = 1) -> np.ndarray:
        """What a cheap profile would measure: the true sensitivity times log-normal error."""
        rng = np.random.default_rng(seed)
        return self.sensitivity * rng.lognormal(0.0, noise, self.n_layers)

    # ------------------------------------------------------------------ reference front
    def hv_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(ideal, reference) in minimisation space (-accuracy, memory): chance accuracy at
        the memory of the uniform ``reference_bits`` model (default 8: more memory buys
        nothing). The uniform configurations alone already hold a good part of this volume;
        the rest lies in the mixed 2-4-bit region that the search has to find."""
        m_lo = float(self.memory_gb(np.full((1, self.n_layers), min(self.bits)))[0])
        m_hi = float(self.memory_gb(np.full((1, self.n_layers), self.reference_bits))[0])
        return np.array([-self.top, m_lo]), np.array([-self.chance, m_hi])

    def normalized_hv(self, bits: np.ndarray) -> float:
        """Hypervolume of the configurations' noiseless (accuracy, memory), scaled to [0, 1]
        by the reference front's hypervolume."""
        b = np.atleast_2d(bits)
        return self._hv(np.stack([-self.accuracy(b), self.memory_gb(b)], 1)) / self.reference_hv()

    def _hv(self, points: np.ndarray) -> float:
        return normalized_hypervolume(points, *self.hv_bounds())

    def reference_hv(self) -> float:
        return self._hv(self.reference_front())

    def reference_front(self, generations: int = 300, pop: int = 300) -> np.ndarray:
        """Near-exact front of the noiseless function (cached): greedy paths + NSGA-II."""
        if self._reference is not None:
            return self._reference
        rng = np.random.default_rng(0)
        configs = [self._greedy_path(up=True), self._greedy_path(up=False)]
        population = np.vstack([configs[0], configs[1]])
        population = population[rng.permutation(len(population))[:pop]]
        levels = np.array(self.bits)
        for _ in range(generations):
            parents = population[rng.integers(0, len(population), (2, pop))]
            child = np.where(rng.random((pop, self.n_layers)) < 0.5, parents[0], parents[1])
            idx = np.searchsorted(levels, child)
            hit = rng.random(child.shape) < 1.5 / self.n_layers
            idx = np.clip(idx + hit * rng.choice([-1, 1], child.shape), 0, len(levels) - 1)
            merged = np.unique(np.vstack([population, levels[idx]]), axis=0)
            y = np.stack([-self.accuracy(merged), self.memory_gb(merged)], 1)
            ranks = nondominated_rank(y)
            order = np.lexsort((-crowding_distance(y), ranks))
            population = merged[order[:pop]]
            configs.append(population)
        allc = np.unique(np.vstack(configs), axis=0)
        y = np.stack([-self.accuracy(allc), self.memory_gb(allc)], 1)
        self._reference = y[nondominated_mask(y)]
        self._reference_configs = allc[nondominated_mask(y)]
        return self._reference

    def _greedy_path(self, up: bool) -> np.ndarray:
        """Configurations along best accuracy-per-byte single-layer moves."""
        levels = np.array(self.bits)
        idx = np.full(self.n_layers, 0 if up else len(levels) - 1)
        path = [levels[idx]]
        while (idx < len(levels) - 1).any() if up else (idx > 0).any():
            moves = np.flatnonzero(idx < len(levels) - 1) if up else np.flatnonzero(idx > 0)
            cand = np.repeat(idx[None], len(moves), axis=0)
            cand[np.arange(len(moves)), moves] += 1 if up else -1
            cur = levels[idx][None]
            d_acc = self.accuracy(levels[cand]) - self.accuracy(cur)
            d_mem = np.abs(self.memory_gb(levels[cand]) - self.memory_gb(cur)) + 1e-12
            best = np.argmax(d_acc / d_mem) if up else np.argmin(-d_acc / d_mem)
            idx = cand[best]
            path.append(levels[idx])
        return np.array(path)

    def best_feasible_accuracy(self, budget_gb: float) -> float:
        """Best noiseless accuracy of any configuration within the memory budget."""
        front = self.reference_front()
        ok = front[:, 1] <= budget_gb
        return float(-front[ok, 0].min()) if ok.any() else float("nan")


# -- a cheap real trial and its backend (orchestration tests and benchmark) ------------------

BITS = (2, 3, 4, 8)
_ROWS = 64


def _block(i: int, cols: int) -> np.ndarray:
    return np.random.default_rng(1000 + i).standard_normal((_ROWS, cols)) * (1.0 + 0.5 * i)


def synthetic_trial(payload: Mapping[str, Any]) -> dict:
    """A real, cheap trial: quantize blocks at the given bits and score the reconstruction.

    payload: {"bits": [b0, b1, ...], "method": str, "cols": int, "sleep": float, "fail": bool}
    Returns a dict with the keys of `TrialResult.to_dict()` the driver reads.
    """
    t0 = time.perf_counter()
    if payload.get("sleep"):
        time.sleep(float(payload["sleep"]))
    if payload.get("fail"):
        return {"status": "failed", "failure_reason": "synthetic failure requested"}
    cols = int(payload.get("cols", 64))
    err, params, nbytes = 0.0, 0, 0
    for i, b in enumerate(payload["bits"]):
        w = _block(i, cols)
        lo, hi = w.min(axis=1, keepdims=True), w.max(axis=1, keepdims=True)
        scale = (hi - lo) / (2 ** int(b) - 1)
        q = np.round((w - lo) / scale) * scale + lo
        err += float(((w - q) ** 2).mean()) * (1.0 + 0.5 * i)
        params += w.size
        nbytes += w.size * int(b) // 8 + 4 * _ROWS * 2
    bonus = {"lora": 0.0, "qlora": 0.01, "loftq": 0.02}.get(payload.get("method", ""), 0.005)
    accuracy = float(np.clip(1.0 / (1.0 + 3.0 * err) + bonus, 0.0, 1.0))
    return {
        "status": "ok", "accuracy": accuracy, "perplexity": float(np.exp(3.0 * (1.0 - accuracy))),
        "peak_memory_bytes": nbytes + 1024, "predicted_memory_bytes": nbytes,
        "trainable_params": 0, "avg_bits": float(np.mean(payload["bits"])),
        "train_seconds": time.perf_counter() - t0, "eval_seconds": 0.0, "pid": os.getpid(),
    }


class SyntheticBackend:
    """A `TrialBackend` over `synthetic_trial`: one bits choice per block, plus the method."""

    function = staticmethod(synthetic_trial)

    def __init__(self, methods: list[str], n_blocks: int = 4, cols: int = 64, sleep: float = 0.0,
                 fail_bits: int | None = None) -> None:
        self.methods, self.n_blocks, self.cols, self.sleep = list(methods), n_blocks, cols, sleep
        self.fail_bits = fail_bits
        self.distributions = {"method": CategoricalDistribution(self.methods)}
        for i in range(n_blocks):
            self.distributions[f"bits_{i}"] = CategoricalDistribution(list(BITS))

    def _bits(self, params: Mapping[str, Any]) -> list[int]:
        return [int(params[f"bits_{i}"]) for i in range(self.n_blocks)]

    def predicted_memory(self, params: Mapping[str, Any]) -> float:
        return float(sum(_ROWS * self.cols * b // 8 + 4 * _ROWS * 2 for b in self._bits(params)))

    def smallest_memory(self) -> float:
        return self.predicted_memory({f"bits_{i}": min(BITS) for i in range(self.n_blocks)})

    def payload(self, params: Mapping[str, Any]) -> dict:
        bits = self._bits(params)
        return {"bits": bits, "method": params["method"], "cols": self.cols, "sleep": self.sleep,
                "fail": self.fail_bits is not None and bits[0] == self.fail_bits}

    def describe(self, params: Mapping[str, Any]) -> tuple[str, dict, dict]:
        bits = self._bits(params)
        return params["method"], {"avg_bits": float(np.mean(bits))}, {f"block{i}": {"bits": b}
                                                                      for i, b in enumerate(bits)}
