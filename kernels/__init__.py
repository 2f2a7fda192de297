"""Triton dequantize-matmul kernels for packed 2/3/4/8-bit weights (installed as
`automix.kernels`), their torch references, and the `quant_matmul` dispatcher."""

if __name__ == "automix.kernels":
    from automix.kernels.dispatch import quant_matmul
    from automix.kernels.reference import dequantize_reference, quant_matmul_reference

    __all__ = ["dequantize_reference", "quant_matmul", "quant_matmul_reference"]
else:
    # Why this branch exists: Python started in the repository root (`python -m automix`,
    # `python -m pytest`, `python -c ...`, Ray workers started there) puts the root first on
    # sys.path, so `import kernels` finds this folder. That name belongs to Hugging Face's
    # `kernels` package, which transformers >= 5.25 imports on load (`from kernels import
    # CUDAProperties, ...`). So when imported as a top-level `kernels`, this file steps aside:
    # it loads the `kernels` found on the rest of sys.path and puts it in sys.modules under its
    # own name, which is what `import kernels` then returns; with none installed, the import
    # fails as it would without this folder. tests/kernels/test_repo_root_imports.py checks it.
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _here = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    _rest = [p for p in sys.path if os.path.realpath(p or os.curdir) != _here]
    _spec = importlib.machinery.PathFinder.find_spec(__name__, _rest)
    if _spec is None or _spec.loader is None:
        raise ModuleNotFoundError(f"No module named {__name__!r}", name=__name__)
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[__name__] = _module
    _spec.loader.exec_module(_module)
