"""`quant_matmul`: pick the Triton kernel (CUDA or interpreter) or the torch path, with autograd.

``backend="auto"`` runs Triton on CUDA tensors and the torch reference (dequantize + one matmul)
on CPU. ``backend="triton"`` on CPU runs the kernels under the Triton interpreter — only possible
when ``TRITON_INTERPRET=1`` was set before ``automix.kernels`` was imported (the tests do this).
The weight is frozen: backward returns the input gradient ``grad @ dequant(W)`` (torch),
re-dequantizing instead of keeping a dense weight alive between forward and backward.
"""

from __future__ import annotations

import torch

from automix.kernels import dequant_matmul as qk
from automix.kernels.reference import dequantize_reference, quant_matmul_reference

BACKENDS = ("auto", "torch", "triton")
ACT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
GEMV_MAX_M = 4      # rows handled by the elementwise GEMV kernel
SPLITK_MAX_M = 64   # rows handled by the split-K GEMM configurations


def _m_bucket(m: int) -> int:
    """Autotune key for M: the next power of two (bounded), so varying batch shapes share tunings."""
    return min(1 << max(0, (m - 1).bit_length()), 8192)


def _launch(x2: torch.Tensor, qw, bias: torch.Tensor | None) -> torch.Tensor:
    """Run the Triton kernel on a contiguous (M, K) input; returns (M, N) in x's dtype."""
    m, k = x2.shape
    n = qw.shape[0]
    packed, scales, zeros = qw.packed, qw.scales, qw.zeros
    if not (packed.is_contiguous() and scales.is_contiguous() and zeros.is_contiguous()):
        packed, scales, zeros = packed.contiguous(), scales.contiguous(), zeros.contiguous()
    interp = not x2.is_cuda
    has_bias = bias is not None
    bias_arg = bias.contiguous() if has_bias else scales  # dummy pointer when no bias
    common = dict(BITS=qw.bits, GS=qw.group_size, HAS_BIAS=has_bias)
    args_tail = (m, n, k, x2.stride(0), n, packed.stride(0), scales.stride(0), _m_bucket(m))

    if m <= SPLITK_MAX_M:
        out = torch.zeros(m, n, device=x2.device, dtype=torch.float32)  # split-K accumulates
        if m <= GEMV_MAX_M:
            if interp:
                meta = qk.INTERPRET_GEMV
                grid = (triton_cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"], m)
                qk._qgemv_kernel[grid](x2, packed, scales, zeros, bias_arg, out, *args_tail, **common, **meta)
            else:
                def grid(meta):
                    return (triton_cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"], m)
                qk.gemv_tuned[grid](x2, packed, scales, zeros, bias_arg, out, *args_tail, **common)
        else:
            _gemm(qk.INTERPRET_SPLITK_GEMM if interp else None, qk.splitk_gemm_tuned, x2, packed,
                  scales, zeros, bias_arg, out, args_tail, common, interp)
        return out.to(x2.dtype)
    out = torch.empty(m, n, device=x2.device, dtype=x2.dtype)
    _gemm(qk.INTERPRET_GEMM if interp else None, qk.gemm_tuned, x2, packed, scales, zeros,
          bias_arg, out, args_tail, common, interp)
    return out


def _launch_on_device(x2: torch.Tensor, qw, bias: torch.Tensor | None) -> torch.Tensor:
    """Triton launches on the *current* CUDA device: make it x's device (multi-GPU workers)."""
    if x2.is_cuda:
        with torch.cuda.device(x2.device):
            return _launch(x2, qw, bias)
    return _launch(x2, qw, bias)


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def _gemm(fixed, tuned, x2, packed, scales, zeros, bias_arg, out, args_tail, common, interp):
    m, n = x2.shape[0], out.shape[1]

    def grid(meta):
        return (triton_cdiv(m, meta["BLOCK_M"]) * triton_cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"])

    dot_fp32 = interp or x2.dtype == torch.float32
    if interp:
        qk._qgemm_kernel[grid(fixed)](x2, packed, scales, zeros, bias_arg, out, *args_tail,
                                      DOT_FP32=dot_fp32, **common, **fixed)
    else:
        tuned[grid](x2, packed, scales, zeros, bias_arg, out, *args_tail, DOT_FP32=dot_fp32, **common)


class _QuantMatmul(torch.autograd.Function):
    """Forward through the chosen path; backward re-dequantizes the weight for the input grad,
    so no dense copy of the weight stays alive between forward and backward (on CPU a plain
    dequantize + matmul would save the dense weight for backward and erase the memory saving)."""

    @staticmethod
    def forward(ctx, x2, bias, qw, use_triton):  # type: ignore[override]
        ctx.qw = qw
        ctx.bias_grad = bias is not None and bias.requires_grad
        return _launch_on_device(x2, qw, bias) if use_triton else quant_matmul_reference(x2, qw, bias)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        grad_x = None
        if ctx.needs_input_grad[0]:
            w_kn = dequantize_reference(ctx.qw, grad.dtype)
            grad_x = grad.matmul(w_kn.t())
        grad_b = grad.sum(0) if ctx.bias_grad else None
        return grad_x, grad_b, None, None


def _check(x: torch.Tensor, qw, bias: torch.Tensor | None, backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    for attr in ("packed", "scales", "zeros", "bits", "group_size", "shape"):
        if not hasattr(qw, attr):
            raise ValueError(f"qweight: expected a QuantizedWeight (missing .{attr}), got {type(qw).__name__}")
    if not isinstance(x, torch.Tensor) or x.dtype not in ACT_DTYPES:
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x: expected a float16/bfloat16/float32 tensor, got {got}")
    n, k = qw.shape
    if x.dim() == 0 or x.shape[-1] != k:
        raise ValueError(f"x: expected last dimension in_features={k}, got shape {tuple(x.shape)}")
    if x.device != qw.packed.device:
        raise ValueError(f"x is on {x.device} but the quantized weight is on {qw.packed.device}")
    if bias is not None and (bias.shape != (n,) or bias.device != x.device):
        raise ValueError(f"bias: expected shape ({n},) on {x.device}, got {tuple(bias.shape)} on {bias.device}")


def quant_matmul(x: torch.Tensor, qweight, bias: torch.Tensor | None = None,
                 backend: str = "auto") -> torch.Tensor:
    """``x @ qweight.dequantize().T + bias`` for ``x`` of shape (..., in_features).

    Output has x's dtype and shape (..., out_features); differentiable in ``x``.
    """
    _check(x, qweight, bias, backend)
    use_triton = backend == "triton" or (backend == "auto" and x.is_cuda)
    if use_triton and not x.is_cuda and not qk.INTERPRET:
        raise ValueError(
            "backend='triton' on a CPU tensor needs the Triton interpreter: set TRITON_INTERPRET=1 "
            "before importing automix.kernels (or use backend='torch' / a CUDA tensor)"
        )
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[0] == 0:
        use_triton = False
    if use_triton and x2.stride(-1) != 1:
        x2 = x2.contiguous()
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad))
    if needs_grad:
        y = _QuantMatmul.apply(x2, bias, qweight, use_triton)
    elif use_triton:
        y = _launch_on_device(x2, qweight, bias)
    else:
        y = quant_matmul_reference(x2, qweight, bias)
    return y.reshape(*lead, qweight.shape[0])
