"""Test doubles shared by the tests and the benchmarks (no library module imports this one).

* `synthetic_trial` / `SyntheticBackend`: a real, cheap trial function and the `TrialBackend`
  over it, so the study loop (Ray, Optuna, MLflow) runs end to end in milliseconds per trial: per-block
  round-to-nearest quantization of a fixed random matrix; quality falls with the
  reconstruction error, memory grows with the bits, so fronts and hypervolumes are meaningful.

The generated problem family (`ProblemCase`, `SUITE`, `SyntheticProblem`) lives in
`automix.bench.problems`; its names are still importable from here (loaded on first use, so
that Ray workers importing the doubles do not load it).
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from optuna.distributions import CategoricalDistribution

from automix.reporting import report

__all__ = ["SyntheticBackend", "synthetic_trial"]

_PROBLEMS = ("KINDS", "ProblemCase", "SUITE", "SyntheticProblem")


def __getattr__(name: str) -> Any:
    """The generated problems' names, for code written when they lived here: they are
    `automix.bench.problems`' (looked up by name on first use, so that the doubles, which Ray
    workers import, depend on nothing of the benchmarks)."""
    if name in _PROBLEMS:
        return getattr(importlib.import_module("automix.bench.problems"), name)
    raise AttributeError(f"module 'automix.testing' has no attribute {name!r}")


# -- a cheap real trial and its backend (orchestration tests and benchmark) ------------------

BITS = (2, 3, 4, 8)
_ROWS = 64


def _block(i: int, cols: int) -> np.ndarray:
    return np.random.default_rng(1000 + i).standard_normal((_ROWS, cols)) * (1.0 + 0.5 * i)


def synthetic_trial(payload: Mapping[str, Any]) -> dict:
    """A real, cheap trial: quantize blocks at the given bits and score the reconstruction.

    payload: {"bits": [b0, b1, ...], "method": str, "cols": int, "sleep": float, "fail": bool,
    "curve_steps": int, "step_sleep": float}. With ``curve_steps`` it reports a learning curve
    first (`automix.trial.report`): "eval" at steps 0, 10, 20, ... rising towards the final
    accuracy, one "loss" per step, sleeping ``step_sleep`` per reported evaluation.
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
    n = int(payload.get("curve_steps", 0))
    curve = []
    for k in range(n):
        value = accuracy - 0.2 * (n - k) / n  # rank-preserving: the final order shows from step 0
        curve.append([10 * k, value])
        for s in range(10):
            report("loss", 10 * k + s + 1, 1.0 - value)
        report("eval", 10 * k, value)
        time.sleep(float(payload.get("step_sleep", 0.0)))
    return {
        "eval_curve": curve, "losses": [1.0 - v for _, v in curve],
        "status": "ok", "accuracy": accuracy, "perplexity": float(np.exp(3.0 * (1.0 - accuracy))),
        "peak_memory_bytes": nbytes + 1024, "predicted_memory_bytes": nbytes,
        "trainable_params": 0, "avg_bits": float(np.mean(payload["bits"])),
        "train_seconds": time.perf_counter() - t0, "eval_seconds": 0.0, "pid": os.getpid(),
    }


class SyntheticBackend:
    """A `TrialBackend` over `synthetic_trial`: one bits choice per block, plus the method."""

    function = staticmethod(synthetic_trial)

    def __init__(self, methods: list[str], n_blocks: int = 4, cols: int = 64, sleep: float = 0.0,
                 fail_bits: int | None = None, curve_steps: int = 0, step_sleep: float = 0.0) -> None:
        self.methods, self.n_blocks, self.cols, self.sleep = list(methods), n_blocks, cols, sleep
        self.fail_bits, self.curve_steps, self.step_sleep = fail_bits, curve_steps, step_sleep
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
                "fail": self.fail_bits is not None and bits[0] == self.fail_bits,
                "curve_steps": self.curve_steps, "step_sleep": self.step_sleep}

    def describe(self, params: Mapping[str, Any]) -> tuple[str, dict, dict]:
        bits = self._bits(params)
        return params["method"], {"avg_bits": float(np.mean(bits))}, {f"block{i}": {"bits": b}
                                                                      for i, b in enumerate(bits)}
