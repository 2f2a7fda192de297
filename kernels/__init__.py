"""Triton dequantize-matmul kernels for packed 2/3/4/8-bit weights (installed as
`automix.kernels`), their torch references, and the `quant_matmul` dispatcher."""

from automix.kernels.dispatch import quant_matmul
from automix.kernels.reference import dequantize_reference, quant_matmul_reference

__all__ = ["dequantize_reference", "quant_matmul", "quant_matmul_reference"]
