"""From a finished study to something a user keeps: the front as tables and a plot, and the chosen
configuration (plus, on request, the quantized checkpoint and trained adapters).

`select_trial` picks a front configuration under a memory limit (best quality, least memory,
or the knee); `export_trial` writes its layer configuration as YAML (readable by
`automix trial --layers`) and a manifest; with weights, `automix.trial` re-runs the trial
deterministically and saves the prepared model and its trained state, which `load` rebuilds.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from transformers import AutoModelForCausalLM

from automix.arch import target_layer_names
from automix.config.layers import compact_layers, resolved_from_dict
from automix.config.study import format_size
from automix.export.dense import ExportFormatError
from automix.export.formats import FORMATS, write_hf, write_llama_cpp, write_peft
from automix.study.results import finished_trials, pareto_numbers
from automix.trial import prepare_model, run_trial
from automix.trial.models import check_model_config, resolve_model_dir

__all__ = ["ExportError", "ExportFormatError", "FORMATS", "select_trial", "export_trial", "save_weights",
           "ExportedModel", "load"]


class ExportError(ValueError):
    """No configuration can be exported as asked (nothing within the budget, unknown study)."""


# -- choosing and exporting a configuration ---------------------------------------------------

PICKS = ("best", "memory", "knee")


def select_trial(study: Any, cfg: Any, max_memory: float | None = None, pick: str = "best") -> Any:
    """The front trial to export: within `max_memory` (default: the study budget), the best
    quality objective (highest accuracy or lowest perplexity: "best"; "accuracy" is an older
    name for it), least memory ("memory"), or the knee of the front ("knee")."""
    from optuna.trial import TrialState

    pick = "best" if pick == "accuracy" else pick
    if pick not in PICKS:
        raise ExportError(f"--pick must be {', '.join(PICKS)}, got {pick!r}")
    limit = float(max_memory if max_memory is not None else cfg.memory_budget)
    done = [t for t in finished_trials(study) if t.state == TrialState.COMPLETE and t.values]
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
    front = sorted((t for t in fits if t.number in front_numbers), key=lambda t: t.values[1])
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


def export_trial(study: Any, cfg: Any, trial: Any, out: str | Path, with_weights: bool = False,
                 formats: Sequence[str] = ("automix",)) -> Path:
    """Write the chosen trial: layers.yaml, manifest.json, with weights the checkpoint, and the
    other `formats` (see :mod:`automix.export.formats`; hf and peft imply weights)."""
    import yaml

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    layers = trial.user_attrs.get("layers")
    spec = trial.user_attrs.get("spec")
    if layers is None and spec:
        layers = spec.get("layers")
    if layers is None:
        raise ExportError(f"trial {trial.number} of study {cfg.name!r} has no recorded layer configuration")
    layer_doc = layers if "default" in layers or "layers" in layers else compact_layers(layers)
    (out / "layers.yaml").write_text(yaml.safe_dump(layer_doc, sort_keys=False))
    manifest = {
        "study": cfg.name, "trial": trial.number, "method": trial.user_attrs.get("method"),
        "objectives": dict(zip(cfg.objective_names, trial.values or [])),
        "result": trial.user_attrs.get("result", {}), "spec": spec, "params": trial.params,
        "files": {"layers": "layers.yaml"},
    }
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ExportError(f"unknown export format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    with_weights = with_weights or bool({"hf", "peft"} & set(formats))
    if with_weights:
        if not spec:
            raise ExportError(f"trial {trial.number} has no recorded trial spec to re-run for weights")
        manifest["files"].update(save_weights(spec, out))
        manifest["reproduced"] = json.loads((out / "reproduced.json").read_text())
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
        manifest["formats"] = _write_weight_formats(out, formats)
        manifest["files"].update({f: f for f in manifest["formats"]})
    if "llama-cpp" in formats:
        resolved = _resolved_layers(layers, spec or {"model": cfg.model})
        hf_dir = str((out / "hf").resolve()) if "hf" in formats else None
        write_llama_cpp(resolved, out / "llama-cpp", hf_dir)
        manifest["files"]["llama-cpp"] = "llama-cpp"
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
    exported = dict(study.user_attrs.get("exported") or {})
    exported[str(trial.number)] = str(out.resolve())
    study.set_user_attr("exported", exported)  # the report marks the exported pick
    return out


def _resolved_layers(layers: dict, spec: dict) -> dict[str, dict[str, Any]]:
    """{layer: settings dict} for every target layer of the trial's model."""
    if "default" not in layers and "layers" not in layers:
        return layers
    names = target_layer_names(check_model_config(resolve_model_dir(spec.get("model", "builtin:tiny"))))
    return {n: s.to_dict() for n, s in resolved_from_dict(layers, names, "the trial's layers").items()}


def _write_weight_formats(out: Path, formats: Sequence[str]) -> dict[str, dict[str, Any]]:
    """hf / peft directories next to the automix checkpoint, each checked by re-scoring: the
    metric of the written checkpoint beside the one `automix.load` gives."""
    written: dict[str, dict[str, Any]] = {}
    if not {"hf", "peft"} & set(formats):
        return written
    exported = load(out)
    reference = exported.evaluate()
    metric = exported.task.metric
    if "hf" in formats:
        hf_dir = write_hf(exported, out / "hf")
        model = AutoModelForCausalLM.from_pretrained(hf_dir)
        written["hf"] = {"path": "hf", metric: replace(exported, model=model).evaluate()[metric],
                         f"automix_{metric}": reference[metric]}
    if "peft" in formats:
        base_dir, adapter_dir = write_peft(exported, out / "peft")
        from peft import PeftModel  # lazy: optional dependency, write_peft has checked it is there

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)
        written["peft"] = {"path": "peft", metric: replace(exported, model=model).evaluate()[metric],
                           f"automix_{metric}": reference[metric]}
    return written


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
        self.model.eval()
        with torch.no_grad():
            return {k: float(v) for k, v in self.task.evaluate(self.model, self.tokenizer, **kw).items()}


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
