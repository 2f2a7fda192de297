"""QEFT: quantize all but a few "weak" input columns; fine-tune only those columns.

QEFT (Lee et al., 2024) builds on OWQ: the input channels with the largest Hessian diagonal
diag(X^T X) are the ones whose quantization error costs most, so k of them stay in high
precision; the other columns are quantized GPTQ-style, the rounding error of each column being
pushed (through the inverse Hessian) onto the columns not yet quantized, *including the weak
ones*, which therefore absorb part of the error. Fine-tuning then trains only the dense weak
block:  y = dequant_matmul(x_rest, Q) + x_weak @ W_weak^T.

Layout choice (documented, see DESIGN.md "QEFT"): instead of permuting the residual stream
(embeddings, norms and every producing layer) we permute per *input group*, i.e. per set of
layers that read the same tensor (q/k/v; gate/up; o; down). The weak set is chosen once per group
from the group's shared diag(X^T X), and each layer stores its quantized columns in "rest" order
and its weak columns densely; the forward gathers the activation into the two parts
(``index_select``), which is numerically the same as an offline permutation of the producer.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from automix.config.layers import LayerSettings
from automix.methods.base import InitMemory, MemoryProfile, Method, MethodError, MethodSettings, freeze
from automix.arch import layer_shapes, linear_weight
from automix.methods.adapters import replace_module
from automix.methods.loftq import as_dtype
from automix.methods.quailora import collect_input_hessians
from automix.quant import QuantLinear
from automix.quant.grid import minmax_grid
from automix.quant.quantizer import pack_quantized

QEFT_LAYER_FACTOR = 8.0  # bytes GPTQ holds per fp32 byte of the layer it quantizes (benchmarks/memory_model.md)


def weak_column_count(in_features: int, fraction: float = 1 / 32, k: int | None = None) -> int:
    """Number of weak columns: ``k`` if given, else ``ceil(fraction * in_features)`` (>= 1).

    QEFT/OWQ keep ~128 of 4096 channels (1/32) for 7B models.
    """
    n = int(k) if k is not None else int(math.ceil(fraction * in_features))
    if not 1 <= n < in_features:
        raise ValueError(f"QEFT weak columns must be in [1, {in_features - 1}] for in_features={in_features}, got {n}")
    return n


def select_weak_columns(hessian: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(rest_idx, weak_idx): the k input channels with the largest diag(H) are weak (sorted)."""
    diag = hessian.diagonal().float()
    weak = torch.topk(diag, k).indices.sort().values
    mask = torch.ones_like(diag, dtype=torch.bool)
    mask[weak] = False
    rest = torch.nonzero(mask).flatten()
    return rest, weak


@torch.no_grad()
def gptq_quantize_with_weak(
    weight: Tensor,
    hessian: Tensor,
    weak_idx: Tensor,
    bits: int,
    group_size: int,
    damp: float = 0.01,
    block_size: int = 128,
) -> tuple[Any, Tensor, Tensor]:
    """GPTQ on the non-weak columns, compensating the error into every later column.

    Columns are ordered [rest..., weak...]; each rest column is rounded on its group's min/max
    grid (computed from the error-updated weights when the group starts, as GPTQ does) and the
    error is propagated with the Cholesky factor of H^-1. Returns ``(qweight_rest [out, K-k],
    weak_weight [out, k] float32 (compensated), rest_idx)``.
    """
    w = weight.detach().float().clone()
    out_f, in_f = w.shape
    weak_idx = weak_idx.to(w.device)
    mask = torch.ones(in_f, dtype=torch.bool, device=w.device)
    mask[weak_idx] = False
    rest_idx = torch.nonzero(mask).flatten()
    order = torch.cat([rest_idx, weak_idx])
    n_rest = rest_idx.numel()
    w = w[:, order].contiguous()
    h = hessian.detach().float().to(w.device)[order][:, order].clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * h.diagonal().mean() * torch.eye(in_f, device=w.device)
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    u = torch.linalg.cholesky(hinv, upper=True)
    qmax = 2**bits - 1
    pre = torch.zeros(out_f, n_rest, device=w.device)  # values at rounding time (for packing)
    scales, zeros = [], []
    scale = zero = None
    for b0 in range(0, n_rest, block_size):
        b1 = min(b0 + block_size, n_rest)
        wb = w[:, b0:b1].clone()
        err = torch.zeros_like(wb)
        for j in range(b1 - b0):
            col = b0 + j
            if col % group_size == 0:
                g_end = min(col + group_size, n_rest)
                # grid from the current (error-updated) weights of this group, rounded to the
                # stored fp16 metadata so packing later reproduces exactly these codes
                cur = torch.cat([wb[:, j:], w[:, b1:g_end]], dim=1)[:, : g_end - col]
                s, z = minmax_grid(cur.unsqueeze(1), bits)
                scale, zero = s[:, 0].half().float(), z[:, 0].half().float()
                scales.append(scale)
                zeros.append(zero)
            x = wb[:, j]
            pre[:, col] = x
            q = (torch.clamp(torch.round(x / scale + zero), 0, qmax) - zero) * scale
            e = (x - q) / u[col, col]
            wb[:, j:] -= e[:, None] * u[col, col:b1][None, :]
            err[:, j] = e
        w[:, b1:] -= err @ u[b0:b1, b1:]
    grid_s = torch.stack(scales, dim=1)
    grid_z = torch.stack(zeros, dim=1)
    qweight = pack_quantized(pre, grid_s, grid_z, bits, group_size)
    weak = w[:, n_rest:].contiguous()
    return qweight, weak, rest_idx


class QEFTLinear(nn.Module):
    """Quantized rest columns (frozen :class:`QuantLinear`) + a dense, trainable weak block."""

    def __init__(self, qweight: Any, weak_weight: Tensor, rest_idx: Tensor, weak_idx: Tensor,
                 bias: Tensor | None, trainable: bool = True, dtype: torch.dtype | None = None) -> None:
        super().__init__()

        self.quant = QuantLinear.from_quantized(qweight, bias)
        self.out_features = qweight.shape[0]
        self.in_features = qweight.shape[1] + weak_weight.shape[1]
        self.bits = qweight.bits
        self.group_size = qweight.group_size
        self.register_buffer("rest_idx", rest_idx.to(torch.long).clone())
        self.register_buffer("weak_idx", weak_idx.to(torch.long).clone())
        self.weak = nn.Parameter(weak_weight.detach().to(dtype or weak_weight.dtype).clone(),
                                 requires_grad=trainable)

    @property
    def n_weak(self) -> int:
        return self.weak.shape[1]

    def forward(self, x: Tensor) -> Tensor:
        x_rest = x.index_select(-1, self.rest_idx)
        x_weak = x.index_select(-1, self.weak_idx)
        y = self.quant(x_rest)
        return y + F.linear(x_weak, self.weak.to(x.dtype))

    def dense_weight(self) -> Tensor:
        """The full ``[out, in]`` weight in the original column order (for checks/export)."""
        w = torch.empty(self.out_features, self.in_features, device=self.weak.device)
        w[:, self.rest_idx] = self.quant.dequantize(torch.float32)
        w[:, self.weak_idx] = self.weak.detach().float()
        return w

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, weak={self.n_weak}"


class QEFT(Method):
    """``qeft``: weak columns by diag(X^T X) per input group, GPTQ on the rest, train the weak block.

    Layers with ``bits < 16`` are converted; their weak block trains when the layer's ``rank`` is
    > 0 (the rank value itself is not used: QEFT has no LoRA). Options: ``weak_fraction`` (1/32 of
    the input channels) or ``weak_columns`` (an absolute k; 0 = use the fraction), ``damp``
    (GPTQ Hessian damping, 0.01), ``block_size`` (GPTQ lazy-batch width, 128),
    ``calib_batch_size`` (8).
    """

    name = "qeft"
    needs_calibration = True
    option_defaults = {"weak_fraction": 1 / 32, "weak_columns": 0, "damp": 0.01, "block_size": 128,
                       "calib_batch_size": 8}

    @staticmethod
    def _k(in_features: int, opts: Mapping[str, Any]) -> int:
        k = int(opts["weak_columns"])
        return weak_column_count(in_features, float(opts["weak_fraction"]), k if k > 0 else None)

    def prepare(self, model: nn.Module, layer_settings: Mapping[str, LayerSettings],
                settings: MethodSettings | Mapping[str, Any] | None = None,
                calib: Tensor | None = None) -> nn.Module:
        settings = self.check_settings(settings)
        opts = settings.options
        if calib is None or calib.ndim != 2 or calib.shape[0] == 0:
            raise MethodError("method 'qeft' needs a calibration batch [n_samples, seq_len] of token ids")
        freeze(model)
        targets = {n: model.get_submodule(n) for n, s in layer_settings.items() if s.bits < 16}
        if not targets:
            return model
        hessians, groups = collect_input_hessians(model, targets, calib, int(opts["calib_batch_size"]))
        for group in groups:
            h = hessians[group[0]]
            for name in group:  # the group's matrix is freed once its layers are quantized
                del hessians[name]
            try:
                k = self._k(h.shape[0], opts)
            except ValueError as err:
                raise MethodError(f"qeft: layers {group}: {err}") from err
            _, weak = select_weak_columns(h, k)
            for name in group:
                s, module = layer_settings[name], targets[name]
                weight = linear_weight(module)
                qweight, weak_w, rest = gptq_quantize_with_weak(weight, h, weak, s.bits, s.group_size,
                                                                float(opts["damp"]), int(opts["block_size"]))

                bias = getattr(module, "bias", None)
                layer = QEFTLinear(as_dtype(qweight, weight.dtype), weak_w, rest, weak,
                                   bias if isinstance(bias, Tensor) else None,
                                   trainable=s.rank > 0, dtype=weight.dtype)
                replace_module(model, name, layer)
        return model

    def memory_profile(self, arch: Any, layer_settings: Mapping[str, LayerSettings],
                       settings: MethodSettings | Mapping[str, Any] | None = None) -> MemoryProfile:
        opts = self.check_settings(settings).options
        shapes = layer_shapes(arch, layer_settings)
        dense: dict[str, int] = {}
        params = tensors = frozen = 0
        trained: set[str] = set()
        sizes: list[int] = []
        for name, s in layer_settings.items():
            if s.bits >= 16:
                continue
            out_f, in_f = shapes[name]
            k = self._k(in_f, opts)
            dense[name] = k
            frozen += 8 * in_f  # rest_idx + weak_idx (int64)
            if s.rank > 0:
                params += out_f * k
                tensors += 1
                trained.add(name)
                sizes.append(out_f * k)
        init = InitMemory(layer_factor=QEFT_LAYER_FACTOR, hessians=True,
                          calib_tokens=int(opts["calib_batch_size"]) * self.check_settings(settings).calib_seq_len)
        return MemoryProfile(quantize_base=True, dense_columns=dense, adapter_params=0, trainable_params=params,
                             trainable_tensors=tensors, extra_frozen_bytes=frozen, trainable_sizes=tuple(sizes),
                             grad_layers=frozenset(trained), init=init)  # the memory model counts weak-column inputs


__all__ = ["QEFT", "weak_column_count", "select_weak_columns", "gptq_quantize_with_weak", "QEFTLinear"]
