"""The search loop: ask the sampler, run trials on the executor, tell results, track them.

The driver is the single writer to the Optuna storage and to MLflow, so SQLite is safe as the
embedded default and a server URL is only a setting; the study's lease
(`automix.study.storage.StudyLease`) makes it the only one. Optuna is the source of truth: every
trial's result (the trial function's dictionary) is stored in its user attributes before the
trial is told, MLflow is brought in line from it (`Tracker.reconcile` on resume), and `status`
and `export` read it back.

Resuming (re-running the same study, or `--resume`) keeps every finished trial; trials left
RUNNING by a killed driver, or stopped by Ctrl-C, are marked failed ("stale") by the lease's new
holder and their configurations are enqueued to run again.

The loop is generic over a `TrialBackend`: the real one (`automix.study.backend.AutomixBackend`) maps
search parameters to `TrialSpec`s for `automix.trial.run_trial`; the orchestration benchmark
uses a synthetic one.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Protocol

from optuna import Study
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import Trial, TrialState

from automix.search._optuna_compat import storage_of, trial_id_of_number
from automix.study.artifacts import write_study_artifacts
from automix.study.backend import make_sampler
from automix.study.executors import RayExecutor
from automix.study.fidelity import FidelityLedger, make_pruner
from automix.study.progress import StudyProgress
from automix.study.results import finished_trials, is_feasible, normalized_hypervolume, objective_values, pareto_numbers
from automix.study.storage import (DRIVER_ATTR, StudyBusyError, StudyLease, dashboard_note, open_study, requeue_stale,
                                   study_note)
from automix.study.tracking import Tracker

__all__ = ["TrialBackend", "StudyRun", "run_study", "ask_configuration"]


class TrialBackend(Protocol):
    """What the driver needs to know about the trials of one study."""

    function: Callable[[Any], Any] | str            # what a worker runs on a payload
    distributions: Mapping[str, Any]                # Optuna distributions of every parameter

    def predicted_memory(self, params: Mapping[str, Any]) -> float: ...
    def payload(self, params: Mapping[str, Any]) -> dict: ...
    def describe(self, params: Mapping[str, Any]) -> tuple[str, dict, dict]: ...
    # -> (method, summary params for MLflow, full layer configuration)


@dataclass
class StudyRun:
    """What `run_study` did (also what the progress display shows)."""

    name: str
    target: int
    done: int = 0
    failed: int = 0
    pruned: int = 0
    running: int = 0
    requeued: list[int] = field(default_factory=list)  # trials a previous driver left, marked stale
    reran: list[int] = field(default_factory=list)     # ... whose configuration finished in this run
    front: list[int] = field(default_factory=list)
    best_quality: float | None = None
    hypervolume: float = 0.0
    seconds: float = 0.0
    interrupted: bool = False
    overhead_seconds: list[float] = field(default_factory=list)  # tell + MLflow + front, per trial
    ask_seconds: list[float] = field(default_factory=list)       # sampler proposal + spec, per trial
    trial_seconds: list[float] = field(default_factory=list)     # the trial's own run time, per trial
    startup_seconds: list[float] = field(default_factory=list)   # submit -> the trial's work started
    artifacts: list[str] = field(default_factory=list)


def _summary_metrics(result: Mapping[str, Any], predicted: float, extra: Mapping[str, Any]) -> dict:
    keys = ("accuracy", "perplexity", "peak_memory_bytes", "allocator_peak_bytes", "predicted_memory_bytes",
            "predicted_accuracy", "trainable_params", "avg_bits", "first_loss", "last_loss",
            "train_seconds", "eval_seconds", "throughput", "tokens_per_second")
    m = {k: result.get(k) for k in keys if isinstance(result.get(k), (int, float))}
    m.setdefault("predicted_memory_bytes", predicted)
    m.update({k: v for k, v in extra.items() if isinstance(v, (int, float))})
    return m


def ask_configuration(study: Study, backend: Any, budget: float) -> tuple[Trial, dict, float]:
    """The driver's step before a trial runs: ask the sampler for a configuration of the
    backend's space, predict its memory, and set the budget constraint on the trial (what TPE
    and NSGA-II read; the prediction is kept as the trial's ``predicted_memory``). Returns the
    trial, its parameters and the predicted memory. Benchmarks that drive a study themselves
    take the same step."""
    trial = study.ask(dict(backend.distributions))
    params = dict(trial.params)
    mem = float(backend.predicted_memory(params))
    trial.set_user_attr("predicted_memory", mem)
    trial.set_constraint("memory_budget", mem - budget)
    return trial, params, mem


def run_study(
    cfg: Any,
    backend: TrialBackend,
    *,
    executor: Any = None,
    sampler: Any = None,
    n_trials: int | None = None,
    resume: bool = True,
    ray_address: str | None = None,
    ray_timeout_s: float = 30.0,
    takeover: bool = False,
    progress: bool = True,
    write_artifacts: bool = True,
) -> StudyRun:
    """Run (or continue) a study until it has `n_trials` finished trials.

    `executor` defaults to a `RayExecutor` built from the study's resources (joining the cluster
    at `ray_address` within `ray_timeout_s`); `sampler` to the one
    `automix.study.backend.make_sampler` builds for it. Nothing is written before the study's
    lease is known to be free and the executor is up. Ctrl-C (or SIGTERM) cancels the trials in
    flight, records them as interrupted (requeued on resume), closes the MLflow parent run and
    re-raises KeyboardInterrupt. Raises StudyBusyError when another live driver runs the study
    (unless `takeover`) or takes it over from this one.
    """
    lease = StudyLease(cfg.storage_url, cfg.name)
    lease.check_free(takeover)  # reads only: a busy study stops here
    own_executor = executor is None
    if executor is None:
        executor = RayExecutor(backend.function, workers=cfg.workers, cpus=cfg.resources.cpus,
                               gpus=cfg.resources.gpus, timeout_s=cfg.timeout_per_trial,
                               max_retries=cfg.max_retries, address=ray_address,
                               connect_timeout_s=ray_timeout_s, gpu_wait_s=cfg.resources.gpu_wait_s)
    try:
        if sampler is None:
            sampler = make_sampler(cfg, backend)
        lease.acquire(takeover)
        try:
            with _sigterm_as_interrupt():
                return _drive(cfg, backend, executor, sampler, lease, n_trials, resume, progress,
                              write_artifacts)
        finally:
            lease.release()
    finally:
        if own_executor:
            executor.shutdown()


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _Terminated()

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _drive(cfg: Any, backend: TrialBackend, executor: Any, sampler: Any, lease: StudyLease,
           n_trials: int | None, resume: bool, progress: bool, write_artifacts: bool) -> StudyRun:
    """The loop itself, run holding the study's lease."""
    study = open_study(cfg, sampler)
    if not resume and finished_trials(study):
        raise ValueError(
            f"study {cfg.name!r} already has trials in {cfg.storage_url}; resume it or choose a new name"
        )
    run = StudyRun(cfg.name, int(n_trials or cfg.n_trials))
    config = {**cfg.model_dump(mode="json"), "storage": cfg.storage_url, "tracking_uri": cfg.tracking}
    if study.user_attrs.get("config") != config:
        study.set_user_attr("config", config)  # status / export work from the name alone
    dashboard_note(study, study_note(cfg))  # what optuna-dashboard cannot say: units, the companion study
    run.requeued = requeue_stale(study, keep_driver=lease.token)
    tracker = Tracker(cfg.tracking, cfg.name)
    pending: dict[int, dict] = {}
    pruner = make_pruner(cfg)
    ledger = FidelityLedger(cfg, study, pruner) if pruner is not None else None
    executor.on_report = lambda key, kind, step, value: _on_report(pending, ledger, key, kind, step, value)
    t_start = time.time()
    try:
        tracker.log_study_config(cfg.model_dump(mode="json"), cfg.source)
        _sync_tracking(study, tracker, cfg)
        display = StudyProgress(run, enabled=progress)
        with display:
            finished = finished_trials(study)
            run.done = len(finished)
            run.failed = sum(t.state == TrialState.FAIL for t in finished)
            run.pruned = sum(t.state == TrialState.PRUNED for t in finished)
            if finished:  # a resumed study shows its front from the start
                _front_summary(finished, cfg, run)
            while True:  # run.done / run.failed are refreshed by _finish as results arrive
                while executor.free_slots() > 0 and run.done + len(pending) < run.target:
                    lease.verify()
                    t_ask = time.perf_counter()
                    trial, params, mem = ask_configuration(study, backend, cfg.memory_budget)
                    trial.set_user_attr(DRIVER_ATTR, lease.token)
                    method, summary, layers = backend.describe(params)
                    trial.set_user_attr("method", method)
                    trial.set_user_attr("summary", _readable(summary))
                    trial.set_user_attr("layers", layers)  # compact: the default and the exceptions
                    payload = backend.payload(params)
                    trial.set_user_attr("spec", payload)
                    if ledger is not None:
                        trial.set_user_attr("fidelity_trial", ledger.open(trial.number, mem))
                    pending[trial.number] = dict(params=params, mem=mem, t0=time.time(), curve=[], losses=[])
                    executor.submit(trial.number, payload)
                    run.ask_seconds.append(time.perf_counter() - t_ask)
                run.running = len(pending)
                display.update()
                if not pending:
                    break
                for outcome in executor.poll(0.5):
                    t0 = time.perf_counter()
                    _finish(study, tracker, cfg, outcome, pending.pop(outcome.key), run, lease, ledger)
                    run.overhead_seconds.append(time.perf_counter() - t0)
                    run.trial_seconds.append(outcome.seconds)
                    if outcome.startup_seconds is not None:
                        run.startup_seconds.append(outcome.startup_seconds)
                    run.running = len(pending)
                    display.update()
    except StudyBusyError:  # taken over: the new driver owns the study, its trials and its runs
        executor.cancel_all()
        raise
    except BaseException as err:
        run.interrupted = isinstance(err, KeyboardInterrupt)
        _stop_in_flight(study, executor, pending, lease, interrupted=run.interrupted)
        if ledger is not None:
            ledger.close_all()
        tracker.finish("KILLED" if run.interrupted else "FAILED")
        raise
    finally:
        run.seconds = time.time() - t_start
    if write_artifacts:
        run.artifacts = write_study_artifacts(study, cfg, tracker)
    tracker.finish("FINISHED")
    return run


def _stop_in_flight(study: Any, executor: Any, pending: dict, lease: StudyLease, interrupted: bool) -> None:
    """Cancel the trials in flight and leave them for the next driver to re-run (stale)."""
    executor.cancel_all()
    why = ("interrupted by the user (re-run on resume)" if interrupted
           else "the driver stopped on an error (re-run on resume)")
    for number in pending:
        tid = trial_id_of_number(study, number)
        storage_of(study).set_trial_user_attr(tid, "interrupted", True)
        storage_of(study).set_trial_user_attr(tid, "failure_reason", why)
    requeue_stale(study)


def _on_report(pending: dict, ledger: FidelityLedger | None, key: Any, kind: str, step: int, value: float) -> bool:
    """A running trial's intermediate report: kept for its curves, judged by the pruner."""
    info = pending.get(key)
    if info is None:
        return False
    if kind == "loss":
        info["losses"].append(value)
        return False
    info["curve"].append([step, value])
    return ledger is not None and ledger.report(key, step, value)


def _finish(study: Any, tracker: Any, cfg: Any, outcome: Any, info: dict, run: StudyRun,
            lease: StudyLease | None = None, ledger: FidelityLedger | None = None) -> None:
    """Tell one outcome to Optuna, log it to MLflow, refresh the Pareto tags and hypervolume."""
    if lease is not None:
        lease.verify()  # a driver that was taken over records nothing more
    storage, tid = storage_of(study), trial_id_of_number(study, outcome.key)
    result = outcome.value if isinstance(outcome.value, dict) else (
        outcome.value.to_dict() if hasattr(outcome.value, "to_dict") else {})
    result = {k: v for k, v in result.items() if _jsonable(v)}
    if outcome.status == "pruned":  # what the driver saw of it before it stopped it
        curve = info.get("curve", [])
        result = {"status": "pruned", "losses": info.get("losses", []), "eval_curve": curve,
                  "pruned_at_step": curve[-1][0] if curve else 0}
    if result.get("eval_curve"):
        storage.set_trial_user_attr(tid, "eval_curve", _readable(result["eval_curve"]))
    storage.set_trial_user_attr(tid, "result", _readable_result(result))
    storage.set_trial_user_attr(tid, "attempts", outcome.attempts)
    storage.set_trial_user_attr(tid, "seconds", outcome.seconds)
    if outcome.startup_seconds is not None:
        storage.set_trial_user_attr(tid, "startup_seconds", outcome.startup_seconds)
    reason = None
    if outcome.status != "ok":
        reason = f"{outcome.status}: {outcome.error}"
    elif result.get("status", "ok") != "ok":
        reason = f"trial failed: {result.get('failure_reason')}"
    if outcome.status == "pruned":
        step = result["pruned_at_step"]
        storage.set_trial_user_attr(tid, "failure_reason", f"pruned at step {step} by the {cfg.pruner.name} pruner")
        study.tell(outcome.key, state=TrialState.PRUNED)
        if ledger is not None:
            ledger.close(outcome.key, TrialState.PRUNED)
        _log(tracker, cfg, storage.get_trial(tid))
        _refresh_front(study, tracker, cfg, run)
        return
    values = None if reason else objective_values(cfg, result, info["mem"])
    if isinstance(values, str):
        reason, values = values, None
    if ledger is not None:
        ledger.close(outcome.key, TrialState.FAIL if reason else TrialState.COMPLETE,
                     None if reason else values[0])
    try:
        if reason:
            storage.set_trial_user_attr(tid, "failure_reason", reason[:2000])
            study.tell(outcome.key, state=TrialState.FAIL)
        else:
            storage.set_trial_user_attr(tid, "memory_objective", values[1])
            storage.set_trial_user_attr(tid, "memory_mib", round(values[1] / 2**20, 4))  # optuna-dashboard's view
            study.tell(outcome.key, values)
    except UpdateFinishedTrialError:
        if lease is not None:
            lease.verify()  # another driver retired the trial: say who, not a traceback
        raise
    frozen = storage.get_trial(tid)
    if frozen.user_attrs.get("requeued_from") is not None:
        run.reran.append(frozen.user_attrs["requeued_from"])
    _log(tracker, cfg, frozen)
    _refresh_front(study, tracker, cfg, run)


def _readable(v: Any, digits: int = 6) -> Any:
    """`v` with its floats rounded to `digits` significant digits (user attributes that
    optuna-dashboard shows as they are: 0.1333 rather than 0.13333333333333333)."""
    if isinstance(v, float) and math.isfinite(v):
        return float(f"{v:.{digits}g}")
    if isinstance(v, Mapping):
        return {k: _readable(x, digits) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_readable(x, digits) for x in v]
    return v


_EXACT = ("accuracy", "perplexity", "throughput", "tokens_per_second")  # objectives: as measured


def _readable_result(result: Mapping[str, Any]) -> dict:
    """The trial's result as stored on the Optuna trial: no empty fields, floats rounded (the
    per-step losses to 4 digits) except the objective values, kept as told."""
    out = {k: v if k in _EXACT else _readable(v) for k, v in result.items() if v not in (None, "", [], {})}
    if "losses" in out:
        out["losses"] = _readable(out["losses"], 4)
    return out


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


def _log(tracker: Any, cfg: Any, t: Any) -> None:
    """Log one finished trial to MLflow from what the Optuna storage holds about it."""
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
    if t.state in (TrialState.FAIL, TrialState.PRUNED):
        tags["failure_reason"] = str(t.user_attrs.get("failure_reason", ""))[:4000]
    params = {**info.get("summary", {}), **{f"p.{k}": v for k, v in t.params.items()}}
    status = {TrialState.COMPLETE: "ok", TrialState.PRUNED: "pruned"}.get(t.state, "failed")
    histories = {"train_loss": list(enumerate(result.get("losses") or [], start=1)),
                 f"eval_{cfg.objectives.quality}": [(int(s), v) for s, v in result.get("eval_curve") or []]}
    tracker.log_trial(
        t.number, method=info.get("method"), status=status, histories=histories,
        params=params, metrics=_summary_metrics(result, mem, extra), layers=info.get("layers"),
        tags=tags, started=t.datetime_start.timestamp() if t.datetime_start else None,
        finished=t.datetime_complete.timestamp() if t.datetime_complete else None,
    )


def _refresh_front(study: Any, tracker: Any, cfg: Any, run: StudyRun) -> None:
    trials = finished_trials(study)
    overall, per_method = pareto_numbers(trials, cfg.directions, cfg.memory_budget)
    tracker.set_pareto(overall, per_method)
    run.front = sorted(overall)
    run.done = len(trials)
    run.failed = sum(t.state == TrialState.FAIL for t in trials)
    run.pruned = sum(t.state == TrialState.PRUNED for t in trials)
    _front_summary(trials, cfg, run)
    tracker.log_hypervolume(run.done, run.hypervolume)


def _front_summary(trials: list, cfg: Any, run: StudyRun) -> None:
    """The best quality within the budget and the hypervolume, for the progress display."""
    ok = [t for t in trials if t.state == TrialState.COMPLETE and is_feasible(t, cfg.memory_budget)]
    if ok:
        pick = max if cfg.directions[0] == "maximize" else min
        run.best_quality = pick(t.values[0] for t in ok)
    run.hypervolume = normalized_hypervolume(trials, cfg)


def _sync_tracking(study: Any, tracker: Any, cfg: Any) -> None:
    """Make MLflow hold exactly one closed run per finished trial (a driver killed while logging
    leaves runs open, or none), then refresh the Pareto tags."""
    finished = {t.number: t for t in finished_trials(study)}
    removed, missing = tracker.reconcile(finished)
    for n in missing:
        _log(tracker, cfg, finished[n])
    if removed or missing:
        _refresh_front(study, tracker, cfg, StudyRun(cfg.name, cfg.n_trials))
