"""Triton dequantize-matmul ``y = x @ dequant(W).T + b`` for 2/3/4/8-bit packed weights.

Weights use the layout of :mod:`automix.kernels.packing`: codes packed along K as a bitstream,
``packed[word, n]`` int32, per-group ``scales[g, n]`` / ``zeros[g, n]``. Each kernel loads, for
a tile of (k, n), the word holding code k (``(k * BITS) >> 5``), shifts and masks it (3-bit codes
that straddle two words also read the next word). When the K tile lies inside one group (group
size a multiple of BLOCK_K) the group's scale and zero are applied once to the tile's partial
result; otherwise each element is dequantized ``(q - zero) * scale`` in fp32.

Two kernels:

* ``_qgemv_kernel`` (small M): one program per (N tile, K split, row); elementwise multiply and
  reduce over K, split-K partial sums combined with fp32 atomics. Memory-bound by design.
* ``_qgemm_kernel`` (larger M): tiled ``tl.dot`` GEMM (Triton-tutorial structure with grouped
  program ordering); optional split-K for moderate M.

On CUDA the launch parameters come from ``@triton.autotune`` (keyed on a bucket of M, N, K,
bits and group size; the activation dtype is part of Triton's key). Under the interpreter
(``TRITON_INTERPRET=1``) the raw kernels run with fixed parameters; bf16 has no arithmetic there,
so every tile is computed in fp32 (``DOT_FP32``).
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _load_codes(packed_ptr, offs_k, offs_n, K, N, stride_w, BITS: tl.constexpr):
    """Integer codes of the tile offs_k x offs_n as fp32 (exact); 0 outside the matrix."""
    mask = (offs_k < K)[:, None] & (offs_n < N)[None, :]
    bit = offs_k * BITS
    word = bit >> 5
    shift = (bit & 31)[:, None].to(tl.uint32)
    ptrs = packed_ptr + word[:, None] * stride_w + offs_n[None, :]
    lo = tl.load(ptrs, mask=mask, other=0).to(tl.uint32, bitcast=True)
    q = lo >> shift
    if BITS == 3:  # a code at bit 30 or 31 of a word continues in the next word
        straddle = mask & (shift > 29)
        hi = tl.load(ptrs + stride_w, mask=straddle, other=0).to(tl.uint32, bitcast=True)
        q = q | (hi << ((32 - shift) & 31))
    return (q & ((1 << BITS) - 1)).to(tl.float32)


@triton.jit
def _load_group_row(scales_ptr, zeros_ptr, offs_n, N, K, stride_g, k0, GS: tl.constexpr):
    """Scale and zero (BLOCK_N,) of the group holding k0 (0 past K: a split-K slab may overrun)."""
    row_mask = (offs_n < N) & (offs_n * 0 + k0 < K)
    g = k0 // GS
    s = tl.load(scales_ptr + g * stride_g + offs_n, mask=row_mask, other=0).to(tl.float32)
    z = tl.load(zeros_ptr + g * stride_g + offs_n, mask=row_mask, other=0).to(tl.float32)
    return s, z


@triton.jit
def _load_dequant(packed_ptr, scales_ptr, zeros_ptr, offs_k, offs_n, K, N, stride_w, stride_g,
                  BITS: tl.constexpr, GS: tl.constexpr):
    """Dequantized fp32 tile (q - zero) * scale with per-element groups (any group size)."""
    q = _load_codes(packed_ptr, offs_k, offs_n, K, N, stride_w, BITS)
    mask = (offs_k < K)[:, None] & (offs_n < N)[None, :]
    gp = (offs_k // GS)[:, None] * stride_g + offs_n[None, :]
    s = tl.load(scales_ptr + gp, mask=mask, other=0).to(tl.float32)
    z = tl.load(zeros_ptr + gp, mask=mask, other=0).to(tl.float32)
    return (q - z) * s


@triton.jit
def _qgemv_kernel(x_ptr, packed_ptr, scales_ptr, zeros_ptr, bias_ptr, out_ptr,
                  M, N, K, stride_xm, stride_om, stride_w, stride_g, m_bucket,
                  BITS: tl.constexpr, GS: tl.constexpr, HAS_BIAS: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    """out[m, n] (+)= sum_k x[m, k] * w[k, n] over this program's K slab; out is fp32 if SPLIT_K > 1.

    When a K tile lies inside one group the scale is factored out of the reduction:
    sum_k x_k (q_k - z) s = s * (sum_k x_k q_k - z * sum_k x_k), two flops per weight.
    """
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    m = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_span = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K) * BLOCK_K
    k_start = pid_k * k_span
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(k_start, k_start + k_span, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        xv = tl.load(x_ptr + m * stride_xm + offs_k, mask=offs_k < K, other=0).to(tl.float32)
        if GS % BLOCK_K == 0:
            q = _load_codes(packed_ptr, offs_k, offs_n, K, N, stride_w, BITS)
            s, z = _load_group_row(scales_ptr, zeros_ptr, offs_n, N, K, stride_g, k0, GS)
            acc += s * (tl.sum(xv[:, None] * q, axis=0) - z * tl.sum(xv, axis=0))
        else:
            w = _load_dequant(packed_ptr, scales_ptr, zeros_ptr, offs_k, offs_n, K, N, stride_w,
                              stride_g, BITS, GS)
            acc += tl.sum(xv[:, None] * w, axis=0)
    if HAS_BIAS:
        b = tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0).to(tl.float32)
        acc += tl.where(pid_k == 0, b, 0.0)
    out_ptrs = out_ptr + m * stride_om + offs_n
    if SPLIT_K == 1:
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=offs_n < N)
    else:
        tl.atomic_add(out_ptrs, acc, mask=offs_n < N)


@triton.jit
def _qgemm_kernel(x_ptr, packed_ptr, scales_ptr, zeros_ptr, bias_ptr, out_ptr,
                  M, N, K, stride_xm, stride_om, stride_w, stride_g, m_bucket,
                  BITS: tl.constexpr, GS: tl.constexpr, HAS_BIAS: tl.constexpr,
                  DOT_FP32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, SPLIT_K: tl.constexpr):
    """Tiled out = x @ dequant(W) (+ bias); split-K partials go to an fp32 out with atomics.

    When a K tile lies inside one group the codes go to the tensor cores as they are (small
    integers are exact in fp16/bf16) and the group's scale/zero are applied to the tile result:
    x @ ((q - z) s) = (x @ q - rowsum(x) z) s.
    """
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    # grouped ordering: GROUP_M row-tiles share each weight column-tile while it is in L2
    group = pid // (GROUP_M * num_n)
    first_m = group * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * num_n)) % size_m
    pid_n = (pid % (GROUP_M * num_n)) // size_m
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_span = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K) * BLOCK_K
    k_start = pid_k * k_span
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_start, k_start + k_span, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        a_mask = (offs_m[:, None] < M) & (offs_k[None, :] < K)
        a = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=a_mask, other=0)
        if DOT_FP32:
            a = a.to(tl.float32)
        if GS % BLOCK_K == 0:
            q = _load_codes(packed_ptr, offs_k, offs_n, K, N, stride_w, BITS)
            s, z = _load_group_row(scales_ptr, zeros_ptr, offs_n, N, K, stride_g, k0, GS)
            if DOT_FP32:
                part = tl.dot(a, q, input_precision="ieee")
            else:
                part = tl.dot(a, q.to(a.dtype))
            row = tl.sum(a.to(tl.float32), axis=1)
            acc += (part - row[:, None] * z[None, :]) * s[None, :]
        else:
            w = _load_dequant(packed_ptr, scales_ptr, zeros_ptr, offs_k, offs_n, K, N, stride_w,
                              stride_g, BITS, GS)
            if DOT_FP32:
                acc += tl.dot(a, w, input_precision="ieee")
            else:
                acc += tl.dot(a, w.to(a.dtype))
    if HAS_BIAS:
        b = tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0).to(tl.float32)
        acc += tl.where(pid_k == 0, b, 0.0)[None, :]
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    out_mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if SPLIT_K == 1:
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        tl.atomic_add(out_ptrs, acc, mask=out_mask)


# ------------------------------------------------------------------------- CUDA autotuning
_KEY = ["m_bucket", "N", "K", "BITS", "GS"]


def _cfg(num_warps: int, num_stages: int = 3, **meta: int) -> "triton.Config":
    return triton.Config(meta, num_warps=num_warps, num_stages=num_stages)


GEMV_CONFIGS = [
    _cfg(w, s, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk)
    for bn, bk, w in ((64, 128, 4), (128, 64, 4), (128, 128, 8), (256, 64, 8), (256, 32, 4))
    for sk in (1, 4, 8)
    for s in (2,)
]
SPLITK_GEMM_CONFIGS = [
    _cfg(w, s, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, SPLIT_K=sk)
    for bm, bn, bk, w, s in ((16, 64, 128, 4, 4), (16, 128, 64, 4, 4), (32, 128, 64, 4, 4),
                             (64, 128, 32, 4, 4), (16, 256, 64, 8, 3))
    for sk in (1, 2, 4)
]
GEMM_CONFIGS = [
    _cfg(w, s, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, SPLIT_K=1)
    for bm, bn, bk, w, s in ((128, 128, 32, 4, 4), (128, 256, 32, 8, 3), (256, 128, 32, 8, 3),
                             (128, 128, 64, 8, 3), (64, 256, 32, 4, 4), (128, 64, 64, 4, 4),
                             (64, 128, 64, 4, 4))
]

if not INTERPRET:
    gemv_tuned = triton.autotune(GEMV_CONFIGS, key=_KEY, reset_to_zero=["out_ptr"])(_qgemv_kernel)
    splitk_gemm_tuned = triton.autotune(SPLITK_GEMM_CONFIGS, key=_KEY, reset_to_zero=["out_ptr"])(_qgemm_kernel)
    gemm_tuned = triton.autotune(GEMM_CONFIGS, key=_KEY)(_qgemm_kernel)
else:  # autotuning needs a GPU to time configurations; the dispatcher uses fixed parameters
    gemv_tuned = splitk_gemm_tuned = gemm_tuned = None

# fixed parameters under the interpreter: small tiles (cheap to interpret), split-K exercised
INTERPRET_GEMV = dict(BLOCK_N=32, BLOCK_K=32, SPLIT_K=2)
INTERPRET_SPLITK_GEMM = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, GROUP_M=2, SPLIT_K=2)
INTERPRET_GEMM = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, GROUP_M=2, SPLIT_K=1)
