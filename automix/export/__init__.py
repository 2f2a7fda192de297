"""From a finished study to something a user keeps: the front as tables and a plot, and the chosen
configuration (plus, on request, the quantized checkpoint and trained adapters, and the formats
other tools read).

`select_trial` picks a front configuration under a memory limit (best quality, least memory,
or the knee), `trial_by_number` any completed one; `export_trial` writes its layer configuration
as YAML (``automix trial --layers FILE`` re-runs it alone: the file carries the method and the
trial settings) and a manifest, and the asked formats (one module each under ``automix/export/``,
named in :data:`automix.config.registry.EXPORT_FORMATS`). Every format checks, before anything is
re-run, whether it can hold the trial (`refusals`; `exportable` lists the front trials that
can). With weights, `automix.trial` re-runs the trial deterministically and saves the prepared
model and its trained state, which `load` rebuilds. The export is written to a staging sibling
(`staging_dir`) and renamed into place at the end: a failed export leaves no partial directory.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from automix.config.layers import layer_file
from automix.config.registry import EXPORT_FORMATS
from automix.config.study import format_size
from automix.export.dense import ExportFormatError
from automix.export.format import ExportContext, TrialFacts, get_format
from automix.study.results import finished_trials, pareto_numbers
from automix.trial import prepare_model, run_trial
from automix.trial.models import check_model_config, resolve_model_dir

__all__ = ["ExportError", "ExportFormatError", "EXPORT_FORMATS", "get_format", "select_trial", "trial_by_number", "front_trials",
           "trial_facts", "refusals", "exportable", "staging_dir", "export_trial", "save_weights", "ExportedModel",
           "load"]


class ExportError(ValueError):
    """No configuration can be exported as asked (nothing within the budget, unknown study)."""


# -- choosing and exporting a configuration ---------------------------------------------------

PICKS = ("best", "memory", "knee")


def _completed(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    return [t for t in finished_trials(study) if t.state == TrialState.COMPLETE and t.values]


def front_trials(study: Any, cfg: Any, max_memory: float | None = None) -> list[Any]:
    """The Pareto front of the completed trials within ``max_memory`` (default: the study
    budget), sorted by memory."""
    limit = float(max_memory if max_memory is not None else cfg.memory_budget)
    done = _completed(study)
    if not done:
        raise ExportError(f"study {cfg.name!r} has no completed trials yet")
    fits = [t for t in done if t.values[1] <= limit]
    if not fits:
        small = min(done, key=lambda t: t.values[1])
        raise ExportError(
            f"no configuration of study {cfg.name!r} fits in {format_size(limit)}: the smallest "
            f"memory found is {format_size(small.values[1])} (trial {small.number})"
        )
    front_numbers, _ = pareto_numbers(fits, cfg.directions, None)
    return sorted((t for t in fits if t.number in front_numbers), key=lambda t: t.values[1])


def select_trial(study: Any, cfg: Any, max_memory: float | None = None, pick: str = "best") -> Any:
    """The front trial to export: within `max_memory` (default: the study budget), the best
    quality objective (highest accuracy or lowest perplexity: "best"; "accuracy" is an older
    name for it), least memory ("memory"), or the knee of the front ("knee")."""
    pick = "best" if pick == "accuracy" else pick
    if pick not in PICKS:
        raise ExportError(f"--pick must be {', '.join(PICKS)}, got {pick!r}")
    front = front_trials(study, cfg, max_memory)
    sign = 1.0 if cfg.directions[0] == "maximize" else -1.0
    if pick == "memory":
        return front[0]
    if pick == "best" or len(front) < 3:
        return max(front, key=lambda t: (sign * t.values[0], -t.values[1]))
    # knee: farthest (normalised) point from the line joining the front's two ends
    q = [sign * t.values[0] for t in front]
    m = [t.values[1] for t in front]
    qs, ms = (max(q) - min(q)) or 1.0, (max(m) - min(m)) or 1.0
    pts = [((mi - m[0]) / ms, (qi - q[0]) / qs) for mi, qi in zip(m, q)]
    ex, ey = pts[-1]
    norm = math.hypot(ex, ey) or 1.0
    return max(zip(front, pts), key=lambda fp: abs(ey * fp[1][0] - ex * fp[1][1]) / norm)[0]


def trial_by_number(study: Any, cfg: Any, number: int) -> Any:
    """Completed trial ``number`` of the study (`automix export --trial N`)."""
    done = {t.number: t for t in _completed(study)}
    if number not in done:
        known = {t.number: t for t in study.get_trials(deepcopy=False)}
        state = known[number].state.name if number in known else None
        why = f"it is {state}" if state else f"the study has trials 0-{len(known) - 1}" if known else "it has no trials"
        raise ExportError(f"trial {number} of study {cfg.name!r} cannot be exported: {why}; completed "
                          f"trials: {_numbers(sorted(done)) or 'none'}")
    return done[number]


def _numbers(ns: Sequence[int]) -> str:
    return ", ".join(str(n) for n in ns)


def _trial_layers(trial: Any) -> tuple[dict | None, dict | None]:
    layers = trial.user_attrs.get("layers")
    spec = trial.user_attrs.get("spec")
    if layers is None and spec:
        layers = spec.get("layers")
    return layers, spec


def trial_facts(trial: Any, cfg: Any) -> TrialFacts:
    """What the formats check before a re-run: method, every layer's settings, the model's config."""
    layers, spec = _trial_layers(trial)
    if layers is None:
        raise ExportError(f"trial {trial.number} of study {cfg.name!r} has no recorded layer configuration")
    spec = dict(spec or {"model": cfg.model, "task": cfg.task})
    model_config = check_model_config(resolve_model_dir(spec.get("model") or cfg.model))
    method = trial.user_attrs.get("method") or spec.get("method") or ""
    return TrialFacts(trial.number, method, spec, layers, model_config)


def _check_names(formats: Sequence[str]) -> None:
    unknown = sorted(set(formats) - set(EXPORT_FORMATS))
    if unknown:
        raise ExportError(f"unknown export format(s) {', '.join(unknown)}; choose from {', '.join(EXPORT_FORMATS)}")


def refusals(facts: TrialFacts, formats: Sequence[str]) -> dict[str, str]:
    """Format -> why it cannot hold the trial (empty when every format can); reads no weights."""
    _check_names(formats)
    out = {}
    for name in formats:
        why = get_format(name).check(facts)
        if why:
            out[name] = why
    return out


def exportable(study: Any, cfg: Any, formats: Sequence[str], max_memory: float | None = None) -> list[int]:
    """The front trials (within ``max_memory``) that every one of ``formats`` can hold."""
    return [t.number for t in front_trials(study, cfg, max_memory) if not refusals(trial_facts(t, cfg), formats)]


def staging_dir(out: str | Path) -> Path:
    """Where an export to ``out`` is written before it is renamed into place."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def export_trial(study: Any, cfg: Any, trial: Any, out: str | Path, with_weights: bool = False,
                 formats: Sequence[str] = ("automix",)) -> Path:
    """Write the chosen trial to ``out``: layers.yaml, manifest.json, with weights the checkpoint,
    and the other ``formats`` (each a module under automix/export/; hf, peft and llama-cpp imply
    weights). Every format's check runs first: a trial a format cannot hold is refused with the
    reasons before anything is re-run (ExportFormatError). Written to `staging_dir(out)` and
    renamed into place at the end; ``out`` is replaced only then."""
    out = Path(out)
    formats = list(dict.fromkeys(formats))
    _check_names(formats)
    facts = trial_facts(trial, cfg)
    refused = refusals(facts, formats)
    if refused:
        raise ExportFormatError(f"trial {trial.number} ({facts.method}) cannot be exported as "
                                + "; as ".join(f"{f}: {why}" for f, why in refused.items()))
    layers, spec = _trial_layers(trial)
    stage = staging_dir(out)
    if stage.exists():
        shutil.rmtree(stage)  # left by an export that was stopped
    stage.mkdir(parents=True)
    try:
        _write_export(study, cfg, trial, facts, layers, spec, stage, with_weights, formats)
        _replace(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    exported = dict(study.user_attrs.get("exported") or {})
    exported[str(trial.number)] = str(out.resolve())
    study.set_user_attr("exported", exported)  # the report marks the exported pick
    return out


def _write_export(study: Any, cfg: Any, trial: Any, facts: TrialFacts, layers: dict, spec: dict | None,
                  stage: Path, with_weights: bool, formats: Sequence[str]) -> None:
    import yaml

    run = {"model": facts.spec.get("model") or cfg.model, "task": facts.spec.get("task") or cfg.task,
           **{k: v for k, v in facts.spec.items() if k not in ("layers", "device", "save_state", "report_every",
                                                               "report_eval_batches")},
           "method": facts.method}
    header = (f"# automix: study {cfg.name}, trial {trial.number} ({facts.method}): "
              + ", ".join(f"{n} {format_size(v) if n == 'memory' else f'{v:.4g}'}"
                          for n, v in zip(cfg.objective_names, trial.values or []))
              + "\n# re-run it: automix trial --layers THIS_FILE (it carries the method and the trial's settings)\n")
    (stage / "layers.yaml").write_text(header + yaml.safe_dump(layer_file(layers, run), sort_keys=False))
    manifest: dict[str, Any] = {
        "study": cfg.name, "trial": trial.number, "method": facts.method,
        "objectives": dict(zip(cfg.objective_names, trial.values or [])),
        "result": trial.user_attrs.get("result", {}), "spec": spec, "params": trial.params,
        "files": {"layers": "layers.yaml"},
    }
    chosen = [get_format(f) for f in formats]
    if with_weights or any(f.needs_weights for f in chosen):
        if not spec:
            raise ExportError(f"trial {trial.number} has no recorded trial spec to re-run for weights")
        manifest["files"].update(save_weights(spec, stage))
        manifest["reproduced"] = json.loads((stage / "reproduced.json").read_text())
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
        ctx = ExportContext(stage, facts, load(stage))
    else:
        ctx = ExportContext(stage, facts)
    manifest["formats"] = {}
    for fmt in chosen:
        entry = fmt.write(ctx)
        if entry:
            manifest["formats"][fmt.name] = entry
            manifest["files"][fmt.name] = entry.get("path", fmt.name)
    (stage / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))


def _replace(stage: Path, out: Path) -> None:
    """Put the finished staging directory at ``out`` (an older export there is removed after)."""
    old = None
    if out.exists() or out.is_symlink():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(stage, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


def _prepare(spec: Any) -> tuple[Any, Any, Any, Any]:
    """The model a trial spec describes, prepared (pruned, quantized, adapters) but untrained:
    the structure `load` fills from the saved checkpoint (same code path as `run_trial`)."""
    p = prepare_model(spec)
    return p.spec, p.model, p.tokenizer, (p.method, p.task)


def save_weights(spec: Any, out: str | Path) -> dict[str, str]:
    """Re-run the trial (deterministic for its seed) saving its trained state, then write the
    full quantized checkpoint. Returns the files written (relative to `out`)."""
    from safetensors.torch import save_file

    out = Path(out)
    (out / "weights").mkdir(parents=True, exist_ok=True)
    adapters = out / "weights" / "adapters.safetensors"
    result = run_trial({**dict(spec), "save_state": str(adapters)})
    if result.status != "ok":
        raise ExportError(f"re-running the trial to save its weights failed: {result.failure_reason}")
    (out / "reproduced.json").write_text(json.dumps(result.to_dict(), indent=1, default=str))
    _, model, _, (method, _) = _prepare(spec)
    method.load(model, adapters)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(_untie(state), str(out / "weights" / "model.safetensors"),
              metadata={"automix_method": method.name, "format": "automix-quantized-v1"})
    return {"adapters": "weights/adapters.safetensors", "checkpoint": "weights/model.safetensors",
            "reproduced": "reproduced.json"}


def _untie(state: dict) -> dict:
    """safetensors refuses tensors that share storage (tied embeddings): store copies."""
    seen: dict[int, str] = {}
    out = {}
    for k, v in state.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else id(v)
        out[k] = v.clone() if ptr in seen else v
        seen.setdefault(ptr, k)
    return out


@dataclass
class ExportedModel:
    """A model rebuilt from an export: the prepared module, its tokenizer, the trial spec."""

    model: Any
    tokenizer: Any
    spec: Any
    manifest: dict
    task: Any = None

    def evaluate(self) -> dict[str, float]:
        """Score it the way the trial did (same task, split and evaluation size)."""
        import torch

        spec = self.spec
        kw: dict[str, Any] = {"batch_size": spec.eval_batch_size}
        if spec.eval_batches is not None:
            kw["n_rows" if spec.task == "lm" else "n"] = spec.eval_batches * spec.eval_batch_size
        # a PEFT model is scored through the transformers model it wraps (its LoRA layers injected)
        model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        model.eval()
        with torch.no_grad():
            return {k: float(v) for k, v in self.task.evaluate(model, self.tokenizer, **kw).items()}


def load(path: str | Path) -> ExportedModel:
    """Rebuild the model an `automix export --with-weights` directory holds, ready to evaluate
    (`load(DIR).evaluate()` reproduces the trial's metrics) or to generate with."""
    from safetensors.torch import load_file

    path = Path(path)
    manifest_file = path / "manifest.json"
    if not manifest_file.is_file():
        raise ExportError(f"{path}: not an automix export (manifest.json missing)")
    manifest = json.loads(manifest_file.read_text())
    if "checkpoint" not in manifest.get("files", {}):
        raise ExportError(f"{path}: exported without weights; re-export with --with-weights")
    spec, model, tokenizer, (_, task) = _prepare(manifest["spec"])
    state = load_file(str(path / manifest["files"]["checkpoint"]))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if "lm_head" in k or "embed" in k}
    if set(missing) - tied or unexpected:
        raise ExportError(f"{path}: checkpoint does not match the rebuilt model: missing "
                          f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}")
    model.eval()
    return ExportedModel(model, tokenizer, spec, manifest, task)
