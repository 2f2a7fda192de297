"""`method="rtn"`: standard asymmetric round-to-nearest with an integer zero point (the default)."""

from __future__ import annotations

import pytest
import torch

from automix.quant import DEFAULT_METHOD, METHODS, QuantLinear, check_method, quantize

BITS = (2, 3, 4, 8)


def gptq_style_reference(w: torch.Tensor, bits: int, gs: int) -> torch.Tensor:
    """Asymmetric RTN as GPTQ's quantizer writes it (range widened to hold 0, zero = round(-min/scale)),
    written independently of the library."""
    out = torch.empty_like(w)
    qmax = 2**bits - 1
    for g0 in range(0, w.shape[1], gs):
        grp = w[:, g0:g0 + gs]
        lo = grp.min(dim=1, keepdim=True).values.clamp(max=0)
        hi = grp.max(dim=1, keepdim=True).values.clamp(min=0)
        scale = (hi - lo) / qmax
        zero = torch.round(-lo / scale)
        q = torch.clamp(torch.round(grp / scale) + zero, 0, qmax)
        out[:, g0:g0 + gs] = (q - zero) * scale
    return out


def student_t(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, cols, generator=gen)
    chi2 = torch.randn(rows, cols, 3, generator=gen).pow(2).sum(-1)
    return z / (chi2 / 3).sqrt() * 0.02


def rel_fro(w: torch.Tensor, method: str, bits: int, gs: int) -> float:
    return float((quantize(w, bits, gs, method=method).dequantize() - w).norm() / w.norm())


def test_default_is_rtn_and_listed():
    assert DEFAULT_METHOD == "rtn" and DEFAULT_METHOD in METHODS
    assert check_method("hqq") == "hqq"
    with pytest.raises(ValueError, match="rtn, minmax, hqq.*'gptq'"):
        check_method("gptq")


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("gs,k", [(32, 96), (64, 128), (48, 100)])
def test_rtn_matches_reference_and_zero_points_are_integers(bits, gs, k):
    w = torch.randn(7, k)
    qw = quantize(w, bits, gs, method="rtn", meta_dtype=torch.float32)
    torch.testing.assert_close(qw.dequantize(), gptq_style_reference(w, bits, gs), rtol=0, atol=1e-5)
    assert torch.equal(qw.zeros, qw.zeros.round())
    assert float(qw.zeros.min()) >= 0 and float(qw.zeros.max()) <= 2**bits - 1


@pytest.mark.parametrize("bits", BITS)
def test_zero_is_exactly_representable(bits):
    w = torch.randn(5, 128)
    w[:, ::7] = 0.0
    qw = quantize(w, bits, 64, method="rtn")  # fp16 metadata: integer zeros are exact in fp16
    assert bool((qw.dequantize()[:, ::7] == 0).all())


@pytest.mark.parametrize("bits,gs,margin", [(2, 64, 1.2), (2, 128, 1.2), (3, 64, 1.03), (3, 128, 1.03)])
def test_rtn_beats_minmax_on_heavy_tailed_weights(bits, gs, margin):
    w = student_t(64, 1024)
    assert rel_fro(w, "minmax", bits, gs) > margin * rel_fro(w, "rtn", bits, gs)


def test_rtn_output_runs_through_quantlinear_and_the_kernel_path():
    lin = torch.nn.Linear(96, 20)
    ql = QuantLinear.from_linear(lin, 3, 32)  # default quantizer
    ref = torch.nn.functional.linear
    x = torch.randn(4, 96)
    torch.testing.assert_close(ql(x), ref(x, ql.dequantize(torch.float32), lin.bias), rtol=1e-4, atol=1e-5)
    assert torch.equal(ql.zeros, ql.zeros.round())


def test_rtn_options_are_rejected_clearly():
    with pytest.raises(ValueError, match="takes no extra options"):
        quantize(torch.randn(4, 64), 4, 32, method="rtn", iters=3)
    with pytest.raises(ValueError, match="round_zero"):
        quantize(torch.randn(4, 64), 4, 32, method="rtn", round_zero=True)
