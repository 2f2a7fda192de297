"""MLflow tracking of a study: one experiment, a parent run, a nested run per trial.

The driver is the only writer. Each trial's run carries the method, summary parameters of its
layer configuration (average bits, prune ratio, rank; floats to 4 significant digits; the full
configuration as `layers.yaml`, the file `automix trial --layers` takes, and as JSON) and its
metrics (memory in bytes and, beside it, in MiB; a value is logged as a parameter or as a
metric, never both). The experiment is tagged as a classic ML one (MLflow 3 would otherwise open
it in its GenAI view). The tags `pareto` (overall front) and `pareto_method` (front of the
trial's method) are kept "true" exactly on the runs of the current front, so the MLflow UI can
filter on them. The parent run holds the study file, the front as CSV and plot, and the
hypervolume over trials as a metric history. The Optuna storage stays the source of truth:
on resume `reconcile` removes runs a killed driver left half-written (RUNNING), duplicates and
runs of trials that are not finished, so the driver can re-log exactly the finished trials
MLflow misses: one closed run each.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterable, Mapping

from automix.config.layers import compact_layers
from automix.study.storage import sqlite_lock

__all__ = ["TrackingError", "check_tracking_uri", "artifact_root_for", "adopt_artifact_roots", "Tracker"]

ROLE, STUDY, TRIAL = "automix.role", "automix.config.study", "automix.trial"


class TrackingError(ValueError):
    """The tracking URI cannot be used (unreachable server, unwritable directory)."""


def _sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    return None


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any trial runs, when MLflow could not record to `uri`."""
    db = _sqlite_path(uri)
    if db is not None:
        parent = db.parent if str(db.parent) else Path(".")
        if not parent.is_dir():
            raise TrackingError(f"MLflow tracking URI {uri!r}: directory {parent} does not exist")
        if not os.access(parent, os.W_OK):
            raise TrackingError(f"MLflow tracking URI {uri!r}: directory {parent} is not writable")
        return
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - user's URI
                if resp.status >= 400:
                    raise TrackingError(f"MLflow tracking server {uri!r} answered {resp.status}")
        except (urllib.error.URLError, OSError) as err:
            raise TrackingError(f"MLflow tracking server {uri!r} cannot be reached: {err}") from None
        return
    if uri.startswith("file:") or "://" not in uri:
        path = Path(uri[len("file:"):].lstrip("/") if uri.startswith("file:") else uri)
        if uri.startswith("file://"):
            path = Path(uri[len("file://"):])
        target = path if path.exists() else path.parent
        if not target.is_dir() or not os.access(target, os.W_OK):
            raise TrackingError(f"MLflow tracking URI {uri!r}: {target} is not a writable directory")
        return
    # Database backends (postgresql://, mysql://, ...): try to connect.
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(uri, pool_pre_ping=True)
        with engine.connect():
            pass
        engine.dispose()
    except Exception as err:  # driver missing, refused, bad credentials, ...
        raise TrackingError(f"MLflow tracking URI {uri!r} cannot be reached: {err}") from None


def artifact_root_for(uri: str, experiment: str) -> str | None:
    """Where a local (SQLite) tracking store keeps artifacts: next to the database file."""
    db = _sqlite_path(uri)
    if db is None:
        return None
    return (db.parent / "automix-mlartifacts" / experiment).resolve().as_uri()


ARTIFACTS_DIR = "automix-mlartifacts"


def adopt_artifact_roots(uri: str) -> str:
    """Make a local SQLite MLflow store that was copied or moved from another directory write its
    artifacts beside itself. Returns a note ('' when nothing changed).

    automix creates each experiment with the artifact location ``<db dir>/automix-mlartifacts/<name>``
    (`artifact_root_for`), an absolute path MLflow keeps in the database, and every run's artifact
    URI under it: in a copy of a project the copied database still points at the original's
    directory, and logging there would write into the original project. Experiments laid out that
    way under another directory (and their runs) are pointed at this database's own
    ``automix-mlartifacts/``; other locations, chosen by the user, are left alone."""
    db = _sqlite_path(uri)
    if db is None or not db.is_file():
        return ""
    import sqlalchemy

    here = (db.resolve().parent / ARTIFACTS_DIR).as_uri()
    engine = sqlalchemy.create_engine(f"sqlite:///{db.resolve()}")
    moved: list[tuple[str, str]] = []
    try:
        with sqlite_lock(uri), engine.begin() as c:
            tables = {r[0] for r in c.execute(sqlalchemy.text("SELECT name FROM sqlite_master WHERE type='table'"))}
            if not {"experiments", "runs"} <= tables:
                return ""
            for eid, name, loc in c.execute(sqlalchemy.text(
                    "SELECT experiment_id, name, artifact_location FROM experiments")).all():
                root = (loc or "").rsplit("/", 1)[0]
                if not loc or not root.startswith("file://") or not root.endswith("/" + ARTIFACTS_DIR) or root == here:
                    continue
                was = Path(urllib.parse.unquote(urllib.parse.urlparse(root).path)).parent
                if artifact_root_for(f"sqlite:///{was}/x.db", name) != loc:
                    continue  # not automix's own layout for this experiment: the user's choice
                new = artifact_root_for(uri, name)
                c.execute(sqlalchemy.text("UPDATE experiments SET artifact_location = :new WHERE experiment_id = :e"),
                          {"new": new, "e": eid})
                c.execute(sqlalchemy.text(
                    "UPDATE runs SET artifact_uri = :new || substr(artifact_uri, :n) "
                    "WHERE experiment_id = :e AND substr(artifact_uri, 1, :m) = :old"),
                    {"new": new, "old": loc, "n": len(loc) + 1, "m": len(loc), "e": eid})
                moved.append((name, root))
    finally:
        engine.dispose()
    if not moved:
        return ""
    _forget_artifact_repos()
    roots = sorted({r for _, r in moved})
    return (f"the MLflow store {db} was made in another directory: its artifacts of "
            f"{', '.join(repr(n) for n, _ in moved)} now go to {here} (they pointed at {', '.join(roots)})")


def _spread(steps: list[int], start_ms: int, end_ms: int) -> list[int]:
    """A timestamp per point of a metric history: a trial reports no wall time per step, so its
    steps are placed in proportion over the run (start to end), each later than the one before;
    with one timestamp for all, MLflow's time axis draws the curve as a vertical line."""
    if not steps:
        return []
    last = max(max(steps), 1)
    span = max(end_ms - start_ms, len(steps))
    out, prev = [], start_ms - 1
    for s in steps:
        at = max(start_ms + int(span * max(s, 0) / last), prev + 1)
        out.append(at)
        prev = at
    return out


def _forget_artifact_repos() -> None:
    """MLflow keeps each run's artifact repository per process, by run id: a process that used the
    original store must not keep writing there after the locations changed."""
    try:
        from mlflow.tracking._tracking_service import utils as mlflow_utils
    except ImportError:
        return
    cache = getattr(mlflow_utils, "_artifact_repos_cache", None)
    if cache is not None:
        cache.clear()


def _fmt(v: Any) -> str:
    """A parameter's value as MLflow shows it: floats to 4 significant digits."""
    if isinstance(v, float) and v == v and abs(v) != float("inf"):
        v = float(f"{v:.4g}")
    s = v if isinstance(v, str) else json.dumps(v) if isinstance(v, (dict, list)) else str(v)
    return s[:6000]


MIB = 2 ** 20


def _with_mib(metrics: Mapping[str, float | None]) -> dict[str, float | None]:
    """The metrics, with each memory metric in bytes also in MiB beside it (`peak_memory_bytes`
    -> `peak_memory_mib`, `memory_objective` -> `memory_mib`): bytes alone are unreadable in
    the MLflow compare view."""
    out = dict(metrics)
    for k, v in metrics.items():
        name = "memory_mib" if k == "memory_objective" else (
            k[:-len("_bytes")] + "_mib" if k.endswith("memory_bytes") else None)
        if name and name not in out and isinstance(v, (int, float)):
            out[name] = round(float(v) / MIB, 4)
    return out


def _layers_yaml(layers: Mapping[str, Any]) -> str:
    """The trial's layer configuration as the YAML file `automix trial --layers` takes."""
    import yaml

    doc = dict(layers)
    if doc and "default" not in doc and "layers" not in doc:  # a full per-layer map
        doc = compact_layers(doc)
    return yaml.safe_dump(doc, sort_keys=False)


EXPERIMENT_KIND = "mlflow.experimentKind"          # MLflow 3: which view the experiment opens in
CLASSIC_ML = "custom_model_development"            # runs, metrics, compare (not GenAI traces)
# A saved runs-page view (MLflow's "share view": an experiment tag the page's viewStateShareKey
# names): the Pareto front's trial runs, sorted by memory, with the objectives' columns shown.
SHARED_VIEW = "mlflow.sharedViewState."
FRONT_VIEW = "automix-pareto-front"


def front_view_state(quality: str) -> dict[str, Any]:
    """The saved view of the front: filter, sort and the columns that matter (MLflow's default
    view lists attribute columns only and hides every metric)."""
    cols = [f"tags.`method`", f"metrics.`{quality}`", "metrics.`memory_mib`", "metrics.`peak_memory_mib`",
            "metrics.`predicted_memory_mib`", "params.`avg_bits`", "metrics.`avg_bits`", "params.`avg_prune`",
            "params.`avg_rank`", "metrics.`trainable_params`"]
    return {"searchFilter": "tags.pareto = 'true'", "orderByKey": "metrics.`memory_mib`", "orderByAsc": True,
            "selectedColumns": ["attributes.`Run Name`", *cols]}


class Tracker:
    """Writes one study to MLflow (see the module docstring)."""

    def __init__(self, tracking_uri: str, study_name: str) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        check_tracking_uri(tracking_uri)
        self.uri = tracking_uri
        self.study_name = study_name
        self.adopted = adopt_artifact_roots(tracking_uri)  # a copied project writes into its own store
        mlflow.set_tracking_uri(tracking_uri)
        with sqlite_lock(tracking_uri):  # MLflow creates its schema on first use: one process at a time
            self.client = MlflowClient(tracking_uri)
            exp = self.client.get_experiment_by_name(study_name)
        if exp is None:
            self.experiment_id = self.client.create_experiment(
                study_name, artifact_location=artifact_root_for(tracking_uri, study_name),
                tags={STUDY: study_name, EXPERIMENT_KIND: CLASSIC_ML},
            )
        else:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            self.experiment_id = exp.experiment_id
            if EXPERIMENT_KIND not in exp.tags:  # created before the kind was set
                self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND, CLASSIC_ML)
        self.parent_id = self._find_or_create_parent()
        self._runs = self.logged_trials()
        self._tags: dict[str, tuple[str, str]] = {}

    # -- runs ------------------------------------------------------------------------------
    def _find_or_create_parent(self) -> str:
        found = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{ROLE}` = 'study'", max_results=1,
            order_by=["attributes.start_time ASC"],
        )
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(
            self.experiment_id, run_name=self.study_name, tags={ROLE: "study", STUDY: self.study_name}
        )
        return run.info.run_id

    def _trial_runs(self) -> list[Any]:
        """Every (not deleted) trial run of the study, oldest first."""
        out: list[Any] = []
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], filter_string=f"tags.`{ROLE}` = 'trial'",
                max_results=1000, page_token=token, order_by=["attributes.start_time ASC"],
            )
            out.extend(page)
            token = page.token
            if not token:
                return out

    def logged_trials(self) -> dict[int, str]:
        """Optuna trial number -> MLflow run id, for the trials already logged."""
        return {int(r.data.tags[TRIAL]): r.info.run_id for r in self._trial_runs()}

    def reconcile(self, finished: Iterable[int]) -> tuple[list[str], list[int]]:
        """Bring the trial runs in line with the `finished` Optuna trial numbers.

        Deletes the runs a killed driver left open (RUNNING: created, not completely logged),
        second runs of one trial, and runs of trials that are not finished; returns (the deleted
        run ids, the finished trials that have no closed run and must be logged).
        """
        finished = set(finished)
        keep: dict[int, str] = {}
        removed: list[str] = []
        for r in self._trial_runs():
            n = int(r.data.tags[TRIAL])
            if r.info.status not in ("FINISHED", "FAILED") or n not in finished or n in keep:
                self.client.delete_run(r.info.run_id)
                removed.append(r.info.run_id)
            else:
                keep[n] = r.info.run_id
        self._runs = keep
        self._tags = {}
        return removed, sorted(finished - set(keep))

    def log_study_config(self, config: Mapping[str, Any], source: str | None = None) -> None:
        """The study file (as written, and as validated) on the parent run."""
        import yaml

        if source and Path(source).is_file():
            self.client.log_text(self.parent_id, Path(source).read_text(), "study.yaml")
        self.client.log_text(self.parent_id, yaml.safe_dump(dict(config), sort_keys=False),
                             "study.resolved.yaml")
        quality = (config.get("objectives") or {}).get("quality") or "perplexity"
        view = json.dumps(front_view_state(str(quality)), sort_keys=True)
        exp = self.client.get_experiment(self.experiment_id)
        if exp.tags.get(SHARED_VIEW + FRONT_VIEW) != view:
            self.client.set_experiment_tag(self.experiment_id, SHARED_VIEW + FRONT_VIEW, view)
        params = {k: _fmt(v) for k, v in config.items()
                  if k in ("model", "task", "data", "methods", "memory_budget", "n_trials",
                           "sampler", "workers") and v is not None}
        from mlflow.entities import Param

        existing = self.client.get_run(self.parent_id).data.params
        new = [Param(k, v) for k, v in params.items() if k not in existing]
        if new:
            self.client.log_batch(self.parent_id, params=new)

    def log_trial(
        self,
        number: int,
        *,
        method: str | None,
        status: str,
        params: Mapping[str, Any],
        metrics: Mapping[str, float | None],
        layers: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        started: float | None = None,
        finished: float | None = None,
        histories: Mapping[str, Iterable[tuple[int, float]]] | None = None,
    ) -> str:
        """Log (or re-log, idempotently) one finished trial as a nested run; returns its id.

        ``status`` is "ok", "failed" or "pruned" (the run ends FINISHED, FAILED or KILLED, and
        its ``status`` tag says which); ``histories`` are metric histories (name -> (step,
        value) pairs: the training loss per step, the intermediate evaluations)."""
        from mlflow.entities import Metric, Param

        if number in self._runs:
            return self._runs[number]
        all_tags = {
            "mlflow.parentRunId": self.parent_id, ROLE: "trial", STUDY: self.study_name,
            TRIAL: str(number), "method": method or "", "status": status,
            "pareto": "false", "pareto_method": "false",
        }
        all_tags.update({k: str(v) for k, v in (tags or {}).items()})
        run = self.client.create_run(
            self.experiment_id, run_name=f"trial-{number:04d}-{method}",
            start_time=int((started or time.time()) * 1000), tags=all_tags,
        )
        run_id = run.info.run_id
        ts = int((finished or time.time()) * 1000)
        ms = [Metric(k, float(v), ts, 0) for k, v in _with_mib(metrics).items()
              if v is not None and v == v and abs(float(v)) != float("inf")]
        logged = {m.key for m in ms}  # a value given both ways is logged once, as a metric
        start = int(started * 1000) if started else ts
        ms += [Metric(k, float(v), at, int(step)) for k, pairs in (histories or {}).items()
               for (step, v), at in zip(pairs, _spread([s for s, _ in pairs], start, ts))
               if v is not None and v == v and abs(float(v)) != float("inf")]
        ps = [Param(k, _fmt(v)) for k, v in params.items() if v is not None and k not in logged]
        if len(ps) > 300:  # per-layer raw params of a big model: the JSON artifact holds them
            ps = [p for p in ps if not p.key.startswith("p.") or p.key == "p.method"]
        for i in range(0, max(len(ps), len(ms), 1), 100):  # MLflow takes 100 params per batch
            self.client.log_batch(run_id, metrics=ms[i:i + 100], params=ps[i:i + 100])
        if layers is not None:  # layers.yaml: what `automix trial --layers` re-runs
            self.client.log_text(run_id, _layers_yaml(layers), "layers.yaml")
            self.client.log_text(run_id, json.dumps(layers, indent=1, sort_keys=True), "layers.json")
        ended = {"ok": "FINISHED", "pruned": "KILLED"}.get(status, "FAILED")
        self.client.set_terminated(run_id, ended, end_time=ts)
        self._runs[number] = run_id
        self._tags[run_id] = ("false", "false")
        return run_id

    # -- pareto tags -----------------------------------------------------------------------
    def set_pareto(self, overall: Iterable[int], per_method: Iterable[int]) -> int:
        """Make the `pareto` / `pareto_method` tags true exactly on these trial numbers.

        Only runs whose tags change are written; returns how many tag writes were made.
        """
        overall, per_method = set(overall), set(per_method)
        if len(self._tags) < len(self._runs):
            self._load_tags()
        writes = 0
        for number, run_id in self._runs.items():
            want = ("true" if number in overall else "false",
                    "true" if number in per_method else "false")
            have = self._tags.get(run_id)
            if have == want:
                continue
            if have is None or have[0] != want[0]:
                self.client.set_tag(run_id, "pareto", want[0])
                writes += 1
            if have is None or have[1] != want[1]:
                self.client.set_tag(run_id, "pareto_method", want[1])
                writes += 1
            self._tags[run_id] = want
        return writes

    def _load_tags(self) -> None:
        for r in self.client.search_runs([self.experiment_id], filter_string=f"tags.`{ROLE}` = 'trial'",
                                         max_results=50000):
            self._tags[r.info.run_id] = (r.data.tags.get("pareto", "false"),
                                         r.data.tags.get("pareto_method", "false"))

    # -- study level -----------------------------------------------------------------------
    def log_hypervolume(self, step: int, value: float) -> None:
        self.client.log_metric(self.parent_id, "hypervolume", float(value), step=int(step))

    def log_study_metrics(self, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.client.log_batch(self.parent_id, metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()])

    def log_file(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.parent_id, str(path), artifact_path)

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.parent_id, text, name)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.parent_id, status)
