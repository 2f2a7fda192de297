"""LoftQ: alternate quantization and a rank-r SVD of the residual so that Q + s*B@A ~ W.

LoftQ (Li et al., 2023) starts LoRA from the best low-rank correction of the quantization
error instead of B = 0. Each iteration quantizes what the current adapter does not explain,
then fits the adapter to what the quantizer lost. The adapter is applied at run time as
``s * B @ A`` with ``s = alpha / r``; the factors are divided by ``sqrt(s)`` here so that the
product *including the scaling* matches the residual (PEFT's implementation leaves the scaling
out, see huggingface/peft#1982, which makes its init wrong whenever alpha != r).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor



def check_rank(rank: int, shape: tuple[int, ...] | torch.Size) -> None:
    """A LoRA rank must be positive and at most min(out, in) of the layer."""
    if rank < 1 or rank > min(shape):
        raise ValueError(f"LoRA rank must be in [1, {min(shape)}] for a {tuple(shape)} weight, got {rank}")


def lowrank_factors(residual: Tensor, rank: int, scaling: float) -> tuple[Tensor, Tensor]:
    """Best rank-r factors of ``residual`` with ``scaling * B @ A`` equal to its truncated SVD.

    The singular values are split evenly between the factors (sqrt on each side), as LoftQ does,
    so A and B start with comparable norms and train at comparable rates.
    """
    u, s, vh = torch.linalg.svd(residual.float(), full_matrices=False)
    root = s[:rank].sqrt() / math.sqrt(scaling)
    b = u[:, :rank] * root
    a = root[:, None] * vh[:rank]
    return a.contiguous(), b.contiguous()


@torch.no_grad()
def loftq_init(
    weight: Tensor,
    bits: int,
    group_size: int,
    rank: int,
    scaling: float = 1.0,
    iters: int = 1,
    quant_method: str = "minmax",
) -> tuple[Any, Tensor, Tensor]:
    """LoftQ initialisation of one ``[out, in]`` weight.

    Returns ``(qweight, A, B)`` with ``A: [rank, in]``, ``B: [out, rank]`` (float32) such that
    ``qweight.dequantize() + scaling * B @ A`` approximates ``weight``. ``iters`` >= 1 rounds of
    quantize(W - s*B@A) -> SVD(W - Q).
    """
    from automix.quant import quantize

    if iters < 1:
        raise ValueError(f"loftq_iters must be >= 1, got {iters}")
    if scaling <= 0:
        raise ValueError(f"LoRA scaling alpha/r must be > 0, got {scaling}")
    w = weight.detach().float()
    check_rank(rank, w.shape)
    out_f, in_f = w.shape
    a = w.new_zeros(rank, in_f)
    b = w.new_zeros(out_f, rank)
    qweight = None
    for _ in range(iters):
        qweight = quantize(w - scaling * (b @ a), bits, group_size, quant_method)
        residual = w - qweight.dequantize(torch.float32)
        a, b = lowrank_factors(residual, rank, scaling)
    return qweight, a, b


def weight_space_error(weight: Tensor, qweight: Any, a: Tensor, b: Tensor, scaling: float) -> float:
    """Relative Frobenius error ||W - Q - s*B@A|| / ||W|| (for tests and the benchmark)."""
    w = weight.float()
    err = w - qweight.dequantize(torch.float32) - scaling * (b @ a)
    return float(err.norm() / w.norm().clamp_min(1e-12))


__all__ = ["loftq_init", "LoftQ", "weight_space_error", "lowrank_factors", "check_rank"]
