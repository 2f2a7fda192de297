"""automix.quant: packing, quantizers, QuantizedWeight and QuantLinear."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from automix.quant import (
    QuantizedWeight,
    QuantLinear,
    clip_logits_init,
    fake_quantize,
    pack,
    packed_words,
    quantize,
    unpack,
)

BITS = (2, 3, 4, 8)


# ----------------------------------------------------------------------------- packing
@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from(BITS), k=st.integers(1, 130), n=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_pack_roundtrip_exact(bits: int, k: int, n: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 2**bits, (k, n), generator=gen)
    packed = pack(q, bits)
    assert packed.dtype == torch.int32
    assert packed.shape == (packed_words(k, bits), n)
    assert torch.equal(unpack(packed, bits, k).long(), q)


def test_three_bit_uses_three_words_per_32_values() -> None:
    q = torch.arange(32).remainder(8).view(32, 1)
    packed = pack(q, 3)
    assert packed.shape == (3, 1)
    # code 10 straddles words 0/1 (bits 30..32): value 2 = 0b010 -> bit 31 of word 0 set
    bitstream = sum((int(packed[w, 0]) & 0xFFFFFFFF) << (32 * w) for w in range(3))
    for i in range(32):
        assert (bitstream >> (3 * i)) & 7 == i % 8


@pytest.mark.parametrize("bits", BITS)
def test_pack_rejects_out_of_range_codes(bits: int) -> None:
    with pytest.raises(ValueError, match="codes must lie"):
        pack(torch.full((4, 2), 2**bits), bits)


# ----------------------------------------------------------------------------- quantizers
def rtn_reference(w: torch.Tensor, bits: int, gs: int) -> torch.Tensor:
    """Plain asymmetric round-to-nearest per group, written independently of the library."""
    out = torch.empty_like(w)
    qmax = 2**bits - 1
    for g0 in range(0, w.shape[1], gs):
        grp = w[:, g0:g0 + gs]
        lo = grp.min(dim=1, keepdim=True).values
        hi = grp.max(dim=1, keepdim=True).values
        scale = (hi - lo) / qmax
        zero = -lo / scale
        q = torch.clamp(torch.round(grp / scale + zero), 0, qmax)
        out[:, g0:g0 + gs] = (q - zero) * scale
    return out


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("gs,k", [(32, 96), (64, 128), (48, 100)])
def test_minmax_equals_round_to_nearest(bits: int, gs: int, k: int) -> None:
    w = torch.randn(7, k)
    qw = quantize(w, bits, gs, method="minmax", meta_dtype=torch.float32)
    torch.testing.assert_close(qw.dequantize(), rtn_reference(w, bits, gs), rtol=0, atol=1e-6)


def test_minmax_error_bounded_by_half_step() -> None:
    w = torch.randn(16, 256)
    qw = quantize(w, 4, 64, method="minmax")
    err = (qw.dequantize() - w).abs().view(16, 4, 64)
    step = qw.scales.t().float().unsqueeze(-1)
    assert bool((err <= step * 0.5 + 1e-3).all())


def test_constant_group_is_exact() -> None:
    w = torch.randn(3, 64)
    w[:, :32] = 0.37
    w[1, :32] = 0.0
    qw = quantize(w, 2, 32)
    torch.testing.assert_close(qw.dequantize()[:, :32], w[:, :32], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("bits", BITS)
def test_hqq_no_worse_than_minmax_on_heavy_tails(bits: int) -> None:
    w = torch.distributions.StudentT(3.0).sample((32, 256))
    e_rtn = (quantize(w, bits, 64, method="minmax").dequantize() - w).pow(2).mean()
    e_hqq = (quantize(w, bits, 64, method="hqq").dequantize() - w).pow(2).mean()
    assert e_hqq <= e_rtn * 1.001
    if bits <= 3:
        assert e_hqq < 0.8 * e_rtn  # clipping the tails must pay off at low bits


@pytest.mark.parametrize("grid", ["rtn", "minmax"])
def test_fake_quantize_matches_baked_weight_and_has_gradients(grid: str) -> None:
    w = torch.randn(12, 96, requires_grad=True)
    gamma = (clip_logits_init(w.shape, 32) + 0.5 * torch.randn(12, 3)).requires_grad_()
    beta = (clip_logits_init(w.shape, 32) - 3.0 * torch.rand(12, 3)).requires_grad_()
    fq = fake_quantize(w, 3, 32, gamma, beta, grid=grid, meta_dtype=torch.float32)
    baked = quantize(w.detach(), 3, 32, method=grid, clip_max_logit=gamma.detach(),
                     clip_min_logit=beta.detach(), meta_dtype=torch.float32)
    torch.testing.assert_close(fq.detach(), baked.dequantize(), rtol=0, atol=1e-5)
    (fq - w.detach() * 1.1).pow(2).sum().backward()
    assert w.grad is not None and gamma.grad is not None and beta.grad is not None
    assert gamma.grad.abs().sum() > 0 and beta.grad.abs().sum() > 0
    # STE: the gradient w.r.t. the weight passes through round() unchanged inside the grid
    assert w.grad.abs().sum() > 0


@pytest.mark.parametrize("grid", ["rtn", "minmax"])
def test_clipping_shrinks_the_grid(grid: str) -> None:
    w = torch.randn(4, 64)
    strong = torch.full((4, 1), -2.0)  # sigmoid(-2) = 0.12: range shrinks to 12%
    fq = fake_quantize(w, 4, 64, strong, strong, grid=grid)
    # rtn's integer zero point shifts the clipped grid by up to half a step
    slack = 1e-3 + (0.5 * 0.12 * (w.max() - w.min()) / 15 if grid == "rtn" else 0.0)
    assert fq.max() <= 0.12 * w.max() + slack
    assert fq.min() >= 0.12 * w.min() - slack


# ----------------------------------------------------------------------------- QuantizedWeight
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("n,k,gs", [(17, 96, 32), (8, 100, 64), (5, 256, 128)])
def test_nbytes_exact(bits: int, n: int, k: int, gs: int) -> None:
    qw = quantize(torch.randn(n, k), bits, gs)
    groups = -(-k // gs)
    words = -(-k // 32) * bits
    assert qw.nbytes == n * words * 4 + 2 * (n * groups * 2)
    assert qw.nbytes == sum(t.numel() * t.element_size() for t in (qw.packed, qw.scales, qw.zeros))


def test_save_load_roundtrip(tmp_path) -> None:
    w = torch.randn(9, 70).to(torch.bfloat16)
    qw = quantize(w, 3, 32, method="hqq")
    qw.save(tmp_path / "w.safetensors")
    back = QuantizedWeight.load(tmp_path / "w.safetensors")
    assert (back.bits, back.group_size, back.shape, back.dtype) == (3, 32, (9, 70), torch.bfloat16)
    assert torch.equal(back.dequantize(), qw.dequantize())
    assert back.dequantize().dtype == torch.bfloat16


def test_load_rejects_bad_files(tmp_path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "bad.safetensors"
    save_file({"packed": torch.zeros(3, 2, dtype=torch.int32)}, str(path), metadata={"format": "other"})
    with pytest.raises(ValueError, match="format"):
        QuantizedWeight.load(path)
    with pytest.raises(ValueError, match="no such"):
        QuantizedWeight.load(tmp_path / "missing.safetensors")


def test_to_device_keeps_values() -> None:
    qw = quantize(torch.randn(4, 64), 4, 32)
    moved = qw.to("cpu")
    assert moved.device.type == "cpu" and torch.equal(moved.packed, qw.packed)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(bits=5), "bits must be one of"),
        (dict(bits=16), "bits must be one of"),
        (dict(group_size=0), "group_size must be a positive int"),
        (dict(method="gptq"), "method must be one of"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    args = dict(bits=4, group_size=32, method="minmax") | kwargs
    with pytest.raises(ValueError, match=match):
        quantize(torch.randn(4, 64), **args)


def test_bad_weights() -> None:
    w = torch.randn(4, 64)
    w[1, 3] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        quantize(w, 4, 32)
    w[1, 3] = float("inf")
    with pytest.raises(ValueError, match="finite"):
        quantize(w, 4, 32)
    with pytest.raises(ValueError, match="floating dtype"):
        quantize(torch.randint(0, 5, (4, 64)), 4, 32)
    with pytest.raises(ValueError, match="2-D"):
        quantize(torch.randn(64), 4, 32)
    with pytest.raises(ValueError, match="clip_max_logit"):
        quantize(torch.randn(4, 64), 4, 32, clip_max_logit=torch.zeros(4, 3))


def test_group_size_not_dividing_k_uses_short_last_group() -> None:
    w = torch.randn(6, 100)
    qw = quantize(w, 8, 64)
    assert qw.num_groups == 2
    torch.testing.assert_close(qw.dequantize(), w, rtol=0, atol=0.02)


# ----------------------------------------------------------------------------- QuantLinear
@pytest.mark.parametrize("bits,gs", [(2, 32), (3, 64), (4, 128), (8, 64)])
def test_quantlinear_forward_and_input_grad_match_dequantized_linear(bits: int, gs: int) -> None:
    lin = nn.Linear(136, 23)
    ql = QuantLinear.from_linear(lin, bits, gs)
    ref = nn.Linear(136, 23)
    with torch.no_grad():
        ref.weight.copy_(ql.dequantize(torch.float32))
        ref.bias.copy_(lin.bias)
    x = torch.randn(2, 5, 136, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = ql(x), ref(x_ref)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    assert not any(p.requires_grad for p in ql.parameters())
    assert f"bits={bits}" in repr(ql) and f"group_size={gs}" in repr(ql)


def test_quantlinear_state_dict_and_dtype_moves() -> None:
    ql = QuantLinear.from_linear(nn.Linear(64, 10, bias=False), 4, 32)
    scales = ql.scales.clone()
    sd = ql.state_dict()
    assert set(sd) == {"packed", "scales", "zeros"}
    fresh = QuantLinear(64, 10, 4, 32, bias=False)
    fresh.load_state_dict(sd)
    x = torch.randn(3, 64)
    torch.testing.assert_close(fresh(x), ql(x))
    ql.to(torch.bfloat16)  # must not re-round the fp16 scales
    assert ql.scales.dtype == torch.float16 and torch.equal(ql.scales, scales)
    assert ql(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_quantlinear_from_gpt2_conv1d() -> None:
    from transformers.pytorch_utils import Conv1D

    conv = Conv1D(nf=24, nx=64)  # weight stored (in, out)
    nn.init.normal_(conv.weight)
    nn.init.normal_(conv.bias)
    ql = QuantLinear.from_linear(conv, 8, 32)
    assert (ql.in_features, ql.out_features) == (64, 24)
    x = torch.randn(4, 64)
    torch.testing.assert_close(ql.dequantize(torch.float32), conv.weight.t(), rtol=0, atol=0.05)
    torch.testing.assert_close(ql(x), x @ ql.dequantize(torch.float32).t() + conv.bias, rtol=1e-4, atol=1e-4)


def test_quantlinear_error_names_module() -> None:
    with pytest.raises(ValueError, match="Linear.*bits must be one of"):
        QuantLinear.from_linear(nn.Linear(64, 8), 5, 32)
