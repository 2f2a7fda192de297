"""Torch references for the kernels: the CPU path of the dispatcher and the test oracle."""

from __future__ import annotations

import torch

from automix.kernels.packing import unpack_int32


def dequantize_kn(
    packed: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bits: int,
    group_size: int,
    k: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Dequantize to the transposed weight ``(K, N)`` — the operand of ``x @ W.T``.

    This is the torch path used on CPU (and the reference the Triton kernels are tested
    against): unpack, subtract the zero point and scale, group by group, in fp32.
    """
    codes = unpack_int32(packed, bits, k).to(torch.float32)
    n_groups, n = scales.shape
    padded = n_groups * group_size
    if padded != k:
        codes = torch.cat([codes, codes.new_zeros(padded - k, n)], dim=0)
    s = scales.to(torch.float32)
    zs = zeros.to(torch.float32) * s
    # (q - z) * s computed as q * s - z * s: one fused pass over the codes
    w = torch.addcmul(-zs.unsqueeze(1), codes.view(n_groups, group_size, n), s.unsqueeze(1))
    return w.view(padded, n)[:k].to(dtype)


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
