"""Quantized weights: bit-packing, per-group quantizers (rtn, minmax, hqq, learnable clipping) and
the frozen `QuantLinear` layer whose forward runs the `automix.kernels` dequantize-matmul."""

from automix.quant.grid import CLIP_LOGIT_INIT, clip_logits_init, fake_quantize, num_groups
from automix.quant.linear import QuantLinear
from automix.kernels.packing import SUPPORTED_BITS, pack, packed_words, unpack
from automix.quant.quantizer import DEFAULT_METHOD, METHODS, check_method, quantization_chunk, quantize
from automix.kernels.reference import dequantize_kn
from automix.quant.weight import QuantizedWeight

__all__ = [
    "CLIP_LOGIT_INIT",
    "DEFAULT_METHOD",
    "METHODS",
    "SUPPORTED_BITS",
    "QuantLinear",
    "QuantizedWeight",
    "check_method",
    "clip_logits_init",
    "dequantize_kn",
    "fake_quantize",
    "num_groups",
    "pack",
    "packed_words",
    "quantization_chunk",
    "quantize",
    "unpack",
]
