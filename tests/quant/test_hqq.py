"""method="hqq" against the HQQ library (installed as a reference) on heavy-tailed weights."""

from __future__ import annotations

import pytest
import torch

from automix.quant import quantize
from automix.bench.quant import errors, hqq_library, weights

pytest.importorskip("hqq")


@pytest.mark.parametrize("bits,gs", [(2, 64), (3, 64), (4, 64), (4, 128), (8, 128)])
def test_hqq_no_worse_than_hqq_library_on_student_t(bits: int, gs: int) -> None:
    w = weights("student-t(3)", 128, 512, seed=bits)
    ours, _ = errors(w, quantize(w, bits, gs, method="hqq").dequantize())
    lib, _ = errors(w, hqq_library(w, bits, gs))
    rtn, _ = errors(w, quantize(w, bits, gs).dequantize())
    assert ours <= lib * 1.01, (ours, lib)
    assert ours <= rtn


def test_hqq_options_are_validated() -> None:
    with pytest.raises(ValueError, match="lp_norm"):
        quantize(torch.randn(4, 64), 4, 32, method="hqq", lp_norm=2.0)
    with pytest.raises(ValueError, match="minmax' takes no extra options"):
        quantize(torch.randn(4, 64), 4, 32, method="minmax", iters=3)
