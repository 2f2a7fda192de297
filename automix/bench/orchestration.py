"""`automix bench orchestration`: what the study machinery costs per trial, and its parallelism.

Two measurements:

1. Overhead: a study whose trial function does (almost) nothing, run through the real driver
   (Ray dispatch, Optuna SQLite storage, MLflow SQLite tracking with Pareto tags). Wall time per
   trial minus the trial function's own time is the orchestration overhead (target < 1 s).
2. Parallelism: the quickstart study (real `run_trial` on the built-in tiny model) with 1 and
   2 workers; with 2 workers on 2 cores the trials overlap.

The trivial trial is `automix.testing.synthetic_trial`, which the orchestration tests use too.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from automix.config.study import StudyConfig, load_study
from automix.testing import SyntheticBackend
from automix.study.backend import AutomixBackend
from automix.study.executors import RayExecutor
from automix.study.loop import run_study

__all__ = ["main"]

def _config(name: str, workdir: Path, n_trials: int, workers: int, budget: str):
    return StudyConfig(
        name=name, methods=["lora", "qlora"], task="boolq", search_space={"path": "synthetic"},
        memory_budget=budget, n_trials=n_trials, workers=workers, sampler="random",
        storage=f"sqlite:///{workdir}/optuna.db", tracking_uri=f"sqlite:///{workdir}/mlflow.db",
        timeout_per_trial=120,
    )


def bench_overhead(n_trials: int, workers: int) -> dict:
    """Per-trial wall time of a study of trivial trials through Ray + Optuna + MLflow."""
    with tempfile.TemporaryDirectory() as d:
        cfg = _config("overhead", Path(d), n_trials, workers, "1MiB")
        backend = SyntheticBackend(cfg.methods, n_blocks=2, cols=16)
        # Warm-up (Ray start, MLflow schema creation) is not per-trial cost: measure it apart.
        t0 = time.perf_counter()

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
