"""A quantizer is one grid function plus one line in ``automix.config.registry.QUANTIZERS``."""

import pytest
import torch

from automix.config import registry
from automix.quant import quantize


def halving_grid(wg, bits, *, clip_max_logit=None, clip_min_logit=None, round_zero=False, k=None, shrink=0.5):
    """A made-up quantizer: the min/max grid of each group shrunk towards its centre by ``shrink``."""
    x_max, x_min = wg.amax(-1), wg.amin(-1)
    mid, half = (x_max + x_min) / 2, (x_max - x_min).clamp_min(1e-8) * shrink / 2
    scale = 2 * half / (2**bits - 1)
    return scale, -(mid - half) / scale


def test_a_registered_quantizer_is_used_by_name_and_its_options_checked(monkeypatch):
    monkeypatch.setitem(registry.QUANTIZERS, "halving", f"{__name__}:halving_grid")
    w = torch.randn(37, 70)
    q = quantize(w, 4, 32, "halving", shrink=0.5)
    err = (q.dequantize(torch.float32) - w).abs()
    full = (quantize(w, 4, 32, "minmax").dequantize(torch.float32) - w).abs()
    # the shrunk grid clips the tails: larger worst-case error, and every code of a group lies in it
    assert err.max() > full.max()
    with pytest.raises(ValueError, match=r"method='halving' takes only the options \['shrink'\], got \['iters'\]"):
        quantize(w, 4, 32, "halving", iters=3)
    with pytest.raises(ValueError, match="method='rtn' takes no extra options"):
        quantize(w, 4, 32, "rtn", iters=3)
    monkeypatch.delitem(registry.QUANTIZERS, "halving")
    with pytest.raises(ValueError, match="quantizer method must be one of rtn, minmax, hqq; got 'halving'"):
        quantize(w, 4, 32, "halving")
