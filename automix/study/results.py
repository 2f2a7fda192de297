"""Maths on a study's finished trials: objective values, the Pareto fronts, the normalised
hypervolume and the trial tables. The one copy of each rule: the loop (MLflow tags, progress),
`automix status`, `automix export` and the dashboards all read them from here.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
from optuna.trial import TrialState

from automix.search.pareto import hypervolume, nondominated_mask

__all__ = ["objective_values", "finished_trials", "is_feasible", "pareto_numbers", "normalized_hypervolume",
           "trials_table", "front_table"]


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
    return [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.FAIL)
            and not t.user_attrs.get("stale")]


def is_feasible(t: Any, budget: float | None) -> bool:
    if budget is None:
        return True
    return float(t.user_attrs.get("memory_objective", t.values[1])) <= budget


def pareto_numbers(trials: Sequence[Any], directions: Sequence[str], budget: float | None = None
                   ) -> tuple[set[int], set[int]]:
    """(overall front, union of per-method fronts) among complete trials within the budget."""
    ok = [t for t in trials if t.state == TrialState.COMPLETE and t.values and is_feasible(t, budget)]
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])

    def front(ts: list[Any]) -> set[int]:
        if not ts:
            return set()
        y = np.array([t.values for t in ts], dtype=float) * signs
        return {t.number for t, keep in zip(ts, nondominated_mask(y)) if keep}

    per_method: set[int] = set()
    for m in {t.params.get("method", t.user_attrs.get("method")) for t in ok}:
        per_method |= front([t for t in ok if t.params.get("method", t.user_attrs.get("method")) == m])
    return front(ok), per_method


def normalized_hypervolume(trials: Sequence[Any], cfg: Any) -> float:
    """Hypervolume of the feasible front in [0, 1]: quality as accuracy or 1/perplexity
    (reference 0), memory as a fraction of the budget (reference 1). Fixed references keep the
    history comparable across resumes and studies."""
    pts = []
    for t in trials:
        if t.state != TrialState.COMPLETE or not t.values or not is_feasible(t, cfg.memory_budget):
            continue
        q = t.values[0] if cfg.objectives.quality == "accuracy" else 1.0 / max(t.values[0], 1.0)
        pts.append([-q, t.values[1] / cfg.memory_budget])
    if not pts:
        return 0.0
    return float(hypervolume(np.array(pts), np.array([0.0, 1.0])))


# -- tables -------------------------------------------------------------------------------------

def trials_table(study: Any, cfg: Any) -> list[dict]:
    """One row per finished trial (complete or failed), with front membership."""
    trials = finished_trials(study)
    overall, per_method = pareto_numbers(trials, cfg.directions, cfg.memory_budget)
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        r = t.user_attrs.get("result", {}) or {}
        mem = t.values[1] if t.values else t.user_attrs.get("predicted_memory")
        rows.append({
            "number": t.number, "state": t.state.name, "method": t.user_attrs.get("method", t.params.get("method")),
            "quality": t.values[0] if t.values else None, "memory_bytes": mem,
            "feasible": mem is not None and mem <= cfg.memory_budget,
            "pareto": t.number in overall, "pareto_method": t.number in per_method,
            "avg_bits": r.get("avg_bits", (t.user_attrs.get("summary") or {}).get("avg_bits")),
            **{k: r.get(k) for k in ("accuracy", "perplexity", "peak_memory_bytes",
                                     "predicted_memory_bytes", "trainable_params", "train_seconds")},
            "failure_reason": (t.user_attrs.get("failure_reason") or "")[:200],
        })
    return rows


def front_table(rows: Sequence[dict]) -> list[dict]:
    return sorted((r for r in rows if r["pareto"]), key=lambda r: r["memory_bytes"])
