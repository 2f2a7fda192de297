"""A pruner for memory/quality searches: stop a trial that is already off the front.

Optuna's pruners compare a trial's intermediate value with the other trials' values at the
same step. In a memory/quality search that stops exactly the configurations the low-memory end
of the front is made of (a 2-bit trial is always worse than the median). `ParetoPruner` compares
a trial only with trials that take no more memory: it stops a trial when, at the step it just
reported, enough of them are better — the trial is dominated at that fidelity, and training
curves of quantized fine-tunes rarely cross (the step-0 evaluation, right after
initialisation, already ranks most of them; see ``benchmarks/multi_fidelity.md``).

It is an ordinary Optuna pruner on a single-objective study whose trials carry their memory in
the user attribute ``memory`` (automix's driver keeps such a study beside every search, see
`automix.study.fidelity`)::

    study = optuna.create_study(direction="minimize", pruner=ParetoPruner(n_startup_trials=4))
    trial = study.ask()
    trial.set_user_attr("memory", 3.2e6)
    trial.report(12.5, step=0)
    if trial.should_prune(): ...
"""

from __future__ import annotations

import math
from typing import Any

from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.trial import TrialState

__all__ = ["ParetoPruner"]


class ParetoPruner(BasePruner):
    """Prune a trial dominated at its last reported step by trials of no more memory.

    Args:
        n_startup_trials: judge a step only once this many other trials reported at it.
        n_warmup_steps: never prune before this step (0: the evaluation right after
            initialisation may already prune).
        n_dominators: how many trials must dominate it (more: fewer, safer prunes).
        margin: a dominator's value must be better by this fraction of the trial's value (for
            noisy evaluations).
        memory_attr: the user attribute holding a trial's memory.
    """

    def __init__(self, n_startup_trials: int = 4, n_warmup_steps: int = 0, n_dominators: int = 1,
                 margin: float = 0.0, memory_attr: str = "memory") -> None:
        if n_startup_trials < 0 or n_warmup_steps < 0 or n_dominators < 1 or margin < 0:
            raise ValueError("ParetoPruner: n_startup_trials, n_warmup_steps and margin must be >= 0 and "
                             f"n_dominators >= 1 (got {n_startup_trials}, {n_warmup_steps}, {margin}, {n_dominators})")
        self.n_startup_trials = int(n_startup_trials)
        self.n_warmup_steps = int(n_warmup_steps)
        self.n_dominators = int(n_dominators)
        self.margin = float(margin)
        self.memory_attr = memory_attr

    def prune(self, study: Any, trial: Any) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        value = trial.intermediate_values[step]
        memory = trial.user_attrs.get(self.memory_attr)
        if memory is None or not math.isfinite(value):
            return False
        minimize = study.direction == StudyDirection.MINIMIZE
        slack = self.margin * abs(value)
        peers = dominators = 0
        for other in study.get_trials(deepcopy=False):
            if other.number == trial.number or other.state == TrialState.FAIL:
                continue
            v = other.intermediate_values.get(step)
            m = other.user_attrs.get(self.memory_attr)
            if v is None or m is None or not math.isfinite(v):
                continue
            peers += 1
            better = v < value - slack if minimize else v > value + slack
            dominators += bool(better and m <= memory)
        return peers >= self.n_startup_trials and dominators >= self.n_dominators
