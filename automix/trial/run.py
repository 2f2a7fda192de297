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
from dataclasses import dataclass, replace
from typing import Any, Mapping

import numpy as np
import torch

from automix.arch import layer_shapes
from automix.config.layers import LayerConfig, average_bits, resolved_from_dict
from automix.methods import MethodSettings, get_method
from automix.quant import quantization_chunk
from automix.reporting import report
from automix.trial import checkpoint, memory, meter, stream
from automix.trial.allocator import AllocatorMeter
from automix.trial.data import calibration_batches, eval_seq_len, get_task, training_padded
from automix.trial.loss import causal_lm_loss
from automix.arch import arch_info, target_layer_names
from automix.trial.models import load_streamed_model, resolve_model_dir
from automix.trial.prune import cached_unit_scores, prune_model, prune_structured, scores_path
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
            loss = causal_lm_loss(model, micro) * weight
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
    predicted: Any = None  # the memory model's MemoryBreakdown of the trial (phases included)


def prepare_model(spec: TrialSpec | Mapping[str, Any], device: str = "cpu",
                  meter: AllocatorMeter | None = None) -> PreparedTrial:
    """Load, prune and prepare (quantize, initialise adapters) the model a spec describes.

    The decoder's linear layers stay in the weights file until the method reads them
    (:mod:`automix.trial.stream`): a layer it quantizes is read once and never held in full
    precision with the others; the layers that stay dense are read before the method runs.
    ``meter``: each step is one of its phases ("load", "prune", "prepare").

    Deterministic for the spec's seed, so `run_trial` and `automix.export.load` (which fills
    the same structure from a saved checkpoint) build exactly the same model.
    """
    if not isinstance(spec, TrialSpec):
        spec = TrialSpec.model_validate(dict(spec))
    phase = meter.phase if meter is not None else _no_phase
    _seed(spec.seed)
    with phase("load"):
        model_dir = resolve_model_dir(spec.model)
        model, tokenizer = load_streamed_model(model_dir, dtype=getattr(torch, spec.dtype), device=device)
        if tokenizer is None:
            raise TrialFailure("invalid_input", f"model {spec.model!r} has no tokenizer files; a trial "
                               "needs one to build training and evaluation batches")
        info = arch_info(model)
        names = target_layer_names(model)
        ls = _layer_settings(spec, names)
        task = get_task(spec.task, spec.data, **({"eval_path": spec.eval_data} if spec.eval_data else {}))
        method = get_method(spec.method)
        settings = method.check_settings(MethodSettings.from_dict(spec.method_settings_dict()))

    pruning = any(s.prune > 0 for s in ls.values())
    scoring = None
    if pruning:
        _seed(spec.seed)
        calib = calibration_batches(tokenizer, spec.prune_calib_samples, min(spec.seq_len, 128), spec.seed, task)
        structured = spec.prune_mode == "structured"
        if structured and not scores_path(model_dir, calib, getattr(torch, spec.dtype)).is_file():
            scoring = (min(8, calib.shape[0]), calib.shape[1])  # the Taylor pass runs in this trial
    memory_ls = ls if spec.prune_mode == "structured" else {
        n: type(s)(s.bits, s.group_size, 0.0, s.rank) for n, s in ls.items()}
    profile = method.memory_profile(info, ls, settings)
    # the largest batch the trial can read: every row at seq_len, padded if any of its batches is
    padded = training_padded(task, tokenizer, spec.batch_size, spec.seq_len, spec.seed, spec.steps)
    predicted = memory.estimate(info, memory_ls, profile, batch_size=spec.batch_size, seq_len=spec.seq_len,
                                dtype=spec.dtype, device=device, config=model.config, padded=padded,
                                prune_scoring=scoring, **training_options(spec), **evaluation_options(spec, task))
    if pruning:
        with phase("prune"):
            if structured:  # scores cached per model and data; the streamed layers are sliced as read
                prune_structured(model, ls, scores=cached_unit_scores(model_dir, calib, getattr(torch, spec.dtype)))
            else:  # unstructured pruning zeroes weights in place: those layers are read now
                stream.materialize(model, [n for n, s in ls.items() if s.prune > 0])
                prune_model(model, ls, spec.prune_mode, calib.to(device))
            del calib
    with phase("prepare"):
        stream.materialize(model, [n for n, s in ls.items() if not profile.quantize_base or s.bits >= 16])  # dense
        calib = None
        if method.needs_calibration:
            _seed(spec.seed)
            calib = calibration_batches(tokenizer, settings.calib_samples, settings.calib_seq_len, spec.seed, task)
        model.to(device)
        _seed(spec.seed)
        with quantization_chunk(predicted.quant_chunk or None):  # quantizing fits under the step
            model = method.prepare(model, ls, settings, calib.to(device) if calib is not None else None)
        del calib
        stream.materialize(model)  # (a method leaves none streamed; whatever it left stays dense)
        model.to(device)
        if memory.mixed_precision(spec.dtype):  # fp16 autocast trains fp32 copies of the trainable weights
            for _, p in method.trainable_parameters(model):
                p.data = p.data.float()
        if spec.gradient_checkpointing:
            checkpoint.enable(model)
    return PreparedTrial(spec, model, tokenizer, task, method, settings, ls, memory_ls, info, predicted)


@contextlib.contextmanager
def _no_phase(name: str) -> Any:
    yield


def evaluation_options(spec: TrialSpec, task: Any = None) -> dict[str, Any]:
    """How the spec evaluates, as :func:`automix.trial.memory.estimate` keywords (the rows of a
    forward, at most; their length, the task's; the optimizer alive during evaluations of a
    training run; ``train`` False for a trial that only evaluates)."""
    return {"eval_rows": spec.eval_batch_size, "eval_seq_len": eval_seq_len(task, spec.seq_len),
            "eval_with_optimizer": spec.steps > 0 and bool(spec.report_every), "train": spec.steps > 0}


def training_options(spec: TrialSpec) -> dict[str, Any]:
    """The spec's training set-up as :func:`automix.trial.memory.estimate` keywords."""
    return {"gradient_checkpointing": spec.gradient_checkpointing, "optimizer": spec.optimizer,
            "grad_accum_steps": spec.grad_accum_steps}


def _evaluate(model: Any, tokenizer: Any, task: Any, spec: TrialSpec, device: str,
              batches: int | None, rows: int | None = None) -> dict[str, float]:
    """The task's held-out metrics on ``batches`` x ``eval_batch_size`` rows (None: the task's
    default size), ``rows`` per forward (default ``eval_batch_size``; the memory model sizes it
    to fit under the training step), in eval mode; the model's train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    kw: dict[str, Any] = {"batch_size": rows or spec.eval_batch_size}
    if batches is not None:
        kw["n_rows" if spec.task == "lm" else "n"] = batches * spec.eval_batch_size
    mixed = memory.mixed_precision(spec.dtype)  # evaluate the way it trained (fp32 adapters, fp16 compute)
    with torch.no_grad(), torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=torch.float16,
                                         enabled=mixed):
        metrics = task.evaluate(model, tokenizer, **kw)
    model.train(was_training)
    return metrics


def _report_eval(model: Any, tokenizer: Any, task: Any, spec: TrialSpec, device: str, step: int,
                 result: TrialResult, allocator: AllocatorMeter, rows: int | None = None) -> float:
    """The intermediate evaluation at ``step`` (when the spec asks for them): recorded in
    ``result.eval_curve`` and reported; returns the seconds it took."""
    if not spec.report_every:
        return 0.0
    t0 = time.perf_counter()
    with allocator.phase(f"evaluate@{step}"):
        metrics = _evaluate(model, tokenizer, task, spec, device, spec.report_eval_batches, rows)
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
    meter_on = device.startswith("cuda") if spec.allocator_meter is None else spec.allocator_meter
    allocator = AllocatorMeter(device, enabled=meter_on)
    try:
        with allocator:
            _trial(spec, result, device, allocator)
    finally:  # a failed trial too: the phase it failed in is the last one recorded
        if allocator.peaks:
            result.memory_phases = dict(allocator.peaks)
            result.peak_phase, result.allocator_peak_bytes = allocator.peak
            result.peak_memory_bytes = result.allocator_peak_bytes  # the allocator's count is the measurement


def _trial(spec: TrialSpec, result: TrialResult, device: str, allocator: AllocatorMeter) -> None:
    t0 = time.perf_counter()
    prepared = prepare_model(spec, device, allocator)
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

    on_cuda = device.startswith("cuda")
    if spec.steps > 0 and not params:
        raise TrialFailure("invalid_input", f"method {spec.method!r} has nothing to train with these "
                           "layer settings (every rank is 0?); use --steps 0 to only evaluate")
    predicted = prepared.predicted
    batches = task.train_batches(tokenizer, spec.batch_size, spec.seq_len, spec.seed)
    result.memory_phases_predicted = dict(predicted.phases)
    result.predicted_memory_bytes = predicted.peak
    rows = predicted.eval_rows  # rows per evaluation forward: as many as fit under the step
    result.memory_predicted = predicted.to_dict()
    t1, c1 = time.perf_counter(), time.process_time()
    tokens = 0
    checkpoint_seconds = 0.0  # intermediate evaluations: evaluation time, not training time
    if spec.steps > 0:
        opt = make_optimizer(spec.optimizer, params, spec.lr, spec.weight_decay)
        scaler = grad_scaler(spec, device)
        model.train()
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(device)
        checkpoint_seconds += _report_eval(model, tokenizer, task, spec, device, 0, result, allocator, rows)
        _seed(spec.seed)
        saved = 0
        for step in range(spec.steps):
            with allocator.phase(f"step {step + 1}"):
                batch = {k: v.to(device) for k, v in next(batches).items()}
                meters: list = []
                value = train_step(model, batch, params, opt, scaler, spec, meters)
                saved = max(saved, max(m.total for m in meters))  # the largest micro-batch of any step
                if not math.isfinite(value):
                    raise TrialFailure("nan", f"loss is {value} at step {step} (diverged; lower the lr "
                                       "or use more bits / a better initialisation)")
                result.losses.append(value)
                report("loss", step + 1, value)
                if step == 0:  # gradients and optimizer states as they stay from now on
                    measured = meter.measured_breakdown(model, params, opt, 0)
                opt.zero_grad(set_to_none=True)
                tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
                del batch
            if spec.report_every and (step + 1) % spec.report_every == 0 and step + 1 < spec.steps:
                checkpoint_seconds += _report_eval(model, tokenizer, task, spec, device, step + 1, result, allocator,
                                                   rows)
        result.first_loss, result.last_loss = result.losses[0], result.losses[-1]
        del opt, scaler  # the optimizer states are not needed for the evaluation
        measured = replace(measured, activations=saved, total=measured.total + saved)
        result.memory_measured = measured.to_dict()
        result.peak_memory_bytes = int(torch.cuda.max_memory_allocated(device)) if on_cuda else measured.total
    else:  # evaluation only: what is resident (no gradients, optimizer or saved activations)
        static = meter.model_bytes(model, params)
        result.memory_measured = dict(static, total=sum(static.values()))
        result.peak_memory_bytes = sum(static.values())
    result.train_seconds = time.perf_counter() - t1 - checkpoint_seconds
    result.train_cpu_seconds = time.process_time() - c1
    if tokens and result.train_seconds > 0:
        result.tokens_per_second = tokens / result.train_seconds

    t2 = time.perf_counter()
    with allocator.phase("evaluate"):
        metrics = _evaluate(model, tokenizer, task, spec, device, spec.eval_batches, rows)
    result.eval_seconds = time.perf_counter() - t2
    result.metrics = {k: float(v) for k, v in metrics.items()}
    result.accuracy = result.metrics.get("accuracy")
    result.perplexity = result.metrics.get("perplexity")
    headline = result.accuracy if result.accuracy is not None else result.perplexity
    if headline is None or not math.isfinite(headline):
        raise TrialFailure("nan", f"evaluation gave a non-finite metric: {metrics}")
    if spec.save_state:
        method.save(model, spec.save_state)
