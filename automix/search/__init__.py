"""automix.search: find the accuracy/memory Pareto front with few real trials.

``AutoMixSampler`` (an Optuna sampler that starts from the one-shot allocation and learns
where the profile is wrong), ``OneShotSampler`` / ``OneShotAllocator`` (the one-shot baseline:
profile scores + an exact integer program under the budget), ``make_sampler`` (samplers by
the names a study file uses), ``load_space``/``SearchSpace`` (YAML search spaces),
``PerformancePredictor`` (regressors chosen by cross-validated Kendall tau), Pareto utilities
and sensitivity profiles. Names are imported lazily so that ``automix.search.pareto`` stays
cheap to import.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AutoMixSampler": "automix.search.sampler",
    "OneShotSampler": "automix.search.oneshot",
    "OneShotAllocator": "automix.search.oneshot",
    "SamplerInputs": "automix.search.factory",
    "make_sampler": "automix.search.factory",
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
