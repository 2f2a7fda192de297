"""The search loop: ask the sampler, run trials on the executor, tell results, track them.

The driver is the single writer to the Optuna storage and to MLflow, so SQLite is safe as the
embedded default and a server URL is only a setting. Optuna is the source of truth: every
trial's result (the trial function's dictionary) is stored in its user attributes before the
trial is told, MLflow is brought in line from it (`Tracker.sync` on resume), and `status` and
`export` read it back.

Resuming (re-running the same study, or `--resume`) keeps every finished trial; trials left
RUNNING by a killed driver, or stopped by Ctrl-C, are marked failed ("stale") and their
configurations are enqueued to run again.

The loop is generic over a `TrialBackend`: the real one (`automix.study_backend.AutomixBackend`) maps
search parameters to `TrialSpec`s for `automix.trial.run_trial`; the orchestration benchmark
uses a synthetic one.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

__all__ = [
    "TrialBackend", "StudyRun", "run_study", "open_study", "requeue_stale",
    "objective_values", "pareto_numbers", "normalized_hypervolume", "finished_trials",
]


class TrialBackend(Protocol):
    """What the driver needs to know about the trials of one study."""

    function: Callable[[Any], Any] | str            # what a worker runs on a payload
    distributions: Mapping[str, Any]                # Optuna distributions of every parameter

    def predicted_memory(self, params: Mapping[str, Any]) -> float: ...
    def payload(self, params: Mapping[str, Any]) -> dict: ...
    def describe(self, params: Mapping[str, Any]) -> tuple[str, dict, dict]: ...
    # -> (method, summary params for MLflow, full layer configuration)


# -- objectives, fronts, hypervolume ------------------------------------------------------------

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
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.FAIL)
            and not t.user_attrs.get("stale")]


def _feasible(t: Any, budget: float | None) -> bool:
    if budget is None:
        return True
    return float(t.user_attrs.get("memory_objective", t.values[1])) <= budget


def pareto_numbers(trials: Sequence[Any], directions: Sequence[str], budget: float | None = None
                   ) -> tuple[set[int], set[int]]:
    """(overall front, union of per-method fronts) among complete trials within the budget."""
    from optuna.trial import TrialState

    from automix.search.pareto import nondominated_mask

    ok = [t for t in trials if t.state == TrialState.COMPLETE and t.values and _feasible(t, budget)]
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
    from optuna.trial import TrialState

    from automix.search.pareto import hypervolume

    pts = []
    for t in trials:
        if t.state != TrialState.COMPLETE or not t.values or not _feasible(t, cfg.memory_budget):
            continue
        q = t.values[0] if cfg.objectives.quality == "accuracy" else 1.0 / max(t.values[0], 1.0)
        pts.append([-q, t.values[1] / cfg.memory_budget])
    if not pts:
        return 0.0
    return float(hypervolume(np.array(pts), np.array([0.0, 1.0])))


# -- storage ------------------------------------------------------------------------------------

def open_study(cfg: Any, sampler: Any = None, *, create: bool = True) -> Any:
    """The study's Optuna study (created on first use; directions checked on resume)."""
    import optuna

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
    from optuna.trial import TrialState

    storage = study._storage
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
        storage.set_trial_user_attr(t._trial_id, "stale", True)
        storage.set_trial_user_attr(t._trial_id, "failure_reason",
                                    t.user_attrs.get("failure_reason") or "stale: its driver stopped mid-trial")
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        requeued.append(t.number)
    return requeued


# -- the loop -----------------------------------------------------------------------------------

@dataclass
class StudyRun:
    """What `run_study` did (also what the progress display shows)."""

    name: str
    target: int
    done: int = 0
    failed: int = 0
    running: int = 0
    requeued: list[int] = field(default_factory=list)
    front: list[int] = field(default_factory=list)
    best_quality: float | None = None
    hypervolume: float = 0.0
    seconds: float = 0.0
    interrupted: bool = False
    overhead_seconds: list[float] = field(default_factory=list)  # tell + MLflow + front, per trial
    ask_seconds: list[float] = field(default_factory=list)       # sampler proposal + spec, per trial
    trial_seconds: list[float] = field(default_factory=list)     # submit -> result, per trial
    artifacts: list[str] = field(default_factory=list)


def _summary_metrics(result: Mapping[str, Any], predicted: float, extra: Mapping[str, Any]) -> dict:
    keys = ("accuracy", "perplexity", "peak_memory_bytes", "predicted_memory_bytes",
            "predicted_accuracy", "trainable_params", "avg_bits", "first_loss", "last_loss",
            "train_seconds", "eval_seconds", "throughput", "tokens_per_second")
    m = {k: result.get(k) for k in keys if isinstance(result.get(k), (int, float))}
    m.setdefault("predicted_memory_bytes", predicted)
    m.update({k: v for k, v in extra.items() if isinstance(v, (int, float))})
    return m


def run_study(
    cfg: Any,
    backend: TrialBackend,
    *,
    executor: Any = None,
    sampler: Any = None,
    n_trials: int | None = None,
    resume: bool = True,
    ray_address: str | None = None,
    progress: bool = True,
    write_artifacts: bool = True,
) -> StudyRun:
    """Run (or continue) a study until it has `n_trials` finished trials.

    `executor` defaults to a `RayExecutor` built from the study's resources; `sampler` to the
    one `automix.study_backend.make_sampler` builds for it. Ctrl-C cancels the trials in flight,
    records them as interrupted (requeued on resume) and re-raises KeyboardInterrupt.
    """
    from optuna.trial import TrialState

    from automix.executors import RayExecutor
    from automix.tracking import Tracker

    if sampler is None:
        from automix.study_backend import make_sampler

        sampler = make_sampler(cfg, backend)
    study = open_study(cfg, sampler)
    if not resume and finished_trials(study):
        raise ValueError(
            f"study {cfg.name!r} already has trials in {cfg.storage_url}; resume it or choose a new name"
        )
    run = StudyRun(cfg.name, int(n_trials or cfg.n_trials))
    config = {**cfg.model_dump(mode="json"), "storage": cfg.storage_url, "tracking_uri": cfg.tracking}
    if study.user_attrs.get("config") != config:
        study.set_user_attr("config", config)  # status / export work from the name alone
    run.requeued = requeue_stale(study)
    tracker = Tracker(cfg.tracking, cfg.name)
    tracker.log_study_config(cfg.model_dump(mode="json"), cfg.source)
    _sync_tracking(study, tracker, cfg)

    own_executor = executor is None
    if executor is None:
        executor = RayExecutor(backend.function, workers=cfg.workers, cpus=cfg.resources.cpus,
                               gpus=cfg.resources.gpus, timeout_s=cfg.timeout_per_trial,
                               max_retries=cfg.max_retries, address=ray_address)
    display = _Display(run, enabled=progress)
    pending: dict[int, dict] = {}
    t_start = time.time()
    try:
        with display:
            finished = finished_trials(study)
            run.done = len(finished)
            run.failed = sum(t.state == TrialState.FAIL for t in finished)
            while True:  # run.done / run.failed are refreshed by _finish as results arrive
                while executor.free_slots() > 0 and run.done + len(pending) < run.target:
                    t_ask = time.perf_counter()
                    trial = study.ask(dict(backend.distributions))
                    params = dict(trial.params)
                    mem = float(backend.predicted_memory(params))
                    trial.set_user_attr("predicted_memory", mem)
                    trial.set_constraint("memory_budget", mem - cfg.memory_budget)
                    method, summary, layers = backend.describe(params)
                    trial.set_user_attr("method", method)
                    trial.set_user_attr("summary", summary)
                    trial.set_user_attr("layers", layers)
                    payload = backend.payload(params)
                    trial.set_user_attr("spec", payload)
                    pending[trial.number] = dict(params=params, mem=mem, t0=time.time())
                    executor.submit(trial.number, payload)
                    run.ask_seconds.append(time.perf_counter() - t_ask)
                run.running = len(pending)
                display.update()
                if not pending:
                    break
                for outcome in executor.poll(0.5):
                    t0 = time.perf_counter()
                    _finish(study, tracker, cfg, outcome, pending.pop(outcome.key), run)
                    run.overhead_seconds.append(time.perf_counter() - t0)
                    run.trial_seconds.append(outcome.seconds)
                    run.running = len(pending)
                    display.update()
    except KeyboardInterrupt:
        run.interrupted = True
        for outcome in executor.cancel_all():
            pending.pop(outcome.key, None)
            tid = _trial_id(study, outcome.key)
            study._storage.set_trial_user_attr(tid, "interrupted", True)
            study._storage.set_trial_user_attr(tid, "failure_reason",
                                               "interrupted by the user (re-run on resume)")
        requeue_stale(study)
        tracker.finish("KILLED")
        raise
    finally:
        run.seconds = time.time() - t_start
        if own_executor:
            executor.shutdown()
    if write_artifacts:
        from automix.export import write_study_artifacts

        run.artifacts = write_study_artifacts(study, cfg, tracker)
    tracker.finish("FINISHED")
    return run


def _trial_id(study: Any, number: int) -> int:
    return study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)


def _finish(study: Any, tracker: Any, cfg: Any, outcome: Any, info: dict, run: StudyRun) -> None:
    """Tell one outcome to Optuna, log it to MLflow, refresh the Pareto tags and hypervolume."""
    from optuna.trial import TrialState

    storage, tid = study._storage, _trial_id(study, outcome.key)
    result = outcome.value if isinstance(outcome.value, dict) else (
        outcome.value.to_dict() if hasattr(outcome.value, "to_dict") else {})
    result = {k: v for k, v in result.items() if _jsonable(v)}
    storage.set_trial_user_attr(tid, "result", result)
    storage.set_trial_user_attr(tid, "attempts", outcome.attempts)
    storage.set_trial_user_attr(tid, "seconds", outcome.seconds)
    reason = None
    if outcome.status != "ok":
        reason = f"{outcome.status}: {outcome.error}"
    elif result.get("status", "ok") != "ok":
        reason = f"trial failed: {result.get('failure_reason')}"
    values = None if reason else objective_values(cfg, result, info["mem"])
    if isinstance(values, str):
        reason, values = values, None
    if reason:
        storage.set_trial_user_attr(tid, "failure_reason", reason[:2000])
        study.tell(outcome.key, state=TrialState.FAIL)
    else:
        storage.set_trial_user_attr(tid, "memory_objective", values[1])
        study.tell(outcome.key, values)
    _log(tracker, cfg, storage.get_trial(tid))
    _refresh_front(study, tracker, cfg, run)


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


def _log(tracker: Any, cfg: Any, t: Any) -> None:
    """Log one finished trial to MLflow from what the Optuna storage holds about it."""
    from optuna.trial import TrialState

    result = t.user_attrs.get("result", {})
    mem = float(t.user_attrs.get("predicted_memory", 0.0))
    info = dict(method=t.user_attrs.get("method"), summary=t.user_attrs.get("summary", {}),
                layers=t.user_attrs.get("layers"))
    extra = {"memory_objective": t.user_attrs.get("memory_objective"),
             "trial_seconds": t.user_attrs.get("seconds")}
    # What the sampler's predictor expected, when it recorded it (calibration views).
    predicted = t.system_attrs.get("automix:predicted_values") or t.user_attrs.get("predicted_values")
    if isinstance(predicted, (list, tuple)) and predicted and isinstance(predicted[0], (int, float)):
        extra[f"predicted_{cfg.objectives.quality}"] = predicted[0]
    tags = {}
    if t.state == TrialState.FAIL:
        tags["failure_reason"] = str(t.user_attrs.get("failure_reason", ""))[:4000]
    params = {**info.get("summary", {}), **{f"p.{k}": v for k, v in t.params.items()}}
    tracker.log_trial(
        t.number, method=info.get("method"), status="ok" if t.state == TrialState.COMPLETE else "failed",
        params=params, metrics=_summary_metrics(result, mem, extra), layers=info.get("layers"),
        tags=tags, started=t.datetime_start.timestamp() if t.datetime_start else None,
        finished=t.datetime_complete.timestamp() if t.datetime_complete else None,
    )


def _refresh_front(study: Any, tracker: Any, cfg: Any, run: StudyRun) -> None:
    from optuna.trial import TrialState

    trials = finished_trials(study)
    overall, per_method = pareto_numbers(trials, cfg.directions, cfg.memory_budget)
    tracker.set_pareto(overall, per_method)
    run.front = sorted(overall)
    run.done = len(trials)
    run.failed = sum(t.state == TrialState.FAIL for t in trials)
    ok = [t for t in trials if t.state == TrialState.COMPLETE and _feasible(t, cfg.memory_budget)]
    if ok:
        pick = max if cfg.directions[0] == "maximize" else min
        run.best_quality = pick(t.values[0] for t in ok)
    run.hypervolume = normalized_hypervolume(trials, cfg)
    tracker.log_hypervolume(run.done, run.hypervolume)


def _sync_tracking(study: Any, tracker: Any, cfg: Any) -> None:
    """Log finished trials that MLflow missed (a driver killed between tell and logging)."""
    missing = [t for t in finished_trials(study) if t.number not in tracker._runs]
    for t in missing:
        _log(tracker, cfg, t)
    if missing:
        _refresh_front(study, tracker, cfg, StudyRun(cfg.name, cfg.n_trials))


class _Display:
    """Rich progress: done / running / failed, best quality within budget, front size, ETA."""

    def __init__(self, run: StudyRun, enabled: bool = True) -> None:
        self.run, self.enabled, self._progress, self._task = run, enabled, None, None

    def __enter__(self) -> "_Display":
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]{task.fields[name]}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                TextColumn("{task.description}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                refresh_per_second=2,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("", total=self.run.target, name=self.run.name,
                                                 completed=self.run.done)
        return self

    def update(self) -> None:
        if not self._progress:
            return
        r = self.run
        best = "—" if r.best_quality is None else f"{r.best_quality:.4g}"
        self._progress.update(
            self._task, completed=min(r.done, r.target),
            description=f"running {r.running} · failed {r.failed} · best in budget {best} · "
                        f"front {len(r.front)} · HV {r.hypervolume:.3f}",
        )

    def __exit__(self, *exc: Any) -> None:
        if self._progress:
            self._progress.__exit__(*exc)
