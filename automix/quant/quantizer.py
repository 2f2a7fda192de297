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

import inspect

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
    with torch.no_grad():
        wg = grouped(weight.detach(), group_size)
        scale, zero = grid_fn(wg, bits, clip_max_logit=clip_max_logit, clip_min_logit=clip_min_logit,
                              round_zero=round_zero, k=weight.shape[1], **method_kwargs)
        return pack_quantized(weight, scale, zero, bits, group_size, meta_dtype)
