"""One trial: load, prune, prepare (quantize + adapters), fine-tune, evaluate, measure memory.

``run_trial(spec)`` is a pure function of a JSON-serialisable :class:`TrialSpec` — what a Ray
worker runs for every configuration the search proposes. It never raises for trial-level
failures: bad inputs, NaN losses, out-of-memory and any exception come back as a
``TrialResult`` with ``status="failed"``, a ``failure_kind`` and a readable ``failure_reason``,
so one broken configuration never takes a study down.

Determinism: the same spec (seed included) on the same machine gives the same losses and
metrics — Python, NumPy and torch are seeded before every random step (pruning calibration,
adapter initialisation, data order, dropout).
"""

from __future__ import annotations

import gc
import math
import random
import time
import traceback
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from automix.arch import layer_shapes
from automix.config.layers import LayerConfig, average_bits, resolved_from_dict
from automix.methods import MethodSettings, get_method
from automix.trial import memory
from automix.trial.data import calibration_batches, get_task, is_padded
from automix.arch import arch_info, target_layer_names
from automix.trial.models import load_model
from automix.trial.prune import prune_model
from automix.trial.spec import TrialFailure, TrialResult, TrialSpec

__all__ = ["run_trial", "prepare_model", "PreparedTrial"]


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrialFailure("invalid_input", f"device {name!r} asked for but CUDA is not available")
    return name


def _layer_settings(spec: TrialSpec, names: list[str]) -> dict[str, Any]:
    if isinstance(spec.layers, str):
        return LayerConfig.from_yaml(spec.layers).resolve(names)
    return resolved_from_dict(spec.layers, names, source="spec.layers")


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in str(err).lower()


def run_trial(spec: TrialSpec | Mapping[str, Any]) -> TrialResult:
    """Run one trial; every failure is returned as ``status="failed"`` with its reason."""
    result = TrialResult()
    try:
        if not isinstance(spec, TrialSpec):
            try:
                spec = TrialSpec.model_validate(dict(spec))
            except Exception as err:  # pydantic.ValidationError
                raise TrialFailure("invalid_input", f"invalid trial spec: {err}") from err
        result.method, result.task, result.steps = spec.method, spec.task, spec.steps
        _run(spec, result)
    except TrialFailure as err:
        result.status, result.failure_kind, result.failure_reason = "failed", err.kind, str(err)
    except ValueError as err:  # bad input found while loading model / data / config
        result.status, result.failure_kind = "failed", "invalid_input"
        result.failure_reason = f"{type(err).__name__}: {err}"
    except Exception as err:  # noqa: BLE001 - a trial must never crash its caller
        result.status = "failed"
        result.failure_kind = "oom" if _is_oom(err) else "error"
        tb = traceback.extract_tb(err.__traceback__)[-1]
        result.failure_reason = f"{type(err).__name__}: {err} (at {tb.filename}:{tb.lineno})"
    finally:
        _release()
    return result


def _release() -> None:
    if torch.cuda.is_available():  # hand cached blocks back so the next trial measures its own peak
        gc.collect()
        torch.cuda.empty_cache()


@dataclass
class PreparedTrial:
    """A trial's model after pruning and the method's preparation, before any training step."""

    spec: TrialSpec
    model: Any
    tokenizer: Any
    task: Any
    method: Any
    settings: Any
    layer_settings: dict[str, Any]
    memory_layer_settings: dict[str, Any]  # what the memory model sees (masks do not shrink tensors)
    arch: Any


def prepare_model(spec: TrialSpec | Mapping[str, Any], device: str = "cpu") -> PreparedTrial:
    """Load, prune and prepare (quantize, initialise adapters) the model a spec describes.

    Deterministic for the spec's seed, so `run_trial` and `automix.export.load` (which fills
    the same structure from a saved checkpoint) build exactly the same model.
    """
    if not isinstance(spec, TrialSpec):
        spec = TrialSpec.model_validate(dict(spec))
    _seed(spec.seed)
    model, tokenizer = load_model(spec.model, dtype=getattr(torch, spec.dtype))
    if tokenizer is None:
        raise TrialFailure("invalid_input", f"model {spec.model!r} has no tokenizer files; a trial "
                           "needs one to build training and evaluation batches")
    info = arch_info(model)
    names = target_layer_names(model)
    ls = _layer_settings(spec, names)
    task = get_task(spec.task, spec.data, **({"eval_path": spec.eval_data} if spec.eval_data else {}))
    method = get_method(spec.method)
    settings = method.check_settings(MethodSettings.from_dict(spec.method_settings))

    if any(s.prune > 0 for s in ls.values()):
        _seed(spec.seed)
        calib = calibration_batches(tokenizer, spec.prune_calib_samples, min(spec.seq_len, 128), spec.seed, task)
        prune_model(model, ls, spec.prune_mode, calib)
    memory_ls = ls if spec.prune_mode == "structured" else {
        n: type(s)(s.bits, s.group_size, 0.0, s.rank) for n, s in ls.items()}
    calib = None
    if method.needs_calibration:
        _seed(spec.seed)
        calib = calibration_batches(tokenizer, settings.calib_samples, settings.calib_seq_len, spec.seed, task)
    model.to(device)
    _seed(spec.seed)
    model = method.prepare(model, ls, settings, calib.to(device) if calib is not None else None)
    model.to(device)
    return PreparedTrial(spec, model, tokenizer, task, method, settings, ls, memory_ls, info)


def _run(spec: TrialSpec, result: TrialResult) -> None:
    device = _device(spec.device)
    result.device = device
    t0 = time.perf_counter()
    prepared = prepare_model(spec, device)
    model, tokenizer, task = prepared.model, prepared.tokenizer, prepared.task
    method, settings, ls = prepared.method, prepared.settings, prepared.layer_settings
    memory_ls, info = prepared.memory_layer_settings, prepared.arch
    profile = method.memory_profile(info, ls, settings)
    shapes = layer_shapes(info, memory_ls)
    bits = ls if profile.quantize_base else {n: type(s)(16, s.group_size, s.prune, s.rank) for n, s in ls.items()}
    result.avg_bits = round(average_bits(bits, shapes), 4)
    params = [p for _, p in method.trainable_parameters(model)]
    result.trainable_params = sum(p.numel() for p in params)
    result.prepare_seconds = time.perf_counter() - t0

    batches = task.train_batches(tokenizer, spec.batch_size, spec.seq_len, spec.seed)
    on_cuda = device.startswith("cuda")
    if spec.steps > 0 and not params:
        raise TrialFailure("invalid_input", f"method {spec.method!r} has nothing to train with these "
                           "layer settings (every rank is 0?); use --steps 0 to only evaluate")
    t1, c1 = time.perf_counter(), time.process_time()
    tokens = 0
    if spec.steps > 0:
        opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
        model.train()
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(device)
        _seed(spec.seed)
        for step in range(spec.steps):
            batch = {k: v.to(device) for k, v in next(batches).items()}
            if step == 0:
                shape = tuple(batch["input_ids"].shape)
                padded = is_padded(batch)
                with memory.SavedTensorMeter(model) as meter:
                    loss = model(**batch).loss
            else:
                loss = model(**batch).loss
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrialFailure("nan", f"loss is {value} at step {step} (diverged; lower the lr "
                                   "or use more bits / a better initialisation)")
            result.losses.append(value)
            loss.backward()
            if spec.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, spec.grad_clip)
            opt.step()
            if step == 0:
                measured = memory.measured_breakdown(model, params, opt, meter.bytes)
            opt.zero_grad(set_to_none=True)
            tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
        result.first_loss, result.last_loss = result.losses[0], result.losses[-1]
        predicted = memory.estimate(info, memory_ls, profile, batch_size=shape[0], seq_len=shape[1],
                                    dtype=spec.dtype, device=device, config=model.config, padded=padded)
        result.memory_measured, result.memory_predicted = measured.to_dict(), predicted.to_dict()
        result.peak_memory_bytes = int(torch.cuda.max_memory_allocated(device)) if on_cuda else measured.total
        result.predicted_memory_bytes = predicted.total
    else:  # evaluation only: what is resident (no gradients, optimizer or saved activations)
        static = memory.model_bytes(model, params)
        predicted = memory.estimate(info, memory_ls, profile, batch_size=spec.batch_size,
                                    seq_len=spec.seq_len, dtype=spec.dtype, device=device, config=model.config)
        result.memory_measured = dict(static, total=sum(static.values()))
        result.memory_predicted = predicted.to_dict()
        result.peak_memory_bytes = sum(static.values())
        result.predicted_memory_bytes = predicted.weights + predicted.quant_metadata + predicted.adapters
    result.train_seconds = time.perf_counter() - t1
    result.train_cpu_seconds = time.process_time() - c1
    if tokens and result.train_seconds > 0:
        result.tokens_per_second = tokens / result.train_seconds

    t2 = time.perf_counter()
    model.eval()
    kw: dict[str, Any] = {"batch_size": spec.eval_batch_size}
    if spec.eval_batches is not None:
        kw["n_rows" if spec.task == "lm" else "n"] = spec.eval_batches * spec.eval_batch_size
    with torch.no_grad():
        metrics = task.evaluate(model, tokenizer, **kw)
    result.eval_seconds = time.perf_counter() - t2
    result.metrics = {k: float(v) for k, v in metrics.items()}
    result.accuracy = result.metrics.get("accuracy")
    result.perplexity = result.metrics.get("perplexity")
    headline = result.accuracy if result.accuracy is not None else result.perplexity
    if headline is None or not math.isfinite(headline):
        raise TrialFailure("nan", f"evaluation gave a non-finite metric: {metrics}")
    if spec.save_state:
        method.save(model, spec.save_state)
