"""Benchmarks: scripts that print tables (`automix bench NAME`); results live in `benchmarks/`.

Nothing in the library imports this package. The kernel benchmark stays beside its kernels
(`automix.kernels.bench`), as Triton's tutorials keep theirs.
"""
