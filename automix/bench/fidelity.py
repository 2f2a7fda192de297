"""`automix bench fidelity`: multi-fidelity search on real trials of the built-in model.

Does stopping hopeless trials early reach the same front for fewer fine-tuning steps? Each arm
is a study asked and told the way the driver does it (`automix.study.loop`): the sampler
`make_sampler` builds, and for the pruned arms the study's companion single-objective study
with the pruner (`automix.study.fidelity`), fed with every trial's intermediate evaluations
(step 0 right after initialisation, then every ``--report-every`` steps). A pruned trial is
told PRUNED with the part of its curve it reached, as the driver tells it, so the sampler's
low-fidelity model sees it.

Every configuration's trial is a real `automix.trial.run_trial` (cached by configuration, see
`automix.bench.search_real.TrialCache`), run once to the end with its intermediate
evaluations: training is deterministic per configuration, so a trial stopped at step s is
exactly the first s steps of that run, and the benchmark charges it s fine-tuning steps.

Arms: AutoMix at full fidelity for ``--trials`` trials (the target: its hypervolume), AutoMix
with the Pareto pruner (its defaults; on dominance alone after 4 peers, as it was before its
``min_gain`` screening: ``-dominance``; from step 5 on: ``-warmup``) and with Optuna's median
pruner, and Optuna's TPE with its
HyperbandPruner (the anchor), the pruned arms within half the full arm's steps (``--share``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from automix.bench.search_real import (TrialCache, add_trial_arguments, hv_bounds, make_config, normalized_hv,
                                       with_threads)
from automix.config.study import PrunerSettings, format_size
from automix.study.backend import AutomixBackend, make_sampler
from automix.study.fidelity import FidelityLedger, make_pruner
from automix.study.loop import ask_configuration
from automix.trial.models import model_fingerprint

# arm -> (study sampler, pruner, pruner options)
ARMS = {
    "automix": ("automix", "none", {}),
    "automix+pareto": ("automix", "pareto", {}),
    "automix+pareto-dominance": ("automix", "pareto", {"min_gain": 0.0, "n_startup_trials": 4}),
    "automix+pareto-warmup": ("automix", "pareto", {"n_warmup_steps": 5}),
    "automix+median": ("automix", "median", {}),
    "tpe+hyperband": ("tpe", "hyperband", {}),
    "tpe": ("tpe", "none", {}),
}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="automix bench fidelity", description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=30, help="trials of the full-fidelity arms")
    ap.add_argument("--share", type=float, default=0.5,
                    help="fine-tuning steps of the pruned arms, as a share of the full arm's")
    ap.add_argument("--max-trials", type=int, default=90, help="most trials a pruned arm may start")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--report-every", type=int, default=5, help="steps between intermediate evaluations")
    add_trial_arguments(ap)
    return ap


def _config(args: argparse.Namespace, sampler: str, pruner: str, seed: int, options: dict | None = None) -> Any:
    cfg = make_config(args, sampler, seed)
    return cfg.model_copy(update={"sampler": sampler, "pruner": PrunerSettings(
        name=pruner, eval_every=args.report_every, options=options or {})})


def run_arm(arm: str, seed: int, args: argparse.Namespace, backend: Any, cache: TrialCache) -> list[dict]:
    """One study of the arm; returns its trials in order: params, perplexity (None unless it
    completed), memory, the fine-tuning steps it was charged, and its state."""
    sampler_name, pruner_name, options = ARMS[arm]
    cfg = _config(args, sampler_name, pruner_name, seed, options)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=make_sampler(cfg, backend))
    pruner = make_pruner(cfg)
    ledger = FidelityLedger(cfg, study, pruner) if pruner is not None else None  # as the driver keeps it
    full = args.trials * args.steps
    limit = full if pruner is None else args.share * full
    out: list[dict] = []
    used = 0
    while (len(out) < args.trials if pruner is None else used < limit and len(out) < args.max_trials):
        trial, params, mem = ask_configuration(study, backend, cfg.memory_budget)
        r = cache.result(backend.payload(params))
        ppl = r.get("perplexity") if r.get("status") == "ok" else None
        curve = [list(p) for p in r.get("eval_curve") or []]
        row = {"params": params, "memory": mem, "perplexity": None, "steps": args.steps, "state": "COMPLETE"}
        stopped_at = None
        if ledger is not None and ppl is not None:
            ledger.open(trial.number, mem)
            for k, (step, value) in enumerate(curve):
                if ledger.report(trial.number, int(step), value):
                    stopped_at, curve = int(step), curve[:k + 1]
                    break
            ledger.close(trial.number, TrialState.COMPLETE if stopped_at is None else TrialState.PRUNED, ppl)
        trial.set_user_attr("eval_curve", curve)
        if ppl is None or not np.isfinite(ppl):
            study.tell(trial, state=TrialState.FAIL)
            row["state"] = "FAIL"
        elif stopped_at is not None:
            study.tell(trial, state=TrialState.PRUNED)
            row.update(state="PRUNED", steps=stopped_at)
        else:
            study.tell(trial, [float(ppl), mem])
            row["perplexity"] = float(ppl)
        used += row["steps"]
        out.append(row)
    return out


def hv_at_steps(run: list[dict], steps: int, budget: float, bounds: Any) -> float:
    """Hypervolume of the trials finished within the first `steps` fine-tuning steps."""
    total, k = 0, 0
    for t in run:
        if total + t["steps"] > steps:
            break
        total += t["steps"]
        k += 1
    return normalized_hv(run, k, budget, bounds)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return with_threads(args.threads, _run, args, argv)


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    arms = [a for a in args.arms.split(",") if a]
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise ValueError(f"--arms: unknown {bad}; choose from {list(ARMS)}")
    backend = AutomixBackend(_config(args, "automix", "pareto", 0))  # specs with intermediate evaluations
    budget = float(backend.cfg.memory_budget)
    fp = model_fingerprint(args.model)
    cache = TrialCache(args.cache, fp)
    runs: dict[tuple[str, int], list[dict]] = {}
    t0 = time.perf_counter()
    for arm in arms:
        for seed in range(args.seeds):
            key = json.dumps(["fidelity", fp, {k: str(v) for k, v in vars(args).items()
                                               if k not in ("seeds", "arms", "cache", "out", "threads")}, arm, seed])
            if key not in cache.runs:
                print(f"  running {arm} seed {seed} ...", file=sys.stderr, flush=True)
                cache.runs[key] = run_arm(arm, seed, args, backend, cache)
                cache.save()
            runs[(arm, seed)] = cache.runs[key]
    bounds = hv_bounds(list(runs.values()), budget)
    full = args.trials * args.steps
    marks = sorted({int(full * f) for f in (0.1, 0.25, 0.5, 0.75, 1.0)})
    target = float(np.median([normalized_hv(runs[("automix", s)], args.trials, budget, bounds)
                              for s in range(args.seeds)])) if "automix" in arms else None
    lines = [
        "# Multi-fidelity search: real trials on the built-in model", "",
        f"Command: `OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 automix bench fidelity {' '.join(argv)}`  ",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}; machine: {platform.machine()} "
        f"{os.cpu_count()} cores (shared), Python {platform.python_version()}; built-in model `{fp}`; "
        f"{(time.perf_counter() - t0) / 60:.1f} min (trials cached in `--cache`).", "",
        f"Trials: `run_trial` on `builtin:tiny`, methods {args.methods}, {args.steps} fine-tuning steps "
        f"(batch {args.batch_size} x {args.seq_len}, lr {args.lr}), final held-out perplexity on "
        f"{args.eval_batches} batches; intermediate evaluations on 1 batch at step 0 (right after "
        f"initialisation) and every {args.report_every} steps. Objectives: perplexity and predicted "
        f"memory, budget {format_size(budget)}. The full-fidelity arms run {args.trials} trials "
        f"({full} fine-tuning steps); the pruned arms stop when they have used {args.share:.0%} of "
        f"that ({int(args.share * full)} steps) or started {args.max_trials} trials. A pruned trial "
        "is charged the steps it ran (one stopped right after initialisation: 0 steps, but a "
        "preparation and an evaluation: see the trials column).", "",
        "Hypervolume of the feasible complete trials' (log perplexity, memory), normalised by the "
        "non-dominated set of every configuration any arm completed (as in "
        "`benchmarks/search_builtin.md`); median over seeds.", "",
        "| arm | " + " | ".join(f"{m} steps" for m in marks) + " | trials started | pruned | "
        "steps to the target |",
        "|---|" + "---|" * (len(marks) + 3)]
    for arm in arms:
        rs = [runs[(arm, s)] for s in range(args.seeds)]
        med = [float(np.median([hv_at_steps(r, m, budget, bounds) for r in rs])) for m in marks]
        started = int(np.median([len(r) for r in rs]))
        pruned = float(np.mean([sum(t["state"] == "PRUNED" for t in r) / max(1, len(r)) for r in rs]))
        reach = []
        for r in rs:
            total, hit = 0, None
            for k, t in enumerate(r, start=1):
                total += t["steps"]
                if target is not None and normalized_hv(r, k, budget, bounds) >= target - 1e-9:
                    hit = total
                    break
            reach.append(hit)
        reached = [x for x in reach if x is not None]
        reach_s = (f"{int(np.median(reached))} ({len(reached)}/{len(rs)} seeds)" if reached else "not reached")
        used = [sum(t["steps"] for t in r) for r in rs]
        lines.append(f"| {arm} | " + " | ".join(
            f"{v:.3f}" if m <= max(used) else "-" for v, m in zip(med, marks))
            + f" | {started} | {pruned:.0%} | {reach_s} |")
    if target is not None:
        lines += ["", f"Target: AutoMix's median hypervolume after {args.trials} full trials, {target:.3f}. "
                  "'Steps to the target': fine-tuning steps an arm used when its hypervolume first "
                  "reached it (median over the seeds that reached it)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0
