"""`automix bench orchestration`: what the study machinery costs per trial, and its parallelism.

Two measurements:

1. Overhead: a study whose trial function does (almost) nothing, run through the real driver
   (Ray dispatch, Optuna SQLite storage, MLflow SQLite tracking with Pareto tags). Wall time per
   trial minus the trial function's own time is the orchestration overhead (target < 1 s).
2. Parallelism: the quickstart study (real `run_trial` on the built-in tiny model) with 1 and
   2 workers; with 2 workers on 2 cores the trials overlap.

The synthetic trial here is also what the orchestration tests use: a small real objective
(per-block round-to-nearest quantization of a fixed random matrix; quality falls with the
reconstruction error, memory grows with the bits), so fronts and hypervolumes are meaningful.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = ["synthetic_trial", "SyntheticBackend", "main"]

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
        from optuna.distributions import CategoricalDistribution

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


def _config(name: str, workdir: Path, n_trials: int, workers: int, budget: str):
    from automix.study import StudyConfig

    return StudyConfig(
        name=name, methods=["lora", "qlora"], task="boolq", search_space={"path": "synthetic"},
        memory_budget=budget, n_trials=n_trials, workers=workers, sampler="random",
        storage=f"sqlite:///{workdir}/optuna.db", tracking_uri=f"sqlite:///{workdir}/mlflow.db",
        timeout_per_trial=120,
    )


def bench_overhead(n_trials: int, workers: int) -> dict:
    """Per-trial wall time of a study of trivial trials through Ray + Optuna + MLflow."""
    from automix.driver import run_study

    with tempfile.TemporaryDirectory() as d:
        cfg = _config("overhead", Path(d), n_trials, workers, "1MiB")
        backend = SyntheticBackend(cfg.methods, n_blocks=2, cols=16)
        # Warm-up (Ray start, MLflow schema creation) is not per-trial cost: measure it apart.
        t0 = time.perf_counter()
        from automix.executors import RayExecutor

        ex = RayExecutor(backend.function, workers=workers, cpus=1, timeout_s=120)
        warm = _config("warmup", Path(d), 2, workers, "1MiB")
        run_study(warm, backend, executor=ex, progress=False, write_artifacts=False)
        startup = time.perf_counter() - t0
        t1 = time.perf_counter()
        run = run_study(cfg, backend, executor=ex, progress=False, write_artifacts=False)
        total = time.perf_counter() - t1
        ex.shutdown()
    post = np.array(run.overhead_seconds)
    return {"trials": n_trials, "workers": workers, "startup_s": startup, "total_s": total,
            "per_trial_s": total / n_trials, "tell_log_mean_s": float(post.mean()),
            "tell_log_p90_s": float(np.quantile(post, 0.9))}


def bench_quickstart(study: str, workers: int, n_trials: int | None, model: str | None = None) -> dict:
    """Wall time of the quickstart study (real trials) with `workers` parallel trials."""
    from automix.driver import run_study
    from automix.study import load_study
    from automix.study_backend import AutomixBackend

    with tempfile.TemporaryDirectory() as d:
        cfg = load_study(study, workers=workers, storage=f"sqlite:///{d}/optuna.db",
                         tracking_uri=f"sqlite:///{d}/mlflow.db")
        if n_trials:
            cfg.n_trials = n_trials
        if model:
            cfg.model = model
        backend = AutomixBackend(cfg)
        t0 = time.perf_counter()
        run = run_study(cfg, backend, progress=False, write_artifacts=False)
        wall = time.perf_counter() - t0
    return {"workers": workers, "trials": run.target, "failed": run.failed, "wall_s": wall,
            "per_trial_s": wall / run.target, "front": len(run.front), "study_s": run.seconds,
            "ask_s": float(np.mean(run.ask_seconds)), "tell_s": float(np.mean(run.overhead_seconds)),
            "trial_s": float(np.mean(run.trial_seconds)) if run.trial_seconds else float("nan"),
            "in_flight": float(np.sum(run.trial_seconds)) / max(run.seconds, 1e-9)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="automix bench orchestration", description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=40, help="trivial trials for the overhead run")
    p.add_argument("--quickstart", default=None, help="study file for the parallelism run "
                   "(e.g. studies/quickstart.yaml); omitted: overhead only")
    p.add_argument("--quickstart-trials", type=int, default=None)
    p.add_argument("--model", default=None, help="override the study's model (same architecture, "
                   "e.g. a local copy of the built-in model)")
    args = p.parse_args(argv)
    rows = [bench_overhead(args.trials, w) for w in (1, 2)]
    print("\n## Orchestration overhead (trivial trial; Ray + Optuna SQLite + MLflow SQLite)\n")
    print("| workers | trials | Ray+stores start-up (s) | wall (s) | wall per trial (s) "
          "| driver tell+log+pareto mean (s) | p90 (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['trials']} | {r['startup_s']:.1f} | {r['total_s']:.2f} | "
              f"{r['per_trial_s']:.3f} | {r['tell_log_mean_s']:.3f} | {r['tell_log_p90_s']:.3f} |")
    if args.quickstart:
        qs = [bench_quickstart(args.quickstart, w, args.quickstart_trials, args.model) for w in (1, 2)]
        print("\n## Quickstart study, real trials on the built-in tiny model\n")
        print("| workers | trials | failed | wall incl. start-up (s) | search loop (s) | mean trial (s) "
              "| trials in flight (mean) | sampler ask (s) | tell+log (s) | front size |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in qs:
            print(f"| {r['workers']} | {r['trials']} | {r['failed']} | {r['wall_s']:.1f} | {r['study_s']:.1f} | "
                  f"{r['trial_s']:.1f} | {r['in_flight']:.2f} | {r['ask_s']:.2f} | {r['tell_s']:.2f} | {r['front']} |")
        print(f"\nsearch-loop speed-up with 2 workers: {qs[0]['study_s'] / qs[1]['study_s']:.2f}x")
    return 0
