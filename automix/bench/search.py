"""`automix bench search`: AutoMixSampler against Optuna's samplers over a suite of problems.

(``--problem builtin`` or ``smollm2`` runs the real-trial benchmark instead:
``automix.bench.search_real``.)

Every case of ``automix.bench.problems.SUITE`` (structurally different generated problems: sensitivity
spreads, interactions, noise, 42-224 linears, pruning and rank, memory known or learned, profile
exact, rough or none) is searched twice per sampler and seed:

* *front*: two objectives (accuracy up, memory down); value = hypervolume of the noiseless
  (accuracy, memory) of every evaluated configuration, normalised by the case's reference front;
* *budget*: accuracy under the case's memory budget (``Trial.set_constraint``); value = gap in
  points between the true best feasible accuracy and the true accuracy of the trial a user
  would pick (the best *observed* feasible one; chance if none is feasible).

AutoMixSampler is built as a study builds it: the profile's features, and the memory function
(vectorised) as a known objective / constraint when the case says memory is known. The tables
give every case, then the median and the worst case over the suite, and per case how AutoMix
compares with TPE. Results of each (case, mode, sampler, seed) are cached in a JSON file
(``--cache``) so a run can be resumed or extended; ``--parts timing`` adds the sampler's own
CPU time per proposal.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from automix.bench.report import emit_report
from automix.bench.search_real import main as real_main
from automix.search.batch import Shifted
from automix.search.oneshot import OneShotAllocator, OneShotSampler
from automix.search.sampler import AutoMixSampler
from automix.bench.problems import SUITE, ProblemCase, SyntheticProblem

SAMPLERS = ("automix", "oneshot", "random", "tpe", "nsgaii")
MODES = ("front", "budget")


def _case(name: str) -> ProblemCase:
    for c in SUITE:
        if c.name == name:
            return c
    raise ValueError(f"unknown case {name!r}; the suite has {[c.name for c in SUITE]}")


def make_sampler(name: str, problem: SyntheticProblem, seed: int, mode: str, n_trials: int):
    """The sampler as a study would build it for this problem."""
    import optuna

    known = problem.case.memory == "known"
    budget = problem.budget_gb()
    if name in ("automix", "oneshot"):
        memory = problem.memory_fn()
        features = problem.features()
        if name == "oneshot":
            if not known:
                return None  # a one-shot allocation needs the memory of each choice
            return OneShotSampler(score=features, cost=memory, search_space=problem.distributions,
                                  budget=budget if mode == "budget" else None, seed=seed)
        kw: dict[str, Any] = {"search_space": problem.distributions, "seed": seed,
                              "features": features,
                              "n_startup_trials": max(2, min(16, n_trials // 3))}
        if known and mode == "front":
            kw["known_objectives"] = {1: memory}
        if known and mode == "budget":
            kw["known_constraints"] = [Shifted(memory, budget)]
        return AutoMixSampler(**kw)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "nsgaii":
        return optuna.samplers.NSGAIISampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}; choose from {SAMPLERS}")


def run_study(name: str, case: ProblemCase, seed: int, n_trials: int, mode: str) -> dict | None:
    """One study of the seed's instance of the case; the levels of every trial, the observed
    accuracies and the sampler's CPU seconds (None: the sampler does not apply)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    problem = SyntheticProblem(case, seed=seed)
    sampler = make_sampler(name, problem, seed, mode, n_trials)
    if sampler is None:
        return None
    budget = problem.budget_gb()
    cpu = [0.0]
    directions = ["maximize"] if mode == "budget" else ["maximize", "minimize"]
    study = optuna.create_study(directions=directions, sampler=sampler)
    t0 = time.perf_counter()
    for _ in range(n_trials):
        c0 = time.process_time()
        trial = study.ask()
        x = problem.suggest(trial)
        cpu[0] += time.process_time() - c0
        acc = float(problem.observe(x[None])[0])
        mem = float(problem.memory_gb(x[None])[0])
        if mode == "budget":
            trial.set_constraint("memory", mem - budget)
            study.tell(trial, acc)
        else:
            study.tell(trial, [acc, mem])
    levels = [problem.levels_of(t.params).tolist() for t in study.trials]
    observed = [t.values[0] for t in study.trials]
    return {"levels": levels, "observed": observed, "seconds": time.perf_counter() - t0,
            "cpu": cpu[0]}


_PROBLEMS: dict[tuple[str, int], SyntheticProblem] = {}


def problem_for(case: ProblemCase, seed: int) -> SyntheticProblem:
    """The seed's instance for evaluation (its reference front is computed once)."""
    key = (case.name, seed)
    if key not in _PROBLEMS:
        _PROBLEMS[key] = SyntheticProblem(case, seed=seed)
    return _PROBLEMS[key]


def score(case: ProblemCase, seed: int, run: dict, mode: str, n: int, cache: dict,
          found: bool = False) -> float:
    """Front: normalised hypervolume of the first n trials. Budget: the best-feasible gap of
    the trial a user picks (the best observed); `found`: of the truly best trial evaluated
    (the search's part of the gap, without the noise in the pick)."""
    problem = problem_for(case, seed)
    X = np.array(run["levels"][:n])
    if mode == "front":
        return problem.normalized_hv(X)
    key = f"best/{case.name}/{seed}"
    if key not in cache:
        cache[key] = problem.best_feasible_accuracy()
    best = cache[key]
    feasible = problem.memory_gb(X) <= problem.budget_gb()
    if not feasible.any():
        return best - problem.chance
    if found:
        return best - float(problem.accuracy(X[feasible]).max())
    obs = np.where(feasible, np.array(run["observed"][:n]), -np.inf)
    return best - float(problem.accuracy(X[int(np.argmax(obs))][None])[0])


def oneshot_reference(case: ProblemCase, seed: int, mode: str, n: int) -> float:
    """What the one-shot allocation built from the same profile gives, with the exact memory
    function even where the sampler must learn memory (as a user who has the memory model would
    run it): budget, the true accuracy of its allocation at the budget; front, the hypervolume
    of its first ``n`` allocations down the budget axis."""
    problem = problem_for(case, seed)
    if mode == "budget":
        alloc = OneShotAllocator(score=problem.features(), cost=problem.memory_fn(),
                                 search_space=problem.distributions)
        x = alloc.allocate(problem.budget_gb())
        return problem.chance if x is None else float(problem.accuracy(problem.levels_of(x)[None])[0])
    props = OneShotSampler(score=problem.features(), cost=problem.memory_fn(),
                           search_space=problem.distributions).proposals(n)
    return problem.normalized_hv(np.array([problem.levels_of(p) for p in props]))


def lead(case: ProblemCase, seed: int, run: dict, mode: str, n: int, cache: dict) -> float:
    """AutoMix's lead over the one-shot after ``n`` trials: budget, points of true accuracy of
    the trial a user picks (the best observed feasible) over the one-shot allocation's; front,
    hypervolume over the one-shot's first n allocations'."""
    key = f"oneshot/{mode}/{case.name}/{seed}" + (f"/{n}" if mode == "front" else "")
    if key not in cache:
        cache[key] = oneshot_reference(case, seed, mode, n)
    problem = problem_for(case, seed)
    if mode == "front":
        return score(case, seed, run, mode, n, cache) - cache[key]
    return (float(problem.accuracy(np.array(_pick(problem, run, n))[None])[0])
            if _pick(problem, run, n) is not None else problem.chance) - cache[key]


def _pick(problem: SyntheticProblem, run: dict, n: int) -> list[int] | None:
    """The levels of the best observed feasible trial among the first n (None: none feasible)."""
    X = np.array(run["levels"][:n])
    feasible = problem.memory_gb(X) <= problem.budget_gb()
    if not feasible.any():
        return None
    obs = np.where(feasible, np.array(run["observed"][:n]), -np.inf)
    return X[int(np.argmax(obs))].tolist()


def proposal_time(case: ProblemCase, seed: int = 0, n_finished: int = 100,
                  n_proposals: int = 3, sampler: str = "automix") -> dict[str, list[float]]:
    """CPU seconds of each proposal (ask + suggest) with `n_finished` random trials done
    (the sampler's own cost: the trials are instant), in the budget mode."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    problem = SyntheticProblem(case, seed=seed)
    s = make_sampler(sampler, problem, seed, "budget", n_finished + n_proposals)
    study = optuna.create_study(directions=["maximize"], sampler=s)
    rng = np.random.default_rng(seed)
    budget = problem.budget_gb()
    X = np.stack([rng.integers(0, k, n_finished) for k in problem.n_levels()], axis=1)
    study.add_trials([
        optuna.trial.create_trial(params=problem.params_of(x), distributions=problem.distributions,
                                  values=[float(a)], constraints={"memory": float(m - budget)})
        for x, a, m in zip(X, problem.observe(X), problem.memory_gb(X))
    ])
    times: dict[str, list[float]] = {"wall": [], "cpu": []}
    for _ in range(n_proposals):
        t0, c0 = time.perf_counter(), time.process_time()
        trial = study.ask()
        x = problem.suggest(trial)
        times["wall"].append(time.perf_counter() - t0)
        times["cpu"].append(time.process_time() - c0)
        mem = float(problem.memory_gb(x[None])[0])
        trial.set_constraint("memory", mem - budget)
        study.tell(trial, float(problem.observe(x[None])[0]))
    return times


def _cached(cache: dict, path: Path | None, key: str, fn):
    if key not in cache:
        print(f"  running {key} ...", file=sys.stderr, flush=True)
        cache[key] = fn()
        if path is not None:
            path.write_text(json.dumps(cache))
    return cache[key]


def _found_table(found: dict[tuple[str, str], float | None], cases: list[ProblemCase],
                 samplers: list[str]) -> list[str]:
    """The budget mode's second table: the search's part of the gap (the truly best feasible
    trial evaluated), without the pick by noisy observed values."""
    lines = ["Of that gap, the search's part: the gap of the truly best feasible trial evaluated "
             "(the rest is the pick by noisy observed values).", "",
             "| case | " + " | ".join(samplers) + " |", "|---|" + "---|" * len(samplers)]
    for c in cases:
        lines.append(f"| {c.name} | " + " | ".join(_fmt(found[(c.name, s)], 2) for s in samplers) + " |")
    medians = []
    for s in samplers:
        v = [found[(c.name, s)] for c in cases if found[(c.name, s)] is not None]
        medians.append(_fmt(float(np.median(v)) if v else None, 2))
    return lines + ["| **median** | " + " | ".join(medians) + " |", ""]


def _lead_table(cache: dict, args: argparse.Namespace, cases: list[ProblemCase], seeds: list[int], mode: str,
                tag: str) -> list[str]:
    """AutoMix's lead over the one-shot allocation from the same profile (`lead`) after 8, 24
    and the run's trials: per case the median over seeds, then the median and worst case."""
    ns = sorted({n for n in (8, 24, args.trials) if n <= args.trials})
    unit = "hypervolume" if mode == "front" else "points of accuracy"
    lines = ["", f"AutoMix's lead over the one-shot allocation from the same profile ({unit}; "
                 "positive: AutoMix is better; the one-shot is given the exact memory function even "
                 "where AutoMix must learn it). Per case: median over seeds (worst seed).", "",
             "| case | " + " | ".join(f"{n} trials" for n in ns) + " |", "|---|" + "---|" * len(ns)]
    per_n: dict[int, list[float]] = {n: [] for n in ns}
    worst_n: dict[int, list[float]] = {n: [] for n in ns}
    digits = 3 if mode == "front" else 2
    for c in cases:
        cells = []
        for n in ns:
            vals = []
            for seed in seeds:
                run = cache.get(f"{mode}/{c.name}/automix/{seed}/{args.trials}{tag}")
                if run is not None:
                    vals.append(lead(c, seed, run, mode, n, cache))
            if vals:
                per_n[n].append(float(np.median(vals)))
                worst_n[n].append(min(vals))
                cells.append(f"{np.median(vals):+.{digits}f} ({min(vals):+.{digits}f})")
            else:
                cells.append("-")
        lines.append(f"| {c.name} | " + " | ".join(cells) + " |")
    lines.append("| **median** | " + " | ".join(
        f"{np.median(per_n[n]):+.{digits}f}" if per_n[n] else "-" for n in ns) + " |")
    lines.append("| **worst** | " + " | ".join(
        f"{min(worst_n[n]):+.{digits}f}" if worst_n[n] else "-" for n in ns) + " |")
    return lines


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="automix bench search", description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=1, help="seeds per case (instances)")
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--samplers", default="automix,oneshot,tpe,nsgaii,random",
                    help=f"comma-separated, from {','.join(SAMPLERS)}")
    ap.add_argument("--cases", default="", help="comma-separated case names (default: the suite)")
    ap.add_argument("--modes", default="front,budget")
    ap.add_argument("--parts", default="suite", help="suite,timing")
    ap.add_argument("--tag", default="", help="cache key suffix (a sampler version)")
    ap.add_argument("--cache", type=Path, default=None, help="JSON file to resume from")
    ap.add_argument("--out", type=Path, default=None, help="write the tables as markdown here")
    ap.add_argument("--problem", choices=["synthetic", "builtin", "smollm2"], default="synthetic",
                    help="generated problems (automix.bench.problems), or real trials on the built-in "
                         "model or SmolLM2-135M (automix.bench.search_real; see its --help)")
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--problem", default="synthetic")
    if pre.parse_known_args(argv)[0].problem in ("builtin", "smollm2"):
        return real_main(argv)
    args = ap.parse_args(argv)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    samplers = [s for s in args.samplers.split(",") if s]
    for s in samplers:
        if s not in SAMPLERS:
            raise ValueError(f"--samplers: unknown sampler {s!r}; choose from {SAMPLERS}")
    modes = [m for m in args.modes.split(",") if m]
    cases = [_case(c) for c in args.cases.split(",") if c] or list(SUITE)
    parts = set(args.parts.split(","))
    cache = json.loads(args.cache.read_text()) if args.cache and args.cache.exists() else {}
    tag = f"/{args.tag}" if args.tag else ""
    lines = ["# Search benchmark: a suite of generated mixed-precision problems", "",
             f"Command: `OPENBLAS_NUM_THREADS=1 automix bench search {' '.join(argv)}`  ",
             f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}; machine: "
             f"{platform.machine()} {os.cpu_count()} cores (shared), Python {platform.python_version()}",
             "", "Cases (`automix.bench.problems.SUITE`; see its docstring for the generator):", "",
             "| case | linears | params | prune | rank | spread | interaction | noise | memory | profile |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in cases:
        p = problem_for(c, 0)
        lines.append(f"| {c.name} | {c.n_linears} | {p.n_params} | "
                     f"{(c.prune_per + ' ' + str(list(c.prune))) if c.prune else '-'} | "
                     f"{list(c.rank) if c.rank else '-'} | {c.spread} | {c.interaction} | {c.noise} | "
                     f"{c.memory} | {c.profile} |")
    lines.append("")
    seeds = list(range(args.seeds))

    if "suite" in parts:
        results: dict[tuple[str, str, str], float | None] = {}
        found: dict[tuple[str, str], float | None] = {}  # budget mode, the search's part
        for mode in modes:
            for c in cases:
                for s in samplers:
                    vals, best = [], []
                    for seed in seeds:
                        run = _cached(cache, args.cache, f"{mode}/{c.name}/{s}/{seed}/{args.trials}"
                                      + (tag if s.startswith("automix") else ""),
                                      lambda: run_study(s, c, seed, args.trials, mode))
                        if run is not None:
                            vals.append(score(c, seed, run, mode, args.trials, cache))
                            if mode == "budget":
                                best.append(score(c, seed, run, mode, args.trials, cache, found=True))
                    results[(mode, c.name, s)] = float(np.median(vals)) if vals else None
                    if mode == "budget":
                        found[(c.name, s)] = float(np.median(best)) if best else None
            if args.cache is not None:
                args.cache.write_text(json.dumps(cache))
        for mode in modes:
            what = ("hypervolume at {n} trials (1.0 = reference front; higher is better)"
                    if mode == "front" else
                    "best-feasible gap at {n} trials (points below the true best within the "
                    "budget; lower is better)")
            lines += [f"## {mode}: " + what.format(n=args.trials), "",
                      "| case | " + " | ".join(samplers) + " |", "|---|" + "---|" * len(samplers)]
            digits = 3 if mode == "front" else 2
            for c in cases:
                lines.append(f"| {c.name} | " + " | ".join(
                    _fmt(results[(mode, c.name, s)], digits) for s in samplers) + " |")
            for label, agg in (("median", np.median), ("worst", np.min if mode == "front" else np.max)):
                row = []
                for s in samplers:
                    v = [results[(mode, c.name, s)] for c in cases if results[(mode, c.name, s)] is not None]
                    row.append(_fmt(float(agg(v)) if v else None, digits))
                lines.append(f"| **{label}** | " + " | ".join(row) + " |")
            if "automix" in samplers:
                lines += _lead_table(cache, args, cases, seeds, mode, tag)
            if "automix" in samplers and "tpe" in samplers:
                better = (lambda a, t: a >= t) if mode == "front" else (lambda a, t: a <= t)
                diffs = [(c.name, results[(mode, c.name, "automix")], results[(mode, c.name, "tpe")])
                         for c in cases]
                losses = [n for n, a, t in diffs if not better(a, t)]
                lines += ["", f"AutoMix at least as good as TPE in {len(cases) - len(losses)} of "
                              f"{len(cases)} cases" + (f" (not in: {', '.join(losses)})" if losses else "") + "."]
            lines.append("")
            if mode == "budget":
                lines += _found_table(found, cases, samplers)

    if "timing" in parts:
        lines += ["## Sampler CPU time per proposal with 100 finished trials (budget mode)", "",
                  "| case | params | median CPU s | max CPU s |", "|---|---|---|---|"]
        for c in cases:
            t = _cached(cache, args.cache, f"timing/{c.name}{tag}", lambda: proposal_time(c))
            lines.append(f"| {c.name} | {problem_for(c, 0).n_params} | "
                         f"{statistics.median(t['cpu']):.2f} | {max(t['cpu']):.2f} |")
        lines.append("")

    emit_report(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
