"""The study's Optuna storage: open (or create) the study, and recover trials a killed driver left.

The driver is the single writer: workers never touch the storage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from automix.config.study import StudyConfig, StudyConfigError, default_storage_url, load_study
from automix.search._optuna_compat import storage_of, trial_id

__all__ = ["open_study", "requeue_stale", "study_from_ref"]


def open_study(cfg: Any, sampler: Any = None, *, create: bool = True) -> Any:
    """The study's Optuna study (created on first use; directions checked on resume)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        storage = optuna.storages.RDBStorage(cfg.storage_url)
    except Exception as err:
        raise ValueError(f"Optuna storage {cfg.storage_url!r} cannot be opened: {err}") from None
    if not create:
        return optuna.load_study(study_name=cfg.name, storage=storage, sampler=sampler)
    study = optuna.create_study(study_name=cfg.name, storage=storage, sampler=sampler,
                                directions=cfg.directions, load_if_exists=True)
    have = [d.name.lower() for d in study.directions]
    if have != list(cfg.directions):
        raise ValueError(
            f"study {cfg.name!r} in {cfg.storage_url} has objectives {have}, but the study file "
            f"asks for {cfg.directions}: use a new study name"
        )
    return study


def requeue_stale(study: Any) -> list[int]:
    """Mark trials a previous driver left RUNNING (or stopped) as failed-stale; re-run their params.

    Returns the numbers of the trials that were requeued. Idempotent: a requeued trial is
    retired and never requeued twice; WAITING (enqueued) trials are left for `ask` to pick up.
    Trials stopped by Ctrl-C go through the same path (the driver leaves them RUNNING, marked
    `interrupted`).
    """
    storage = storage_of(study)
    trials = study.get_trials(deepcopy=False)
    already = {t.user_attrs.get("requeued_from") for t in trials}
    requeued = []
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        # Enqueue first (once), then retire the old trial: a driver killed in between leaves
        # the copy marked with `requeued_from`, so the next resume does not enqueue it twice.
        if t.params and t.number not in already:
            study.enqueue_trial(dict(t.params), user_attrs={"requeued_from": t.number},
                                skip_if_exists=False)
        storage.set_trial_user_attr(trial_id(t), "stale", True)
        storage.set_trial_user_attr(trial_id(t), "failure_reason",
                                    t.user_attrs.get("failure_reason") or "stale: its driver stopped mid-trial")
        storage.set_trial_state_values(trial_id(t), TrialState.FAIL)
        requeued.append(t.number)
    return requeued


def study_from_ref(ref: str, storage: str | None = None) -> StudyConfig:
    """A study's config from its YAML file or from its name in an Optuna storage.

    The driver stores the validated config in the Optuna study's user attributes, so `status`
    and `export` work from the name alone (default storage: the working directory's).
    """
    if ref.endswith((".yaml", ".yml")) or Path(ref).is_file():
        cfg = load_study(ref)
        if storage:
            cfg.storage = storage
        return cfg
    url = storage or default_storage_url()
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        raise StudyConfigError(f"no study storage at {url}: run `automix search` first or pass --storage")
    names = optuna.get_all_study_names(url)
    if ref not in names:
        raise StudyConfigError(f"study {ref!r} not found in {url}; studies there: {sorted(names) or 'none'}")
    attrs = optuna.load_study(study_name=ref, storage=url).user_attrs
    if "config" not in attrs:
        raise StudyConfigError(f"study {ref!r} in {url} was not created by automix (no config recorded)")
    data = dict(attrs["config"])
    data["storage"] = url
    return StudyConfig.model_validate(data)
