"""A finished study as data the views can plot: one pandas row per finished trial.

The Optuna storage is the source of truth (the driver stores every trial's result, method,
summary and layer configuration in its user attributes, and the study's validated config in the
study's user attributes), so a report needs only the study name and the storage URL. MLflow is
only looked up to find the study's parent run, where the report is logged.

Whatever a study did not record (a predicted accuracy, a memory breakdown, per-layer settings)
is left empty here, and `StudyData.missing` says so in words the report prints.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from transformers import AutoConfig

from automix.arch import target_layer_names
from automix.builtin import builtin_model_dir
from automix.config.layers import LayerConfig, LayerSettings, matching_layers
from automix.config.locations import relocate_recorded_store
from automix.config.study import default_storage_url, format_size
from automix.study import results
from automix.study.tracking import ROLE

__all__ = [
    "ReportDataError", "NoFinishedTrialsError", "StudyData", "load_study_data",
    "hypervolume_history", "BREAKDOWN_PARTS", "find_parent_run", "finish", "layer_names", "resolve_layers",
]

# The memory model's categories (automix.trial.memory.MemoryBreakdown), in stacking order.
BREAKDOWN_PARTS = ("weights", "quant_metadata", "adapters", "gradients", "optimizer_states",
                   "activations", "transient")
SETTINGS = ("bits", "prune", "rank", "group_size")


class ReportDataError(ValueError):
    """The study cannot be reported (unknown name, unreadable storage)."""


class NoFinishedTrialsError(ReportDataError):
    """The study exists but no trial has finished with objective values yet."""


@dataclass
class StudyData:
    """One study, ready to plot.

    frame: one row per finished trial (complete or failed; stale re-run copies dropped), columns
      number, state, method, quality, memory, feasible, front (overall front within the budget),
      front_method (front of the trial's method), avg_bits, avg_prune, avg_rank, accuracy,
      perplexity, measured_memory, predicted_memory, predicted_quality, trainable_params,
      failure_reason, order (1-based finishing order).
    exported: the trials `automix export` wrote (trial number -> output directory).
    layers: trial number -> {layer name -> {bits, prune, rank, group_size}} where recorded.
    breakdown: trial number -> {category -> bytes} from the memory model (result.memory_predicted).
    """

    name: str
    storage: str
    quality: str                        # "accuracy" or "perplexity"
    directions: list[str]
    budget: float | None
    sampler: str
    methods: list[str]
    tracking_uri: str | None
    frame: pd.DataFrame
    store_note: str = ""                # why the MLflow store is not the one the study recorded
    layers: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)
    breakdown: dict[int, dict[str, float]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    exported: dict[int, str] = field(default_factory=dict)  # trial number -> where `automix export` wrote it
    devices: list[str] = field(default_factory=list)        # the devices the trials ran on ("cpu", "cuda:0")

    @property
    def maximize(self) -> bool:
        return self.directions[0] == "maximize"

    @property
    def complete(self) -> pd.DataFrame:
        return self.frame[self.frame.state == "COMPLETE"]

    @property
    def front_frame(self) -> pd.DataFrame:
        """The overall front within the budget, by increasing memory."""
        return self.complete[self.complete.front].sort_values(["memory", "number"])

    @property
    def label(self) -> str:
        return f"{self.name} ({self.sampler})"


# -- loading -------------------------------------------------------------------------------------

def load_study_data(name: str, storage: str | None = None) -> StudyData:
    """Read study `name` from the Optuna storage (default: the working directory's SQLite file).

    Raises ReportDataError naming the storage when the study is not there, and
    NoFinishedTrialsError when it has no completed trial.
    """
    import optuna
    from optuna.trial import TrialState

    url = storage or default_storage_url()
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        raise ReportDataError(f"no Optuna storage at {url}: run `automix search` first or pass --storage")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        names = optuna.get_all_study_names(url)
    except Exception as err:  # noqa: BLE001 - any storage failure, reported with its URL
        raise ReportDataError(f"Optuna storage {url!r} cannot be read: {err}") from None
    if name not in names:
        raise ReportDataError(f"study {name!r} not found in {url}; studies there: {sorted(names) or 'none'}")
    study = optuna.load_study(study_name=name, storage=url)
    config = dict(study.user_attrs.get("config") or {})
    tracking, store_note = relocate_recorded_store(config.get("tracking_uri"), config.get("storage"), url)
    directions = [d.name.lower() for d in study.directions]
    quality = (config.get("objectives") or {}).get("quality") or (
        "accuracy" if directions[0] == "maximize" else "perplexity")
    budget = config.get("memory_budget")
    budget = float(budget) if isinstance(budget, (int, float)) else None
    trials = sorted(results.finished_trials(study), key=_finish_key)
    data = StudyData(
        name=name, storage=url, quality=quality, directions=directions, budget=budget,
        sampler=str(config.get("sampler") or type(study.sampler).__name__),
        methods=list(config.get("methods") or []), tracking_uri=tracking, store_note=store_note,
        frame=pd.DataFrame(),
    )
    if not any(t.state == TrialState.COMPLETE and t.values for t in trials):
        n_fail = sum(t.state == TrialState.FAIL for t in trials)
        raise NoFinishedTrialsError(
            f"study {name!r} in {url} has no finished trials yet"
            + (f" ({n_fail} failed)" if n_fail else "") + ": nothing to report; run `automix search` first"
        )
    data.exported = {int(n): str(p) for n, p in (study.user_attrs.get("exported") or {}).items()}
    data.devices = sorted({str((t.user_attrs.get("result") or {}).get("device") or "") for t in trials} - {""})
    skipped: list[str] = []
    names = layer_names(config, [t.user_attrs.get("layers") for t in trials], skipped)
    rows = []
    for i, t in enumerate(trials):
        rows.append(_row(t, i + 1, quality))
        layers = resolve_layers(t.user_attrs.get("layers"), names)
        if layers:
            data.layers[t.number] = layers
        part = (t.user_attrs.get("result") or {}).get("memory_predicted")
        if isinstance(part, Mapping) and any(k in part for k in BREAKDOWN_PARTS):
            data.breakdown[t.number] = {k: float(part.get(k) or 0) for k in BREAKDOWN_PARTS}
    finish(data, rows)
    data.missing.extend(skipped)
    return data


def finish(data: StudyData, rows: list[dict]) -> StudyData:
    """Set the frame from its rows: budget feasibility, front flags, what is missing."""
    frame = pd.DataFrame(rows)
    if not data.methods:
        data.methods = sorted(frame.method.dropna().unique().tolist())
    frame["feasible"] = [results.within_budget(m, data.budget or None) for m in frame.memory]
    _mark_fronts(frame, data.maximize)
    data.frame = frame
    data.missing = _missing(data)
    return data


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _predicted_quality(t: Any, quality: str) -> float | None:
    """The predictor's estimate of the trial's quality, wherever the study recorded it."""
    result = t.user_attrs.get("result") or {}
    for key in (f"predicted_{quality}", "predicted_quality"):
        for source in (t.user_attrs, result, t.system_attrs):
            if _num(source.get(key)) is not None:
                return _num(source.get(key))
    values = t.system_attrs.get("automix:predicted_values") or t.user_attrs.get("predicted_values")
    if isinstance(values, (list, tuple)) and values:
        return _num(values[0])
    return None


def _finish_key(t: Any) -> tuple[float, int]:
    when = t.datetime_complete or t.datetime_start
    return (when.timestamp() if when else float("inf"), t.number)


def _row(t: Any, order: int, quality: str) -> dict:
    result = t.user_attrs.get("result") or {}
    summary = t.user_attrs.get("summary") or {}
    complete = t.state.name == "COMPLETE" and bool(t.values)
    predicted_mem = _num(t.user_attrs.get("predicted_memory")) or _num(result.get("predicted_memory_bytes"))
    return {
        "number": t.number, "order": order, "state": t.state.name,
        "method": t.user_attrs.get("method", t.params.get("method")),
        "quality": float(t.values[0]) if complete else None,
        "memory": float(t.values[1]) if complete else None,
        "avg_bits": _num(summary.get("avg_bits", result.get("avg_bits"))),
        "avg_prune": _num(summary.get("avg_prune")),
        "avg_rank": _num(summary.get("avg_rank")),
        "accuracy": _num(result.get("accuracy")), "perplexity": _num(result.get("perplexity")),
        "measured_memory": _num(result.get("peak_memory_bytes")),
        "predicted_memory": predicted_mem,
        "predicted_quality": _predicted_quality(t, quality),
        "trainable_params": _num(result.get("trainable_params")),
        "failure_reason": str(t.user_attrs.get("failure_reason") or "")[:300],
    }


def _mark_fronts(frame: pd.DataFrame, maximize: bool) -> None:
    """Front flags by the driver's rule for its `pareto` / `pareto_method` tags
    (`automix.study.results.front_masks`): complete trials within the budget, on quality and memory."""
    overall, per_method = results.front_masks(
        _floats(frame, ["quality", "memory"]), ["maximize" if maximize else "minimize", "minimize"],
        [None if pd.isna(m) else m for m in frame.method],
        ((frame.state == "COMPLETE") & frame.feasible).to_numpy(bool))
    frame["front"] = overall
    frame["front_method"] = per_method


def _floats(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    return frame[columns].to_numpy(dtype=float, na_value=np.nan)


def _missing(data: StudyData) -> list[str]:
    c = data.complete
    out = []
    if c.predicted_quality.isna().all():
        out.append(f"no predicted {data.quality} is recorded for any trial (looked for "
                   f"user/system attribute or result key predicted_{data.quality})")
    if c.measured_memory.isna().all() or c.predicted_memory.isna().all():
        out.append("predicted and measured memory are not both recorded")
    if data.front_frame.empty:
        out.append(f"no complete trial fits the memory budget of {format_size(data.budget or 0)} (the "
                   f"smallest uses {format_size(c.memory.min())}): the fronts are empty")
    else:
        if not any(n in data.layers for n in data.front_frame.number):
            out.append("no per-layer configuration is recorded for the front trials")
        if not any(n in data.breakdown for n in data.front_frame.number):
            out.append("no memory breakdown (result.memory_predicted) is recorded for the front trials")
    if data.budget is None:
        out.append("the study records no memory budget (fronts use every trial)")
    return out


# -- per-layer settings --------------------------------------------------------------------------

def _natural(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def layer_names(config: Mapping[str, Any], recorded: Sequence[Any], skipped: list[str] | None = None) -> list[str]:
    """All target layer names: from the model's config.json when it is on disk (cheap, no
    weights) and names every layer the trials mention, else every exact name they mention. A
    model config that is there but cannot be read is noted in ``skipped``."""
    seen: dict[str, None] = {}
    for layers in recorded:
        if not isinstance(layers, Mapping):
            continue
        explicit = layers.get("layers") if _is_compact(layers) else layers
        for n in (explicit or {}):
            if not any(c in n for c in "*?["):
                seen[n] = None
    try:
        names = _names_from_model(str(config.get("model") or ""))
    except (OSError, ValueError) as err:  # a broken or unsupported config.json (ModelLoadError is a ValueError)
        names = []
        if skipped is not None:
            skipped.append(f"the model's layer names were not read ({type(err).__name__}: {err}); the layer "
                           "views show the layers the trials name")
    if names and set(seen) <= set(names):  # not a different model now at that path
        return names
    return sorted(seen, key=_natural)


def _names_from_model(model: str) -> list[str]:
    """Layer names from the model's config.json alone (no weights); [] when it is not on disk."""
    if not model:
        return []
    if model.startswith("builtin:"):
        try:
            d = builtin_model_dir(model.split(":", 1)[1] or "tiny")
        except ValueError:  # not trained on this machine
            return []
    else:
        d = Path(model).expanduser()
    if not (d / "config.json").is_file():
        return []
    return list(target_layer_names(AutoConfig.from_pretrained(d)))


def _is_compact(d: Mapping[str, Any]) -> bool:
    return bool(d) and set(d) <= {"default", "layers"}


def _settings(recorded: Any) -> dict[str, float]:
    """The numeric settings of a recorded mapping; anything else is skipped."""
    if not isinstance(recorded, Mapping):
        return {}
    return {k: float(v) for k, v in recorded.items() if k in SETTINGS and _num(v) is not None}


def resolve_layers(layers: Any, names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per-layer settings from a trial's recorded configuration: a LayerConfig dict (default and
    overrides) expanded by `automix.config.layers` as the trial expanded it (settings it leaves
    out are LayerSettings' defaults), or an already per-layer dict (kept as recorded).

    A report never fails on an old or odd record: where `LayerConfig` rejects it (a pattern that
    matches none of these layers, a value out of range), each override is applied to the layers
    its pattern matches (`matching_layers`, the configuration's own rule) and what cannot be
    read (unknown patterns, keys or non-numeric values) is skipped.
    """
    if not isinstance(layers, Mapping) or not layers:
        return {}
    if not _is_compact(layers):
        return {str(n): _settings(s) for n, s in layers.items() if isinstance(s, Mapping)}
    names = list(names)
    recorded_default = _settings(layers.get("default"))
    default = {**{k: float(v) for k, v in LayerSettings().to_dict().items()}, **recorded_default}
    if not names:
        return {"(all layers)": default} if recorded_default else {}
    try:
        resolved = LayerConfig.from_dict(layers).resolve(names)
    except (ValueError, TypeError):  # LayerConfigError is a ValueError
        out = {n: dict(default) for n in names}
        overrides = layers.get("layers")
        for pattern, over in (overrides.items() if isinstance(overrides, Mapping) else ()):
            for n in matching_layers(str(pattern), names):
                out[n].update(_settings(over))
        return out
    return {n: {k: float(v) for k, v in s.to_dict().items()} for n, s in resolved.items()}


# -- hypervolume ---------------------------------------------------------------------------------

def hypervolume_history(data: StudyData, method: str | None = None) -> pd.DataFrame:
    """Normalised hypervolume after each finished trial of the study (x = trials finished).

    The driver's `hypervolume` metric (`automix.study.results.hypervolume_history`): quality as
    accuracy (or 1/perplexity) against 0, memory as a fraction of the budget against 1 (without
    a budget, of the largest memory seen). With `method`, only that method's trials count (x
    stays the study's trial count, so methods share the axis).
    """
    f = data.frame.sort_values("order")
    ok = (f.state == "COMPLETE") & f.feasible.astype(bool) & f.quality.notna()
    if method is not None:
        ok &= f.method == method
    values = _floats(f, ["quality", "memory"])
    hv = results.hypervolume_history(values[:, 0], values[:, 1], ok.to_numpy(bool), data.maximize,
                                     results.memory_scale(data.budget, data.complete.memory.tolist()))
    return pd.DataFrame({"trials": [int(x) for x in f.order], "hypervolume": hv})


# -- MLflow --------------------------------------------------------------------------------------

def find_parent_run(tracking_uri: str, study: str) -> tuple[Any, str] | None:
    """(MlflowClient, parent run id) of the study's MLflow experiment, or None when there is none.

    Looks the run up read-only (unlike `automix.study.tracking.Tracker`, which would create it).
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(study)
    if exp is None or exp.lifecycle_stage == "deleted":
        return None
    found = client.search_runs([exp.experiment_id], filter_string=f"tags.`{ROLE}` = 'study'",
                               max_results=1, order_by=["attributes.start_time ASC"])
    return (client, found[0].info.run_id) if found else None
