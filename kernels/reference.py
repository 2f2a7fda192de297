"""Torch references for the kernels: the CPU path of the dispatcher and the test oracle."""

from __future__ import annotations

import torch

from automix.quant.weight import dequantize_kn


def dequantize_reference(qweight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The transposed dequantized weight ``(K, N)`` of a QuantizedWeight-like object."""
    return dequantize_kn(
        qweight.packed, qweight.scales, qweight.zeros, qweight.bits, qweight.group_size,
        qweight.shape[1], dtype,
    )


def quant_matmul_reference(x: torch.Tensor, qweight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ dequant(W).T + bias`` in torch: dequantize to x's dtype, then one matmul.

    Differentiable with respect to ``x`` (the weight is constant). On CPU this is the fast path:
    one vectorised unpack + one BLAS call.
    """
    w = dequantize_reference(qweight, x.dtype)
    y = x.matmul(w)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y
