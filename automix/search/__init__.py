"""automix.search: find the accuracy/memory Pareto front with few real trials.

``AutoMixSampler`` (an Optuna sampler), ``KnapsackSampler`` (the one-shot profile + knapsack
baseline), ``load_space``/``SearchSpace`` (YAML search spaces),
``PerformancePredictor`` (regressors chosen by cross-validated Kendall tau), Pareto utilities
and sensitivity profiles. Names are imported lazily so that ``automix.search.pareto`` stays
cheap to import.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AutoMixSampler": "automix.search.sampler",
    "KnapsackSampler": "automix.search.knapsack",
    "SearchSpace": "automix.search.space",
    "SearchSpaceError": "automix.search.space",
    "load_space": "automix.search.space",
    "PerformancePredictor": "automix.search.predictors",
    "SensitivityProfile": "automix.trial.sensitivity",
    "load_or_profile": "automix.trial.sensitivity",
    "profile_model": "automix.trial.sensitivity",
    "hypervolume": "automix.search.pareto",
    "nondominated_mask": "automix.search.pareto",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'automix.search' has no attribute {name!r}")
