"""`automix bench search --problem builtin|smollm2`: the samplers on real trials of a real model.

Every trial is a real `automix.trial.run_trial` on ``builtin:tiny`` (``--problem builtin``) or
SmolLM2-135M on the CPython documentation (``--problem smollm2``, the settings of
`studies/smollm2-135m.yaml`), task ``lm``, built the
way a study builds it: :class:`automix.study.backend.AutomixBackend` resolves the search space
on the model's layers, computes the known memory objective with ``automix.trial.memory`` and writes
the `TrialSpec`; the samplers are the ones `make_sampler` gives a study (AutoMixSampler with the
memory objective, the budget as a known constraint and the sensitivity-profile features; TPE,
NSGA-II and random), plus Optuna's GPSampler. Objectives: perplexity and predicted memory
bytes, both minimised; every trial carries the budget constraint as the driver sets it.

Trial results are memoised by (model fingerprint, trial settings, configuration, trial seed)
in a JSON file (``--cache``): a run resumes where it stopped and a configuration proposed by
several samplers or seeds runs once. Prints (and writes with ``--out``) hypervolume against
the number of trials and the predictor's quality as real trials accumulate.
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
from automix.bench.search_picks import cost_section, memory_at, oneshot_configs, picks_section, uniform_configs
from automix.config.study import StudyConfig, format_size, load_study, parse_size
from automix.search._codec import Codec
from automix.search.pareto import normalized_hypervolume
from automix.search.predictors import PerformancePredictor, kendall_tau
from automix.study.backend import AutomixBackend, make_sampler
from automix.study.loop import ask_configuration
from automix.trial import TrialSpec, run_trial
from automix.trial.models import model_fingerprint

SAMPLERS = ("automix", "oneshot", "oneshot-bracketed", "oneshot-lowest", "uniform", "random", "tpe", "nsgaii", "gp")
_STUDY_SAMPLER = {"automix": "automix", "oneshot": "oneshot", "random": "random", "tpe": "tpe",
                  "nsgaii": "nsga2"}
# baselines of one trial per method, not studies (automix.bench.search_picks)
_BASELINES = ("oneshot", "oneshot-bracketed", "oneshot-lowest", "uniform")
# samplers whose choices never read an infeasible trial's objective values (Optuna 5's TPE,
# NSGA-II and random rank infeasible trials by their constraint violation alone): their
# configurations over the budget are told a placeholder instead of being trained
_VIOLATION_ONLY = ("tpe", "nsgaii", "random")
_ROOT = Path(__file__).resolve().parents[2]
_SPACE = _ROOT / "search_spaces" / "quickstart.yaml"


def _study_problem(study_file: Path) -> dict[str, Any]:
    """A problem's defaults read from its study file: the model, data, space, methods, budget and
    trial settings the study runs with (so the benchmark follows the study when it changes)."""
    cfg = load_study(study_file)
    return {"model": cfg.model, "data": cfg.data, "space": cfg.resolve_path(cfg.search_space.path),
            "methods": ",".join(cfg.methods), "budget": str(cfg.memory_budget), "steps": cfg.trial.steps,
            "eval_batches": cfg.trial.eval_batches, "batch_size": cfg.trial.batch_size,
            "seq_len": cfg.trial.seq_len, "lr": cfg.trial.lr}


# The real-trial problems: the model, its data, the space and the trial settings of a study on it
# (builtin: this benchmark's own settings on the quickstart's model and space; smollm2: those of
# studies/smollm2-135m.yaml, on the CPython docs), read when a problem is chosen.
PROBLEMS: dict[str, Any] = {
    "builtin": lambda: {"model": "builtin:tiny", "data": None, "space": _SPACE, "methods": "qlora,loftq",
                        "budget": "11MiB", "steps": 20, "eval_batches": 4, "batch_size": 4, "seq_len": 64,
                        "lr": 1e-3},
    "smollm2": lambda: _study_problem(_ROOT / "studies" / "smollm2-135m.yaml"),
}


def make_config(args: argparse.Namespace, sampler: str = "automix", seed: int = 0,
                budget: float | None = None) -> Any:
    """The study configuration these trials would have in `studies/*.yaml`."""
    return StudyConfig.model_validate({
        "name": "bench-search-real", "model": args.model, "task": "lm",
        **({"data": args.data} if args.data else {}),
        "methods": args.methods.split(","), "search_space": {"path": str(args.space)},
        "objectives": {"quality": "perplexity", "memory": "predicted"},
        "memory_budget": budget if budget is not None else parse_size(args.budget), "n_trials": args.trials,
        "sampler": _STUDY_SAMPLER.get(sampler, "random"), "sampler_seed": seed,
        "trial": {"steps": args.steps, "seed": args.trial_seed, "lr": args.lr,
                  "batch_size": args.batch_size, "seq_len": args.seq_len,
                  "eval_batches": args.eval_batches},
    })


class TrialCache:
    """Real trial results by configuration, persisted as JSON after every new trial."""

    def __init__(self, path: Path | None, model_fingerprint: str) -> None:
        self.path, self.fp = path, model_fingerprint
        data = json.loads(path.read_text()) if path is not None and path.exists() else {}
        self.trials: dict[str, dict] = data.get("trials", {})
        self.runs: dict[str, list[dict]] = data.get("runs", {})
        self.new_trials = 0

    def key(self, spec: dict) -> str:
        return json.dumps({"model": self.fp, "spec": spec}, sort_keys=True)

    def result(self, spec: dict) -> dict:
        """The trial's result, from the cache or by running it."""
        k = self.key(spec)
        if k not in self.trials:
            r = run_trial(TrialSpec.model_validate(spec)).to_dict()
            self.trials[k] = {f: r.get(f) for f in ("status", "perplexity", "accuracy", "prepare_seconds",
                                                     "train_seconds", "train_cpu_seconds", "eval_seconds",
                                                     "failure_reason", "eval_curve")}
            self.new_trials += 1
            self.save()
        return self.trials[k]

    def save(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"trials": self.trials, "runs": self.runs}))


def _sampler(name: str, cfg: Any, backend: Any, seed: int) -> Any:
    import optuna

    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name not in _STUDY_SAMPLER:
        raise ValueError(f"--samplers: unknown sampler {name!r}; choose from {SAMPLERS}")
    return make_sampler(cfg, backend)


def run_study(name: str, seed: int, n_trials: int, args: argparse.Namespace, backend: Any,
              cache: TrialCache, budget: float | None = None) -> list[dict]:
    """One study of `n_trials` real trials, asked and told like the driver does; returns the
    trials in order: params, perplexity (None when the trial failed), memory, ask seconds."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = make_config(args, name, seed, budget)
    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=_sampler(name, cfg, backend, seed))
    out = []
    for _ in range(n_trials):
        t0 = time.process_time()
        trial, params, mem = ask_configuration(study, backend, cfg.memory_budget)
        ask_s = time.process_time() - t0
        if name in _VIOLATION_ONLY and mem > cfg.memory_budget:
            study.tell(trial, [1e9, mem])  # never read: see _VIOLATION_ONLY
            out.append({"params": params, "perplexity": None, "memory": mem, "ask_cpu_s": ask_s, "skipped": True})
            continue
        r = cache.result(backend.payload(params))
        ppl = r.get("perplexity")
        if r.get("status") == "ok" and ppl is not None and np.isfinite(ppl):
            study.tell(trial, [float(ppl), mem])
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            ppl = None
        out.append({"params": params, "perplexity": ppl, "memory": mem, "ask_cpu_s": ask_s})
    return out


def _feasible(run: list[dict], budget: float) -> list[dict]:
    """The run's finished trials (a perplexity) within the memory budget."""
    return [t for t in run if t["perplexity"] is not None and t["memory"] <= budget]


def _points(run: list[dict], budget: float, k: int | None = None) -> np.ndarray:
    """(log perplexity, memory) of the feasible, finished trials among the first k."""
    rows = [(np.log(t["perplexity"]), t["memory"]) for t in _feasible(run[:k], budget)]
    return np.array(rows, dtype=float).reshape(-1, 2)


def hv_bounds(runs: list[list[dict]], budget: float) -> tuple[np.ndarray, np.ndarray, float]:
    """(ideal, reference point, reference hypervolume) from every evaluated configuration: the
    reference set is the non-dominated set of all feasible trials of all samplers and seeds;
    the reference point is the worst feasible log-perplexity (+5% of the range) at the budget."""
    allp = np.vstack([_points(r, budget) for r in runs])
    if not len(allp):
        raise ValueError("no feasible finished trial: raise --budget or check the trials")
    ideal = allp.min(axis=0)
    span = np.ptp(allp, axis=0) + 1e-12
    ref = np.array([allp[:, 0].max() + 0.05 * span[0], budget])
    ref_hv = normalized_hypervolume(allp, ideal, ref)
    return ideal, ref, ref_hv


def best_feasible(run: list[dict], budget: float) -> float:
    """The lowest perplexity among the run's finished trials within the budget (inf if none)."""
    return min((t["perplexity"] for t in _feasible(run, budget)), default=float("inf"))


def format_best(values: list[float]) -> str:
    """Median and min..max of per-seed best feasible perplexities ("none feasible" as such)."""
    if all(np.isinf(v) for v in values):
        return "none feasible"
    return f"{statistics.median(values):.2f} ({min(values):.2f}..{max(values):.2f})"


def normalized_hv(run: list[dict], k: int, budget: float, bounds) -> float:
    """Hypervolume of the run's first k trials in the box from the ideal to the reference point,
    as a fraction of the reference set's (`hv_bounds`)."""
    ideal, ref, ref_hv = bounds
    p = _points(run, budget, k)
    if not len(p) or ref_hv <= 0:
        return 0.0
    return normalized_hypervolume(p, ideal, ref) / ref_hv


def predictor_quality(run: list[dict], others: list[dict], backend: Any, seed: int,
                      sizes=(10, 20, 30, 40)) -> list[dict]:
    """Fit the sampler's predictor on the first n finished trials of `run` (the features the
    sampler uses: encoded params + sensitivity-profile features) and score it on every other
    evaluated configuration: Kendall tau and RMSE of perplexity."""
    train = [r for r in run if r["perplexity"] is not None]
    if len(train) < min(sizes):
        return []
    codec = Codec(dict(backend.distributions))
    scores = backend.sensitivity_scores()
    feats = backend.space.feature_fn(scores)

    def X(rows):
        G = np.array([codec.encode(r["params"]) for r in rows])
        extra = np.array([feats(r["params"]) for r in rows])
        return np.hstack([codec.features(G), extra])

    seen = {json.dumps(r["params"], sort_keys=True) for r in train}
    test, test_keys = [], set()
    for r in others:
        key = json.dumps(r["params"], sort_keys=True)
        if r["perplexity"] is not None and key not in seen and key not in test_keys:
            test.append(r)
            test_keys.add(key)
    rows = []
    if not test:
        return rows
    Xte, yte = X(test), np.array([r["perplexity"] for r in test])
    for n in sizes:
        if n > len(train):
            break
        t0 = time.process_time()
        p = PerformancePredictor(seed=seed).fit(X(train[:n]), np.array([r["perplexity"] for r in train[:n]]))
        mu, sd = p.predict(Xte)
        rows.append({"n": n, "model": p.chosen, "tau": kendall_tau(yte, mu),
                     "rmse": float(np.sqrt(np.mean((mu - yte) ** 2))), "n_test": len(test),
                     "mean_std": float(sd.mean()), "fit_s": time.process_time() - t0})
    return rows


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="automix bench search --problem builtin|smollm2",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--problem", choices=sorted(PROBLEMS), default="builtin",
                    help="the model, data, space and trial settings (each can be overridden)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--samplers", default="automix,random,tpe,nsgaii,gp")
    ap.add_argument("--short", default="gp:20",
                    help="SAMPLER:TRIALS for a slow sampler given fewer trials ('' = none)")
    ap.add_argument("--budgets", default="",
                    help="comma-separated budgets: sizes (345MiB), 'study' (--budget) or qF (all 3-bit plus F%% "
                         "of the way to all 4-bit); default: --budget")
    ap.add_argument("--disjoint-batches", type=int, default=0,
                    help="judge each pick on this many 16-row batches of held-out python-docs documents no trial "
                         "evaluated (0 = off; needs --data builtin:python-docs)")
    ap.add_argument("--merge", type=Path, action="append", default=[],
                    help="another invocation's --cache file to read results from (repeatable)")
    ap.add_argument("--only-runs", action="store_true", help="run the studies and baselines, write no report")
    ap.add_argument("--tag", default="", help="a sampler version: studies are run again under a new tag (trial "
                                              "results stay cached by configuration)")
    add_trial_arguments(ap)
    return ap


def add_trial_arguments(ap: argparse.ArgumentParser) -> None:
    """The trial settings `make_config` reads, the trial cache and the output: shared by the
    benchmarks that run real built-in trials in this process."""
    ap.add_argument("--model", default="builtin:tiny")
    ap.add_argument("--data", default=None, help="task data (default: the task's built-in corpus)")
    ap.add_argument("--methods", default="qlora,loftq")
    ap.add_argument("--space", type=Path, default=_SPACE)
    ap.add_argument("--budget", default="11MiB", help="memory budget (as in a study file)")
    ap.add_argument("--steps", type=int, default=20, help="fine-tuning steps per trial")
    ap.add_argument("--eval-batches", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--trial-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the trials")
    ap.add_argument("--cache", type=Path, default=None, help="JSON trial cache to resume from")
    ap.add_argument("--out", type=Path, default=None, help="write the tables as markdown here")


def with_threads(threads: int, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` with in-process trials on ``threads`` torch threads (restored after)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(before)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    return with_threads(args.threads, _run, args, argv)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The arguments, with the defaults of the chosen ``--problem`` (`PROBLEMS`) under them."""
    ap = parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--problem", choices=sorted(PROBLEMS), default="builtin")
    ap.set_defaults(**PROBLEMS[pre.parse_known_args(argv)[0].problem]())
    return ap.parse_args(argv)


def resolve_budgets(args: argparse.Namespace, backend: Any) -> list[float]:
    """``--budgets``: sizes as in a study file, ``study`` (``--budget``), or ``qF`` (all linears
    at 3 bits plus F% of the way to all at 4 bits, the other parameters held)."""
    out = []
    for item in (args.budgets or "study").split(","):
        item = item.strip()
        if item == "study":
            out.append(float(parse_size(args.budget)))
        elif item.startswith("q") and item[1:].replace(".", "", 1).isdigit():
            method = backend.cfg.methods[0]
            lo, hi = memory_at(backend, 3, method), memory_at(backend, 4, method)
            out.append(float(round(lo + float(item[1:]) / 100 * (hi - lo))))
        else:
            out.append(float(parse_size(item)))
    return out


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    samplers = [s for s in args.samplers.split(",") if s]
    for s in samplers:
        if s not in SAMPLERS:
            raise ValueError(f"--samplers: unknown sampler {s!r}; choose from {SAMPLERS}")
    studies = [s for s in samplers if s not in _BASELINES]
    n_for = {s: args.trials for s in studies}
    if args.short:
        name, n = args.short.split(":")
        if name in n_for:
            n_for[name] = min(int(n), args.trials)
    backend = AutomixBackend(make_config(args))
    budgets = resolve_budgets(args, backend)
    fp = model_fingerprint(args.model)
    cache = TrialCache(args.cache, fp)
    for extra in args.merge:  # results of other invocations (e.g. the other budgets, run in parallel)
        other = TrialCache(extra, fp)
        cache.trials.update(other.trials)
        cache.runs.update(other.runs)
    t_start = time.perf_counter()
    runs: dict[tuple[float, str, int], list[dict]] = {}
    secs: dict[tuple[float, str], list[float]] = {}
    settings = {k: str(v) for k, v in vars(args).items()
                if k not in ("seeds", "trials", "samplers", "short", "cache", "out", "threads", "budget", "budgets",
                             "merge", "disjoint_batches", "only_runs", "tag")}
    for budget in budgets:
        for s in samplers:  # the baselines first: one trial per method each
            if s in _BASELINES:
                configs = (uniform_configs(backend, budget) if s == "uniform" else
                           oneshot_configs(backend, budget, bracketed=s == "oneshot-bracketed",
                                           lowest=s == "oneshot-lowest"))
                runs[(budget, s, 0)] = [_baseline_trial(cache, backend, p) for p in configs]
        for s in studies:
            for seed in range(args.seeds):
                key = json.dumps([fp, settings, s, seed, n_for[s], budget] + ([args.tag] if args.tag else []),
                                 sort_keys=True)
                if key not in cache.runs:
                    print(f"  running {s} seed {seed} ({n_for[s]} trials) at {format_size(budget)} ...",
                          file=sys.stderr, flush=True)
                    t0 = time.perf_counter()
                    cache.runs[key] = run_study(s, seed, n_for[s], args, backend, cache, budget)
                    cache.runs[key].append({"seconds": time.perf_counter() - t0})
                    cache.save()
                runs[(budget, s, seed)] = [t for t in cache.runs[key] if "params" in t]
                secs.setdefault((budget, s), []).append(sum(t.get("ask_cpu_s", 0.0) for t in runs[(budget, s, seed)]))
    if args.only_runs:
        print(f"(ran {cache.new_trials} new trials in {(time.perf_counter() - t_start) / 60:.1f} min)", file=sys.stderr)
        return 0

    def trial_s(t: dict) -> float:
        r = cache.trials.get(cache.key(backend.payload(t["params"])), {})
        return sum(float(r.get(k) or 0.0) for k in ("prepare_seconds", "train_seconds", "eval_seconds"))

    distinct = {json.dumps(t["params"], sort_keys=True): t for r in runs.values() for t in r
                if not t.get("skipped")}
    trial_minutes = sum(trial_s(t) for t in distinct.values()) / 60
    checkpoints = [c for c in (5, 8, 10, 15, 20, 24, 30, 40, 60) if c <= args.trials]
    if args.trials not in checkpoints:
        checkpoints.append(args.trials)
    lines = [
        f"# Search benchmark: real trials on `{args.model}`", "",
        f"Command: `OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 automix bench search {' '.join(argv)}`  ",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}; machine: {platform.machine()} "
        f"{os.cpu_count()} cores (shared with other jobs), Python {platform.python_version()}; "
        f"model fingerprint `{fp}`.", "",
        f"Every trial is a real `run_trial` on `{args.model}`, task `lm` on "
        f"`{args.data or 'the built-in corpus'}`: methods {args.methods.replace(',', ', ')}, search space "
        f"`{Path(args.space).name}` resolved on the model's layers by `AutomixBackend` "
        f"({len(backend.distributions)} parameters), {args.steps} fine-tuning steps (batch {args.batch_size} x "
        f"{args.seq_len} tokens, lr {args.lr}), held-out perplexity on {args.eval_batches} eval batches, trial "
        f"seed {args.trial_seed}. Objectives: perplexity and predicted memory (`automix.trial.memory`), both "
        "minimised; the budget is set on every trial with `Trial.set_constraint` (AutoMixSampler and the "
        "one-shot also get it as a known constraint, as in a study). Samplers as `make_sampler` builds them "
        f"for a study; GPSampler with its defaults. Budgets: {', '.join(format_size(b) for b in budgets)}. "
        f"{len(distinct)} distinct configurations were trained and evaluated (each once, from the cache "
        f"after that): {trial_minutes:.1f} min of preparation, fine-tuning and evaluation in all. "
        "Configurations over the budget proposed by TPE, NSGA-II or random are not trained (they rank "
        "infeasible trials by their constraint violation alone, so the value they are told is never read).",
        ""]
    for budget in budgets:
        lines += _front_section(runs, budget, studies, n_for, args, checkpoints, secs)
    lines += picks_section(runs, budgets, samplers, args, backend, cache, _BASELINES)
    lines += cost_section(runs, samplers, backend, trial_s)
    subject = "automix" if "automix" in studies else studies[0] if studies else None
    if subject is not None:
        others = [t for r in runs.values() for t in r if not t.get("skipped")]
        q = predictor_quality(runs[(budgets[0], subject, 0)], others, backend, seed=0)
        lines += [f"## Predictor quality as real trials accumulate ({subject}, seed 0, {format_size(budgets[0])})", "",
                  "`PerformancePredictor` (the sampler's, with its features) fitted on the run's first "
                  "n finished trials, tested on every other configuration evaluated by any sampler or seed.", "",
                  "| n | chosen model | Kendall tau | RMSE (perplexity) | mean std | test configs | fit s |",
                  "|---|---|---|---|---|---|---|"]
        for row in q:
            lines.append(f"| {row['n']} | {row['model']} | {row['tau']:.3f} | {row['rmse']:.3f} | "
                         f"{row['mean_std']:.3f} | {row['n_test']} | {row['fit_s']:.1f} |")
        asks = [t["ask_cpu_s"] for (_, s, _), r in runs.items() if s == "automix" for t in r]
        if asks:
            lines += ["", f"AutoMixSampler CPU time per proposal: median {statistics.median(asks):.2f} s, "
                          f"max {max(asks):.2f} s.", ""]
    print(f"(this invocation ran {cache.new_trials} new trials in "
          f"{(time.perf_counter() - t_start) / 60:.1f} min)", file=sys.stderr)
    emit_report(lines, args.out)
    return 0


def _baseline_trial(cache: TrialCache, backend: Any, params: dict) -> dict:
    r = cache.result(backend.payload(params))
    ppl = r.get("perplexity") if r.get("status") == "ok" else None
    return {"params": params, "perplexity": ppl, "memory": float(backend.predicted_memory(params)), "ask_cpu_s": 0.0}


def _front_section(runs: dict, budget: float, studies: list[str], n_for: dict, args: argparse.Namespace,
                   checkpoints: list[int], secs: dict) -> list[str]:
    """Hypervolume against the number of trials at one budget."""
    at = {k[1:]: r for k, r in runs.items() if k[0] == budget and k[1] in studies}
    if not at:
        return []
    bounds = hv_bounds([r for k, r in runs.items() if k[0] == budget], budget)
    lines = [f"## Hypervolume vs real trials at {format_size(budget)} (median over seeds)", "",
             "Hypervolume of the feasible trials' (log perplexity, memory), normalised by the hypervolume of the "
             "non-dominated set of every configuration evaluated at this budget by any sampler and seed (1.0 = "
             "that set); reference point: the worst feasible log perplexity evaluated (+5% of the range) at the "
             "budget. Columns: median over seeds after that many trials; min..max over seeds at the sampler's "
             "last trial; share of feasible proposals; the best feasible perplexity (median, min..max); the "
             "sampler's own CPU seconds per study.", "",
             "| sampler | " + " | ".join(f"{c} trials" for c in checkpoints) +
             " | min..max at end | feasible | best feasible perplexity | sampler s/study |",
             "|---|" + "---|" * (len(checkpoints) + 4)]
    for s in studies:
        curves, feas, bests = [], [], []
        for seed in range(args.seeds):
            r = at[(s, seed)]
            curves.append([normalized_hv(r, c, budget, bounds) if c <= len(r) else float("nan") for c in checkpoints])
            feas.append(sum(t["memory"] <= budget for t in r) / max(1, len(r)))
            bests.append(best_feasible(r, budget))
        med = np.median(np.array(curves), axis=0)
        last = [c[len([x for x in checkpoints if x <= n_for[s]]) - 1] for c in curves]
        lines.append(f"| {s} | " + " | ".join("-" if np.isnan(v) else f"{v:.3f}" for v in med)
                     + f" | {min(last):.3f}..{max(last):.3f} | {statistics.mean(feas):.0%} | "
                     f"{format_best(bests)} | {statistics.median(secs[(budget, s)]):.2f} |")
    return lines + [""]


if __name__ == "__main__":
    sys.exit(main())
