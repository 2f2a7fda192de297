"""The worker-side accounting of a training step: the tensors the memory model names, measured.

:mod:`automix.trial.memory` predicts, from arithmetic alone, what one fine-tuning step holds;
this module counts the same quantities on a real model so the two can be compared term by term
(tests, ``automix bench memory``, ``run_trial``): the model's tensors by category
(:func:`model_bytes`), gradients, optimizer states (:func:`optimizer_bytes`) and the bytes
autograd saves for backward (:class:`SavedTensorMeter`, with gradient checkpointing the inputs
each block keeps plus the largest block recomputation). It counts what the model counts; what
neither names is seen only by the allocator (:mod:`automix.trial.allocator`).
"""

from __future__ import annotations

from typing import Any, Iterable

from automix.trial.memory import MemoryBreakdown

__all__ = ["SavedTensorMeter", "active_meter", "measured_breakdown", "model_bytes", "optimizer_bytes"]


def _storage_key(t: Any) -> tuple[str, int]:
    s = t.untyped_storage()
    return (str(t.device), s.data_ptr())


def model_bytes(model: Any, trainable: Iterable[Any] = ()) -> dict[str, int]:
    """Exact bytes of a model's tensors by category: ``weights`` (frozen parameters and buffers
    except quantization metadata), ``quant_metadata`` (QuantLinear scales and zeros),
    ``adapters`` (the trainable parameters). Shared storages (tied embeddings) count once."""
    import torch

    trainable_ids = {id(p) for p in trainable}
    meta_ids: set[int] = set()
    for m in model.modules():
        if all(isinstance(getattr(m, a, None), torch.Tensor) for a in ("packed", "scales", "zeros")):
            meta_ids.update(id(t) for t in (m.scales, m.zeros))
    seen: set[tuple[str, int]] = set()
    out = {"weights": 0, "quant_metadata": 0, "adapters": 0}
    for t in list(model.parameters()) + list(model.buffers()):
        key = _storage_key(t)
        if key in seen:
            continue
        seen.add(key)
        n = t.untyped_storage().nbytes()
        cat = "adapters" if id(t) in trainable_ids else "quant_metadata" if id(t) in meta_ids else "weights"
        out[cat] += n
    return out


_ACTIVE: list["SavedTensorMeter"] = []


def active_meter() -> "SavedTensorMeter | None":
    """The innermost :class:`SavedTensorMeter` now entered (checkpointed blocks report to it)."""
    return _ACTIVE[-1] if _ACTIVE else None


class SavedTensorMeter:
    """Context manager summing the bytes of tensors autograd saves for backward, once per
    storage, excluding the model's own parameters and buffers (already counted as weights).

    With gradient checkpointing (:mod:`automix.trial.checkpoint`) a checkpointed block saves
    nothing during the forward; it reports the inputs it keeps (:meth:`keep`, counted like saved
    tensors) and, in backward, each recomputation's saved tensors (:meth:`recomputed`: the bytes
    of storages not already counted; the largest recomputation is ``recompute_peak``).
    ``total`` = ``bytes`` + ``recompute_peak`` is the step's activation accounting.
    """

    def __init__(self, model: Any) -> None:
        self._exclude = {_storage_key(t) for t in list(model.parameters()) + list(model.buffers())}
        self._seen: set[tuple[str, int]] = set()
        self.bytes = 0
        self.recompute_peak = 0
        self._ctx = None

    @property
    def total(self) -> int:
        return self.bytes + self.recompute_peak

    def _pack(self, t: Any) -> Any:
        key = _storage_key(t)
        if key not in self._exclude and key not in self._seen:
            self._seen.add(key)
            self.bytes += t.untyped_storage().nbytes()
        return t

    def keep(self, tensors: Iterable[Any]) -> None:
        """Count tensors kept alive for backward outside autograd's saving (checkpoint inputs)."""
        for t in tensors:
            self._pack(t)

    def recomputed(self, tensors: Iterable[Any], inputs: Iterable[Any] = ()) -> None:
        """Bytes one block recomputation holds beyond the block's kept ``inputs`` (and the model's
        own tensors); keeps the largest. (Storages counted earlier may be freed by now and their
        addresses reused, so only the inputs, alive for sure, are matched.)"""
        fresh = {_storage_key(t) for t in inputs}
        n = 0
        for t in tensors:
            key = _storage_key(t)
            if key in self._exclude or key in fresh:
                continue
            fresh.add(key)
            n += t.untyped_storage().nbytes()
        self.recompute_peak = max(self.recompute_peak, n)

    def __enter__(self) -> "SavedTensorMeter":
        import torch

        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        _ACTIVE.remove(self)
        self._ctx.__exit__(*exc)


def optimizer_bytes(optimizer: Any) -> int:
    """Exact bytes of an optimizer's state tensors, once per storage (AdamW: exp_avg, exp_avg_sq,
    step; 8-bit AdamW: codes, block absmax and the quantization maps all parameters share)."""
    import torch

    seen: set[tuple[str, int]] = set()
    total = 0
    for state in optimizer.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor) and _storage_key(v) not in seen:
                seen.add(_storage_key(v))
                total += v.untyped_storage().nbytes()
    return total


def measured_breakdown(model: Any, params: Iterable[Any], optimizer: Any,
                       saved_bytes: "int | SavedTensorMeter") -> MemoryBreakdown:
    """The CPU accounting after a step: tensors of the model, gradients, optimizer state and the
    activations measured by a :class:`SavedTensorMeter` during that step (its ``total``: what
    the forward saved plus, with checkpointing, the largest block recomputation)."""
    if isinstance(saved_bytes, SavedTensorMeter):
        saved_bytes = saved_bytes.total
    params = list(params)
    parts = model_bytes(model, params)
    grads = sum(p.grad.untyped_storage().nbytes() for p in params if p.grad is not None)
    return MemoryBreakdown.of(weights=parts["weights"], quant_metadata=parts["quant_metadata"],
                              adapters=parts["adapters"], gradients=grads,
                              optimizer_states=optimizer_bytes(optimizer), activations=saved_bytes)
