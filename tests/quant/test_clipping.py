"""Learnable clipping (OmniQuant / ApiQ) on both grids: `fake_quantize` is `quantize`'s exact twin."""

from __future__ import annotations

import pytest
import torch

from automix.quant import CLIP_LOGIT_INIT, clip_logits_init, fake_quantize, num_groups, quantize
from automix.quant.grid import clipped_grid, grouped

BITS = (2, 3, 4, 8)
SHAPES = [(7, 97, 32), (5, 131, 64), (3, 33, 16), (9, 300, 128)]  # odd sizes, short last groups


def random_logits(n: int, k: int, gs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Trained-looking clipping logits around the init (both ends, some strongly clipped)."""
    gen = torch.Generator().manual_seed(seed)
    g = num_groups(k, gs)
    gamma = clip_logits_init((n, k), gs) + torch.randn(n, g, generator=gen)
    beta = clip_logits_init((n, k), gs) - 4.0 * torch.rand(n, g, generator=gen)
    return gamma, beta


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("n,k,gs", SHAPES)
def test_rtn_bake_equals_fake_quantized_forward_exactly(bits: int, n: int, k: int, gs: int) -> None:
    w = torch.distributions.StudentT(3.0).sample((n, k)) * 0.02
    gamma, beta = random_logits(n, k, gs, seed=bits * 1000 + k)
    fq = fake_quantize(w, bits, gs, gamma, beta, grid="rtn")
    qw = quantize(w, bits, gs, method="rtn", clip_max_logit=gamma, clip_min_logit=beta)
    assert torch.equal(fq, qw.dequantize(torch.float32))
    assert torch.equal(qw.zeros, qw.zeros.round())  # the integer-zero-point (rtn) grid


@pytest.mark.parametrize("bits", (2, 3, 4))
@pytest.mark.parametrize("n,k,gs", SHAPES[:2])
def test_minmax_bake_matches_fake_quantized_forward(bits: int, n: int, k: int, gs: int) -> None:
    w = torch.randn(n, k)
    gamma, beta = random_logits(n, k, gs, seed=bits)
    fq = fake_quantize(w, bits, gs, gamma, beta, grid="minmax")
    qw = quantize(w, bits, gs, method="minmax", clip_max_logit=gamma, clip_min_logit=beta)
    torch.testing.assert_close(fq, qw.dequantize(torch.float32), rtol=0, atol=1e-6)


@pytest.mark.parametrize("bits", BITS)
def test_unclipped_limit_is_plain_rtn_and_init_clips_by_sigmoid_4(bits: int) -> None:
    w = torch.randn(6, 130)
    # logits so large that sigmoid == 1 in fp32: plain round-to-nearest, exactly
    wide = torch.full((6, num_groups(130, 64)), 40.0)
    assert torch.equal(fake_quantize(w, bits, 64, wide, wide), quantize(w, bits, 64, method="rtn").dequantize())
    # ApiQ's init (4.0) shrinks both ends to sigmoid(4) = 0.982 of the group's max / min
    init = clip_logits_init(w.shape, 64)
    scale, zero = clipped_grid(grouped(w, 64), bits, "rtn", init, init)
    plain_scale, _ = clipped_grid(grouped(w, 64), bits, "rtn")
    ratio = float(torch.sigmoid(torch.tensor(CLIP_LOGIT_INIT)))
    torch.testing.assert_close(scale, ratio * plain_scale)
    assert torch.equal(zero, zero.round())


def test_rtn_clipping_gradients_reach_both_logits_and_the_weight() -> None:
    w = torch.randn(8, 96, requires_grad=True)
    gamma, beta = (t.requires_grad_() for t in random_logits(8, 96, 32, seed=1))
    (fake_quantize(w, 3, 32, gamma, beta) - 1.1 * w.detach()).pow(2).sum().backward()
    for t in (w, gamma, beta):
        assert t.grad is not None and float(t.grad.abs().sum()) > 0


def test_bad_grid_and_round_zero_on_rtn_are_rejected() -> None:
    w = torch.randn(4, 64)
    with pytest.raises(ValueError, match="clipping grid must be one of rtn, minmax"):
        fake_quantize(w, 4, 32, grid="hqq")
    with pytest.raises(ValueError, match="round_zero"):
        fake_quantize(w, 4, 32, round_zero=True)
    with pytest.raises(ValueError, match="meta_dtype"):
        fake_quantize(w, 4, 32, meta_dtype=torch.int8)
