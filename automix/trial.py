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

import math
import random
import time
import traceback
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, field_validator

FailureKind = Literal["", "invalid_input", "nan", "oom", "error"]


class TrialSpec(BaseModel):
    """Everything a trial needs; plain JSON types only so it crosses process boundaries.

    ``layers`` is a LayerConfig dict (``default`` / ``layers``), a resolved
    ``{layer: {bits, group_size, prune, rank}}`` dict, or the path of a layer YAML file.
    ``method_settings`` are :class:`automix.methods.MethodSettings` fields (``lora_alpha``,
    ``lora_dropout``, ``quant_method``, ``calib_samples``, ``calib_seq_len``, ``options``).
    ``eval_batches`` x ``eval_batch_size`` held-out rows (lm) or examples (boolq) are scored;
    ``None`` uses the task's default size.
    """

    model_config = ConfigDict(extra="forbid")

    model: str = "builtin:tiny"
    task: str = "lm"
    data: str | None = None
    eval_data: str | None = None
    method: str = "qlora"
    method_settings: dict[str, Any] = Field(default_factory=dict)
    layers: dict[str, Any] | str = Field(default_factory=lambda: {"default": {"bits": 4, "rank": 8}})
    prune_mode: Literal["structured", "magnitude", "wanda"] = "structured"
    prune_calib_samples: int = Field(16, ge=1)
    steps: int = Field(50, ge=0)
    seed: int = 0
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    batch_size: int = Field(8, ge=1)
    seq_len: int = Field(128, ge=2)
    eval_batches: int | None = Field(None, ge=1)
    eval_batch_size: int = Field(16, ge=1)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "auto"
    save_state: str | None = None

    @field_validator("task")
    @classmethod
    def _task(cls, v: str) -> str:
        from automix.data import available_tasks

        if v not in available_tasks():
            raise ValueError(f"unknown task {v!r}; available: {', '.join(available_tasks())}")
        return v

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        from automix.methods import available_methods

        if v not in available_methods():
            raise ValueError(f"unknown method {v!r}; available methods: {', '.join(available_methods())}")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v != "auto" and v.split(":")[0] not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {v!r}")
        return v


@dataclass
class TrialResult:
    """Outcome of one trial (``to_dict`` gives snake_case JSON-ready keys)."""

    status: str = "ok"  # "ok" | "failed"
    method: str = ""
    task: str = ""
    accuracy: float | None = None
    perplexity: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    peak_memory_bytes: int | None = None
    predicted_memory_bytes: int | None = None
    memory_measured: dict[str, int] = field(default_factory=dict)
    memory_predicted: dict[str, int] = field(default_factory=dict)
    trainable_params: int | None = None
    avg_bits: float | None = None
    steps: int = 0
    first_loss: float | None = None
    last_loss: float | None = None
    losses: list[float] = field(default_factory=list)
    prepare_seconds: float = 0.0
    train_seconds: float = 0.0
    train_cpu_seconds: float = 0.0  # process CPU time of training (robust to a contended machine)
    eval_seconds: float = 0.0
    tokens_per_second: float | None = None
    device: str = ""
    failure_kind: str = ""
    failure_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrialResult":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class TrialFailure(Exception):
    """Raised inside a trial to end it with a given failure kind."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


def _seed(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrialFailure("invalid_input", f"device {name!r} asked for but CUDA is not available")
    return name


def _layer_settings(spec: TrialSpec, names: list[str]) -> dict[str, Any]:
    from automix.layer_config import LayerConfig, resolved_from_dict

    if isinstance(spec.layers, str):
        return LayerConfig.from_yaml(spec.layers).resolve(names)
    return resolved_from_dict(spec.layers, names, source="spec.layers")


def _is_oom(err: BaseException) -> bool:
    import torch

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
    import torch

    if torch.cuda.is_available():  # hand cached blocks back so the next trial measures its own peak
        import gc

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
    from automix.data import calibration_batches, get_task
    from automix.methods import MethodSettings, get_method
    from automix.models import arch_info, load_model, target_layer_names
    from automix.prune import prune_model

    if not isinstance(spec, TrialSpec):
        spec = TrialSpec.model_validate(dict(spec))
    import torch

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
    import torch

    from automix import memory
    from automix.data import is_padded
    from automix.layer_config import average_bits

    device = _device(spec.device)
    result.device = device
    t0 = time.perf_counter()
    prepared = prepare_model(spec, device)
    model, tokenizer, task = prepared.model, prepared.tokenizer, prepared.task
    method, settings, ls = prepared.method, prepared.settings, prepared.layer_settings
    memory_ls, info = prepared.memory_layer_settings, prepared.arch
    profile = method.memory_profile(info, ls, settings)
    shapes = memory.layer_shapes(info, memory_ls)
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
