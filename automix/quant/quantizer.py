"""Quantizers: round-to-nearest on each group's min/max grid (optionally with learned clipping)
and `hqq` grid refinement, packed into a `QuantizedWeight`.

The grid primitives (groups, min/max grid, codes, fake quantization) are :mod:`automix.quant.grid`;
:mod:`automix.quant.hqq` refines a grid without calibration data.
"""

from __future__ import annotations

import torch

from automix.quant.grid import check_group_size, check_weight, grouped, minmax_grid, quantize_codes
from automix.quant.hqq import refine_grid
from automix.quant.packing import check_bits, pack
from automix.quant.weight import QuantizedWeight

METHODS = ("minmax", "hqq")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


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
    method: str = "minmax",
    *,
    clip_max_logit: torch.Tensor | None = None,
    clip_min_logit: torch.Tensor | None = None,
    round_zero: bool = False,
    meta_dtype: torch.dtype = torch.float16,
    **method_kwargs: object,
) -> QuantizedWeight:
    """Quantize a ``(out_features, in_features)`` weight to ``bits`` with per-group scale/zero.

    ``method="minmax"`` is plain round-to-nearest on each group's min/max grid (optionally
    clipped by learned logits, see :func:`fake_quantize`); ``method="hqq"`` refines the grid with
    half-quadratic / least-squares iterations (:mod:`automix.quant.hqq`, kwargs go there).
    ``group_size`` need not divide ``in_features``: the last group is then shorter.
    Scales and zeros are stored in ``meta_dtype`` (fp16 by default).
    """
    check_bits(bits)
    check_group_size(group_size)
    check_weight(weight)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if meta_dtype not in _FLOAT_DTYPES:
        raise ValueError(f"meta_dtype must be a floating dtype, got {meta_dtype}")
    if method == "minmax" and method_kwargs:
        raise ValueError(f"method='minmax' takes no extra options, got {sorted(method_kwargs)}")
    with torch.no_grad():
        wg = grouped(weight.detach(), group_size)
        scale, zero = minmax_grid(wg, bits, clip_max_logit, clip_min_logit, round_zero)
        if method == "hqq":
            scale, zero = refine_grid(wg, bits, scale, zero, k=weight.shape[1], **method_kwargs)
        return pack_quantized(weight, scale, zero, bits, group_size, meta_dtype)
