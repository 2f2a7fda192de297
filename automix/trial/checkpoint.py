"""Activation (gradient) checkpointing per decoder block, measurable on CPU.

``enable(model)`` wraps every decoder block's ``forward``: the block runs normally (its autograd
graph is built as usual) but the tensors its operations save for backward are *not kept*; only
the block's inputs are. When backward first needs one of them, the block's forward is run again
from the kept inputs (same RNG state, same autocast) and the recomputed tensors are handed out.
This is the non-reentrant scheme of ``torch.utils.checkpoint`` (what Hugging Face's
``gradient_checkpointing_enable`` uses), written on ``torch.autograd.graph.saved_tensors_hooks``
so that the memory accounting can see both halves: the inputs each block keeps (reported to the
active :class:`automix.trial.meter.SavedTensorMeter` during the forward) and the bytes each
recomputation brings back (reported to the same meter, which keeps the largest).

A block that neither receives a tensor requiring grad nor holds a trainable parameter saves
nothing and keeps nothing (as without checkpointing); under ``torch.no_grad`` (evaluation, QST's
frozen backbone) the wrapper is a plain call.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import nn

from automix.arch import ARCHITECTURES
from automix.trial.meter import active_meter

__all__ = ["decoder_blocks", "enable"]


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The decoder blocks of the (possibly wrapped) Hugging Face model inside ``model``."""
    for module in model.modules():
        spec = ARCHITECTURES.get(getattr(getattr(module, "config", None), "model_type", None))
        if spec is None:
            continue
        try:
            return list(module.get_submodule(spec.blocks))
        except AttributeError:
            continue
    raise ValueError(f"gradient checkpointing: no decoder blocks of a supported architecture found in "
                     f"{type(model).__name__}")


def enable(model: nn.Module) -> int:
    """Checkpoint every decoder block of ``model`` (in place); returns how many were wrapped.

    Turns the model's KV cache off: a cache would be written twice (forward and recomputation).
    """
    for module in model.modules():
        cfg = getattr(module, "config", None)
        if cfg is not None and hasattr(cfg, "use_cache"):
            cfg.use_cache = False
    blocks = decoder_blocks(model)
    for block in blocks:
        if not getattr(block, "_automix_checkpointed", False):
            block.forward = _checkpointed(block, block.forward)
            block._automix_checkpointed = True
    return len(blocks)


def _tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            out.append(x)
        elif isinstance(x, (tuple, list)):
            for y in x:
                walk(y)
        elif isinstance(x, dict):
            for y in x.values():
                walk(y)

    walk(args)
    walk(kwargs)
    return out


def _detached(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().requires_grad_(x.requires_grad)
    if isinstance(x, tuple):
        return tuple(_detached(y) for y in x)
    if isinstance(x, list):
        return [_detached(y) for y in x]
    if isinstance(x, dict):
        return {k: _detached(v) for k, v in x.items()}
    return x


def _never_unpacked(index: int) -> torch.Tensor:
    raise RuntimeError("gradient checkpointing: the recomputed forward's own graph is never run backward")


class _Frame:
    """One checkpointed call: its inputs, RNG/autocast state and (after backward asks) the
    recomputed saved tensors, in the order the forward saved them."""

    def __init__(self, forward: Callable, args: tuple, kwargs: dict, devices: list[int], meter: Any) -> None:
        self.forward, self.args, self.kwargs = forward, args, kwargs
        self.devices = devices
        self.cpu_rng = torch.get_rng_state()
        self.cuda_rng = [torch.cuda.get_rng_state(d) for d in devices]
        self.autocast = {dev: (torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
                         for dev in ("cpu", "cuda")}
        self.meter = meter
        self.count = 0
        self.recomputed: list[torch.Tensor] | None = None

    def pack(self, _: torch.Tensor) -> int:
        self.count += 1
        return self.count - 1

    def unpack(self, index: int) -> torch.Tensor:
        if self.recomputed is None:
            self._recompute()
        return self.recomputed[index]  # type: ignore[index]

    def _recompute(self) -> None:
        saved: list[torch.Tensor] = []
        args, kwargs = _detached(self.args), _detached(self.kwargs)
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.random.fork_rng(devices=self.devices))
            torch.set_rng_state(self.cpu_rng)
            for d, state in zip(self.devices, self.cuda_rng):
                torch.cuda.set_rng_state(state, d)
            for dev, (on, dtype) in self.autocast.items():
                if on:
                    stack.enter_context(torch.autocast(dev, dtype=dtype))
            stack.enter_context(torch.enable_grad())
            # Keep detached copies and hand the recomputed graph an index, never the tensor: a
            # tensor packed into the graph that made it is a cycle through autograd's C++ nodes
            # that Python's collector cannot see (every recompute leaked its block's activations).
            stack.enter_context(torch.autograd.graph.saved_tensors_hooks(
                lambda t: saved.append(t.detach()) or len(saved) - 1, _never_unpacked))
            self.forward(*args, **kwargs)
        if len(saved) != self.count:
            raise RuntimeError(f"gradient checkpointing: the recomputed block saved {len(saved)} tensors, "
                               f"the forward {self.count} (the block's forward is not deterministic)")
        self.recomputed = saved
        if self.meter is not None:
            self.meter.recomputed(saved, _tensors(self.args, self.kwargs))


def _checkpointed(block: nn.Module, forward: Callable) -> Callable:
    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        if kwargs.get("use_cache"):
            raise RuntimeError("gradient checkpointing needs use_cache=False (a KV cache would be "
                               "written again when the block is recomputed)")
        tensors = _tensors(args, kwargs)
        if not (any(t.requires_grad for t in tensors) or any(p.requires_grad for p in block.parameters())):
            return forward(*args, **kwargs)
        devices = sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})
        meter = active_meter()
        frame = _Frame(forward, args, kwargs, devices, meter)
        if meter is not None:  # index tensors (positions) live for the whole step anyway
            meter.keep([t for t in tensors if t.is_floating_point() or t.dtype == torch.bool])
        with torch.autograd.graph.saved_tensors_hooks(frame.pack, frame.unpack):
            return forward(*args, **kwargs)

    return run
