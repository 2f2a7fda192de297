"""Low-fidelity observations for the sampler: what pruned trials say about their final quality.

A pruned trial never reports its final values, but its learning curve (intermediate
evaluations, step 0 being right after initialisation) says much about them. The map from a
value at step s to the final value is learned on the complete trials that evaluated at step s
(a straight line with three or more of them, a shift with fewer), and a pruned trial enters the
quality predictor's training data at the final value its last intermediate value maps to. So
cheap, stopped trials still teach the predictor which configurations are bad, and full
fine-tunes go where it expects the front to move.

A curve is a trial's Optuna intermediate values (single-objective studies) or its user attribute
``eval_curve`` (``[[step, value], ...]``: automix's driver stores it on the multi-objective
search trials, where Optuna's `Trial.report` is not available); the values are of the first
objective.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["LINE_PAIRS", "curve_of", "impute_final"]

LINE_PAIRS = 3  # complete trials that evaluated at a step before their values map by a line


def curve_of(t: Any) -> dict[int, float]:
    """A trial's learning curve, step -> value of the first objective."""
    if t.intermediate_values:
        return {int(s): float(v) for s, v in t.intermediate_values.items()}
    return {int(s): float(v) for s, v in (t.user_attrs.get("eval_curve") or []) if v == v}


def impute_final(complete: Sequence[tuple[dict[int, float], float]], curve: dict[int, float]) -> float | None:
    """The final value a trial with ``curve`` would likely have reached, from the (curve, final
    value) pairs of complete trials; None when none of them evaluated at its last step."""
    if not curve:
        return None
    step = max(curve)
    pairs = np.array([(c[step], y) for c, y in complete if step in c], dtype=float).reshape(-1, 2)
    if not len(pairs):
        return None
    x, y = pairs[:, 0], pairs[:, 1]
    value = curve[step]
    if len(pairs) >= LINE_PAIRS and np.ptp(x) > 0:
        slope, intercept = np.polyfit(x, y, 1)
        if slope > 0:  # a curve that ends better predicts a better end: the usable case
            return float(slope * value + intercept)
    return float(value + np.median(y - x))
