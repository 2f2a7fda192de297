"""Every use of Optuna's private API, in one place.

Optuna keeps no stability promise for these names; pyproject pins the Optuna major version the
project is tested against, and a new major means checking this module first. Private
attributes (`study._storage`, `trial._trial_id`, ...) are read through the helpers below, so
nothing else in automix touches Optuna internals.
"""

from __future__ import annotations

from typing import Any

from optuna._hypervolume import compute_hypervolume, get_non_dominated_box_bounds
from optuna.samplers._base import _process_constraints_after_trial
from optuna.storages import BaseStorage
from optuna.study import Study
from optuna.trial import FrozenTrial

__all__ = [
    "compute_hypervolume", "get_non_dominated_box_bounds", "process_constraints_after_trial",
    "storage_of", "study_id", "trial_id", "trial_id_of_number", "trials_of",
]


def process_constraints_after_trial(constraints_func: Any, study: Study, trial: FrozenTrial, state: Any) -> None:
    """Evaluate an old-style ``constraints_func`` and store its values as Optuna's samplers do."""
    _process_constraints_after_trial(constraints_func, study, trial, state)


def trials_of(study: Study) -> list[FrozenTrial]:
    """The study's trials as Optuna's own samplers read them while sampling: not copied, from
    the storage's cache (``Study.get_trials`` copies each, or reads the storage again)."""
    return study._get_trials(deepcopy=False, use_cache=True)


def storage_of(study: Study) -> BaseStorage:
    """The storage behind a study (the driver writes trial attributes and states through it)."""
    return study._storage


def study_id(study: Study) -> int:
    """The storage's id of a study (distinguishes studies sharing a sampler)."""
    return study._study_id


def trial_id(trial: FrozenTrial) -> int:
    """The storage's id of a trial (what storage methods take, not the trial number)."""
    return trial._trial_id


def trial_id_of_number(study: Study, number: int) -> int:
    """The storage's id of the study's trial with this number."""
    return study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
