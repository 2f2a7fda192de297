"""Benchmarks: scripts that print tables (`automix bench NAME`); results live in `benchmarks/`.

Nothing in the library imports this package. Every benchmark program lives here (the kernels'
too: `automix bench kernels`), every recorded result under `benchmarks/`, each with the command
that made it.
"""
