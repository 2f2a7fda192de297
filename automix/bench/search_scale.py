"""`python -m automix.bench.search_scale`: the sampler's own cost on full-size search spaces.

A study of a real model builds AutoMixSampler with ``make_sampler`` over an ``AutomixBackend``
whose memory objective and budget come from the analytic memory model
(``automix.trial.memory.estimate``). This benchmark builds exactly that for config-only model
directories of two shapes -- Llama-7B (32 blocks: 224 linears) and SmolLM2-135M (30 blocks:
210 linears) -- with ``search_spaces/llama-7b.yaml`` (bits per linear, prune ratio and LoRA rank
per block: 288 and 270 parameters, plus the method), adds `--finished` finished trials (random
configurations scored by a synthetic per-layer damage, with the budget constraint as the
driver sets it) and times the next proposals (CPU seconds of ``study.ask()``: the sampler's
work; the trials themselves are not run).

``--memory scalar`` gives the sampler the per-configuration ``predicted_memory`` (one
``estimate`` per candidate: what a study did before the vectorised form), ``--memory batch``
the backend's ``memory_function()`` (tables of the same model, checked against it; with
gradient checkpointing, the study default, a sum plus the maximum of per-block tables). The
table also shows the one-time cost of building the tables and their check against the model.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from automix.bench.report import emit_report
from automix.config.study import StudyConfig
from automix.study.backend import AutomixBackend, make_sampler
from automix.study.loop import ask_configuration

_SPACE = Path(__file__).resolve().parents[2] / "search_spaces" / "llama-7b.yaml"
SHAPES = {
    "llama-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                     tie_word_embeddings=False),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                         tie_word_embeddings=True),
}


def make_backend(shape: str, workdir: Path, budget_frac: float = 0.5) -> AutomixBackend:
    """A backend over a config-only Llama-family model directory of the given shape; the
    budget half-way between the all-3-bit and all-4-bit configurations (no pruning)."""
    from transformers import LlamaConfig  # lazy: transformers is slow to import

    model_dir = workdir / shape
    LlamaConfig(**SHAPES[shape]).save_pretrained(model_dir)

    def cfg(budget: int) -> StudyConfig:
        return StudyConfig.model_validate({
            "name": f"scale-{shape}", "model": str(model_dir), "task": "lm",
            "methods": ["qlora"], "search_space": {"path": str(_SPACE)},
            "objectives": {"quality": "perplexity", "memory": "predicted"},
            "memory_budget": budget, "n_trials": 200, "sampler": "automix",
            "sensitivity": "off", "trial": {"batch_size": 4, "seq_len": 256}})

    probe = AutomixBackend(cfg(10**12))
    mem = {}
    for b in (3, 4):
        params = {n: (b if n.startswith("bits.") else min(d.choices)) for n, d in probe.space.distributions.items()}
        mem[b] = probe.predicted_memory({"method": "qlora", **params})
    return AutomixBackend(cfg(int(mem[3] + budget_frac * (mem[4] - mem[3]))))


def _loss(backend: AutomixBackend, params: dict[str, Any], rng: np.random.Generator) -> float:
    """A synthetic per-layer damage: log-normal sensitivity x 4^-(bits-2), plus pruning."""
    total = 0.0
    for name, value in params.items():
        if name.startswith("bits."):
            total += backend._sens[name] * 4.0 ** -(float(value) - 2)
        elif name.startswith("prune."):
            total += 2.0 * float(value) ** 1.5
    return total + float(rng.normal(0, 0.01))


def time_proposals(shape: str, memory: str, n_finished: int, n_proposals: int, seed: int = 0) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        backend = make_backend(shape, Path(tmp))
        rng = np.random.default_rng(seed)
        backend._sens = {n: float(rng.lognormal(0, 0.8)) for n in backend.distributions if n.startswith("bits.")}
        budget = float(backend.cfg.memory_budget)
        t0 = time.process_time()
        if memory == "batch":
            fn = backend.memory_function()
            build = {"build_cpu_s": time.process_time() - t0, "calls": fn.n_calls, "exact": fn.exact,
                     "tables": fn.use_tables, "pairs": len(fn.pairs), "max_error": fn.max_error,
                     "terms": fn.n_terms}
        else:
            build = {"build_cpu_s": 0.0, "calls": 0, "exact": None, "pairs": 0, "max_error": None, "terms": 0}
        sampler = make_sampler(backend.cfg, _ScalarView(backend) if memory == "scalar" else backend)
        study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
        dists = backend.distributions
        trials = []
        for _ in range(n_finished):
            params = {n: d.choices[int(rng.integers(len(d.choices)))] for n, d in dists.items()}
            m = backend.predicted_memory(params)
            trials.append(optuna.trial.create_trial(params=params, distributions=dists,
                                                    values=[_loss(backend, params, rng), m],
                                                    constraints={"memory_budget": m - budget}))
        study.add_trials(trials)
        cpu, wall = [], []
        for _ in range(n_proposals):
            t0, c0 = time.perf_counter(), time.process_time()
            trial, params, m = ask_configuration(study, backend, budget)  # the driver's step (+1 memory call)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - t0)
            study.tell(trial, [_loss(backend, params, rng), m])
        return {"n_params": len(dists), "cpu": cpu, "wall": wall, **build}


class _ScalarView:
    """The backend as make_sampler saw it before the vectorised memory: no memory_function,
    features without their batch form."""

    def __init__(self, backend: AutomixBackend) -> None:
        self._b = backend
        self.distributions, self.space, self.cfg = backend.distributions, _ScalarSpace(backend.space), backend.cfg
        self.predicted_memory = backend.predicted_memory

    def sensitivity_scores(self):
        return self._b.sensitivity_scores()


class _ScalarSpace:
    def __init__(self, space: Any) -> None:
        self._s = space

    def feature_fn(self, scores):
        f = self._s.feature_fn(scores)
        return lambda params: f(params)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m automix.bench.search_scale", description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="llama-7b,smollm2-135m")
    ap.add_argument("--memory", default="scalar,batch")
    ap.add_argument("--finished", type=int, default=100)
    ap.add_argument("--proposals", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(argv)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    lines = ["# Sampler cost at full scale (analytic memory model in the loop)", "",
             f"Command: `OPENBLAS_NUM_THREADS=1 python -m automix.bench.search_scale {' '.join(argv)}`  ",
             f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}; machine: "
             f"{platform.machine()} {os.cpu_count()} cores (shared), Python {platform.python_version()}",
             "", f"| shape | params | memory | CPU s per proposal at {args.finished} trials (each) | "
                 "median | table build CPU s | model calls | pairs | check |",
             "|---|---|---|---|---|---|---|---|---|"]
    for shape in [s for s in args.shapes.split(",") if s]:
        for memory in [m for m in args.memory.split(",") if m]:
            print(f"  {shape} / {memory} ...", file=sys.stderr, flush=True)
            r = time_proposals(shape, memory, args.finished, args.proposals)
            peak = f" (sum + max of {r['terms']} block terms)" if r["terms"] else ""
            check = ("-" if r["exact"] is None else f"exact{peak}" if r["exact"] else
                     f"within {r['max_error']:.1e} (relative; exact near the budget)" if r["tables"]
                     else "failed: per-candidate calls")
            lines.append(f"| {shape} | {r['n_params']} | {memory} | " + ", ".join(f"{c:.2f}" for c in r["cpu"])
                         + f" | {statistics.median(r['cpu']):.2f} | {r['build_cpu_s']:.1f} | {r['calls']} | "
                         f"{r['pairs']} | {check} |")
    emit_report(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
