"""Multi-fidelity in a study: the pruner a study names, and the study it judges trials in.

A search's study is multi-objective (quality and memory), and Optuna's pruners, like
`Trial.report`, work on single-objective studies only. So when a study has a pruner, the driver
keeps a companion single-objective study in the same storage, ``NAME.fidelity``: one trial per
search trial (its number in the user attribute ``trial``, its predicted memory in ``memory``),
the quality direction of the search, the intermediate evaluations reported as Optuna
intermediate values, and the pruner attached. optuna-dashboard shows the learning curves there.
The driver is its only writer too; a trial a previous driver left running there is failed when
the next driver opens it.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.trial import TrialState

from automix.config.study import StudyConfig, StudyConfigError
from automix.search._optuna_compat import storage_of
from automix.search.pruners import ParetoPruner
from automix.study.storage import dashboard_note, fidelity_note

__all__ = ["make_pruner", "FidelityLedger", "fidelity_study_name"]

_PRUNERS = {
    "pareto": ParetoPruner,
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "successive-halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
}


def fidelity_study_name(name: str) -> str:
    return f"{name}.fidelity"


def make_pruner(cfg: StudyConfig) -> BasePruner | None:
    """The study's pruner with its options (None for ``pruner: none``); a bad option is a
    StudyConfigError naming ``pruner.options``."""
    p = cfg.pruner
    if not p.enabled:
        return None
    every = p.report_every(cfg.trial.steps)
    defaults: dict[str, dict[str, Any]] = {
        "pareto": {"memory_reference": float(cfg.memory_budget)},  # the front's hypervolume ends at the budget
        "median": {"n_startup_trials": 4},
        "percentile": {"percentile": 25.0, "n_startup_trials": 4},
        "successive-halving": {"min_resource": every},
        "hyperband": {"min_resource": every, "max_resource": max(cfg.trial.steps, every)},
    }
    try:
        return _PRUNERS[p.name](**{**defaults[p.name], **p.options})
    except (TypeError, ValueError) as err:
        where = cfg.file_lines("pruner").where(("options",))
        raise StudyConfigError(f"{where}: {err} (the options of pruner {p.name!r} are its Optuna "
                               "keyword arguments)") from None


class FidelityLedger:
    """The single-objective companion study of a search with a pruner (see the module)."""

    def __init__(self, cfg: StudyConfig, study: Any, pruner: BasePruner) -> None:
        self.study = optuna.create_study(
            storage=storage_of(study), study_name=fidelity_study_name(cfg.name), direction=cfg.directions[0],
            pruner=pruner, sampler=optuna.samplers.RandomSampler(seed=0), load_if_exists=True)
        dashboard_note(self.study, fidelity_note(cfg))  # optuna-dashboard lists it beside the search
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
            self.study.tell(t.number, state=TrialState.FAIL)  # left by a driver that died
        self._trials: dict[int, optuna.Trial] = {}

    def open(self, number: int, memory: float) -> int:
        """Start the companion of search trial ``number``; returns its number."""
        t = self.study.ask()
        t.set_user_attr("trial", number)
        t.set_user_attr("memory", float(memory))
        self._trials[number] = t
        return t.number

    def report(self, number: int, step: int, value: float) -> bool:
        """Record an intermediate value; True when the pruner says stop."""
        t = self._trials.get(number)
        if t is None:
            return False
        t.report(value, step)
        return t.should_prune()

    def close(self, number: int, state: TrialState, value: float | None = None) -> None:
        t = self._trials.pop(number, None)
        if t is None:
            return
        if state == TrialState.COMPLETE and value is not None:
            self.study.tell(t, value)
        else:
            self.study.tell(t, state=TrialState.PRUNED if state == TrialState.PRUNED else TrialState.FAIL)

    def close_all(self) -> None:
        for number in list(self._trials):
            self.close(number, TrialState.FAIL)
