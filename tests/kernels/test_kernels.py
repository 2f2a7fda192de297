"""automix.kernels: Triton kernels under the interpreter vs the torch reference."""

from __future__ import annotations

import random

import pytest
import torch

from automix.kernels import dispatch, quant_matmul, quant_matmul_reference
from automix.kernels import dequant_matmul as qk
from automix.quant import quantize

pytestmark = pytest.mark.skipif(not qk.INTERPRET, reason="needs TRITON_INTERPRET=1 before import")

# one M per kernel path: GEMV (M <= 4), split-K GEMM (M <= 64), tiled GEMM (M > 64)
M_PATHS = (1, 3, 19, 67)
TOL = {torch.float32: 1e-3, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref).norm() / ref.norm())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gs", [32, 64, 128])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_triton_matches_reference(bits: int, gs: int, dtype: torch.dtype) -> None:
    rng = random.Random(bits * 1000 + gs)
    for m in M_PATHS:
        n = rng.randrange(17, 71, 2)            # odd: never a multiple of the tile
        k = gs * rng.randint(1, 2) + rng.choice([0, 0, 13])  # sometimes a short last group
        w = torch.randn(n, k)
        qw = quantize(w, bits, gs)
        x = torch.randn(m, k).to(dtype)
        bias = torch.randn(n).to(dtype) if m % 2 else None
        y = quant_matmul(x, qw, bias, backend="triton")
        ref = quant_matmul_reference(x.float(), qw, None if bias is None else bias.float())
        assert y.dtype == dtype and y.shape == (m, n)
        assert rel_err(y, ref) < TOL[dtype], (m, n, k)


@pytest.mark.parametrize("gs", [16, 48])
def test_group_spanning_tiles(gs: int) -> None:
    """Group sizes that are not a multiple of the K tile use the per-element scale path."""
    w = torch.randn(33, 5 * gs + 7)
    qw = quantize(w, 3, gs, method="hqq")
    for m in (2, 21, 80):
        x = torch.randn(m, w.shape[1])
        assert rel_err(quant_matmul(x, qw, backend="triton"), quant_matmul_reference(x, qw)) < 1e-3


def test_heavy_tailed_inputs_and_3d_batch() -> None:
    w = torch.distributions.StudentT(2.5).sample((41, 131))
    qw = quantize(w, 4, 64)
    x = torch.distributions.StudentT(2.5).sample((2, 9, 131))
    y = quant_matmul(x, qw, backend="triton")
    assert y.shape == (2, 9, 41)
    assert rel_err(y, quant_matmul_reference(x, qw)) < 1e-3


@pytest.mark.parametrize("m", [1, 30, 70])
def test_triton_input_gradient(m: int) -> None:
    qw = quantize(torch.randn(29, 96), 2, 32)
    bias = torch.randn(29)
    x = torch.randn(m, 96, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y = quant_matmul(x, qw, bias, backend="triton")
    y_ref = quant_matmul_reference(x_ref, qw, bias)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-4)


def test_auto_backend_on_cpu_is_torch_path() -> None:
    qw = quantize(torch.randn(20, 64), 4, 32)
    x = torch.randn(5, 64)
    assert torch.equal(quant_matmul(x, qw), quant_matmul_reference(x, qw))


def test_bad_inputs() -> None:
    qw = quantize(torch.randn(20, 64), 4, 32)
    with pytest.raises(ValueError, match="in_features=64"):
        quant_matmul(torch.randn(3, 63), qw)
    with pytest.raises(ValueError, match="float16/bfloat16/float32"):
        quant_matmul(torch.randint(0, 3, (3, 64)), qw)
    with pytest.raises(ValueError, match="backend must be one of"):
        quant_matmul(torch.randn(3, 64), qw, backend="cuda")
    with pytest.raises(ValueError, match="bias"):
        quant_matmul(torch.randn(3, 64), qw, torch.randn(19))
    with pytest.raises(ValueError, match="QuantizedWeight"):
        quant_matmul(torch.randn(3, 64), torch.randn(20, 64))


def test_m_bucket_is_power_of_two() -> None:
    assert [dispatch._m_bucket(m) for m in (1, 2, 3, 16, 17, 4096, 100000)] == [1, 2, 4, 16, 32, 4096, 8192]


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_backward_keeps_no_dense_weight(backend: str) -> None:
    """Training through a frozen quantized layer must not hold a dense copy of its weight."""
    qw = quantize(torch.randn(48, 256), 4, 64)
    saved: list[int] = []

    def pack_hook(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel())
        return t

    x = torch.randn(3, 256, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack_hook, lambda t: t):
        y = quant_matmul(x, qw, backend=backend)
    assert all(n < 48 * 256 for n in saved)
    y.sum().backward()
    torch.testing.assert_close(x.grad, qw.dequantize().sum(0).expand(3, -1), rtol=1e-4, atol=1e-4)
