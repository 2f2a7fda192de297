"""Quantized weights: bit-packing, per-group quantizers (minmax, hqq, learnable clipping) and
the frozen `QuantLinear` layer whose forward runs the `automix.kernels` dequantize-matmul."""

from automix.quant.linear import QuantLinear, linear_weight
from automix.quant.packing import SUPPORTED_BITS, pack, packed_words, unpack
from automix.quant.quantizer import (
    CLIP_LOGIT_INIT,
    METHODS,
    clip_logits_init,
    fake_quantize,
    num_groups,
    quantize,
)
from automix.quant.weight import QuantizedWeight, dequantize_kn

__all__ = [
    "CLIP_LOGIT_INIT",
    "METHODS",
    "SUPPORTED_BITS",
    "QuantLinear",
    "QuantizedWeight",
    "clip_logits_init",
    "dequantize_kn",
    "fake_quantize",
    "linear_weight",
    "num_groups",
    "pack",
    "packed_words",
    "quantize",
    "unpack",
]
