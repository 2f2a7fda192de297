"""A pruner for memory/quality searches: stop a trial that is already off the front.

Optuna's pruners compare a trial's intermediate value with the other trials' values at the
same step. In a memory/quality search that stops exactly the configurations the low-memory end
of the front is made of (a 2-bit trial is always worse than the median). `ParetoPruner` compares
a trial only with trials that take no more memory: it stops a trial when, at the step it just
reported, enough of them are better — the trial is dominated at that fidelity, and training
curves of quantized fine-tunes rarely cross (the step-0 evaluation, right after
initialisation, already ranks most of them; see ``benchmarks/multi_fidelity.md``).

It also screens (``min_gain``, on by default): a trial is stopped when the final point its
curve predicts (`automix.search._fidelity.impute_final`, mapped on the complete trials) would
add less than that fraction to the hypervolume of the complete trials' (quality, memory) front. Not being
dominated is a weak test when the sampler proposes near the front: most proposals pass it and
each costs a full fine-tune for a sliver of the front. The memory axis of the hypervolume ends
at ``memory_reference`` (the study's budget; automix's driver passes it), else 10% past the
largest memory seen.

It is an ordinary Optuna pruner on a single-objective study whose trials carry their memory in
the user attribute ``memory`` (automix's driver keeps such a study beside every search, see
`automix.study.fidelity`)::

    study = optuna.create_study(direction="minimize", pruner=ParetoPruner(memory_reference=8e6))
    trial = study.ask()
    trial.set_user_attr("memory", 3.2e6)
    trial.report(12.5, step=0)
    if trial.should_prune(): ...
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.trial import TrialState

from automix.search._fidelity import curve_of, impute_final
from automix.search.pareto import normalized_hypervolume

__all__ = ["ParetoPruner"]


class ParetoPruner(BasePruner):
    """Prune a trial dominated at its last reported step by trials of no more memory, or one
    whose predicted final point would add less than ``min_gain`` to the front's hypervolume.

    Args:
        n_startup_trials: judge a step only once this many other trials reported at it (one
            is enough evidence for a dominance, unlike for a median).
        n_warmup_steps: never prune before this step (0: the evaluation right after
            initialisation may already prune).
        n_dominators: how many trials must dominate it (more: fewer, safer prunes).
        margin: a dominator's value must be better by this fraction of the trial's value (for
            noisy evaluations).
        memory_attr: the user attribute holding a trial's memory.
        min_gain: also stop a trial whose predicted final point would add less than this
            fraction to the complete trials' front hypervolume (0: dominance only). The
            defaults (1 and 0.001) are the setting measured in ``benchmarks/multi_fidelity.md``.
        memory_reference: where the hypervolume's memory axis ends (e.g. the memory budget).
    """

    def __init__(self, n_startup_trials: int = 1, n_warmup_steps: int = 0, n_dominators: int = 1,
                 margin: float = 0.0, memory_attr: str = "memory", min_gain: float = 0.001,
                 memory_reference: float | None = None) -> None:
        if n_startup_trials < 0 or n_warmup_steps < 0 or n_dominators < 1 or margin < 0 or min_gain < 0:
            raise ValueError("ParetoPruner: n_startup_trials, n_warmup_steps, margin and min_gain must be >= 0 "
                             f"and n_dominators >= 1 (got {n_startup_trials}, {n_warmup_steps}, {margin}, "
                             f"{min_gain}, {n_dominators})")
        self.n_startup_trials = int(n_startup_trials)
        self.n_warmup_steps = int(n_warmup_steps)
        self.n_dominators = int(n_dominators)
        self.margin = float(margin)
        self.memory_attr = memory_attr
        self.min_gain = float(min_gain)
        self.memory_reference = None if memory_reference is None else float(memory_reference)

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
        if peers < self.n_startup_trials:
            return False
        if dominators >= self.n_dominators:
            return True
        return self.min_gain > 0 and self._gain(study, trial, memory, minimize) < self.min_gain

    def _gain(self, study: Any, trial: Any, memory: float, minimize: bool) -> float:
        """The fraction the trial's predicted final point adds to the complete trials' front
        hypervolume (inf when there is nothing to predict it from)."""
        done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.value is not None and math.isfinite(t.value) and self.memory_attr in t.user_attrs]
        final = impute_final([(curve_of(t), float(t.value)) for t in done], curve_of(trial))
        if final is None or not math.isfinite(final):
            return math.inf
        sign = 1.0 if minimize else -1.0
        front = np.array([(sign * float(t.value), float(t.user_attrs[self.memory_attr])) for t in done])
        points = np.vstack([front, [sign * final, memory]])
        span = np.ptp(points, axis=0)
        reference = points.max(axis=0) + 0.1 * span
        if self.memory_reference is not None:
            reference[1] = self.memory_reference
        ideal = points.min(axis=0)
        if np.any(reference <= ideal):
            return math.inf
        before = normalized_hypervolume(front, ideal, reference)
        after = normalized_hypervolume(points, ideal, reference)
        return (after - before) / before if before > 0 else math.inf
