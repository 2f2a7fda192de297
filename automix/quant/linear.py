"""`QuantLinear`: a frozen quantized drop-in for ``nn.Linear`` (and GPT-2's ``Conv1D``).

The packed codes, scales and zeros are *buffers*, so ``model.to(device)``, ``state_dict()`` and
``load_state_dict()`` work and no optimizer ever sees them; the bias is a frozen parameter. The
forward is ``automix.kernels.quant_matmul`` (Triton on CUDA, dequantize + matmul on CPU), which
is differentiable with respect to the input so adapters and side networks can train through it.
"""

from __future__ import annotations

import torch
from torch import nn

from automix.arch import linear_weight
from automix.kernels import quant_matmul
from automix.kernels.packing import check_bits, packed_words
from automix.quant.grid import check_group_size, num_groups
from automix.quant.quantizer import DEFAULT_METHOD, quantize
from automix.quant.weight import QuantizedWeight


class QuantLinear(nn.Module):
    """``y = x @ dequant(Q).T + b`` with Q a :class:`QuantizedWeight`; frozen, grad flows to x."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int,
        group_size: int = 64,
        bias: bool = True,
        dtype: torch.dtype = torch.float32,
        meta_dtype: torch.dtype = torch.float16,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        check_bits(bits)
        check_group_size(group_size)
        self.in_features = in_features
        self.out_features = out_features
        self.bits = bits
        self.group_size = group_size
        self.dtype = dtype  # dequantization dtype when no activation says otherwise
        g = num_groups(in_features, group_size)
        self.register_buffer("packed", torch.zeros(packed_words(in_features, bits), out_features,
                                                   dtype=torch.int32, device=device))
        self.register_buffer("scales", torch.ones(g, out_features, dtype=meta_dtype, device=device))
        self.register_buffer("zeros", torch.zeros(g, out_features, dtype=meta_dtype, device=device))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_quantized(cls, qweight: QuantizedWeight, bias: torch.Tensor | None = None) -> "QuantLinear":
        """Wrap an existing :class:`QuantizedWeight` (e.g. one with baked ApiQ clipping)."""
        out_f, in_f = qweight.shape
        layer = cls(in_f, out_f, qweight.bits, qweight.group_size, bias=bias is not None,
                    dtype=qweight.dtype, meta_dtype=qweight.scales.dtype, device=qweight.device)
        layer.packed.copy_(qweight.packed)
        layer.scales.copy_(qweight.scales)
        layer.zeros.copy_(qweight.zeros)
        if bias is not None:
            if tuple(bias.shape) != (out_f,):
                raise ValueError(f"bias: expected shape ({out_f},), got {tuple(bias.shape)}")
            layer.bias.data = bias.detach().clone().to(qweight.device)
        return layer

    @classmethod
    def from_linear(
        cls,
        linear: nn.Module,
        bits: int,
        group_size: int = 64,
        method: str = DEFAULT_METHOD,
        **quant_kwargs: object,
    ) -> "QuantLinear":
        """Quantize an ``nn.Linear`` (or GPT-2 ``Conv1D``); the bias is kept as is.

        ``quant_kwargs`` go to :func:`automix.quant.quantize` (``clip_max_logit``, ``meta_dtype``,
        hqq options, ...).
        """
        weight = linear_weight(linear)
        try:
            qweight = quantize(weight, bits, group_size, method, **quant_kwargs)
        except ValueError as exc:
            raise ValueError(f"{type(linear).__name__} ({tuple(weight.shape)}): {exc}") from exc
        bias = getattr(linear, "bias", None)
        return cls.from_quantized(qweight, bias if isinstance(bias, torch.Tensor) else None)

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        # model.half()/.to(bfloat16) must not re-round the scales and zeros: they keep their
        # dtype and only follow the device of the (integer, never cast) packed codes.
        scales, zeros = self.scales, self.zeros
        super()._apply(fn, recurse)
        self.scales = scales.to(self.packed.device)
        self.zeros = zeros.to(self.packed.device)
        return self

    # ------------------------------------------------------------------ use
    @property
    def qweight(self) -> QuantizedWeight:
        """A view of the buffers as a :class:`QuantizedWeight` (no copy)."""
        return QuantizedWeight(self.packed, self.scales, self.zeros, self.bits, self.group_size,
                               (self.out_features, self.in_features), self.dtype)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return self.qweight.dequantize(dtype)

    @property
    def nbytes(self) -> int:
        """Bytes of the quantized weight (codes + scales + zeros), bias excluded."""
        return self.qweight.nbytes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quant_matmul(x, self.qweight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
            f"group_size={self.group_size}, bias={self.bias is not None}"
        )
