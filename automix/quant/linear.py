"""`QuantLinear`: a frozen quantized drop-in for ``nn.Linear`` (and GPT-2's ``Conv1D``).

The packed codes, scales and zeros are *buffers*, so ``model.to(device)``, ``state_dict()`` and
``load_state_dict()`` work and no optimizer ever sees them; the bias is a frozen parameter. The
forward is ``automix.kernels.quant_matmul`` (Triton on CUDA, dequantize + matmul on CPU), which
is differentiable with respect to the input so adapters and side networks can train through it.
"""

from __future__ import annotations

import torch
from torch import nn

from automix.arch import linear_shape, linear_weight
from automix.kernels import quant_matmul
from automix.kernels.packing import check_bits, packed_words
from automix.quant.grid import check_group_size, num_groups
from automix.quant.quantizer import DEFAULT_METHOD, chunk_rows, quantize
from automix.quant.weight import QuantizedWeight


def _weight_rows(linear: nn.Module, start: int, end: int) -> torch.Tensor:
    """Output rows ``start:end`` of a layer's (out, in) weight (read alone from a streamed layer)."""
    rows = getattr(linear, "weight_rows", None)
    return rows(start, end) if rows is not None else linear_weight(linear)[start:end]


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
    def from_quantized(cls, qweight: QuantizedWeight, bias: torch.Tensor | None = None,
                       copy: bool = True) -> "QuantLinear":
        """Wrap an existing :class:`QuantizedWeight` (e.g. one with baked ApiQ clipping): a copy
        of its tensors, or (``copy=False``) the tensors themselves, the caller giving them up."""
        out_f, in_f = qweight.shape
        layer = cls(in_f, out_f, qweight.bits, qweight.group_size, bias=bias is not None,
                    dtype=qweight.dtype, meta_dtype=qweight.scales.dtype,
                    device=qweight.device if copy else "meta")
        for name in ("packed", "scales", "zeros"):
            if copy:
                getattr(layer, name).copy_(getattr(qweight, name))
            else:
                layer.register_buffer(name, getattr(qweight, name).contiguous())
        if bias is not None and not copy:
            layer.bias = nn.Parameter(torch.empty(out_f, dtype=qweight.dtype, device=qweight.device),
                                      requires_grad=False)
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
        hqq options, ...). Inside :func:`automix.quant.quantization_chunk` the output rows are quantized a
        chunk at a time (read through the layer's ``weight_rows`` when it has one, as a streamed
        layer does): the same codes and grid (every quantizer works per row and group), at most
        the chunk's bytes of full-precision rows and their temporaries at once.
        """
        out_f, in_f = linear_shape(linear)
        rows = chunk_rows(out_f, in_f)
        if rows >= out_f:
            return cls._quantized(linear_weight(linear), linear, bits, group_size, method, quant_kwargs)
        bias = getattr(linear, "bias", None)
        bias = bias if isinstance(bias, torch.Tensor) else None
        layer = None
        for r0 in range(0, out_f, rows):
            r1 = min(out_f, r0 + rows)
            kw = {k: v[r0:r1] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == out_f else v
                  for k, v in quant_kwargs.items()}
            part = cls._quantized(_weight_rows(linear, r0, r1), linear, bits, group_size, method, kw, bias=False)
            if layer is None:
                layer = cls(in_f, out_f, bits, group_size, bias=bias is not None, dtype=part.dtype,
                            meta_dtype=part.scales.dtype, device=part.packed.device)
            layer.packed[:, r0:r1] = part.packed
            layer.scales[:, r0:r1] = part.scales
            layer.zeros[:, r0:r1] = part.zeros
            del part
        if bias is not None:
            layer.bias.data = bias.detach().clone().to(layer.packed.device)
        return layer

    @classmethod
    def _quantized(cls, weight: torch.Tensor, linear: nn.Module, bits: int, group_size: int, method: str,
                   quant_kwargs: dict, bias: bool = True) -> "QuantLinear":
        try:
            qweight = quantize(weight, bits, group_size, method, **quant_kwargs)
        except ValueError as exc:
            raise ValueError(f"{type(linear).__name__} ({tuple(linear_shape(linear))}): {exc}") from exc
        b = getattr(linear, "bias", None) if bias else None
        return cls.from_quantized(qweight, b if isinstance(b, torch.Tensor) else None)

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
