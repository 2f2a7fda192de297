"""Maths on a study's finished trials: objective values, the Pareto fronts, the normalised
hypervolume and the trial tables. The one copy of each rule: the loop (MLflow tags, progress),
`automix status`, `automix export`, the study artifacts and the dashboards all read them from here.

The rules are written once on plain columns (quality, memory, method, eligible) so that they
serve Optuna's FrozenTrials (`pareto_numbers`, `normalized_hypervolume`) and the dashboards' rows
alike:

- a trial counts (is *eligible*) when it is complete, has objective values and its memory is
  within the budget (`within_budget`);
- the fronts (`front_masks`) are the non-dominated eligible trials overall and within each method;
- the normalised hypervolume (`points_hypervolume`, `hypervolume_history`) takes quality as
  accuracy or 1/max(perplexity, 1) against 0 and memory as a fraction of the budget against 1
  (of the largest memory seen when there is no budget), i.e. the box from (quality 1, memory 0)
  to (quality 0, the budget) in `automix.search.pareto.normalized_hypervolume`. Fixed references
  keep the history comparable across resumes and studies.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
from optuna.trial import TrialState

from automix.search.pareto import nondominated_mask
from automix.search.pareto import normalized_hypervolume as box_hypervolume

__all__ = ["objective_values", "finished_trials", "within_budget", "is_feasible", "front_masks",
           "pareto_numbers", "hypervolume_points", "hypervolume_box", "memory_scale", "points_hypervolume",
           "hypervolume_history", "normalized_hypervolume", "normalized_hypervolume_history",
           "trials_table", "trial_label", "front_table"]


def objective_values(cfg: Any, result: Mapping[str, Any], predicted_memory: float) -> list[float] | str:
    """The study's objective values from a trial result, or why there are none."""
    q = cfg.objectives.quality
    quality = result.get(q)
    if quality is None or not math.isfinite(float(quality)):
        return f"the trial reported no finite {q} (got {quality!r})"
    if cfg.objectives.memory == "measured":
        mem = result.get("peak_memory_bytes")
        if not mem:
            return "the trial reported no measured peak memory"
    else:
        mem = result.get("predicted_memory_bytes") or predicted_memory
    values = [float(quality), float(mem)]
    if cfg.objectives.throughput:
        tp = result.get("throughput") or result.get("tokens_per_second")
        if tp is None:
            return "the trial reported no throughput"
        values.append(float(tp))
    return values


def finished_trials(study: Any) -> list[Any]:
    return [t for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED) and not t.user_attrs.get("stale")]


# -- the rules, on plain columns ----------------------------------------------------------------

def within_budget(memory: float | None, budget: float | None) -> bool:
    """A known memory (not None or NaN) within the budget; any known memory without a budget."""
    if memory is None or math.isnan(float(memory)):
        return False
    return budget is None or float(memory) <= budget


def front_masks(values: Any, directions: Sequence[str], methods: Sequence[Any], eligible: Sequence[bool]
                ) -> tuple[np.ndarray, np.ndarray]:
    """(overall front, front of the row's own method) as boolean masks over the rows.

    values: (n_rows, len(directions)) objective values (NaN where a row has none); methods: each
    row's method (None, a method not recorded, is a group of its own); eligible: the rows that
    count (complete, with values, within the budget): the others are on no front.
    """
    ok = np.asarray(eligible, dtype=bool).reshape(-1)
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    y = np.asarray(values, dtype=float).reshape(len(ok), len(signs)) * signs
    overall = np.zeros(len(ok), dtype=bool)
    per_method = np.zeros(len(ok), dtype=bool)
    rows = np.flatnonzero(ok)
    overall[rows[nondominated_mask(y[rows])]] = True
    for m in dict.fromkeys(methods[i] for i in rows):
        group = np.array([i for i in rows if methods[i] == m], dtype=int)
        per_method[group[nondominated_mask(y[group])]] = True
    return overall, per_method


def hypervolume_points(quality: Any, memory: Any, maximize: bool) -> np.ndarray:
    """The hypervolume's objectives, minimised: (-accuracy or -1/max(perplexity, 1), memory)."""
    q = np.asarray(quality, dtype=float).reshape(-1)
    if not maximize:
        q = 1.0 / np.maximum(q, 1.0)
    return np.column_stack([-q, np.asarray(memory, dtype=float).reshape(-1)])


def hypervolume_box(scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(ideal, reference) of `hypervolume_points`: quality 1 and memory 0, quality 0 and `scale`."""
    return np.array([-1.0, 0.0]), np.array([0.0, float(scale)])


def memory_scale(budget: float | None, memories: Sequence[Any] = ()) -> float:
    """Memory's unit in the hypervolume: the budget, else the largest memory seen (else 1)."""
    if budget:
        return float(budget)
    seen = [float(m) for m in memories if m is not None and not math.isnan(float(m))]
    return max(seen, default=0.0) or 1.0


def points_hypervolume(quality: Any, memory: Any, maximize: bool, scale: float) -> float:
    """Normalised hypervolume (in [0, 1]) of these eligible trials' quality and memory."""
    pts = hypervolume_points(quality, memory, maximize)
    if not len(pts):
        return 0.0
    return box_hypervolume(pts, *hypervolume_box(scale))


def hypervolume_history(quality: Sequence[Any], memory: Sequence[Any], eligible: Sequence[bool],
                        maximize: bool, scale: float) -> list[float]:
    """Normalised hypervolume after each row, rows in the order given (e.g. finishing order);
    rows that are not eligible add nothing but still get their value."""
    ideal, reference = hypervolume_box(scale)
    front = np.empty((0, 2))
    out = []
    for q, m, ok in zip(quality, memory, eligible):
        if ok:
            front = np.vstack([front, hypervolume_points([q], [m], maximize)])
            front = front[nondominated_mask(front)]
        out.append(box_hypervolume(front, ideal, reference) if len(front) else 0.0)
    return out


# -- the rules on Optuna trials -----------------------------------------------------------------

def _method(t: Any) -> Any:
    return t.params.get("method", t.user_attrs.get("method"))


def is_feasible(t: Any, budget: float | None) -> bool:
    """A complete trial's memory objective within the budget."""
    memory = t.user_attrs.get("memory_objective")
    if memory is None and t.values:
        memory = t.values[1]
    return within_budget(memory, budget)


def _eligible(trials: Sequence[Any], budget: float | None) -> list[bool]:
    return [t.state == TrialState.COMPLETE and bool(t.values) and is_feasible(t, budget) for t in trials]


def pareto_numbers(trials: Sequence[Any], directions: Sequence[str], budget: float | None = None
                   ) -> tuple[set[int], set[int]]:
    """(overall front, union of per-method fronts) among complete trials within the budget."""
    ok = _eligible(trials, budget)
    values = [t.values if keep else [math.nan] * len(directions) for t, keep in zip(trials, ok)]
    overall, per_method = front_masks(values, directions, [_method(t) for t in trials], ok)
    return ({t.number for t, f in zip(trials, overall) if f},
            {t.number for t, f in zip(trials, per_method) if f})


def _hypervolume_columns(trials: Sequence[Any], cfg: Any) -> tuple[list, list, list[bool], bool, float]:
    ok = _eligible(trials, cfg.memory_budget)
    quality = [t.values[0] if keep else math.nan for t, keep in zip(trials, ok)]
    memory = [t.values[1] if keep else math.nan for t, keep in zip(trials, ok)]
    scale = memory_scale(cfg.memory_budget, [m for m, keep in zip(memory, ok) if keep])
    return quality, memory, ok, cfg.objectives.quality == "accuracy", scale


def normalized_hypervolume(trials: Sequence[Any], cfg: Any) -> float:
    """Hypervolume of the feasible front in [0, 1] (see the module's docstring)."""
    quality, memory, ok, maximize, scale = _hypervolume_columns(trials, cfg)
    return points_hypervolume([q for q, k in zip(quality, ok) if k], [m for m, k in zip(memory, ok) if k],
                              maximize, scale)


def normalized_hypervolume_history(trials: Sequence[Any], cfg: Any) -> list[float]:
    """`normalized_hypervolume` of the first 1, 2, ... trials, in the order given."""
    return hypervolume_history(*_hypervolume_columns(trials, cfg))


# -- tables -------------------------------------------------------------------------------------

def trial_label(t: Any, driver_alive: bool = True) -> str:
    """What a trial is, as `automix status` shows it: COMPLETE, FAIL, INTERRUPTED (stopped by
    Ctrl-C or SIGTERM), STALE (its driver died mid-trial), WAITING (queued, e.g. the re-run of
    an interrupted trial), RUNNING (ORPHANED when no live driver holds the study)."""
    if t.state == TrialState.FAIL and t.user_attrs.get("stale"):
        return "INTERRUPTED" if t.user_attrs.get("interrupted") else "STALE"
    if t.state == TrialState.RUNNING and not driver_alive:
        return "ORPHANED"
    return t.state.name


def _unfinished_row(t: Any, label: str, budget: float | None) -> dict:
    """A row for a trial without a result of its own (interrupted, stale, waiting, running)."""
    fixed = t.system_attrs.get("fixed_params") or {}  # an enqueued trial's parameters
    summary = t.user_attrs.get("summary") or {}
    mem = t.user_attrs.get("predicted_memory")
    source = t.user_attrs.get("requeued_from")
    note = {"WAITING": "queued" + (f": re-run of trial {source}" if source is not None else ""),
            "RUNNING": "running", "ORPHANED": "left running by a stopped driver (re-run on resume)"}
    reason = t.user_attrs.get("failure_reason") or note.get(label, "")
    if label in ("INTERRUPTED", "STALE"):
        reason = f"{reason} (re-run on resume)" if "re-run" not in reason else reason
    return {
        "number": t.number, "state": label,
        "method": t.user_attrs.get("method") or t.params.get("method") or fixed.get("method"),
        "quality": None, "memory_bytes": mem, "feasible": within_budget(mem, budget),
        "pareto": False, "pareto_method": False, "avg_bits": summary.get("avg_bits"),
        **{k: None for k in ("accuracy", "perplexity", "peak_memory_bytes", "predicted_memory_bytes",
                             "trainable_params", "train_seconds")},
        "failure_reason": str(reason)[:200],
    }


def trials_table(study: Any, cfg: Any, unfinished: bool = False, driver_alive: bool = True) -> list[dict]:
    """One row per finished trial (complete or failed), with front membership; with `unfinished`
    also the trials without a result yet (interrupted, stale, waiting, running: `trial_label`),
    all in trial order."""
    trials = finished_trials(study)
    overall, per_method = pareto_numbers(trials, cfg.directions, cfg.memory_budget)
    rows = []
    if unfinished:
        done = {t.number for t in trials}
        rows = [_unfinished_row(t, trial_label(t, driver_alive), cfg.memory_budget)
                for t in study.get_trials(deepcopy=False) if t.number not in done
                and t.state in (TrialState.FAIL, TrialState.WAITING, TrialState.RUNNING)]
    for t in sorted(trials, key=lambda t: t.number):
        r = t.user_attrs.get("result", {}) or {}
        mem = t.values[1] if t.values else t.user_attrs.get("predicted_memory")
        rows.append({
            "number": t.number, "state": t.state.name, "method": t.user_attrs.get("method", t.params.get("method")),
            "quality": t.values[0] if t.values else None, "memory_bytes": mem,
            "feasible": within_budget(mem, cfg.memory_budget),
            "pareto": t.number in overall, "pareto_method": t.number in per_method,
            "avg_bits": r.get("avg_bits", (t.user_attrs.get("summary") or {}).get("avg_bits")),
            **{k: r.get(k) for k in ("accuracy", "perplexity", "peak_memory_bytes",
                                     "predicted_memory_bytes", "trainable_params", "train_seconds")},
            "failure_reason": (t.user_attrs.get("failure_reason") or "")[:200],
        })
    return sorted(rows, key=lambda r: r["number"])


def front_table(rows: Sequence[dict]) -> list[dict]:
    return sorted((r for r in rows if r["pareto"]), key=lambda r: r["memory_bytes"])
