"""Samplers as a study builds them: from what the study knows, by the name the study file gives.

:class:`SamplerInputs` is what a study hands any sampler (the search space, the memory function
and budget, the profile's features, the held values of the parameters a profile does not score);
each factory below turns it into an Optuna sampler, and ``automix.config.registry.SAMPLERS``
names them (``sampler:`` in a study file). ``sampler_options`` in the study file are the
sampler's own keyword arguments.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler

from automix.config.registry import SAMPLER_ALIASES, SAMPLERS, load
from automix.search.batch import Shifted
from automix.search.oneshot import OneShotSampler
from automix.search.sampler import AutoMixSampler

__all__ = ["SamplerInputs", "make_sampler", "automix_sampler", "oneshot_sampler", "tpe_sampler", "nsga2_sampler",
           "random_sampler"]


@dataclasses.dataclass
class SamplerInputs:
    """What a study knows before its first trial, for its sampler.

    Attributes:
        distributions: the search space (the method included).
        memory: params -> predicted memory (vectorised and tabulated when it is a
            ``DecomposedFunction``), or None when memory is only measured.
        budget: the memory budget (bytes).
        memory_known: memory is an objective the sampler may compute (``objectives.memory:
            predicted``) rather than learn.
        features: params -> engineered features (per-group profile scores, then their total),
            or None without a space.
        profiled: ``features`` come from a measured sensitivity profile (not the bits-only
            proxy).
        hold: values of the parameters a profile does not score (prune ratios, ranks) where a
            one-shot allocation keeps them (the search space's ``fixed`` values).
        n_trials: the study's number of trials.
        seed: the study's sampler seed.
    """

    distributions: Mapping[str, BaseDistribution]
    memory: Callable[[Mapping[str, Any]], float] | None
    budget: float
    memory_known: bool = True
    features: Callable[[Mapping[str, Any]], Any] | None = None
    profiled: bool = False
    hold: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    n_trials: int = 24
    seed: int | None = 0


def make_sampler(name: str, inputs: SamplerInputs, options: Mapping[str, Any] | None = None) -> BaseSampler:
    """The sampler registered as ``name`` (``automix.config.registry.SAMPLERS``) for ``inputs``;
    ``options``: its keyword arguments (a TypeError names a wrong one)."""
    name = SAMPLER_ALIASES.get(name, name)
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; available: {', '.join(SAMPLERS)}")
    return load(SAMPLERS, name)(inputs, dict(options or {}))


def automix_sampler(inputs: SamplerInputs, options: dict[str, Any]) -> BaseSampler:
    """AutoMixSampler: memory as a known objective and the budget as a known constraint (so it
    never proposes an infeasible configuration), the profile's features, the one-shot start."""
    mem = inputs.memory
    kwargs: dict[str, Any] = dict(
        search_space=dict(inputs.distributions), features=inputs.features, hold=dict(inputs.hold),
        known_objectives={1: mem} if inputs.memory_known and mem is not None else {},
        known_constraints=[Shifted(mem, inputs.budget)] if mem is not None else [],
        n_startup_trials=max(2, min(16, inputs.n_trials // 3)), seed=inputs.seed)
    return AutoMixSampler(**{**kwargs, **options})


def oneshot_sampler(inputs: SamplerInputs, options: dict[str, Any]) -> BaseSampler:
    """The one-shot allocation (profile scores + an exact integer program under the budget),
    then allocations down the budget axis (its front)."""
    if inputs.features is None or inputs.memory is None:
        raise ValueError("sampler: oneshot needs a search space with per-layer scores and the memory model")
    kwargs = dict(score=inputs.features, cost=inputs.memory, budget=inputs.budget,
                  search_space=dict(inputs.distributions), hold=dict(inputs.hold), seed=inputs.seed)
    return OneShotSampler(**{**kwargs, **options})


def tpe_sampler(inputs: SamplerInputs, options: dict[str, Any]) -> BaseSampler:
    """Optuna's TPE (multivariate); it reads the budget from `Trial.set_constraint`."""
    return optuna.samplers.TPESampler(**{"seed": inputs.seed, "multivariate": True, **options})


def nsga2_sampler(inputs: SamplerInputs, options: dict[str, Any]) -> BaseSampler:
    """Optuna's NSGA-II; it reads the budget from `Trial.set_constraint`."""
    return optuna.samplers.NSGAIISampler(**{"seed": inputs.seed, **options})


def random_sampler(inputs: SamplerInputs, options: dict[str, Any]) -> BaseSampler:
    """Optuna's random sampler."""
    return optuna.samplers.RandomSampler(**{"seed": inputs.seed, **options})
