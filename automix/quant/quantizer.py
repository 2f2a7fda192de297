"""Quantizers, packed into a `QuantizedWeight`. Each is a grid function registered by name in
:data:`automix.config.registry.QUANTIZERS` (the one list of names, torch-free, that study files and
the CLI validate against):

* ``rtn`` — standard asymmetric round-to-nearest (integer zero point, 0 on the grid), as GPTQ-style
  formats store it;
* ``minmax`` — round-to-nearest on each group's exact min/max grid (fractional zero point);
* ``hqq`` — the min/max grid refined without calibration data (half-quadratic + least squares).

``DEFAULT_METHOD`` (the registry's ``DEFAULT_QUANTIZER``) is the one every default in automix
follows (method settings, profiles, benchmarks); ``benchmarks/quant_error.md`` records why.

The grid primitives (groups, min/max grid, codes, fake quantization) are :mod:`automix.quant.grid`;
:mod:`automix.quant.hqq` refines a grid without calibration data.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from typing import Any, Iterator

import torch

from automix.config.registry import DEFAULT_QUANTIZER, QUANTIZERS, load
from automix.kernels.packing import check_bits, pack
from automix.quant.grid import check_group_size, check_meta_dtype, check_weight, grouped, quantize_codes
from automix.quant.weight import QuantizedWeight

METHODS = tuple(QUANTIZERS)
DEFAULT_METHOD = DEFAULT_QUANTIZER
_COMMON = frozenset({"clip_max_logit", "clip_min_logit", "round_zero", "k"})  # every grid function takes these


def _options_of(grid_fn) -> set[str] | None:
    """The extra keyword options a quantizer's grid function takes (None: any)."""
    params = inspect.signature(grid_fn).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind is p.KEYWORD_ONLY} - _COMMON


def check_method(method: object) -> str:
    """Raise ValueError unless ``method`` names a registered quantizer (see :data:`METHODS`)."""
    if method not in QUANTIZERS:
        raise ValueError(f"quantizer method must be one of {', '.join(QUANTIZERS)}; got {method!r}")
    return method  # type: ignore[return-value]


def pack_quantized(
    weight: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    bits: int,
    group_size: int,
    meta_dtype: torch.dtype = torch.float16,
) -> QuantizedWeight:
    """Round the grid ``(N, G)`` to ``meta_dtype``, compute the codes with the *stored* grid and pack."""
    n, k = weight.shape
    scale = scale.detach().to(meta_dtype)
    zero = zero.detach().to(meta_dtype)
    wg = grouped(weight.detach(), group_size)
    codes = quantize_codes(wg, scale.to(torch.float32), zero.to(torch.float32), bits)
    codes = codes.reshape(n, -1)[:, :k].to(torch.int64)
    packed = pack(codes.t(), bits)
    return QuantizedWeight(
        packed, scale.t().contiguous(), zero.t().contiguous(), bits, group_size, (n, k), weight.dtype
    )


_CHUNK_BYTES: contextvars.ContextVar[int | None] = contextvars.ContextVar("automix_quant_chunk", default=None)


@contextlib.contextmanager
def quantization_chunk(nbytes: int | None) -> Iterator[None]:
    """Inside the block, :func:`quantize` (and :meth:`automix.quant.QuantLinear.from_linear`,
    which also reads a layer's rows a chunk at a time) works on at most ``nbytes`` of fp32
    weight rows at a time (None: whole weights). Every quantizer works per row and group, so
    the result is the same; the temporaries (codes, packing) are a chunk's. A trial sizes the
    chunk so that quantizing never needs more memory than its training step has to spare."""
    token = _CHUNK_BYTES.set(None if nbytes is None else max(1, int(nbytes)))
    try:
        yield
    finally:
        _CHUNK_BYTES.reset(token)


def chunk_rows(out_features: int, in_features: int) -> int:
    """Output rows quantized at a time under :func:`quantization_chunk` (all outside it)."""
    limit = _CHUNK_BYTES.get()
    return out_features if limit is None else max(1, min(out_features, limit // (4 * max(1, in_features))))


def quantize(
    weight: torch.Tensor,
    bits: int,
    group_size: int = 64,
    method: str = DEFAULT_METHOD,
    *,
    clip_max_logit: torch.Tensor | None = None,
    clip_min_logit: torch.Tensor | None = None,
    round_zero: bool = False,
    meta_dtype: torch.dtype = torch.float16,
    **method_kwargs: object,
) -> QuantizedWeight:
    """Quantize a ``(out_features, in_features)`` weight to ``bits`` with per-group scale/zero.

    ``method="rtn"`` (the default) is standard asymmetric round-to-nearest with an integer zero
    point (:func:`automix.quant.grid.rtn_grid`); ``method="minmax"`` is round-to-nearest on each
    group's exact min/max grid with a fractional zero point (``round_zero=True`` rounds it);
    both accept learned clipping logits, and :func:`automix.quant.grid.fake_quantize` with the
    same ``grid`` and logits is this quantizer's differentiable twin. ``method="hqq"`` refines the
    min/max grid with half-quadratic / least-squares iterations (:mod:`automix.quant.hqq`, kwargs
    go there). Any other name registered in ``QUANTIZERS`` works the same way: its grid function
    gives the scale and zero point per group, this function rounds and packs.
    ``group_size`` need not divide ``in_features``: the last group is then shorter.
    Scales and zeros are stored in ``meta_dtype`` (fp16 by default).
    """
    check_bits(bits)
    check_group_size(group_size)
    check_weight(weight)
    check_method(method)
    check_meta_dtype(meta_dtype)
    grid_fn = load(QUANTIZERS, method)
    accepted = _options_of(grid_fn)
    if accepted is not None and set(method_kwargs) - accepted:
        raise ValueError(f"method={method!r} takes " + (f"only the options {sorted(accepted)}" if accepted else
                         "no extra options") + f", got {sorted(method_kwargs)}")
    n, k = weight.shape
    rows = chunk_rows(n, k)
    if rows < n:  # a chunk of rows at a time, into the whole result
        out = None
        for r0 in range(0, n, rows):
            part = _quantize_whole(weight[r0:r0 + rows], bits, group_size, grid_fn,
                                   None if clip_max_logit is None else clip_max_logit[r0:r0 + rows],
                                   None if clip_min_logit is None else clip_min_logit[r0:r0 + rows],
                                   round_zero, meta_dtype, method_kwargs)
            if out is None:
                out = QuantizedWeight(part.packed.new_empty(part.packed.shape[0], n),
                                      part.scales.new_empty(part.scales.shape[0], n),
                                      part.zeros.new_empty(part.zeros.shape[0], n), bits, group_size, (n, k),
                                      part.dtype)
            out.packed[:, r0:r0 + rows] = part.packed
            out.scales[:, r0:r0 + rows] = part.scales
            out.zeros[:, r0:r0 + rows] = part.zeros
            del part
        return out
    return _quantize_whole(weight, bits, group_size, grid_fn, clip_max_logit, clip_min_logit, round_zero, meta_dtype,
                           method_kwargs)


def _quantize_whole(weight: torch.Tensor, bits: int, group_size: int, grid_fn: Any,
                    clip_max_logit: torch.Tensor | None, clip_min_logit: torch.Tensor | None, round_zero: bool,
                    meta_dtype: torch.dtype, method_kwargs: dict) -> QuantizedWeight:
    with torch.no_grad():
        wg = grouped(weight.detach(), group_size)
        scale, zero = grid_fn(wg, bits, clip_max_logit=clip_max_logit, clip_min_logit=clip_min_logit,
                              round_zero=round_zero, k=weight.shape[1], **method_kwargs)
        return pack_quantized(weight, scale, zero, bits, group_size, meta_dtype)
