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

import contextlib
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
from automix.reporting import report
from automix.trial import checkpoint, memory, meter
from automix.trial.data import calibration_batches, get_task, is_padded
from automix.arch import arch_info, target_layer_names
from automix.trial.models import load_model
from automix.trial.prune import prune_model
from automix.trial.spec import TrialFailure, TrialResult, TrialSpec

__all__ = ["run_trial", "prepare_model", "PreparedTrial", "grad_scaler", "make_optimizer", "train_step",
           "training_options"]


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


def make_optimizer(name: str, params: list[Any], lr: float, weight_decay: float) -> Any:
    """The optimizer a spec names (see ``TrialSpec.optimizer``); bitsandbytes ones need the package."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    try:
        import bitsandbytes as bnb  # lazy: optional extra (automix[bnb]), only for its optimizers
    except Exception as err:  # ImportError, or a broken native library
        raise TrialFailure("invalid_input", f"optimizer {name!r} needs bitsandbytes, which is not usable here "
                           f"({type(err).__name__}: {err}); install it with pip install 'automix[bnb]' "
                           "or use optimizer adamw or sgd") from None
    cls = {"adamw-8bit": bnb.optim.AdamW8bit, "paged-adamw": bnb.optim.PagedAdamW,
           "paged-adamw-8bit": bnb.optim.PagedAdamW8bit}[name]
    return cls(params, lr=lr, weight_decay=weight_decay, min_8bit_size=memory.BNB_MIN_8BIT_SIZE)


def _micro_batches(batch: dict[str, torch.Tensor], steps: int) -> list[tuple[dict[str, torch.Tensor], float]]:
    """Split a batch into ``steps`` micro-batches with the weight of each one's loss (its share
    of the trained-on tokens, so accumulation matches the token-mean loss of the whole batch)."""
    if steps == 1:
        return [(batch, 1.0)]
    parts = [dict(zip(batch, vals)) for vals in zip(*(v.chunk(steps) for v in batch.values()))]
    if "labels" in batch:
        counts = [float((p["labels"][:, 1:] != -100).sum()) for p in parts]
    else:
        counts = [float(p["input_ids"].numel()) for p in parts]
    total = sum(counts) or 1.0
    return [(p, c / total) for p, c in zip(parts, counts)]


def grad_scaler(spec: TrialSpec, device: str) -> torch.amp.GradScaler:
    """Loss scaling for fp16 autocast (a no-op otherwise)."""
    return torch.amp.GradScaler("cuda" if device.startswith("cuda") else "cpu",
                                enabled=memory.mixed_precision(spec.dtype))


def train_step(model: Any, batch: Mapping[str, torch.Tensor], params: list[Any], opt: Any,
               scaler: torch.amp.GradScaler, spec: TrialSpec, meters: list | None = None) -> float:
    """One optimizer step over ``batch`` in ``spec.grad_accum_steps`` micro-batches (fp16 autocast
    when ``spec.dtype`` is float16); returns the batch's loss. With ``meters`` (a list), each
    micro-batch is measured by its own :class:`automix.trial.meter.SavedTensorMeter`, appended
    there (the step's activation peak is the largest). The caller zeroes the gradients (after
    reading the memory it wants to measure)."""
    dev_type = next(iter(batch.values())).device.type
    mixed = memory.mixed_precision(spec.dtype)
    value = 0.0
    for micro, weight in _micro_batches(dict(batch), spec.grad_accum_steps):
        ctx: Any = contextlib.nullcontext()
        if meters is not None:
            ctx = meter.SavedTensorMeter(model)
            meters.append(ctx)
        with ctx, torch.autocast(dev_type, dtype=torch.float16, enabled=mixed):
            loss = model(**micro).loss * weight
        value += float(loss.detach())
        scaler.scale(loss).backward()
        del loss
    if math.isfinite(value):
        if spec.grad_clip:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, spec.grad_clip)
        scaler.step(opt)
        scaler.update()
    return value


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
    settings = method.check_settings(MethodSettings.from_dict(spec.method_settings_dict()))

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
    if memory.mixed_precision(spec.dtype):  # fp16 autocast trains fp32 copies of the trainable weights
        for _, p in method.trainable_parameters(model):
            p.data = p.data.float()
    if spec.gradient_checkpointing:
        checkpoint.enable(model)
    return PreparedTrial(spec, model, tokenizer, task, method, settings, ls, memory_ls, info)


def training_options(spec: TrialSpec) -> dict[str, Any]:
    """The spec's training set-up as :func:`automix.trial.memory.estimate` keywords."""
    return {"gradient_checkpointing": spec.gradient_checkpointing, "optimizer": spec.optimizer,
            "grad_accum_steps": spec.grad_accum_steps}


def _evaluate(model: Any, tokenizer: Any, task: Any, spec: TrialSpec, device: str,
              batches: int | None) -> dict[str, float]:
    """The task's held-out metrics on ``batches`` x ``eval_batch_size`` rows (None: the task's
    default size), in eval mode; the model's train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    kw: dict[str, Any] = {"batch_size": spec.eval_batch_size}
    if batches is not None:
        kw["n_rows" if spec.task == "lm" else "n"] = batches * spec.eval_batch_size
    mixed = memory.mixed_precision(spec.dtype)  # evaluate the way it trained (fp32 adapters, fp16 compute)
    with torch.no_grad(), torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=torch.float16,
                                         enabled=mixed):
        metrics = task.evaluate(model, tokenizer, **kw)
    model.train(was_training)
    return metrics


def _report_eval(model: Any, tokenizer: Any, task: Any, spec: TrialSpec, device: str, step: int,
                 result: TrialResult) -> float:
    """The intermediate evaluation at ``step`` (when the spec asks for them): recorded in
    ``result.eval_curve`` and reported; returns the seconds it took."""
    if not spec.report_every:
        return 0.0
    t0 = time.perf_counter()
    metrics = _evaluate(model, tokenizer, task, spec, device, spec.report_eval_batches)
    value = metrics.get("accuracy", metrics.get("perplexity"))
    if value is None or not math.isfinite(value):
        raise TrialFailure("nan", f"the evaluation at step {step} gave a non-finite metric: {metrics}")
    result.eval_curve.append([step, float(value)])
    seconds = time.perf_counter() - t0
    report("eval", step, float(value))  # may stop the trial here (a pruner's decision)
    return seconds


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
    checkpoint_seconds = 0.0  # intermediate evaluations: evaluation time, not training time
    if spec.steps > 0:
        opt = make_optimizer(spec.optimizer, params, spec.lr, spec.weight_decay)
        scaler = grad_scaler(spec, device)
        model.train()
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(device)
        checkpoint_seconds += _report_eval(model, tokenizer, task, spec, device, 0, result)
        _seed(spec.seed)
        for step in range(spec.steps):
            batch = {k: v.to(device) for k, v in next(batches).items()}
            if step == 0:
                shape = tuple(batch["input_ids"].shape)
                padded = is_padded(batch)
            meters: list | None = [] if step == 0 else None
            value = train_step(model, batch, params, opt, scaler, spec, meters)
            if not math.isfinite(value):
                raise TrialFailure("nan", f"loss is {value} at step {step} (diverged; lower the lr "
                                   "or use more bits / a better initialisation)")
            result.losses.append(value)
            report("loss", step + 1, value)
            if step == 0:  # the largest micro-batch (padding differs between them)
                measured = meter.measured_breakdown(model, params, opt, max(m.total for m in meters or []))
            opt.zero_grad(set_to_none=True)
            tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
            if spec.report_every and (step + 1) % spec.report_every == 0 and step + 1 < spec.steps:
                checkpoint_seconds += _report_eval(model, tokenizer, task, spec, device, step + 1, result)
        result.first_loss, result.last_loss = result.losses[0], result.losses[-1]
        predicted = memory.estimate(info, memory_ls, profile, batch_size=shape[0], seq_len=shape[1],
                                    dtype=spec.dtype, device=device, config=model.config, padded=padded,
                                    **training_options(spec))
        result.memory_measured, result.memory_predicted = measured.to_dict(), predicted.to_dict()
        result.peak_memory_bytes = int(torch.cuda.max_memory_allocated(device)) if on_cuda else measured.total
        result.predicted_memory_bytes = predicted.total
    else:  # evaluation only: what is resident (no gradients, optimizer or saved activations)
        static = meter.model_bytes(model, params)
        predicted = memory.estimate(info, memory_ls, profile, batch_size=spec.batch_size,
                                    seq_len=spec.seq_len, dtype=spec.dtype, device=device, config=model.config,
                                    **training_options(spec))
        result.memory_measured = dict(static, total=sum(static.values()))
        result.memory_predicted = predicted.to_dict()
        result.peak_memory_bytes = sum(static.values())
        result.predicted_memory_bytes = predicted.weights + predicted.quant_metadata + predicted.adapters
    result.train_seconds = time.perf_counter() - t1 - checkpoint_seconds
    result.train_cpu_seconds = time.process_time() - c1
    if tokens and result.train_seconds > 0:
        result.tokens_per_second = tokens / result.train_seconds

    t2 = time.perf_counter()
    metrics = _evaluate(model, tokenizer, task, spec, device, spec.eval_batches)
    result.eval_seconds = time.perf_counter() - t2
    result.metrics = {k: float(v) for k, v in metrics.items()}
    result.accuracy = result.metrics.get("accuracy")
    result.perplexity = result.metrics.get("perplexity")
    headline = result.accuracy if result.accuracy is not None else result.perplexity
    if headline is None or not math.isfinite(headline):
        raise TrialFailure("nan", f"evaluation gave a non-finite metric: {metrics}")
    if spec.save_state:
        method.save(model, spec.save_state)
