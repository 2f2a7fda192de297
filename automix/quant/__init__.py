"""Quantized weights: bit-packing, per-group quantizers (minmax, hqq, learnable clipping) and
the frozen `QuantLinear` layer whose forward runs the `automix.kernels` dequantize-matmul."""

from automix.quant.grid import CLIP_LOGIT_INIT, clip_logits_init, fake_quantize, num_groups
from automix.quant.linear import QuantLinear
from automix.quant.packing import SUPPORTED_BITS, pack, packed_words, unpack
from automix.quant.quantizer import METHODS, quantize
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
    "num_groups",
    "pack",
    "packed_words",
    "quantize",
    "unpack",
]
