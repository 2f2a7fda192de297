"""A study read back from its MLflow experiment, for when only the tracking server is at hand.

The driver logs every trial as a nested run (tags `method`, `status`, `automix.trial`; metrics
such as the quality, `memory_objective`, measured and predicted memory; summary params; the
layer configuration as `layers.json`) and the validated study file on the parent run
(`study.resolved.yaml`). That is enough for every view except the memory breakdown, which only
the Optuna storage keeps (the trial result's `memory_predicted`).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from automix.dashboards.data import (NoFinishedTrialsError, ReportDataError, StudyData, finish, layer_names,
                                     resolve_layers)
from automix.config.study import default_tracking_uri
from automix.study.tracking import ROLE, TRIAL

__all__ = ["load_mlflow_study"]


def _unreadable() -> tuple[type[BaseException], ...]:
    """What reading a run's artifact can raise: MLflow's errors (no such artifact, a server that
    refuses), the file system's, and an artifact that does not parse."""
    import yaml
    from mlflow.exceptions import MlflowException

    return MlflowException, OSError, ValueError, yaml.YAMLError


def _config(client: Any, parent: Any, skipped: list[str]) -> dict:
    import yaml

    try:
        with tempfile.TemporaryDirectory() as tmp, _quiet():
            path = client.download_artifacts(parent.info.run_id, "study.resolved.yaml", tmp)
            return dict(yaml.safe_load(Path(path).read_text()) or {})
    except _unreadable() as err:  # older runs have none: the parent's params say most of it
        skipped.append(f"the study file logged on the parent run (study.resolved.yaml) was not read "
                       f"({type(err).__name__}: {str(err)[:200]}); model, task and budget come from its params")
        params = dict(parent.data.params)
        out: dict[str, Any] = {k: params[k] for k in ("model", "task", "sampler") if k in params}
        if "memory_budget" in params:
            out["memory_budget"] = float(params["memory_budget"])
        if "methods" in params:
            try:
                out["methods"] = json.loads(params["methods"])
            except ValueError:
                pass
        return out


def _layers(client: Any, run_id: str, failed: list[str]) -> Any:
    try:
        with tempfile.TemporaryDirectory() as tmp, _quiet():
            return json.loads(Path(client.download_artifacts(run_id, "layers.json", tmp)).read_text())
    except _unreadable() as err:  # that trial has no layer view; the report says how many
        failed.append(f"{type(err).__name__}: {str(err)[:200]}")
        return None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No per-file download progress bars in the command's output."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    old = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _num(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def load_mlflow_study(name: str, tracking_uri: str | None = None) -> StudyData:
    """Read study `name` (its MLflow experiment) from `tracking_uri` (default: the working dir's).

    Same frame as `load_study_data`; per-layer settings are downloaded for front trials only.
    """
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or default_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise ReportDataError(f"no MLflow tracking database at {uri}: run `automix search` first or pass "
                              "--tracking-uri")
    try:
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(name)
        names = [] if exp is not None else [e.name for e in client.search_experiments()]
    except Exception as err:  # noqa: BLE001 - reported with the URI
        raise ReportDataError(f"MLflow tracking {uri!r} cannot be read: {err}") from None
    if exp is None:
        raise ReportDataError(f"study {name!r} has no MLflow experiment in {uri}; experiments there: "
                              f"{sorted(names) or 'none'}")
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    parents = sorted((r for r in runs if r.data.tags.get(ROLE) == "study"), key=lambda r: r.info.start_time)
    trials = [r for r in runs if r.data.tags.get(ROLE) == "trial"]
    skipped: list[str] = []
    config = _config(client, parents[0], skipped) if parents else {}
    quality = (config.get("objectives") or {}).get("quality") or (
        "perplexity" if config.get("task") == "lm" else "accuracy")
    budget = _num(config.get("memory_budget"))
    data = StudyData(
        name=name, storage=uri, quality=quality,
        directions=["maximize" if quality == "accuracy" else "minimize", "minimize"], budget=budget,
        sampler=str(config.get("sampler") or "?"), methods=list(config.get("methods") or []),
        tracking_uri=uri, frame=None,  # type: ignore[arg-type]
    )
    trials.sort(key=lambda r: (r.info.end_time or r.info.start_time or 0, int(r.data.tags.get(TRIAL, 0))))
    rows = []
    for i, r in enumerate(trials):
        m, p, tags = r.data.metrics, r.data.params, r.data.tags
        ok = tags.get("status") == "ok" and quality in m and "memory_objective" in m
        rows.append({
            "number": int(tags.get(TRIAL, i)), "order": i + 1, "state": "COMPLETE" if ok else "FAIL",
            "method": tags.get("method") or p.get("p.method"),
            "quality": m.get(quality) if ok else None, "memory": m.get("memory_objective") if ok else None,
            "avg_bits": _num(p.get("avg_bits", m.get("avg_bits"))), "avg_prune": _num(p.get("avg_prune")),
            "avg_rank": _num(p.get("avg_rank")), "accuracy": m.get("accuracy"), "perplexity": m.get("perplexity"),
            "measured_memory": m.get("peak_memory_bytes"), "predicted_memory": m.get("predicted_memory_bytes"),
            "predicted_quality": m.get(f"predicted_{quality}"), "trainable_params": m.get("trainable_params"),
            "failure_reason": tags.get("failure_reason", "")[:300],
        })
    if not any(r["state"] == "COMPLETE" for r in rows):
        raise NoFinishedTrialsError(f"study {name!r} in {uri} has no finished trials yet: nothing to report")
    finish(data, rows)
    front = set(data.frame[data.frame.front | data.frame.front_method].number)
    failed: list[str] = []
    recorded = {r_num: _layers(client, r.info.run_id, failed) for r_num, r in
                ((int(r.data.tags.get(TRIAL, -1)), r) for r in trials) if r_num in front}
    if failed:
        skipped.append(f"layers.json of {len(failed)} front trial run(s) was not read (first: {failed[0]})")
    names = layer_names(config, list(recorded.values()), skipped)
    data.layers = {n: resolved for n, rec in recorded.items() if (resolved := resolve_layers(rec, names))}
    data.missing = [m for m in data.missing if "per-layer" not in m and "breakdown" not in m]
    if not any(n in data.layers for n in data.front_frame.number) and not data.front_frame.empty:
        data.missing.append("no per-layer configuration (layers.json) is logged for the front trials")
    data.missing.append("memory breakdowns are kept in the Optuna storage only (read the study from "
                        "there for that view)")
    data.missing.extend(skipped)
    return data
