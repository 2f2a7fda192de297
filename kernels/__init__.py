"""Triton dequantize-matmul kernels for packed 2/3/4/8-bit weights (installed as
`automix.kernels`), their torch references, and the `quant_matmul` dispatcher."""

if __name__ == "automix.kernels":
    from automix.kernels.dispatch import quant_matmul
    from automix.kernels.reference import dequantize_reference, quant_matmul_reference

    __all__ = ["dequantize_reference", "quant_matmul", "quant_matmul_reference"]
else:
    # Imported as a top-level `kernels` because Python was started in the repository root. That
    # name belongs to Hugging Face's `kernels` package, which transformers probes for on import:
    # look like a bare namespace directory so the probe reports it as not installed.
    del __file__
